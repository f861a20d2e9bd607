//! A stored result group: the finished lines of a chunk, as `"<line>\t<o|e>\t<file line>\n"`
//! entries, and the stable id each line has in the output and error files.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

/// A stable id per line, so a finalization that is redone after a crash writes the same file.
pub fn line_id(batch_id: &str, line: i32) -> String {
    let mut digits = itoa::Buffer::new();
    let digest = Sha256::new()
        .chain_update(batch_id)
        .chain_update("/")
        .chain_update(digits.format(line))
        .finalize();
    let mut id = String::with_capacity(10 + 32);
    id.push_str("batch_req_");
    id.push_str(&hex::encode(&digest[..16]));
    id
}

/// One finished line inside a stored result group: `"<line>\t<o|e>\t<file line>\n"`, `o` when
/// it belongs in the output file. Rendered JSON never holds a raw newline or tab before its
/// first character, so the fields split unambiguously.
pub fn encode(group: &mut String, line: i32, success: bool, file_line: &str) {
    let mut digits = itoa::Buffer::new();
    let line = digits.format(line);
    group.reserve(line.len() + file_line.len() + 4);
    group.push_str(line);
    group.push_str(if success { "\to\t" } else { "\te\t" });
    group.push_str(file_line);
    group.push('\n');
}

/// A line decoded from a stored result group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored<'a> {
    pub line: i32,
    pub success: bool,
    /// One line of JSON: as stored, or made so (see `decode`).
    pub file_line: Cow<'a, str>,
}

/// The lines of a stored result group; a malformed entry (which only a bug could write) is an
/// error, not a silently dropped line. An entry whose file line was stored over several lines
/// (an upstream body kept as it came, before bodies were made one line at the upstream) is read
/// whole and made one line again: a line that does not begin like an entry continues the one
/// before — valid JSON cannot hold one that does (`<number>\t<o|e>\t`) — so results stored by
/// earlier versions still finalize.
pub fn decode(group: &str) -> impl Iterator<Item = anyhow::Result<Stored<'_>>> {
    Entries { rest: group }.map(|entry| {
        let mut fields = entry.splitn(3, '\t');
        let (Some(line), Some(kind), Some(file_line)) =
            (fields.next(), fields.next(), fields.next())
        else {
            anyhow::bail!("malformed result entry");
        };
        // Bytes, not chars: a byte search is memchr even in a debug build, and an entry may
        // be megabytes.
        let bytes = file_line.as_bytes();
        let file_line = if bytes.contains(&b'\n') || bytes.contains(&b'\r') {
            // Checked before it is compacted: removing whitespace from text that is not JSON
            // could join two of its tokens into one valid value.
            serde_json::from_str::<serde::de::IgnoredAny>(file_line)
                .map_err(|_| anyhow::anyhow!("malformed result entry over several lines"))?;
            Cow::Owned(super::compact_json(file_line).into_owned())
        } else {
            Cow::Borrowed(file_line)
        };
        Ok(Stored {
            line: line.parse()?,
            success: match kind {
                "o" => true,
                "e" => false,
                other => anyhow::bail!("malformed result kind {other:?}"),
            },
            file_line,
        })
    })
}

/// The entries of a stored group: each from the start of an entry to the next one's.
struct Entries<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Entries<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.rest.is_empty() {
            return None;
        }
        let mut end = 0;
        let entry_end = loop {
            match self.rest[end..].find('\n') {
                None => break self.rest.len(),
                Some(i) => {
                    let after = &self.rest[end + i + 1..];
                    if after.is_empty() || starts_entry(after) {
                        break end + i;
                    }
                    end += i + 1;
                }
            }
        };
        let entry = &self.rest[..entry_end];
        self.rest = self.rest.get(entry_end + 1..).unwrap_or_default();
        Some(entry)
    }
}

/// `<line number>\t<o|e>\t`, as `encode` begins an entry.
fn starts_entry(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let n = digits.bytes().take_while(u8::is_ascii_digit).count();
    n > 0 && matches!(digits.as_bytes().get(n..n + 3), Some(b"\to\t" | b"\te\t"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ids_never_change() {
        // Files finalized again (after a crash, or by a newer version) must repeat them.
        assert_eq!(
            line_id("batch_abc", 7),
            "batch_req_a1e23367b10b67770a90241d051d69ba"
        );
        assert_eq!(
            line_id("batch_abc", -1),
            "batch_req_bb5c564c3d351b4f533bda6f913eec6d"
        );
    }
}
