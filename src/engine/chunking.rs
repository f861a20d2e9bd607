//! Splits an input file into chunks while validation streams it: consecutive lines, cut after
//! `max_lines` requests or `max_bytes` bytes, addressed by byte position so that a worker
//! reads exactly its chunk's lines back from the file.

use crate::jsonl::{LineSplitter, Piece};
use crate::store::chunks::{NewChunk, Position};

pub struct ChunkPlanner {
    max_lines: i32,
    max_bytes: usize,
    /// The end of the content fed so far.
    fed: Position,
    /// Holds a line that continues into the next part, up to the line cap.
    splitter: LineSplitter,
    start: Position,
    lines: i32,
    bytes: usize,
    next_line: i32,
    pub chunks: Vec<NewChunk>,
}

impl ChunkPlanner {
    /// `max_line_bytes`: a longer line is handed over as `TooLong`, never held whole.
    pub fn new(max_lines: usize, max_bytes: usize, max_line_bytes: usize) -> Self {
        Self {
            max_lines: i32::try_from(max_lines.max(1)).unwrap_or(i32::MAX),
            max_bytes: max_bytes.max(1),
            fed: Position::default(),
            splitter: LineSplitter::new(max_line_bytes),
            start: Position::default(),
            lines: 0,
            bytes: 0,
            next_line: 0,
            chunks: Vec::new(),
        }
    }

    /// Feeds part `part` of the content (parts come in order); `f` sees each complete line
    /// without its line ending.
    pub fn feed(&mut self, part: i32, data: &[u8], mut f: impl FnMut(Piece<'_>)) {
        let mut splitter = std::mem::take(&mut self.splitter);
        splitter.feed_at(data, |piece, end| {
            let after = Position {
                part,
                offset: offset(end),
            };
            self.line(piece, after, &mut f);
        });
        self.splitter = splitter;
        self.fed = Position {
            part,
            offset: offset(data.len()),
        };
    }

    /// The last line (when the file does not end with a newline) and the last chunk.
    pub fn finish(&mut self, mut f: impl FnMut(Piece<'_>)) {
        let splitter = std::mem::take(&mut self.splitter);
        let fed = self.fed;
        splitter.finish(|piece| self.line(piece, fed, &mut f));
        if self.lines > 0 {
            self.cut(self.fed);
        }
    }

    fn line(&mut self, piece: Piece<'_>, after: Position, f: &mut impl FnMut(Piece<'_>)) {
        f(piece);
        match piece {
            Ok(raw) if raw.iter().all(u8::is_ascii_whitespace) => {
                self.bytes += raw.len() + 1;
                return;
            }
            Ok(raw) => self.bytes += raw.len() + 1,
            // Fails the batch; counted so that line numbers stay right.
            Err(t) => self.bytes += t.bytes + 1,
        }
        self.lines += 1;
        if self.lines >= self.max_lines || self.bytes >= self.max_bytes {
            self.cut(after);
        }
    }

    fn cut(&mut self, end: Position) {
        self.chunks.push(NewChunk {
            start: self.start,
            end,
            first_line: self.next_line,
            line_count: self.lines,
        });
        self.next_line += self.lines;
        self.start = end;
        self.lines = 0;
        self.bytes = 0;
    }
}

/// Parts are at most a few MiB, so an offset in one always fits.
fn offset(n: usize) -> i32 {
    i32::try_from(n).expect("a file part is smaller than 2 GiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a chunk back the way the store does, from the parts.
    fn read(parts: &[&[u8]], c: &NewChunk) -> Vec<u8> {
        let mut out = Vec::new();
        for p in c.start.part..=c.end.part {
            let data = parts[p as usize];
            let from = if p == c.start.part { c.start.offset } else { 0 } as usize;
            let to = if p == c.end.part {
                c.end.offset as usize
            } else {
                data.len()
            };
            out.extend_from_slice(&data[from..to]);
        }
        out
    }

    fn plan(parts: &[&[u8]], max_lines: usize, max_bytes: usize) -> (Vec<NewChunk>, Vec<String>) {
        let mut p = ChunkPlanner::new(max_lines, max_bytes, 1 << 20);
        let mut seen = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            p.feed(i as i32, part, |l| {
                seen.push(String::from_utf8(l.unwrap().to_vec()).unwrap())
            });
        }
        p.finish(|l| seen.push(String::from_utf8(l.unwrap().to_vec()).unwrap()));
        (p.chunks, seen)
    }

    #[test]
    fn chunks_cover_every_request_line_once_across_part_boundaries() {
        let text = b"a1\nb22\n\nc333\r\nd4\ne5";
        // Every way of cutting the content into two or three parts.
        for i in 0..=text.len() {
            for j in i..=text.len() {
                let parts: [&[u8]; 3] = [&text[..i], &text[i..j], &text[j..]];
                for max_lines in 1..=6 {
                    let (chunks, seen) = plan(&parts, max_lines, 1 << 20);
                    assert_eq!(seen, ["a1", "b22", "", "c333", "d4", "e5"]);
                    let mut requests = Vec::new();
                    let mut next = 0;
                    for c in &chunks {
                        assert_eq!(c.first_line, next);
                        next += c.line_count;
                        assert!(c.line_count as usize <= max_lines);
                        let body = read(&parts, c);
                        let lines: Vec<&str> = std::str::from_utf8(&body)
                            .unwrap()
                            .lines()
                            .map(|l| l.trim_end_matches('\r'))
                            .filter(|l| !l.is_empty())
                            .collect();
                        assert_eq!(lines.len(), c.line_count as usize);
                        requests.extend(lines.into_iter().map(str::to_owned));
                    }
                    assert_eq!(
                        requests,
                        ["a1", "b22", "c333", "d4", "e5"],
                        "{i} {j} {max_lines}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_chunk_is_also_cut_by_size() {
        let (chunks, _) = plan(&[b"aaaa\nbbbb\ncccc\n"], 100, 5);
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| c.line_count == 1));
    }

    #[test]
    fn a_line_over_the_cap_is_reported_in_place_and_never_held() {
        let mut giant = b"ok\n".to_vec();
        giant.resize(giant.len() + (3 << 20), b'7');
        giant.extend_from_slice(b"\nlast\n");
        let mut p = ChunkPlanner::new(10, 1 << 30, 1024);
        let mut seen = Vec::new();
        for (i, part) in giant.chunks(256 << 10).enumerate() {
            p.feed(i as i32, part, |l| {
                seen.push(l.map(<[u8]>::len).map_err(|t| t.bytes))
            });
            assert!(p.splitter.held() <= 1025, "held {}", p.splitter.held());
        }
        p.finish(|l| seen.push(l.map(<[u8]>::len).map_err(|t| t.bytes)));
        assert_eq!(seen, vec![Ok(2), Err(3 << 20), Ok(4)]);
        assert_eq!(p.chunks.len(), 1);
        assert_eq!(p.chunks[0].line_count, 3);
    }

    #[test]
    fn blank_files_have_no_chunks() {
        assert!(plan(&[b"\n\n  \n"], 10, 100).0.is_empty());
        assert!(plan(&[], 10, 100).0.is_empty());
    }
}
