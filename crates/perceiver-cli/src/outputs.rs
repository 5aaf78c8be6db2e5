//! Checks on the files a subcommand will write, made before any model loads: an output that
//! would overwrite an input or another output, or that could not be written, is an error before
//! the work rather than after it. The files are then written beside their places and moved there
//! together once all are written ([`Staged`]): a write that fails leaves no partial set.

use std::fs::{self, OpenOptions};
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use same_file::Handle;
use tempfile::TempPath;

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

/// The directory a file is created in.
fn directory_of(path: &Path) -> &Path {
    directory_of_parent(path.parent().unwrap_or(Path::new(".")))
}

/// What writing an output path writes to.
enum Target {
    /// A file, created or replaced: the path with its symbolic links followed, so that a link's
    /// file is replaced rather than the link (a link to nothing names the file to create).
    File {
        path: PathBuf,
        exists: bool,
    },
    Directory,
    /// Something else (a device, a pipe such as `/dev/stdout`): it cannot be replaced by a new
    /// file, so it is written in place.
    Special,
}

fn target(path: &Path) -> Result<Target> {
    if is_process_stream(path) {
        return Ok(Target::Special);
    }
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(Target::Directory),
        Ok(meta) if meta.is_file() => Ok(Target::File {
            path: path.canonicalize().unwrap_or_else(|_| path.to_path_buf()),
            exists: true,
        }),
        Ok(_) => Ok(Target::Special),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => Ok(Target::File {
            path: link_target(path)?,
            exists: false,
        }),
        Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
    }
}

/// Whether `path` names one of the process's own streams or descriptors (`/dev/stdout`,
/// `/dev/fd/3`, `/proc/self/fd/1`): written in place even when it is a regular file (standard
/// output redirected to one), which replacing would take from under the process's other output.
fn is_process_stream(path: &Path) -> bool {
    cfg!(unix) && (path.starts_with("/dev") || path.starts_with("/proc"))
}

/// Whether writing `path` writes to this process's standard output when that is a file or a pipe
/// (`/dev/stdout`, or the file or pipe standard output is redirected to, by any name): what the
/// subcommand prints there would then be mixed into that output. A terminal or `/dev/null` is
/// no output to spoil.
pub fn is_stdout(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let Ok(stdout) = io::stdout().as_fd().try_clone_to_owned() else {
            return false;
        };
        // stat, not open: a named pipe is not opened (which could wait for a writer).
        match (fs::File::from(stdout).metadata(), fs::metadata(path)) {
            (Ok(out), Ok(named)) => {
                use std::os::unix::fs::FileTypeExt;
                let kind = named.file_type();
                (kind.is_file() || kind.is_fifo()) && out.dev() == named.dev() && out.ino() == named.ino()
            }
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// Where a chain of symbolic links that leads to nothing ends: the path that writing through
/// it creates (`path` itself when it is no link).
fn link_target(path: &Path) -> Result<PathBuf> {
    let mut at = path.to_path_buf();
    // As many links as Linux follows before it gives up (ELOOP).
    for _ in 0..40 {
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link =
                    fs::read_link(&at).with_context(|| format!("cannot read the link {}", at.display()))?;
                // A relative link is relative to its own directory (an absolute one replaces it).
                at = directory_of(&at).join(link);
            }
            _ => return Ok(at),
        }
    }
    bail!(
        "cannot write {}: too many levels of symbolic links",
        path.display()
    )
}

/// The identity (device and inode, or volume and file index) of a regular file, which tells a
/// hard link to it; none for anything else, as opening a pipe could wait for a writer.
fn file_identity(path: &Path) -> Option<Handle> {
    if !fs::metadata(path).ok()?.is_file() {
        return None;
    }
    Handle::from_path(path).ok()
}

fn same_identity(a: &Option<Handle>, b: &Option<Handle>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a == b)
}

/// Refuses an output file (`flag`, path) that is one of `inputs` or an earlier output (another
/// spelling of it, a symbolic or a hard link to it), that is a directory, or that could not be
/// written: its directory (for a symbolic link, that of the file it names) must exist and take a
/// new file, and an existing file must be writable. Devices and pipes are written as they are.
pub fn check_files(inputs: &[&Path], outputs: &[(&str, &Path)]) -> Result<()> {
    let real_inputs: Vec<(PathBuf, Option<Handle>)> =
        inputs.iter().map(|p| (resolved(p), file_identity(p))).collect();
    let mut earlier: Vec<(&str, PathBuf, Option<Handle>)> = Vec::new();
    for &(flag, path) in outputs {
        let (target, exists) = match target(path)? {
            Target::Directory => bail!("cannot write {} ({flag}): it is a directory", path.display()),
            Target::Special => continue,
            Target::File { path, exists } => (path, exists),
        };
        let dir = directory_of(&target);
        if !dir.is_dir() {
            // Only a file that does not exist yet can be here: an existing one has a directory.
            let link = if target != path {
                format!("it is a symbolic link to {}, and ", target.display())
            } else {
                String::new()
            };
            bail!(
                "cannot write {} ({flag}): {link}{} is not a directory",
                path.display(),
                dir.display()
            );
        }
        let real = resolved(&target);
        let identity = if exists { file_identity(&target) } else { None };
        for (i, (input, input_identity)) in real_inputs.iter().enumerate() {
            let hard_link = *input != real && same_identity(input_identity, &identity);
            if *input == real || hard_link {
                bail!(
                    "{flag} {} is {}the input {}: it would be overwritten",
                    path.display(),
                    if hard_link { "a hard link to " } else { "" },
                    inputs[i].display()
                );
            }
        }
        if let Some((other, ..)) = earlier
            .iter()
            .find(|(_, p, id)| *p == real || same_identity(id, &identity))
        {
            bail!("{other} and {flag} name the same file, {}", path.display());
        }
        let cannot = || format!("cannot write {} ({flag})", path.display());
        if exists {
            // Opened, not truncated: a read-only file is refused, as writing it in place would be,
            // rather than replaced. One in a directory that takes no new file is written in place
            // (Staged::write), so the directory is not probed.
            OpenOptions::new()
                .write(true)
                .open(&target)
                .with_context(cannot)?;
        } else {
            probe_dir(dir).with_context(|| format!("{}: its directory takes no new file", cannot()))?;
        }
        earlier.push((flag, real, identity));
    }
    Ok(())
}

/// Whether a new file can be made in `dir` (outputs are written beside their places): one is
/// created and removed.
pub fn probe_dir(dir: &Path) -> io::Result<()> {
    for n in 0..16 {
        let probe = dir.join(format!(".perceiver-probe-{}-{n}", std::process::id()));
        // create_new: a file of that name that is someone else's is never touched.
        match OpenOptions::new().write(true).create_new(true).open(&probe) {
            Ok(file) => {
                drop(file);
                return fs::remove_file(&probe);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        ErrorKind::AlreadyExists,
        "no free name for a probe file",
    ))
}

/// Output files, each written to a new file beside its place and moved there by
/// [`finish`](Self::finish) once all are written: a write that fails (a full disk) leaves the
/// earlier outputs as they were, and an existing file is replaced whole.
#[derive(Default)]
pub struct Staged {
    /// The written file, its place, the output as given.
    files: Vec<(TempPath, PathBuf, PathBuf)>,
}

impl Staged {
    /// Writes the output `path` with `write`, given the file to write: a new one beside the
    /// file `path` names, or, for a device or pipe, `path` itself.
    pub fn write(&mut self, path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let (target, exists) = match target(path)? {
            Target::File { path, exists } => (path, exists),
            // A directory fails here, with the OS's own error.
            Target::Special | Target::Directory => return write(path),
        };
        let cannot = || format!("cannot write {}", path.display());
        let prefix = format!(".{}.", target.file_name().unwrap_or_default().to_string_lossy());
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".part");
        // What File::create gives a new file (0o666 less the umask), not a temporary's 0o600.
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        let staged = match builder.tempfile_in(directory_of(&target)) {
            Ok(file) => file.into_temp_path(),
            // A writable file in a directory that takes no new file: written in place, as
            // before outputs were staged.
            Err(e) if exists && e.kind() == ErrorKind::PermissionDenied => return write(&target),
            Err(e) => return Err(e).with_context(cannot),
        };
        write(&staged).map_err(|e| named(e, path))?;
        if exists {
            // A file replaced keeps its permissions, as one written in place does (set after the
            // write, which may have put another file in the staged one's place).
            let permissions = fs::metadata(&target).with_context(cannot)?.permissions();
            fs::set_permissions(&staged, permissions).with_context(cannot)?;
        }
        self.files.push((staged, target, path.to_path_buf()));
        Ok(())
    }

    /// Moves every written file into its place; one that cannot be replaced by another file
    /// (another user's file in a sticky directory such as /tmp) is overwritten in place.
    pub fn finish(self) -> Result<()> {
        for (staged, target, path) in self.files {
            let cannot = || format!("cannot write {}", path.display());
            if let Err(e) = staged.persist(&target) {
                if !matches!(e.error.kind(), ErrorKind::PermissionDenied) {
                    return Err(e.error).with_context(cannot);
                }
                // Opened without O_CREAT, which Linux's protected_regular refuses there; the
                // staged file goes on drop.
                let mut to = OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&target)
                    .with_context(cannot)?;
                let mut from = fs::File::open(&e.path).with_context(cannot)?;
                io::copy(&mut from, &mut to).with_context(cannot)?;
            }
        }
        Ok(())
    }
}

/// A library error about a staged file, naming the output it stands for.
fn named(error: anyhow::Error, path: &Path) -> anyhow::Error {
    match error.downcast::<perceiver::Error>() {
        Ok(perceiver::Error::Write { source, .. }) => perceiver::Error::Write {
            path: path.to_path_buf(),
            source,
        }
        .into(),
        Ok(other) => other.into(),
        Err(other) => other,
    }
}

/// Directories made for a run's outputs before the run, removed again (those still empty) when
/// it fails: a refused run leaves nothing behind.
#[derive(Default)]
pub struct MadeDirs(Vec<PathBuf>);

impl MadeDirs {
    /// Makes `dir` and its missing parents, remembering those it made.
    pub fn make(&mut self, dir: &Path) -> io::Result<()> {
        // Without `.` components: `out/.` cannot be made in one step when `out` is missing.
        let dir: PathBuf = dir
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect();
        let missing: Vec<&Path> = dir
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && fs::symlink_metadata(a).is_err())
            .collect();
        for dir in missing.into_iter().rev() {
            match fs::create_dir(dir) {
                Ok(()) => self.0.push(dir.to_path_buf()),
                // `made/..`: there once its parent is made.
                Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Keeps them: the run wrote its outputs.
    pub fn keep(mut self) {
        self.0.clear();
    }
}

impl Drop for MadeDirs {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            // Only an empty one goes.
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Refuses a directory output (`flag`, path) that could not be made or written into, before
/// anything runs: an existing one must be a directory; a missing one is made (with its missing
/// parents; through a symbolic link to nothing, only the directory it names) into `made`. A new
/// file must then be creatable in it.
pub fn make_dir(flag: &str, path: &Path, made: &mut MadeDirs) -> Result<()> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => bail!(
            "cannot write into {} ({flag}): it is not a directory",
            path.display()
        ),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            let target = link_target(path)?;
            let cannot = || format!("cannot create {} ({flag})", path.display());
            if target != path {
                let dir = directory_of(&target);
                if !dir.is_dir() {
                    bail!(
                        "{}: it is a symbolic link to {}, and {} is not a directory",
                        cannot(),
                        target.display(),
                        dir.display()
                    );
                }
                made.make(&target).with_context(cannot)?;
            } else {
                // The nearest part of it that exists must be a directory.
                if let Some(existing) = path.ancestors().skip(1).find(|a| a.exists()) {
                    if !existing.is_dir() {
                        bail!("{}: {} is not a directory", cannot(), existing.display());
                    }
                }
                made.make(path).with_context(cannot)?;
            }
        }
        Err(e) => return Err(e).with_context(|| format!("cannot write into {} ({flag})", path.display())),
    }
    probe_dir(path).with_context(|| format!("cannot write into {} ({flag})", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `out/.` and `missing/../out` are made as `mkdir -p` makes them (the first failed with
    /// "No such file", the second with "File exists"), and removed again unless kept.
    #[test]
    fn directories_with_dot_components_are_made() {
        let dir = tempfile::tempdir().unwrap();
        for (spelled, made) in [("a/.", "a"), ("b/missing/../c", "b/c"), ("./d/./e", "d/e")] {
            let path = dir.path().join(spelled);
            let mut dirs = MadeDirs::default();
            dirs.make(&path).unwrap_or_else(|e| panic!("{spelled}: {e}"));
            assert!(dir.path().join(made).is_dir(), "{spelled}");
            drop(dirs);
            assert!(!dir.path().join(made).exists(), "{spelled}: not removed");
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_process_streams_are_written_in_place() {
        for path in ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1", "/dev/null"] {
            assert!(
                matches!(target(Path::new(path)).unwrap(), Target::Special),
                "{path}"
            );
        }
    }

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

    #[test]
    fn a_hard_link_is_the_file_it_links() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("a.png");
        std::fs::write(&input, b"x").unwrap();
        let link = dir.path().join("b.png");
        std::fs::hard_link(&input, &link).unwrap();
        let message = check_files(&[&input], &[("--out", &link)])
            .unwrap_err()
            .to_string();
        assert!(message.contains("is a hard link to the input"), "{message}");
        let other = dir.path().join("c.png");
        std::fs::hard_link(&input, &other).unwrap();
        let message = check_files(&[], &[("--out", &link), ("--legend", &other)])
            .unwrap_err()
            .to_string();
        assert!(message.contains("name the same file"), "{message}");
    }

    #[test]
    fn staged_files_appear_together_and_a_failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
        std::fs::write(&a, b"old").unwrap();
        let mut staged = Staged::default();
        staged.write(&a, |to| Ok(std::fs::write(to, b"new a")?)).unwrap();
        let error = staged.write(&b, |_| bail!("disk full")).unwrap_err();
        assert_eq!(error.to_string(), "disk full");
        drop(staged);
        assert_eq!(std::fs::read(&a).unwrap(), b"old");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only a.txt: {names:?}");

        let mut staged = Staged::default();
        staged.write(&a, |to| Ok(std::fs::write(to, b"new a")?)).unwrap();
        staged.write(&b, |to| Ok(std::fs::write(to, b"new b")?)).unwrap();
        assert!(!b.exists());
        staged.finish().unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"new a");
        assert_eq!(std::fs::read(&b).unwrap(), b"new b");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[cfg(unix)]
    #[test]
    fn a_link_to_nothing_is_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link.png");
        std::os::unix::fs::symlink("real.png", &link).unwrap();
        check_files(&[], &[("--out", &link)]).unwrap();
        let mut staged = Staged::default();
        staged.write(&link, |to| Ok(std::fs::write(to, b"x")?)).unwrap();
        staged.finish().unwrap();
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(dir.path().join("real.png")).unwrap(), b"x");

        let dangling = dir.path().join("nowhere.png");
        std::os::unix::fs::symlink("/nonexistent/x.png", &dangling).unwrap();
        let message = check_files(&[], &[("--out", &dangling)]).unwrap_err().to_string();
        assert!(
            message
                .contains("it is a symbolic link to /nonexistent/x.png, and /nonexistent is not a directory"),
            "{message}"
        );
    }

    #[test]
    fn made_directories_go_when_the_run_fails() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b");
        let mut made = MadeDirs::default();
        make_dir("--out", &deep, &mut made).unwrap();
        assert!(deep.is_dir());
        drop(made);
        assert!(!dir.path().join("a").exists());
        let mut made = MadeDirs::default();
        make_dir("--out", &deep, &mut made).unwrap();
        made.keep();
        assert!(deep.is_dir());
    }
}
