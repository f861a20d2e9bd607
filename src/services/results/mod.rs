//! A batch's finished lines for its consumers: served while it runs (from the stored result
//! groups) and after it ends (from its output and error files), and its failed lines run again
//! as a new batch. Memory stays bounded by a file part or a page of groups, never the batch.

pub mod live;
mod record;
pub mod retry;
mod serve;

pub use record::ResultRecord;
pub use serve::{open, serve, Opened};

use std::collections::VecDeque;

use anyhow::Context;
use serde::Deserialize;

use crate::domain::{BatchId, FileId};
use crate::jsonl::group::line_id;
use crate::jsonl::LineSplitter;
use crate::store::content::{Content, FileReader};

/// A stored file's non-blank lines, read a part (1 MiB) at a time.
pub struct FileLines {
    content: Content,
    file: FileId,
    /// Opened at the first read.
    reader: Option<FileReader>,
    /// The file's size as recorded: reading fewer bytes means its content was purged meanwhile.
    bytes: i64,
    read: i64,
    next_part: i32,
    splitter: Option<LineSplitter>,
    ready: VecDeque<Vec<u8>>,
}

impl FileLines {
    pub fn new(content: Content, file: FileId, bytes: i64) -> Self {
        Self {
            content,
            file,
            reader: None,
            bytes,
            read: 0,
            next_part: 0,
            splitter: Some(LineSplitter::default()),
            ready: VecDeque::new(),
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        while self.ready.is_empty() {
            let Some(splitter) = self.splitter.as_mut() else {
                return Ok(());
            };
            let ready = &mut self.ready;
            let mut keep = |piece: Result<&[u8], _>| {
                let line: &[u8] = piece.unwrap_or_default();
                if !line.iter().all(u8::is_ascii_whitespace) {
                    ready.push_back(line.to_vec());
                }
            };
            if self.reader.is_none() {
                self.reader = Some(self.content.open(&self.file).await?);
            }
            let reader = self.reader.as_ref().expect("opened above");
            match reader.chunk(self.next_part).await? {
                Some(data) => {
                    self.read += data.len() as i64;
                    self.next_part += 1;
                    splitter.feed(&data, &mut keep);
                }
                None => {
                    anyhow::ensure!(
                        self.read == self.bytes,
                        "the content of file {} is gone (deleted or expired)",
                        self.file
                    );
                    self.splitter.take().expect("checked").finish(&mut keep);
                }
            }
        }
        Ok(())
    }

    pub async fn peek(&mut self) -> anyhow::Result<Option<&[u8]>> {
        self.fill().await?;
        Ok(self.ready.front().map(Vec::as_slice))
    }

    pub async fn next(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        self.fill().await?;
        Ok(self.ready.pop_front())
    }
}

/// The `id` of a result-file line (`batch_req_…`, derived from the batch and the line's
/// position, so the position can be recognised without a stored index).
fn result_id(line: &[u8]) -> anyhow::Result<String> {
    #[derive(Deserialize)]
    struct WithId {
        id: String,
    }
    let v: WithId = serde_json::from_slice(line).context("a result line without an id")?;
    Ok(v.id)
}

/// A finished line of a batch: its position among the input's requests (0-based), whether it
/// is in the output file (else the error file), and its file line.
pub struct Finished {
    pub ordinal: u32,
    pub output: bool,
    pub line: Vec<u8>,
}

/// An ended batch's output and error files merged back into input order. Both are written in
/// input order and every request is in exactly one of them, so the next request's line is at
/// the head of one file or the other.
pub struct FinishedLines {
    batch: BatchId,
    output: Option<FileLines>,
    errors: Option<FileLines>,
    next: u32,
}

impl FinishedLines {
    pub fn new(batch: BatchId, output: Option<FileLines>, errors: Option<FileLines>) -> Self {
        Self {
            batch,
            output,
            errors,
            next: 0,
        }
    }

    pub async fn next(&mut self) -> anyhow::Result<Option<Finished>> {
        let want = line_id(self.batch.as_str(), self.next as i32);
        for (output, file) in [(true, &mut self.output), (false, &mut self.errors)] {
            let Some(file) = file.as_mut() else { continue };
            let Some(head) = file.peek().await? else {
                continue;
            };
            if result_id(head)? == want {
                let line = file.next().await?.expect("peeked");
                let ordinal = self.next;
                self.next += 1;
                return Ok(Some(Finished {
                    ordinal,
                    output,
                    line,
                }));
            }
        }
        for file in [&mut self.output, &mut self.errors].into_iter().flatten() {
            anyhow::ensure!(
                file.peek().await?.is_none(),
                "the result files of batch {} do not hold request {} where expected",
                self.batch,
                self.next
            );
        }
        Ok(None)
    }
}
