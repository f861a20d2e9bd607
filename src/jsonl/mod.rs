//! The line formats, below the engine and the results, which both read them: splitting a
//! byte stream into lines with a cap on what one line may hold (here), JSON made one line
//! (`compact`), an accepted input line read back (`input`), and the stored result groups
//! (`group`).

mod compact;
pub mod group;
mod input;

pub use compact::{compact, compact_json};
pub use input::{queued, ValidLine};

/// A line longer than the cap: its bytes were counted, not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong {
    /// How many bytes the line had (at least).
    pub bytes: usize,
    /// The cap it exceeded.
    pub limit: usize,
}

/// A line as the splitter hands it over (without its `\n` or `\r\n`).
pub type Piece<'a> = Result<&'a [u8], TooLong>;

/// Splits a byte stream into lines without holding more than the current line — and never more
/// than `max_line_bytes` (plus a `\r`) of it: past the cap, a line's bytes are only counted,
/// so one giant line costs no memory, only a `TooLong`.
pub struct LineSplitter {
    carry: Vec<u8>,
    max_line_bytes: usize,
    /// The length so far of a line that already exceeds the cap.
    overflow: Option<usize>,
}

impl Default for LineSplitter {
    /// No cap, so no piece is ever `TooLong`: for reading back content that validation has
    /// accepted (every line within the cap) and that is in memory already.
    fn default() -> Self {
        Self::new(usize::MAX - 1)
    }
}

impl LineSplitter {
    pub fn new(max_line_bytes: usize) -> Self {
        Self {
            carry: Vec::new(),
            max_line_bytes,
            overflow: None,
        }
    }

    /// Calls `f` with each complete line.
    pub fn feed(&mut self, data: &[u8], mut f: impl FnMut(Piece<'_>)) {
        self.feed_at(data, |piece, _| f(piece));
    }

    /// Like `feed`, also telling where in `data` each line ends (just after its `\n`).
    pub fn feed_at(&mut self, data: &[u8], mut f: impl FnMut(Piece<'_>, usize)) {
        let mut rest = 0;
        while let Some(nl) = data[rest..].iter().position(|&b| b == b'\n') {
            let end = rest + nl;
            let tail = &data[rest..end];
            if let Some(n) = self.overflow.take() {
                f(Err(self.too_long(n + tail.len())), end + 1);
            } else if self.carry.is_empty() {
                f(self.judge(trim_cr(tail)), end + 1);
            } else if self.carry.len() + tail.len() > self.max_line_bytes + 1 {
                let n = self.carry.len() + tail.len();
                self.carry = Vec::new();
                f(Err(self.too_long(n)), end + 1);
            } else {
                self.carry.extend_from_slice(tail);
                f(self.judge(trim_cr(&self.carry)), end + 1);
                self.carry.clear();
            }
            rest = end + 1;
        }
        self.keep(&data[rest..]);
    }

    /// The last line when the file does not end with a newline.
    pub fn finish(self, mut f: impl FnMut(Piece<'_>)) {
        if let Some(n) = self.overflow {
            f(Err(self.too_long(n)));
        } else if !self.carry.is_empty() {
            f(self.judge(trim_cr(&self.carry)));
        }
    }

    /// Holds the start of a line that continues in the next part, up to the cap (+1 for a
    /// `\r`); past it, only counts.
    fn keep(&mut self, tail: &[u8]) {
        if tail.is_empty() {
            return;
        }
        if let Some(n) = &mut self.overflow {
            *n += tail.len();
            return;
        }
        let want = self.carry.len() + tail.len();
        let cap = self.max_line_bytes + 1;
        if want > cap {
            self.overflow = Some(want);
            // Give the memory back: nothing more of this line is kept.
            self.carry = Vec::new();
            return;
        }
        if want > self.carry.capacity() {
            // Grow by doubling, as `Vec` would, but never past the cap.
            let target = want.max(self.carry.capacity().saturating_mul(2)).min(cap);
            self.carry.reserve_exact(target - self.carry.len());
        }
        self.carry.extend_from_slice(tail);
    }

    fn judge<'a>(&self, line: &'a [u8]) -> Piece<'a> {
        if line.len() > self.max_line_bytes {
            Err(self.too_long(line.len()))
        } else {
            Ok(line)
        }
    }

    fn too_long(&self, bytes: usize) -> TooLong {
        TooLong {
            bytes,
            limit: self.max_line_bytes,
        }
    }

    /// The bytes held for the current line (for tests of the bound).
    pub fn held(&self) -> usize {
        self.carry.capacity()
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_handles_any_chunking_and_crlf() {
        let text = b"a\r\nbb\n\nccc";
        for cut in 0..=text.len() {
            let mut lines = Vec::new();
            let mut s = LineSplitter::default();
            s.feed(&text[..cut], |l| lines.push(l.unwrap().to_vec()));
            s.feed(&text[cut..], |l| lines.push(l.unwrap().to_vec()));
            s.finish(|l| lines.push(l.unwrap().to_vec()));
            assert_eq!(
                lines,
                vec![b"a".to_vec(), b"bb".to_vec(), b"".to_vec(), b"ccc".to_vec()]
            );
        }
    }

    /// What a splitter capped at `max` makes of `text` fed in parts of `part` bytes, with the
    /// most it ever held.
    fn split_capped(text: &[u8], part: usize, max: usize) -> (Vec<Result<String, usize>>, usize) {
        let mut out = Vec::new();
        let mut s = LineSplitter::new(max);
        let mut held = 0;
        let mut push = |p: Piece<'_>| {
            out.push(
                p.map(|l| String::from_utf8(l.to_vec()).unwrap())
                    .map_err(|t| t.bytes),
            )
        };
        for c in text.chunks(part.max(1)) {
            s.feed(c, &mut push);
            held = held.max(s.held());
        }
        s.finish(&mut push);
        (out, held)
    }

    #[test]
    fn a_line_over_the_cap_is_counted_not_kept() {
        let text = b"abcd\r\nabcde\nabc\r\n0123456789\nxyz";
        for part in 1..=text.len() {
            let (lines, held) = split_capped(text, part, 4);
            assert_eq!(
                lines,
                vec![
                    Ok("abcd".to_owned()),
                    Err(5),
                    Ok("abc".to_owned()),
                    Err(10),
                    Ok("xyz".to_owned())
                ],
                "parts of {part}"
            );
            // The cap plus one byte for a `\r` (or `Vec`'s smallest allocation, 8 bytes).
            assert!(held <= 8, "parts of {part}: held {held}");
        }
        // A giant line fed in big parts: nothing of it is held.
        let giant = vec![b'1'; 4 << 20];
        let (lines, held) = split_capped(&giant, 64 << 10, 1024);
        assert_eq!(lines, vec![Err(4 << 20)]);
        assert!(held <= 1025, "held {held}");
        // An unfinished giant line at the end.
        let (lines, _) = split_capped(b"ok\n0123456789", 3, 4);
        assert_eq!(lines, vec![Ok("ok".to_owned()), Err(10)]);
    }
}
