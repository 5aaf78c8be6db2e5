//! `--input` files: one text (or path) a line.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The longest line read: far more than the longest text any model takes (65,536 tokens, at
/// most 6 bytes a token as `[MASK]`), so that a file without line ends (`/dev/zero`) is an error
/// rather than all of the memory.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// The lines of `path` (`-`: standard input), without their `\n` or `\r\n`; each at most
/// [`MAX_LINE_BYTES`], and UTF-8.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    if path.as_os_str() == "-" {
        return lines_of(std::io::stdin().lock(), "standard input");
    }
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    lines_of(BufReader::new(file), &path.display().to_string())
}

/// The lines of `reader`, whose errors call it `name`.
fn lines_of(mut reader: impl BufRead, name: &str) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut offset = 0usize;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 2)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read {name}"))?;
        if read == 0 {
            return Ok(lines);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        if line.len() > MAX_LINE_BYTES {
            bail!(
                "{name} line {} is longer than {MAX_LINE_BYTES} bytes, more than any text a model takes",
                lines.len() + 1
            );
        }
        match std::str::from_utf8(&line) {
            Ok(text) => lines.push(text.to_string()),
            Err(e) => bail!(
                "{name} is not UTF-8 text (invalid byte at offset {})",
                offset + e.valid_up_to()
            ),
        }
        offset += read;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(bytes: &[u8]) -> Result<Vec<String>> {
        lines_of(bytes, "in.txt")
    }

    #[test]
    fn lines_are_split_as_str_lines_splits_them() {
        for text in ["", "a", "a\n", "a\r\nb", "a\n\nb\n", "\n", "a\rb\n", "é\r\n"] {
            assert_eq!(
                lines(text.as_bytes()).unwrap(),
                text.lines().collect::<Vec<_>>(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_line_too_long_or_not_utf8_is_an_error() {
        let long = vec![b'a'; MAX_LINE_BYTES + 1];
        let err = lines(&long).unwrap_err().to_string();
        assert!(err.contains("in.txt line 1 is longer than"), "{err}");
        assert_eq!(lines(&long[1..]).unwrap()[0].len(), MAX_LINE_BYTES);
        // An endless line stops at the bound.
        let err = lines_of(BufReader::new(std::io::repeat(0)), "zeros")
            .unwrap_err()
            .to_string();
        assert!(err.contains("longer than"), "{err}");
        let err = lines(b"ok\nab\xffc\n").unwrap_err().to_string();
        assert!(err.contains("invalid byte at offset 5"), "{err}");
    }
}
