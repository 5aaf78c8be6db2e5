//! A bound on the work of reading a `pytorch_model.bin`'s pickle, checked before candle reads it.
//!
//! candle's pickle reader copies a memoised object in full at every reference to it (`BINGET`)
//! and at every memoisation (`BINPUT`). A pickle of a few hundred bytes that memoises a pair of
//! references to the previous pair doubles its size with each step: 64 steps ask for 2⁶⁴ copies,
//! and the reader runs out of memory (the process aborts) instead of failing. This pass runs the
//! same opcodes as candle's reader, keeping only each object's size, and refuses a pickle whose
//! copies would exceed [`MAX_PICKLE_UNITS`]. Anything else it does not understand (an unknown
//! opcode, a truncated stream) it leaves to candle, which reports it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::error::{Error, Result};

/// The most objects (counting a string's bytes as objects too) that reading one file's pickles
/// may create. `torch.save` of a state dict costs a few hundred a tensor (memoised names and
/// classes, fetched again), so the 201M model's 457 tensors cost some hundred thousand; 2²⁴ is
/// far above that and holds at most about a gigabyte of candle's objects.
pub const MAX_PICKLE_UNITS: u64 = 1 << 24;

/// Errors unless every `*data.pkl` in the zip archive at `path` stays within
/// [`MAX_PICKLE_UNITS`] together. Files that are not such archives pass: candle reports them.
pub(crate) fn check(path: &Path) -> Result<()> {
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(());
    };
    let Ok(mut zip) = zip::ZipArchive::new(BufReader::new(file)) else {
        return Ok(());
    };
    let names: Vec<String> = zip
        .file_names()
        .filter(|name| name.ends_with("data.pkl"))
        .map(str::to_string)
        .collect();
    let mut units = 0u64;
    for name in names {
        let Ok(entry) = zip.by_name(&name) else {
            return Ok(());
        };
        if scan(&mut BufReader::new(entry), &mut units).is_err() {
            return Err(Error::CorruptWeights {
                path: path.to_path_buf(),
                reason: format!(
                    "its pickle {name} would make more than {MAX_PICKLE_UNITS} objects \
                     (memoised objects referenced over and over)"
                ),
            });
        }
    }
    Ok(())
}

/// Over the budget.
#[derive(Debug)]
struct TooLarge;

/// One stack entry: a pickle MARK, or an object of this many units.
#[derive(Clone, Copy, PartialEq)]
enum Item {
    Mark,
    Object(u64),
}

/// Runs one pickle's opcodes on sizes, adding what it creates to `units`; `Err` once that passes
/// [`MAX_PICKLE_UNITS`]. Stops quietly (`Ok`) where candle's reader would fail.
fn scan(r: &mut impl BufRead, units: &mut u64) -> Result<(), TooLarge> {
    let mut stack: Vec<Item> = Vec::new();
    let mut memo: HashMap<u32, u64> = HashMap::new();
    let mut spend = |n: u64| {
        *units = units.saturating_add(n);
        if *units > MAX_PICKLE_UNITS {
            Err(TooLarge)
        } else {
            Ok(n)
        }
    };
    // Where candle's reader would fail, this one stops: malformed input is candle's to report.
    macro_rules! or_stop {
        ($e:expr) => {
            match $e {
                Some(v) => v,
                None => return Ok(()),
            }
        };
    }
    let pop = |stack: &mut Vec<Item>| match stack.pop() {
        Some(Item::Object(n)) => Some(n),
        _ => None,
    };
    let pop_to_mark = |stack: &mut Vec<Item>| {
        let mark = stack.iter().rposition(|i| *i == Item::Mark)?;
        let sum = stack[mark + 1..]
            .iter()
            .map(|i| match i {
                Item::Object(n) => *n,
                Item::Mark => 0,
            })
            .fold(0u64, u64::saturating_add);
        stack.truncate(mark);
        Some(sum)
    };
    loop {
        let op = or_stop!(read_bytes::<1>(r))[0];
        match op {
            0x80 => {
                // PROTO: the version byte.
                or_stop!(read_bytes::<1>(r));
            }
            b'c' => {
                // GLOBAL: module and class names, one line each.
                let len = or_stop!(skip_line(r)).saturating_add(or_stop!(skip_line(r)));
                stack.push(Item::Object(spend(1 + len)?));
            }
            b'K' => push_after(r, &mut stack, 1, &mut spend)?,
            b'M' => push_after(r, &mut stack, 2, &mut spend)?,
            b'J' => push_after(r, &mut stack, 4, &mut spend)?,
            b'G' => push_after(r, &mut stack, 8, &mut spend)?,
            0x8a => {
                // LONG1: a length byte, then that many bytes.
                let n = or_stop!(read_bytes::<1>(r))[0];
                push_after(r, &mut stack, u64::from(n), &mut spend)?;
            }
            b'X' => {
                // BINUNICODE: a u32 length, then the bytes.
                let len = u32::from_le_bytes(or_stop!(read_bytes::<4>(r)));
                push_after(r, &mut stack, u64::from(len), &mut spend)?;
            }
            b'N' | 0x88 | 0x89 | b'}' | b'd' | b')' | b']' => stack.push(Item::Object(spend(1)?)),
            b'(' => stack.push(Item::Mark),
            b'Q' | 0x85 => {
                // BINPERSID, TUPLE1: one object wrapped.
                let a = or_stop!(pop(&mut stack));
                stack.push(Item::Object(spend(1)?.saturating_add(a)));
            }
            0x86 | b'R' | b'b' | 0x81 => {
                // TUPLE2, REDUCE, BUILD, NEWOBJ: two objects combined.
                let b = or_stop!(pop(&mut stack));
                let a = or_stop!(pop(&mut stack));
                stack.push(Item::Object(spend(1)?.saturating_add(a).saturating_add(b)));
            }
            0x87 => {
                let c = or_stop!(pop(&mut stack));
                let b = or_stop!(pop(&mut stack));
                let a = or_stop!(pop(&mut stack));
                let n = a.saturating_add(b).saturating_add(c);
                stack.push(Item::Object(spend(1)?.saturating_add(n)));
            }
            b't' => {
                let n = or_stop!(pop_to_mark(&mut stack));
                stack.push(Item::Object(spend(1)?.saturating_add(n)));
            }
            b'a' | b's' | b'e' | b'u' => {
                // APPEND, SETITEM, APPENDS, SETITEMS: into the container below.
                let added = match op {
                    b'a' => or_stop!(pop(&mut stack)),
                    b's' => {
                        let value = or_stop!(pop(&mut stack));
                        or_stop!(pop(&mut stack)).saturating_add(value)
                    }
                    _ => or_stop!(pop_to_mark(&mut stack)),
                };
                match stack.last_mut() {
                    Some(Item::Object(n)) => *n = n.saturating_add(added),
                    _ => return Ok(()),
                }
            }
            b'h' | b'j' => {
                // BINGET, LONG_BINGET: a full copy of the memoised object.
                let id = if op == b'h' {
                    u32::from(or_stop!(read_bytes::<1>(r))[0])
                } else {
                    u32::from_le_bytes(or_stop!(read_bytes::<4>(r)))
                };
                let n = *or_stop!(memo.get(&id));
                stack.push(Item::Object(spend(n)?));
            }
            b'q' | b'r' => {
                // BINPUT, LONG_BINPUT: a full copy of the top object into the memo.
                let id = if op == b'q' {
                    u32::from(or_stop!(read_bytes::<1>(r))[0])
                } else {
                    u32::from_le_bytes(or_stop!(read_bytes::<4>(r)))
                };
                let Some(Item::Object(n)) = stack.last().copied() else {
                    return Ok(());
                };
                memo.insert(id, spend(n)?);
            }
            b'.' => return Ok(()),
            _ => return Ok(()),
        }
    }
}

/// Skips `n` argument bytes, then pushes a scalar of one unit plus the bytes skipped (a
/// string's). A short read is left to candle: the next read stops the scan.
fn push_after(
    r: &mut impl BufRead,
    stack: &mut Vec<Item>,
    n: u64,
    spend: &mut impl FnMut(u64) -> Result<u64, TooLarge>,
) -> Result<(), TooLarge> {
    let skipped = std::io::copy(&mut r.take(n), &mut std::io::sink()).unwrap_or(0);
    stack.push(Item::Object(spend(1 + skipped)?));
    Ok(())
}

fn read_bytes<const N: usize>(r: &mut impl BufRead) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    r.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// Skips to past the next newline; the bytes skipped, or `None` at the end of the stream.
fn skip_line(r: &mut impl BufRead) -> Option<u64> {
    let mut skipped = 0u64;
    loop {
        let buf = r.fill_buf().ok()?;
        if buf.is_empty() {
            return None;
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                return Some(skipped + i as u64);
            }
            None => {
                let n = buf.len();
                skipped += n as u64;
                r.consume(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(pickle: &[u8]) -> Result<u64, TooLarge> {
        let mut units = 0;
        scan(&mut &pickle[..], &mut units)?;
        Ok(units)
    }

    /// `[]`, then `steps` times: the memo's object paired with itself, memoised again.
    fn bomb(steps: usize) -> Vec<u8> {
        let mut pickle = b"\x80\x02]q\x00".to_vec();
        for _ in 0..steps {
            pickle.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        pickle.push(b'.');
        pickle
    }

    #[test]
    fn a_doubling_memo_is_refused_and_a_short_one_counted() {
        // 10 doublings: about 2¹¹ objects copied three times over; fine.
        let small = units(&bomb(10)).unwrap();
        assert!((1 << 11..1 << 14).contains(&small), "{small}");
        // 64 doublings: refused within the budget's worth of scanning.
        assert!(units(&bomb(64)).is_err());
    }

    #[test]
    fn many_references_to_a_long_string_are_counted_by_its_bytes() {
        let mut pickle = b"\x80\x02X\x00\x00\x10\x00".to_vec(); // a 1 MiB string
        pickle.extend(std::iter::repeat_n(b'a', 1 << 20));
        pickle.extend_from_slice(b"q\x00");
        for _ in 0..8 {
            pickle.extend_from_slice(b"h\x00");
        }
        pickle.push(b'.');
        let n = units(&pickle).unwrap();
        assert!(n > 9 << 20, "{n}");
        for _ in 0..16 {
            pickle.insert(pickle.len() - 1, b'h');
            pickle.insert(pickle.len() - 1, 0);
        }
        assert!(units(&pickle).is_err());
    }

    #[test]
    fn malformed_pickles_are_left_to_candle() {
        for pickle in [
            &b""[..],
            b"\xff",
            b"h\x07.",
            b"\x86.",
            b"e.",
            b"X\xff\xff\xff\xff",
            b"c__torch__",
        ] {
            assert!(units(pickle).is_ok(), "{pickle:?}");
        }
    }

    #[test]
    fn the_fixture_checkpoint_passes() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/pytorch_bin/tiny_v_only/pytorch_model.bin");
        check(&path).unwrap();
        // And it is scanned, not skipped: every tensor costs some objects.
        let mut zip = zip::ZipArchive::new(BufReader::new(std::fs::File::open(&path).unwrap())).unwrap();
        let name = zip
            .file_names()
            .find(|n| n.ends_with("data.pkl"))
            .unwrap()
            .to_string();
        let mut n = 0;
        scan(&mut BufReader::new(zip.by_name(&name).unwrap()), &mut n).unwrap();
        let tensors = crate::checkpoint::expected_tensors(
            &crate::PerceiverConfig::from_file(&path.with_file_name("config.json")).unwrap(),
        )
        .unwrap()
        .len() as u64;
        assert!(
            (10 * tensors..1000 * tensors).contains(&n),
            "{n} units for {tensors} tensors"
        );
        eprintln!("{n} units for {tensors} tensors");
    }
}
