//! Text corpora as streams of training windows.
//!
//! A corpus is a list of files (named directly, found in directories, or matched by globs). Files
//! are read 64 KiB block at a time, so a corpus larger than memory streams. Each block is cut into
//! windows of at most `seq_len` bytes that end on a UTF-8 character boundary.
//!
//! A held-out split (`eval_fraction`) assigns whole blocks to evaluation by a hash of the seed,
//! the file's path (absolute, as a run saves its corpus) and the block's index: the same blocks on
//! every run of a corpus where it lies, never seen in training.
//! Training windows are shuffled through a buffer; from the second epoch on each block starts at
//! a random offset, so the windows differ between epochs. Everything is a function of the seed.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{io_at, Error, Result};

/// Bytes per block: the unit of the held-out split and of reading.
pub const BLOCK_BYTES: usize = 64 * 1024;

/// The files of a corpus, in a fixed (sorted) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corpus {
    files: Vec<PathBuf>,
}

impl Corpus {
    /// Resolves files, directories (recursively; hidden entries skipped) and glob patterns.
    /// Symbolic links are followed, but each directory is walked once and each file counted once
    /// (by its real path), so a link back up the tree ends instead of looping.
    pub fn discover<S: AsRef<str>>(specs: &[S]) -> Result<Self> {
        let mut walk = Walk::default();
        for spec in specs {
            let spec = spec.as_ref();
            let path = Path::new(spec);
            if path.is_file() {
                walk.add_file(path.to_path_buf())?;
            } else if path.is_dir() {
                walk.add_dir(path)?;
            } else if let Ok(meta) = path.symlink_metadata() {
                // It exists: reading a device or FIFO would never end (or block), so say what it is.
                return Err(Error::Corpus(if meta.file_type().is_symlink() {
                    format!("{spec}: a symbolic link to nothing (its target does not exist)")
                } else {
                    format!("{spec}: exists but is neither a regular file nor a directory")
                }));
            } else if spec.contains(['*', '?', '[']) {
                let matches =
                    glob::glob(spec).map_err(|e| Error::Corpus(format!("bad pattern {spec:?}: {e}")))?;
                let before = walk.files.len();
                for entry in matches {
                    let entry = entry.map_err(|e| Error::Corpus(e.to_string()))?;
                    if entry.is_file() {
                        walk.add_file(entry)?;
                    }
                }
                if walk.files.len() == before {
                    return Err(Error::Corpus(format!("no file matches {spec:?}")));
                }
            } else {
                return Err(Error::Corpus(format!("{spec}: no such file or directory")));
            }
        }
        let mut files = walk.files;
        // Sorted by the name it was reached by; a file reached twice keeps its first name in
        // this order, so the list does not depend on the order directories list their entries.
        files.sort();
        let mut seen = std::collections::HashSet::new();
        files.retain(|(_, real)| seen.insert(real.clone()));
        let files: Vec<PathBuf> = files.into_iter().map(|(path, _)| path).collect();
        if files.is_empty() {
            return Err(Error::Corpus("no files".into()));
        }
        Ok(Self { files })
    }

    /// The files, sorted and without duplicates.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Total size in bytes (from file metadata).
    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum()
    }
}

/// `specs` (files, directories, globs) by absolute path: existing paths with their links and
/// `..` resolved, patterns below the current directory (escaped, so that its name matches only
/// itself). What a run saves, so that a resume from any directory reads the same files. A path
/// that is not valid Unicode once resolved is kept as given.
pub fn absolute_specs(specs: &[String]) -> Result<Vec<String>> {
    let cwd = std::env::current_dir().map_err(io_at("."))?;
    Ok(specs
        .iter()
        .map(|spec| absolute_spec(spec, &cwd).unwrap_or_else(|| spec.clone()))
        .collect())
}

fn absolute_spec(spec: &str, cwd: &Path) -> Option<String> {
    let path = Path::new(spec);
    if path.is_dir() {
        return path.canonicalize().ok()?.to_str().map(str::to_string);
    }
    if path.exists() {
        // The file keeps its own name: a link to a blob without an extension (the Hugging Face
        // cache, git-annex, DVC) is still the .csv or .jsonl the user named.
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.canonicalize().ok()?,
            _ => cwd.to_path_buf(),
        };
        return parent.join(path.file_name()?).to_str().map(str::to_string);
    }
    if path.is_absolute() {
        return None;
    }
    let dir = PathBuf::from(glob::Pattern::escape(cwd.to_str()?));
    dir.join(spec).to_str().map(str::to_string)
}

/// The files of a corpus as it is discovered: each with its real path (links resolved), and the
/// real paths of the directories walked so far.
#[derive(Default)]
struct Walk {
    files: Vec<(PathBuf, PathBuf)>,
    dirs: std::collections::HashSet<PathBuf>,
}

/// Directories nested deeper than this are refused: no real corpus is that deep, and a walk
/// that gets there is going round something the real-path check cannot see.
const MAX_DEPTH: usize = 256;

impl Walk {
    fn add_file(&mut self, path: PathBuf) -> Result<()> {
        let real = path.canonicalize().map_err(io_at(&path))?;
        self.files.push((path, real));
        Ok(())
    }

    /// Every file under `root`, in name order, each directory once.
    fn add_dir(&mut self, root: &Path) -> Result<()> {
        // Depth first, children in name order: the first name a directory is reached by is the
        // same on every run.
        let mut stack = vec![(root.to_path_buf(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let real = dir.canonicalize().map_err(io_at(&dir))?;
            if !self.dirs.insert(real) {
                continue; // walked already (a link to it, or a loop)
            }
            if depth > MAX_DEPTH {
                return Err(Error::Corpus(format!(
                    "{}: directories nested more than {MAX_DEPTH} deep",
                    dir.display()
                )));
            }
            let mut entries = Vec::new();
            for entry in std::fs::read_dir(&dir).map_err(io_at(&dir))? {
                let entry = entry.map_err(io_at(&dir))?;
                let path = entry.path();
                if !perceiver::tasks::is_hidden(&path) {
                    entries.push(path);
                }
            }
            entries.sort();
            let mut subdirs = Vec::new();
            for path in entries {
                // Following links; anything neither a file nor a directory (a FIFO, a device, a
                // broken link) is no text and is passed over.
                if path.is_dir() {
                    subdirs.push((path, depth + 1));
                } else if path.is_file() {
                    self.add_file(path)?;
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }
}

/// Which part of a corpus a stream reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Blocks not held out.
    Train,
    /// The held-out blocks.
    Eval,
    /// Everything (a corpus given only for evaluation).
    All,
}

/// The deterministic held-out split of a corpus.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Split {
    /// Fraction of blocks held out (0 = none).
    pub eval_fraction: f64,
    /// Seeds the hash that picks the held-out blocks.
    pub seed: u64,
}

impl Split {
    /// Nothing held out.
    pub const NONE: Split = Split {
        eval_fraction: 0.0,
        seed: 0,
    };

    fn is_eval(&self, path: &Path, block: u64) -> bool {
        if self.eval_fraction <= 0.0 {
            return false;
        }
        let mut h = self.seed ^ 0x9e37_79b9_7f4a_7c15;
        for b in path.to_string_lossy().bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3); // FNV-1a step
        }
        let u = (splitmix64(h ^ splitmix64(block)) >> 11) as f64 / (1u64 << 53) as f64;
        u < self.eval_fraction
    }

    fn wants(&self, part: Part, path: &Path, block: u64) -> bool {
        match part {
            Part::All => true,
            Part::Train => !self.is_eval(path, block),
            Part::Eval => self.is_eval(path, block),
        }
    }
}

pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d4_9bb4_6331_11eb);
    x ^ (x >> 31)
}

/// Reads a file block by block.
struct BlockReader {
    path: PathBuf,
    file: File,
    index: u64,
    done: bool,
}

impl BlockReader {
    fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            file: File::open(path).map_err(io_at(path))?,
            index: 0,
            done: false,
        })
    }

    /// The next block and its index; `None` at the end of the file.
    fn next_block(&mut self, buf: &mut Vec<u8>) -> Result<Option<u64>> {
        buf.clear();
        if self.done {
            return Ok(None);
        }
        buf.resize(BLOCK_BYTES, 0);
        let mut filled = 0;
        while filled < BLOCK_BYTES {
            match self.file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::Io {
                        path: self.path.clone(),
                        source: e,
                    })
                }
            }
        }
        buf.truncate(filled);
        if filled < BLOCK_BYTES {
            self.done = true;
        }
        if filled == 0 {
            return Ok(None);
        }
        self.index += 1;
        Ok(Some(self.index - 1))
    }
}

/// Cuts `block` into windows of at most `seq_len` bytes, each ending on a UTF-8 character
/// boundary: the text before `offset` as one window, then windows from `offset` on; a piece
/// shorter than `min_len` is dropped.
fn cut_windows(block: &[u8], offset: usize, seq_len: usize, min_len: usize, out: &mut Vec<Vec<u8>>) {
    // Do not start inside a character (the end of one the block before began).
    let after_continuations = |mut at: usize| {
        while at < block.len() && is_continuation(block[at]) {
            at += 1;
        }
        at
    };
    let first = after_continuations(0);
    let mut start = after_continuations(offset.min(block.len()));
    if start > first && start - first >= min_len {
        out.push(block[first..start].to_vec());
    }
    while start < block.len() {
        let mut end = (start + seq_len).min(block.len());
        if end < block.len() {
            let mut cut = end;
            while cut > start && is_continuation(block[cut]) {
                cut -= 1;
            }
            if cut > start {
                end = cut;
            }
        }
        if end - start >= min_len {
            out.push(block[start..end].to_vec());
        }
        start = end;
    }
}

fn is_continuation(b: u8) -> bool {
    b & 0b1100_0000 == 0b1000_0000
}

/// Shortest window kept: shorter file tails carry too little context to learn from.
pub fn min_window_len(seq_len: usize) -> usize {
    (seq_len / 8).clamp(1, 32)
}

/// Every window of one part of a corpus, in file order, offset 0 (evaluation sets).
pub fn windows(
    corpus: &Corpus,
    split: Split,
    part: Part,
    seq_len: usize,
    max_windows: usize,
) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut block = Vec::new();
    'files: for path in corpus.files() {
        let mut reader = BlockReader::open(path)?;
        while let Some(index) = reader.next_block(&mut block)? {
            if split.wants(part, path, index) {
                cut_windows(&block, 0, seq_len, min_window_len(seq_len), &mut out);
                if out.len() >= max_windows {
                    out.truncate(max_windows);
                    break 'files;
                }
            }
        }
    }
    Ok(out)
}

/// The endless, shuffled stream of training windows.
pub struct TrainStream {
    corpus: Corpus,
    split: Split,
    seq_len: usize,
    seed: u64,
    epoch: u64,
    file_order: Vec<usize>,
    next_file: usize,
    reader: Option<BlockReader>,
    block: Vec<u8>,
    pending: Vec<Vec<u8>>,
    buffer: Vec<Vec<u8>>,
    buffer_size: usize,
    rng: ChaCha8Rng,
    /// Windows handed out so far (what a resumed run skips).
    consumed: u64,
    /// Windows produced in the current epoch, to detect an empty training part.
    produced_this_epoch: u64,
}

impl TrainStream {
    /// The training part of `corpus` under `split`, as windows of at most `seq_len` bytes
    /// shuffled through a buffer of `buffer_size` windows (at least 1), every random choice drawn
    /// from `seed`. Nothing is read until the first window.
    pub fn new(corpus: Corpus, split: Split, seq_len: usize, buffer_size: usize, seed: u64) -> Self {
        let mut stream = Self {
            corpus,
            split,
            seq_len,
            seed,
            epoch: 0,
            file_order: Vec::new(),
            next_file: 0,
            reader: None,
            block: Vec::new(),
            pending: Vec::new(),
            buffer: Vec::new(),
            buffer_size: buffer_size.max(1),
            rng: ChaCha8Rng::seed_from_u64(splitmix64(seed ^ 0x5eed)),
            consumed: 0,
            produced_this_epoch: 0,
        };
        stream.start_epoch(0);
        stream
    }

    /// The pass over the training text being read, from 0 (reading runs ahead of the windows
    /// handed out, by the shuffle buffer and the current block).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Windows handed out so far: what [`crate::checkpoint::Progress::windows`] records and a
    /// resumed run skips.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    fn start_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.file_order = (0..self.corpus.files.len()).collect();
        self.file_order.shuffle(&mut ChaCha8Rng::seed_from_u64(splitmix64(
            self.seed ^ splitmix64(epoch),
        )));
        self.next_file = 0;
        self.produced_this_epoch = 0;
    }

    /// Produces the next unshuffled window into `pending`; false when the epoch is over.
    fn refill_pending(&mut self) -> Result<bool> {
        while self.pending.is_empty() {
            if self.reader.is_none() {
                if self.next_file == self.file_order.len() {
                    return Ok(false);
                }
                let path = &self.corpus.files[self.file_order[self.next_file]];
                self.next_file += 1;
                self.reader = Some(BlockReader::open(path)?);
            }
            let reader = self.reader.as_mut().expect("reader set above");
            match reader.next_block(&mut self.block)? {
                None => self.reader = None,
                Some(index) => {
                    if self.split.wants(Part::Train, &reader.path, index) {
                        // Later epochs start a block's windows at a random offset, so that
                        // they end elsewhere than the epoch before; the text before the offset
                        // is a window of its own. A block no longer than a window stays one
                        // window (an offset would only split it; it once cut its start off,
                        // and all of it when fewer than the shortest window's bytes were left,
                        // leaving a corpus of short files without text).
                        let offset = match self.epoch {
                            0 => 0,
                            _ => self.rng.random_range(0..self.seq_len),
                        };
                        let offset = if self.block.len() <= self.seq_len {
                            0
                        } else {
                            offset
                        };
                        cut_windows(
                            &self.block,
                            offset,
                            self.seq_len,
                            min_window_len(self.seq_len),
                            &mut self.pending,
                        );
                        self.pending.reverse(); // popped from the back in order
                    }
                }
            }
        }
        Ok(true)
    }

    /// The next training window.
    pub fn next_window(&mut self) -> Result<Vec<u8>> {
        while self.buffer.len() < self.buffer_size {
            if self.refill_pending()? {
                self.buffer.push(self.pending.pop().expect("refilled"));
                self.produced_this_epoch += 1;
            } else if self.produced_this_epoch == 0 {
                return Err(Error::Corpus(format!(
                    "no training text: every block is held out or shorter than {} bytes",
                    min_window_len(self.seq_len)
                )));
            } else {
                // A buffer larger than an epoch would read the corpus again and again to fill
                // up: it holds one epoch's windows instead.
                let epoch_windows = self.produced_this_epoch as usize;
                self.buffer_size = self.buffer_size.min(epoch_windows.max(1));
                self.start_epoch(self.epoch + 1);
            }
        }
        let pick = self.rng.random_range(0..self.buffer.len());
        self.consumed += 1;
        Ok(self.buffer.swap_remove(pick))
    }

    /// Skips `n` windows exactly as if they had been trained on (for `--resume`).
    pub fn skip(&mut self, n: u64) -> Result<()> {
        for _ in 0..n {
            self.next_window()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn windows_end_on_character_boundaries_and_cover_the_text() {
        let text = "héllo wörld — ünïcode ".repeat(50);
        let mut out = Vec::new();
        cut_windows(text.as_bytes(), 0, 16, 1, &mut out);
        let joined: Vec<u8> = out.concat();
        assert_eq!(joined, text.as_bytes());
        for w in &out {
            assert!(w.len() <= 16);
            assert!(std::str::from_utf8(w).is_ok(), "window {w:?} splits a character");
        }
    }

    #[test]
    fn discover_finds_files_dirs_and_globs_and_rejects_nothing_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let a = write(dir.path(), "a.txt", "aaa");
        let b = write(&dir.path().join("sub"), "b.txt", "bbb");
        write(dir.path(), ".hidden", "x");
        let c = Corpus::discover(&[dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(c.files(), &[a.clone(), b.clone()]);
        let pattern = format!("{}/*.txt", dir.path().display());
        assert_eq!(Corpus::discover(&[pattern]).unwrap().files(), &[a]);
        assert!(Corpus::discover(&[format!("{}/*.md", dir.path().display())]).is_err());
        assert!(Corpus::discover(&["/no/such/file"]).is_err());
    }

    /// Links back up the tree used to be followed forever (two of them: a walk that never ended,
    /// its memory growing) or their files counted again and again (one).
    /// A file named through a link keeps the link's name when its spec is made absolute: a
    /// labelled file's format is told by its extension, and the blob a link names (the Hugging
    /// Face cache, git-annex) has none.
    #[cfg(unix)]
    #[test]
    fn an_absolute_spec_keeps_a_linked_files_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("blobs/9f2c1ab"), "text,label\nhi,a\n").unwrap();
        let link = dir.path().join("train.csv");
        std::os::unix::fs::symlink("blobs/9f2c1ab", &link).unwrap();
        let specs = absolute_specs(&[link.to_str().unwrap().to_string()]).unwrap();
        let real = dir.path().canonicalize().unwrap();
        assert_eq!(specs, [real.join("train.csv").to_str().unwrap()]);
        // A directory is its real path.
        let specs = absolute_specs(&[dir.path().join("blobs/../blobs").to_str().unwrap().to_string()]);
        assert_eq!(specs.unwrap(), [real.join("blobs").to_str().unwrap()]);
    }

    #[cfg(unix)]
    #[test]
    fn symlink_loops_end_and_no_file_is_counted_twice() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("loop");
        std::fs::create_dir(&root).unwrap();
        let text = write(&root, "c.txt", "some text");
        symlink(".", root.join("a")).unwrap();
        symlink(".", root.join("b")).unwrap();
        symlink("c.txt", root.join("d.txt")).unwrap();
        // A linked folder is still part of the corpus.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let other = write(&elsewhere, "e.txt", "more text");
        symlink(&elsewhere, root.join("linked")).unwrap();
        let corpus = Corpus::discover(&[root.to_str().unwrap()]).unwrap();
        assert_eq!(corpus.files(), &[text.clone(), root.join("linked/e.txt")]);
        // Named twice, by a link and by its real path: once.
        let both = [
            root.to_str().unwrap(),
            elsewhere.to_str().unwrap(),
            other.to_str().unwrap(),
        ];
        assert_eq!(Corpus::discover(&both).unwrap().files().len(), 2);
    }

    /// A device or FIFO was reported as "no such file or directory".
    #[cfg(unix)]
    #[test]
    fn special_files_are_named_as_such() {
        let message = |spec: &str| Corpus::discover(&[spec]).unwrap_err().to_string();
        assert_eq!(
            message("/dev/zero"),
            "corpus: /dev/zero: exists but is neither a regular file nor a directory"
        );
        let dir = tempfile::tempdir().unwrap();
        let dangling = dir.path().join("gone");
        std::os::unix::fs::symlink(dir.path().join("nothing"), &dangling).unwrap();
        assert!(message(dangling.to_str().unwrap()).contains("a symbolic link to nothing"));
        assert!(message("/no/such/file").contains("no such file or directory"));
    }

    #[test]
    fn split_is_disjoint_deterministic_and_near_the_fraction() {
        let split = Split {
            eval_fraction: 0.1,
            seed: 5,
        };
        let path = Path::new("corpus/a.txt");
        let held: Vec<bool> = (0..10_000).map(|b| split.is_eval(path, b)).collect();
        let again: Vec<bool> = (0..10_000).map(|b| split.is_eval(path, b)).collect();
        assert_eq!(held, again);
        let share = held.iter().filter(|&&h| h).count() as f64 / 10_000.0;
        assert!((share - 0.1).abs() < 0.02, "{share}");
        for b in 0..100 {
            assert_ne!(
                split.wants(Part::Train, path, b),
                split.wants(Part::Eval, path, b)
            );
        }
    }

    #[test]
    fn stream_is_deterministic_endless_and_skip_resumes_exactly() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.txt", &"alpha beta gamma delta ".repeat(40));
        write(dir.path(), "b.txt", &"one two three four five ".repeat(30));
        let corpus = Corpus::discover(&[dir.path().to_str().unwrap()]).unwrap();
        let make = || TrainStream::new(corpus.clone(), Split::NONE, 32, 8, 42);
        let mut first = make();
        let run: Vec<Vec<u8>> = (0..200).map(|_| first.next_window().unwrap()).collect();
        assert!(first.epoch() >= 2, "200 windows of a ~1.7 KB corpus span epochs");
        let mut second = make();
        assert_eq!(
            run,
            (0..200)
                .map(|_| second.next_window().unwrap())
                .collect::<Vec<_>>()
        );
        let mut resumed = make();
        resumed.skip(120).unwrap();
        assert_eq!(
            &run[120..],
            (120..200)
                .map(|_| resumed.next_window().unwrap())
                .collect::<Vec<_>>()
        );
    }

    /// A buffer of a million windows over a ~1.7 KB corpus: the stream holds one epoch and serves
    /// from it (instead of reading epoch after epoch to fill the buffer), and both files are mixed
    /// from the first windows on.
    #[test]
    fn a_buffer_larger_than_the_corpus_serves_from_one_epoch() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.txt", &"alpha beta gamma delta ".repeat(40));
        write(dir.path(), "b.txt", &"one two three four five ".repeat(30));
        let corpus = Corpus::discover(&[dir.path().to_str().unwrap()]).unwrap();
        let mut stream = TrainStream::new(corpus, Split::NONE, 32, 1 << 20, 42);
        let first: Vec<Vec<u8>> = (0..20).map(|_| stream.next_window().unwrap()).collect();
        assert!(
            stream.epoch() <= 2,
            "read {} epochs to serve 20 windows",
            stream.epoch()
        );
        // Only a.txt has an 'a'.
        let from_a = first.iter().filter(|w| w.contains(&b'a')).count();
        assert!(
            from_a > 0 && from_a < first.len(),
            "the first 20 windows come from one file"
        );
    }

    /// The text before a later epoch's random offset is a window too (it was once dropped: the
    /// start of every file a little longer than a window went untrained after the first epoch).
    #[test]
    fn an_offset_keeps_the_text_before_it() {
        let block: Vec<u8> = (0..100u8).map(|i| b'a' + i % 26).collect();
        let mut out = Vec::new();
        cut_windows(&block, 30, 64, 8, &mut out);
        assert_eq!(
            out,
            [block[..30].to_vec(), block[30..94].to_vec()],
            "the 6-byte tail is dropped"
        );
        // Too short a head is dropped as a tail is; offset 0 has none.
        out.clear();
        cut_windows(&block, 5, 64, 8, &mut out);
        assert_eq!(out, [block[5..69].to_vec(), block[69..].to_vec()]);
        out.clear();
        cut_windows(&block, 0, 64, 8, &mut out);
        assert_eq!(out, [block[..64].to_vec(), block[64..].to_vec()]);
        // A head never starts inside a character the block before began.
        let text = "\u{e9}abcdefghijklmnopqrstuvwxyz".as_bytes();
        out.clear();
        cut_windows(&text[1..], 12, 16, 4, &mut out);
        assert_eq!(out[0], &text[2..13]);
    }

    /// Later epochs start each block at a random offset; a file shorter than a window used to
    /// lose its start to it, or all of itself (a corpus of short texts then had no training text
    /// after the first epoch, or trained on their tails).
    #[test]
    fn short_files_stay_whole_in_every_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let texts: Vec<String> = (0..5).map(|i| format!("text number {i}, a short one")).collect();
        for (i, text) in texts.iter().enumerate() {
            write(dir.path(), &format!("{i}.txt"), text);
        }
        let corpus = Corpus::discover(&[dir.path().to_str().unwrap()]).unwrap();
        let mut stream = TrainStream::new(corpus, Split::NONE, 64, 2, 7);
        let mut seen: Vec<Vec<u8>> = (0..100).map(|_| stream.next_window().unwrap()).collect();
        assert!(stream.epoch() >= 10, "epoch {}", stream.epoch());
        seen.sort();
        seen.dedup();
        let mut whole: Vec<Vec<u8>> = texts.iter().map(|t| t.as_bytes().to_vec()).collect();
        whole.sort();
        assert_eq!(seen, whole);
    }

    #[test]
    fn a_corpus_with_nothing_to_train_on_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.txt", "ab");
        let corpus = Corpus::discover(&[dir.path().to_str().unwrap()]).unwrap();
        let mut stream = TrainStream::new(corpus, Split::NONE, 512, 8, 1);
        assert!(matches!(stream.next_window(), Err(Error::Corpus(_))));
    }
}
