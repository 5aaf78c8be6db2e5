//! [`Lines`]: a buffer of 32-bit lanes that starts on a cache line.

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
        let buf = vec![0u32; len + LINE_LANES - 1];
        let offset = match buf.as_ptr().align_offset(4 * LINE_LANES) {
            offset if offset < LINE_LANES => offset,
            _ => 0,
        };
        Self { buf, offset, len }
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
}
