//! Checks on the files a subcommand will write, made before any model loads: an output that
//! would overwrite an input or another output, or that could not be written, is an error before
//! the work rather than after it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// `path` made absolute, its symbolic links resolved as far as it exists (an output may not
/// exist yet), so that two spellings of one file compare equal.
pub fn resolved(path: &Path) -> PathBuf {
    if let Ok(real) = path.canonicalize() {
        return real;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => resolved(directory_of_parent(parent)).join(name),
        _ => path.to_path_buf(),
    }
}

/// A path's parent as a directory to look at: `a.png`'s is the current directory.
fn directory_of_parent(parent: &Path) -> &Path {
    if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    }
}

/// Refuses an output file (`flag`, path) that is one of `inputs` or an earlier output, that is
/// a directory, or whose directory does not exist.
pub fn check_files(inputs: &[&Path], outputs: &[(&str, &Path)]) -> Result<()> {
    let real_inputs: Vec<PathBuf> = inputs.iter().map(|p| resolved(p)).collect();
    let mut earlier: Vec<(&str, PathBuf)> = Vec::new();
    for &(flag, path) in outputs {
        if path.is_dir() {
            bail!("{flag} {} is a directory: give a file name", path.display());
        }
        let parent = directory_of_parent(path.parent().unwrap_or(Path::new(".")));
        if !parent.is_dir() {
            bail!(
                "cannot write {} ({flag}): {} is not a directory",
                path.display(),
                parent.display()
            );
        }
        let real = resolved(path);
        if let Some(i) = real_inputs.iter().position(|input| *input == real) {
            bail!(
                "{flag} {} is the input {}: it would be overwritten",
                path.display(),
                inputs[i].display()
            );
        }
        if let Some((other, _)) = earlier.iter().find(|(_, p)| *p == real) {
            bail!("{other} and {flag} name the same file, {}", path.display());
        }
        earlier.push((flag, real));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_file_are_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("a.png");
        std::fs::write(&input, b"x").unwrap();
        let other = dir.path().join("sub/../a.png");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert_eq!(resolved(&other), resolved(&input));
        // Not yet written: resolved through its directory.
        assert_eq!(
            resolved(&dir.path().join("sub/../b.png")),
            resolved(dir.path()).join("b.png")
        );
        let message = check_files(&[&input], &[("--out", &other)])
            .unwrap_err()
            .to_string();
        assert!(message.contains("is the input"), "{message}");
        let b = dir.path().join("b.png");
        let message = check_files(&[&input], &[("--out", &b), ("--legend", &b)])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("--out and --legend name the same file"),
            "{message}"
        );
        let message = check_files(&[], &[("--flo", &input.join("f.flo"))])
            .unwrap_err()
            .to_string();
        assert!(message.contains("is not a directory"), "{message}");
        assert!(check_files(&[&input], &[("--out", &b)]).is_ok());
    }
}
