//! [`Lines`]: a buffer of 32-bit lanes that starts on a cache line.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Lanes in a 64-byte cache line.
const LINE_LANES: usize = 16;

/// A zeroed buffer of `u32` lanes whose first lane starts on a 64-byte cache line, read as a
/// slice. The packed bf16 operands live in it: an AMX tile load reads 64-byte rows, and a row
/// that straddles two lines costs two (it halves the tiles' speed), as does a 64-byte vector
/// load. A `Vec`'s own allocation is only aligned for its element type.
pub(crate) struct Lines {
    buf: Vec<u32>,
    offset: usize,
    len: usize,
}

impl Lines {
    /// `len` zero lanes.
    pub(crate) fn zeroed(len: usize) -> Self {
        Self::from_rows(1, len, false, |_, _| {})
    }

    /// `rows` rows of `lda` lanes, each zeroed and then handed to `fill` with its index, on
    /// the pool when `parallel`. Each row is zeroed just before it is filled, while it is in
    /// cache, where a zeroed buffer would cost a whole pass over memory first.
    pub(crate) fn from_rows(
        rows: usize,
        lda: usize,
        parallel: bool,
        fill: impl Fn(usize, &mut [u32]) + Sync,
    ) -> Self {
        let zero_then_fill = |_: &mut (), r: usize, lanes: &mut [MaybeUninit<u32>]| {
            lanes.iter_mut().for_each(|lane| {
                lane.write(0);
            });
            // SAFETY: every lane of the row was just written.
            fill(r, unsafe {
                &mut *(lanes as *mut [MaybeUninit<u32>] as *mut [u32])
            });
        };
        // SAFETY: `zero_then_fill` writes every lane of its row.
        unsafe { Self::from_uninit_rows(rows, lda, parallel, || (), zero_then_fill) }
    }

    /// `rows` rows of `lda` lanes, each handed to `fill` unwritten, with its index and a
    /// scratch value made by `init` (once per task of the pool when `parallel`): for rows that
    /// are written whole anyway, where zeroing them first is a pass of stores for nothing.
    ///
    /// # Safety
    /// `fill` must write every lane of the row it is handed.
    pub(crate) unsafe fn from_uninit_rows<S>(
        rows: usize,
        lda: usize,
        parallel: bool,
        init: impl Fn() -> S + Sync + Send,
        fill: impl Fn(&mut S, usize, &mut [MaybeUninit<u32>]) + Sync,
    ) -> Self {
        let write = |body: &mut [MaybeUninit<u32>]| {
            if body.is_empty() {
                return;
            }
            if parallel {
                body.par_chunks_mut(lda)
                    .enumerate()
                    .for_each_init(&init, |scratch, (r, lanes)| fill(scratch, r, lanes));
            } else {
                let mut scratch = init();
                for (r, lanes) in body.chunks_mut(lda).enumerate() {
                    fill(&mut scratch, r, lanes);
                }
            }
        };
        // SAFETY: `fill` writes every lane of every row (the caller's promise).
        unsafe { Self::from_writes(rows * lda, write) }
    }

    /// `len` lanes, handed to `write` unwritten.
    ///
    /// # Safety
    /// `write` must write every lane it is handed.
    pub(crate) unsafe fn from_writes(len: usize, write: impl FnOnce(&mut [MaybeUninit<u32>])) -> Self {
        let mut buf: Vec<u32> = Vec::with_capacity(len + LINE_LANES - 1);
        let offset = match buf.as_ptr().align_offset(4 * LINE_LANES) {
            offset if offset < LINE_LANES => offset,
            _ => 0,
        };
        let spare = &mut buf.spare_capacity_mut()[..len + LINE_LANES - 1];
        let (head, rest) = spare.split_at_mut(offset);
        let (body, tail) = rest.split_at_mut(len);
        head.iter_mut().chain(tail.iter_mut()).for_each(|lane| {
            lane.write(0);
        });
        write(body);
        // SAFETY: the head and the tail were written, and the body by `write` (the caller's
        // promise): all len + 15 lanes.
        unsafe { buf.set_len(len + LINE_LANES - 1) };
        Self { buf, offset, len }
    }

    /// The lanes as twice as many 16-bit halves, a lane's low half first (little-endian), to
    /// write bf16 values into.
    ///
    /// # Safety
    /// Every half written must be initialised (the lanes are read as `u32` after).
    pub(crate) unsafe fn halves_mut(&mut self) -> &mut [MaybeUninit<u16>] {
        let lanes: &mut [u32] = self;
        // SAFETY: a u32 slice read as twice as many u16 (alignment 4 ≥ 2), exclusively
        // borrowed; the caller writes only initialised halves.
        unsafe { std::slice::from_raw_parts_mut(lanes.as_mut_ptr().cast(), 2 * lanes.len()) }
    }
}

impl std::ops::Deref for Lines {
    type Target = [u32];

    fn deref(&self) -> &[u32] {
        &self.buf[self.offset..self.offset + self.len]
    }
}

impl std::ops::DerefMut for Lines {
    fn deref_mut(&mut self) -> &mut [u32] {
        &mut self.buf[self.offset..self.offset + self.len]
    }
}

/// A clone is aligned anew: the copy's allocation has its own offset to a line.
impl Clone for Lines {
    fn clone(&self) -> Self {
        let mut copy = Self::zeroed(self.len);
        copy.copy_from_slice(self);
        copy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_start_on_a_line_and_clones_too() {
        for len in [0, 1, 15, 16, 17, 1000] {
            let mut lines = Lines::zeroed(len);
            assert_eq!(lines.len(), len);
            assert!(lines.iter().all(|&v| v == 0));
            assert_eq!(lines.as_ptr() as usize % 64, 0, "{len} lanes");
            lines.iter_mut().enumerate().for_each(|(i, v)| *v = i as u32);
            let copy = lines.clone();
            assert_eq!(copy.as_ptr() as usize % 64, 0);
            assert_eq!(*copy, *lines);
        }
    }

    #[test]
    fn rows_are_zeroed_then_filled() {
        for (rows, lda, parallel) in [
            (0, 5, true),
            (3, 0, false),
            (1, 1, false),
            (7, 19, true),
            (40, 16, false),
        ] {
            let lines = Lines::from_rows(rows, lda, parallel, |r, row| {
                assert!(row.iter().all(|&v| v == 0), "row {r} handed out unzeroed");
                row[..lda / 2].iter_mut().for_each(|v| *v = r as u32 + 1);
            });
            assert_eq!(lines.len(), rows * lda);
            assert_eq!(lines.as_ptr() as usize % 64, 0);
            for (i, &v) in lines.iter().enumerate() {
                let (r, lane) = (i / lda, i % lda);
                assert_eq!(
                    v,
                    if lane < lda / 2 { r as u32 + 1 } else { 0 },
                    "{rows}x{lda} at {r},{lane}"
                );
            }
        }
    }
}
