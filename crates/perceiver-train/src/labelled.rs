//! Labelled texts for classifier fine-tuning: CSV (a header naming the columns `text` and
//! `label`; other columns are ignored) or JSON lines (one object a line with a string `text` and
//! a string or integer `label`), chosen by the file's extension.
//!
//! Labelled images: a directory holding a folder per label, each with that label's image files
//! (at any depth), as torchvision's `ImageFolder` and the `imagefolder` datasets lay them out
//! ([`read_image_folders`]).
//!
//! Every row must have both: a missing column or field, an empty label, an empty text, a row
//! with the wrong number of fields or a line that is not JSON is an [`Error::Data`] naming the
//! file and the line, before any training starts. Rows are kept in memory: their number is
//! bounded by the files' size.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::corpus::Corpus;
use crate::error::{io_at, Error, Result};

/// One labelled text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledText {
    /// The text, as written (surrounding spaces kept).
    pub text: String,
    /// The label, without surrounding spaces.
    pub label: String,
    /// Where it was read: the file.
    pub path: PathBuf,
    /// … and the line (1-based; a CSV row's first line).
    pub line: u64,
}

/// The formats a labelled file may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with a header (`.csv`).
    Csv,
    /// One JSON object a line (`.jsonl`, `.ndjson`, `.json`).
    JsonLines,
}

impl Format {
    /// The format of `path`, by its extension.
    pub fn of(path: &Path) -> Result<Self> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("csv") => Ok(Self::Csv),
            Some("jsonl" | "ndjson" | "json") => Ok(Self::JsonLines),
            _ => Err(data_error(
                path,
                None,
                "labelled texts are read from .csv (columns text,label) or .jsonl files \
                 ({\"text\": …, \"label\": …} a line)",
            )),
        }
    }
}

fn data_error(path: &Path, line: Option<u64>, reason: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

/// The rows of every file that `specs` names (files, directories, globs, as for a corpus), in
/// file order then line order.
pub fn read_all<S: AsRef<str>>(specs: &[S]) -> Result<Vec<LabelledText>> {
    let mut rows = Vec::new();
    for path in Corpus::discover(specs)?.files() {
        rows.extend(read(path)?);
    }
    Ok(rows)
}

/// The rows of one file.
pub fn read(path: &Path) -> Result<Vec<LabelledText>> {
    let rows = match Format::of(path)? {
        Format::Csv => read_csv(path)?,
        Format::JsonLines => read_json_lines(path)?,
    };
    if rows.is_empty() {
        return Err(data_error(path, None, "no labelled texts"));
    }
    Ok(rows)
}

/// Something with a label: a text or an image.
pub trait Labelled {
    /// Its label.
    fn label(&self) -> &str;
}

impl Labelled for LabelledText {
    fn label(&self) -> &str {
        &self.label
    }
}

/// One labelled image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledImage {
    /// The file.
    pub path: PathBuf,
    /// The name of the folder it is in, under the directory given.
    pub label: String,
}

impl Labelled for LabelledImage {
    fn label(&self) -> &str {
        &self.label
    }
}

/// The extensions (any case) of the files read as images; other files in the folders (notes,
/// `.DS_Store`) are skipped.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"];

fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// The images of every directory of `specs`: each directory holds a folder per label (its name
/// is the label), each folder that label's image files ([`IMAGE_EXTENSIONS`]) at any depth.
/// Directories in name order, then files by path; hidden entries are skipped, and so is a
/// folder without an image file (it names no label). An image file directly in a directory
/// given (no label), a spec that is not a directory, a blank folder name, or no image at all is
/// an [`Error::Data`].
pub fn read_image_folders<S: AsRef<str>>(specs: &[S]) -> Result<Vec<LabelledImage>> {
    let mut images = Vec::new();
    for spec in specs {
        let dir = Path::new(spec.as_ref());
        if !dir.is_dir() {
            return Err(data_error(
                dir,
                None,
                "labelled images are read from a directory with a folder per label (DIR/cat/1.jpg, \
                 DIR/dog/2.png, …)",
            ));
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_at(dir))?
            .map(|entry| entry.map(|e| e.path()).map_err(io_at(dir)))
            .collect::<Result<_>>()?;
        entries.sort();
        for entry in entries.into_iter().filter(|e| !is_hidden(e)) {
            if entry.is_dir() {
                let label = entry
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| data_error(&entry, None, "a label folder's name is not UTF-8"))?;
                let mut files = Vec::new();
                image_files(&entry, &mut HashSet::new(), &mut files)?;
                if !files.is_empty() && label.trim().is_empty() {
                    return Err(data_error(&entry, None, "a label folder's name is blank"));
                }
                files.sort();
                images.extend(files.into_iter().map(|path| LabelledImage {
                    path,
                    label: label.to_string(),
                }));
            } else if is_image_file(&entry) {
                return Err(data_error(
                    &entry,
                    None,
                    format!(
                        "an image directly in {}: each image goes in the folder named after its label",
                        dir.display()
                    ),
                ));
            }
        }
    }
    if images.is_empty() {
        let dirs: Vec<&str> = specs.iter().map(|s| s.as_ref()).collect();
        return Err(data_error(
            Path::new(dirs.first().copied().unwrap_or(".")),
            None,
            format!(
                "no image files ({}) in a label folder of {}",
                IMAGE_EXTENSIONS.join(", "),
                dirs.join(", ")
            ),
        ));
    }
    Ok(images)
}

/// The image files under `dir` at any depth, hidden entries skipped; a linked folder is walked
/// once (`seen`: the real paths of the folders walked), so that a link loop ends.
fn image_files(dir: &Path, seen: &mut HashSet<PathBuf>, out: &mut Vec<PathBuf>) -> Result<()> {
    let real = dir.canonicalize().map_err(io_at(dir))?;
    if !seen.insert(real) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(io_at(dir))? {
        let path = entry.map_err(io_at(dir))?.path();
        if is_hidden(&path) {
            continue;
        }
        if path.is_dir() {
            image_files(&path, seen, out)?;
        } else if path.is_file() && is_image_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// A row's text and label, checked.
fn row(path: &Path, line: u64, text: &str, label: &str) -> Result<LabelledText> {
    let label = label.trim();
    if label.is_empty() {
        return Err(data_error(path, Some(line), "the label is empty"));
    }
    if text.trim().is_empty() {
        return Err(data_error(path, Some(line), "the text is empty"));
    }
    Ok(LabelledText {
        text: text.to_string(),
        label: label.to_string(),
        path: path.to_path_buf(),
        line,
    })
}

fn read_csv(path: &Path) -> Result<Vec<LabelledText>> {
    // In memory whole: the rows are kept anyway, and line numbers are counted on the bytes.
    let content = std::fs::read(path).map_err(io_at(path))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(content.as_slice());
    let header = reader
        .headers()
        .map_err(|e| csv_error(path, &content, &e))?
        .iter()
        // A spreadsheet's UTF-8 byte-order mark sits before the first name.
        .map(|name| name.trim_start_matches('\u{feff}').trim().to_string())
        .collect::<Vec<_>>();
    if header.iter().all(|name| name.is_empty()) {
        return Err(data_error(
            path,
            Some(1),
            "no header: the first line names the columns (text,label)",
        ));
    }
    let column = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            data_error(
                path,
                Some(1),
                format!(
                    "the header has no column `{name}` (it has {}); the columns text and label are required",
                    header
                        .iter()
                        .map(|h| format!("`{h}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    };
    let (text_column, label_column) = (column("text")?, column("label")?);
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, &content, &e))?;
        let line = record.position().map_or(0, |p| line_of(&content, p));
        // `flexible(false)` has already refused rows whose field count differs from the header's.
        rows.push(row(path, line, &record[text_column], &record[label_column])?);
    }
    Ok(rows)
}

/// The line a record starts on. The reader places a record after the previous one's line end,
/// before any blank lines it then skips; those are counted here.
fn line_of(content: &[u8], position: &csv::Position) -> u64 {
    let start = (position.byte() as usize).min(content.len());
    let blank = content[start..]
        .iter()
        .take_while(|&&b| b == b'\n' || b == b'\r')
        .filter(|&&b| b == b'\n')
        .count();
    position.line() + blank as u64
}

/// A CSV reading error as one line naming the file and the line.
fn csv_error(path: &Path, content: &[u8], error: &csv::Error) -> Error {
    let line = error.position().map(|p| line_of(content, p));
    let reason = match error.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("{len} fields where the header has {expected_len}")
        }
        csv::ErrorKind::Utf8 { .. } => "not UTF-8 text".to_string(),
        csv::ErrorKind::Io(e) => e.to_string(),
        _ => error.to_string(),
    };
    data_error(path, line, reason)
}

fn read_json_lines(path: &Path) -> Result<Vec<LabelledText>> {
    let file = std::fs::File::open(path).map_err(io_at(path))?;
    let mut rows = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let number = index as u64 + 1;
        let line = line.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => data_error(path, Some(number), "not UTF-8 text"),
            _ => Error::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| data_error(path, Some(number), format!("not JSON: {e}")))?;
        let object = value.as_object().ok_or_else(|| {
            data_error(
                path,
                Some(number),
                "not a JSON object ({\"text\": …, \"label\": …})",
            )
        })?;
        let text = match object.get("text") {
            Some(serde_json::Value::String(text)) => text,
            Some(_) => return Err(data_error(path, Some(number), "`text` is not a string")),
            None => return Err(data_error(path, Some(number), "no `text` field")),
        };
        let label = match object.get("label") {
            Some(serde_json::Value::String(label)) => label.clone(),
            // Datasets often number their classes; the number becomes the label's name.
            Some(serde_json::Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
            Some(serde_json::Value::Null) | None => {
                return Err(data_error(path, Some(number), "no `label` field"))
            }
            Some(_) => {
                return Err(data_error(
                    path,
                    Some(number),
                    "`label` is not a string or an integer",
                ))
            }
        };
        rows.push(row(path, number, text, &label)?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    fn error_of(name: &str, content: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), name, content);
        let message = read(&path).unwrap_err().to_string();
        assert!(!message.contains('\n'), "one line: {message}");
        assert!(message.contains(name), "{message} names the file");
        message
    }

    #[test]
    fn csv_rows_with_quotes_extra_columns_and_a_bom() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "d.csv",
            "\u{feff}id,label,text\n1, en ,\"Hello, \"\"world\"\"\"\n2,fr,\"Bonjour\nle monde\"\n\n3,de,Hallo\n",
        );
        let rows = read(&path).unwrap();
        let got: Vec<(&str, &str, u64)> = rows
            .iter()
            .map(|r| (r.text.as_str(), r.label.as_str(), r.line))
            .collect();
        assert_eq!(
            got,
            [
                ("Hello, \"world\"", "en", 2),
                ("Bonjour\nle monde", "fr", 3),
                ("Hallo", "de", 6)
            ]
        );
    }

    #[test]
    fn json_lines_with_string_and_integer_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "d.jsonl",
            "{\"text\": \"good\", \"label\": \"pos\"}\n\n{\"label\": 0, \"text\": \"bad\", \"id\": 7}\n",
        );
        let rows = read(&path).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[1].text.as_str(), rows[1].label.as_str(), rows[1].line),
            ("bad", "0", 3)
        );
    }

    #[test]
    fn bad_csv_names_the_file_and_the_line() {
        let cases = [
            (
                "text,category\nhi,a\n",
                "line 1: the header has no column `label`",
            ),
            ("label\na\n", "no column `text`"),
            ("text,label\nhi,a\nho,\n", "line 3: the label is empty"),
            ("text,label\nhi,a\nho,  \n", "line 3: the label is empty"),
            ("text,label\n,a\n", "line 2: the text is empty"),
            (
                "text,label\nhi,a\nho,b,c\n",
                "line 3: 3 fields where the header has 2",
            ),
            (
                "text,label\r\nhi,a\r\n\r\n\r\nho,b,c\r\n",
                "line 5: 3 fields where the header has 2",
            ),
            ("text,label\n", "no labelled texts"),
            ("", "no header"),
        ];
        for (content, needle) in cases {
            let message = error_of("bad.csv", content);
            assert!(
                message.contains(needle),
                "{content:?}: {message:?} lacks {needle:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latin1.csv");
        std::fs::write(&path, b"text,label\ncaf\xe9,fr\n").unwrap();
        let message = read(&path).unwrap_err().to_string();
        assert!(message.contains("line 2: not UTF-8"), "{message}");
    }

    #[test]
    fn bad_json_lines_name_the_file_and_the_line() {
        let cases = [
            (
                "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\"}\n",
                "line 2: no `label` field",
            ),
            ("{\"label\": \"x\"}\n", "line 1: no `text` field"),
            (
                "{\"text\": \"a\", \"label\": \"\"}\n",
                "line 1: the label is empty",
            ),
            (
                "{\"text\": \"\", \"label\": \"x\"}\n",
                "line 1: the text is empty",
            ),
            (
                "{\"text\": \"a\", \"label\": [1]}\n",
                "line 1: `label` is not a string or an integer",
            ),
            (
                "{\"text\": 5, \"label\": \"x\"}\n",
                "line 1: `text` is not a string",
            ),
            (
                "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"a\",\n",
                "line 2: not JSON",
            ),
            ("[\"a\", \"x\"]\n", "line 1: not a JSON object"),
        ];
        for (content, needle) in cases {
            let message = error_of("bad.jsonl", content);
            assert!(
                message.contains(needle),
                "{content:?}: {message:?} lacks {needle:?}"
            );
        }
        let message = error_of("notes.txt", "text,label\n");
        assert!(message.contains(".csv"), "{message}");
    }

    #[test]
    fn image_folders_give_a_label_per_folder_and_skip_what_is_no_image() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("photos");
        for folder in ["cat/sub", "dog", "empty", ".git", "notes"] {
            std::fs::create_dir_all(root.join(folder)).unwrap();
        }
        for file in [
            "cat/a.png",
            "cat/sub/b.JPG",
            "cat/.hidden.png",
            "cat/notes.txt",
            "dog/c.webp",
            ".git/x.png",
            "notes/readme.md",
            "README.md",
        ] {
            write(&root, file, "");
        }
        #[cfg(unix)]
        std::os::unix::fs::symlink(root.join("dog"), root.join("dog/loop")).unwrap();
        let images = read_image_folders(&[root.to_str().unwrap()]).unwrap();
        let found: Vec<(String, &str)> = images
            .iter()
            .map(|i| {
                let rel = i.path.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
                (rel, i.label.as_str())
            })
            .collect();
        let expected = [
            ("cat/a.png", "cat"),
            ("cat/sub/b.JPG", "cat"),
            ("dog/c.webp", "dog"),
        ];
        assert_eq!(
            found,
            expected.map(|(p, l)| (p.to_string(), l)),
            "hidden entries, other files and folders without images are skipped"
        );

        let refused = |root: &Path| {
            read_image_folders(&[root.to_str().unwrap()])
                .unwrap_err()
                .to_string()
        };
        let loose = dir.path().join("loose");
        std::fs::create_dir_all(loose.join("cat")).unwrap();
        write(&loose, "cat/a.png", "");
        write(&loose, "b.png", "");
        assert!(refused(&loose).contains("b.png"), "{}", refused(&loose));
        let blank = dir.path().join("blank");
        std::fs::create_dir_all(blank.join("  ")).unwrap();
        write(&blank, "  /a.png", "");
        assert!(refused(&blank).contains("blank"), "{}", refused(&blank));
        let nothing = dir.path().join("nothing");
        std::fs::create_dir_all(nothing.join("cat")).unwrap();
        assert!(
            refused(&nothing).contains("no image files"),
            "{}",
            refused(&nothing)
        );
        assert!(refused(&root.join("cat/a.png")).contains("a folder per label"));
    }
}
