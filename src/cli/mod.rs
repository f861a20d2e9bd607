//! `openbatch` as a client of an OpenBatch (or any OpenAI-compatible) server: `submit`,
//! `batches …`, `files …`. It only speaks the public `/v1` API, like the SDKs, and reads the
//! same `OPENAI_BASE_URL` / `OPENAI_API_KEY`.

mod client;
mod output;
mod submit;
mod wait;
mod webhooks;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

pub use client::{Client, ServerError};
pub use submit::SubmitArgs;
pub use wait::{EXIT_BATCH_FAILED, EXIT_DETACHED};

use wait::{InputOrder, WaitOptions};
pub use webhooks::WebhooksCommand;

/// Where the server is and how to talk to it (shared by every client command).
#[derive(Args, Clone)]
pub struct ClientOpts {
    /// The server's API base, `/v1` included.
    #[arg(
        long,
        env = "OPENAI_BASE_URL",
        default_value = "http://127.0.0.1:8080/v1",
        global = true
    )]
    pub base_url: String,
    /// Sent as `Authorization: Bearer …` (needed when the server has auth on).
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// Print the API's JSON objects instead of tables (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    /// Send the API key over plain http:// to a host other than this machine (anyone on the
    /// way can read it). Without it such a request is refused before anything is sent.
    #[arg(long, global = true)]
    pub insecure: bool,
}

impl ClientOpts {
    pub fn client(&self) -> anyhow::Result<Client> {
        Client::new(&self.base_url, self.api_key.clone(), self.insecure)
    }
}

#[derive(Args)]
pub struct BatchesArgs {
    #[command(flatten)]
    pub client: ClientOpts,
    #[command(subcommand)]
    pub command: BatchesCommand,
}

#[derive(Subcommand)]
pub enum BatchesCommand {
    /// List batches, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Start after this batch id (the previous page's last id).
        #[arg(long)]
        after: Option<String>,
    },
    /// Show one batch.
    Get { id: String },
    /// Watch a batch until it ends (re-attach after a Ctrl-C); exits non-zero if anything failed.
    Wait {
        id: String,
        /// Also write the results (output and error lines, in input order) here.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Ctrl-C cancels the batch instead of detaching from it.
        #[arg(long)]
        cancel_on_interrupt: bool,
        #[arg(long, default_value_t = 1.0, hide = true)]
        poll_interval: f64,
    },
    /// Cancel a batch (lines already done keep their results).
    Cancel { id: String },
    /// Run the failed lines of an ended batch again, as a new batch (an OpenBatch extension).
    /// Running the same command again re-attaches to the same retry.
    Retry {
        id: String,
        /// Only lines whose error code is this (e.g. `batch_expired`, `upstream_timeout`);
        /// repeatable.
        #[arg(long = "error-code")]
        error_codes: Vec<String>,
        /// Only lines whose upstream answered this HTTP status; repeatable.
        #[arg(long = "status-code")]
        status_codes: Vec<u16>,
        /// Watch the retry until it ends, like `batches wait`.
        #[arg(long)]
        wait: bool,
        /// With --wait: also write its results here.
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[arg(long, default_value_t = 1.0, hide = true)]
        poll_interval: f64,
    },
    /// Write a finished batch's results (output and error lines) in input order.
    Results {
        id: String,
        /// Default: standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Args)]
pub struct FilesArgs {
    #[command(flatten)]
    pub client: ClientOpts,
    #[command(subcommand)]
    pub command: FilesCommand,
}

#[derive(Subcommand)]
pub enum FilesCommand {
    /// List files, newest first.
    List {
        #[arg(long)]
        purpose: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        after: Option<String>,
    },
    /// Upload a file.
    Upload {
        path: PathBuf,
        #[arg(long, default_value = "batch")]
        purpose: String,
    },
    /// Download a file's content.
    Download {
        id: String,
        /// Default: standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Delete a file.
    Delete { id: String },
}

#[derive(Args)]
pub struct WebhooksArgs {
    #[command(flatten)]
    pub client: ClientOpts,
    #[command(subcommand)]
    pub command: WebhooksCommand,
}

pub async fn webhooks(args: WebhooksArgs) -> anyhow::Result<i32> {
    let client = args.client.client()?;
    webhooks::run(&client, args.command, args.client.json).await?;
    Ok(0)
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<i32> {
    submit::run(args).await
}

pub async fn batches(args: BatchesArgs) -> anyhow::Result<i32> {
    let client = args.client.client()?;
    let json = args.client.json;
    match args.command {
        BatchesCommand::List { limit, after } => {
            let page = client.list_batches(limit, after.as_deref()).await?;
            if json {
                output::print_json(&page);
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = data(&page)
                .iter()
                .map(|b| {
                    vec![
                        output::text(&b["id"]),
                        output::status(b["status"].as_str().unwrap_or("?")),
                        output::progress(b),
                        output::text(&b["model"]),
                        output::time(&b["created_at"]),
                        output::text(&b["endpoint"]),
                        output::metadata(&b["metadata"]),
                    ]
                })
                .collect();
            if rows.is_empty() {
                eprintln!("no batches");
            } else {
                output::table(
                    &[
                        "id", "status", "progress", "model", "created", "endpoint", "metadata",
                    ],
                    &rows,
                );
                more_hint(&page, "openbatch batches list --after");
            }
        }
        BatchesCommand::Get { id } => {
            let b = client.get_batch(&id).await?;
            if json {
                output::print_json(&b);
            } else {
                output::batch_detail(&b);
            }
        }
        BatchesCommand::Wait {
            id,
            output: out,
            cancel_on_interrupt,
            poll_interval,
        } => {
            let opts = WaitOptions {
                cancel_on_interrupt,
                poll: Duration::from_secs_f64(poll_interval.max(0.05)),
                events: true,
            };
            return wait::wait_and_report(
                &client,
                &id,
                &opts,
                out.as_deref(),
                InputOrder::Server,
                json,
            )
            .await;
        }
        BatchesCommand::Cancel { id } => {
            let b = client.cancel_batch(&id).await?;
            if json {
                output::print_json(&b);
            } else {
                println!(
                    "{id} {}",
                    output::status(b["status"].as_str().unwrap_or("?"))
                );
            }
        }
        BatchesCommand::Retry {
            id,
            mut error_codes,
            mut status_codes,
            wait: follow,
            output: out,
            poll_interval,
        } => {
            error_codes.sort();
            status_codes.sort_unstable();
            let body =
                serde_json::json!({"error_codes": error_codes, "status_codes": status_codes});
            let created = client
                .retry_batch(&id, &body, &retry_key(&id, &body))
                .await?;
            let b = &created.batch;
            let new_id = output::text(&b["id"]);
            if !follow {
                if json {
                    output::print_json(b);
                } else {
                    let how = if created.replayed {
                        "already retried as"
                    } else {
                        "retrying as"
                    };
                    eprintln!("{id}: {how} {new_id}");
                    println!("{new_id}");
                }
                return Ok(0);
            }
            eprintln!("{id}: retrying as {new_id}");
            let opts = WaitOptions {
                cancel_on_interrupt: false,
                poll: Duration::from_secs_f64(poll_interval.max(0.05)),
                events: true,
            };
            return wait::wait_and_report(
                &client,
                &new_id,
                &opts,
                out.as_deref(),
                InputOrder::Server,
                json,
            )
            .await;
        }
        BatchesCommand::Results { id, output: out } => {
            let b = client.get_batch(&id).await?;
            anyhow::ensure!(
                wait::is_terminal(&b),
                "batch {id} is still {}; wait for it with: openbatch batches wait {id}",
                output::text(&b["status"])
            );
            let outcome = match &out {
                Some(path) => {
                    let mut f = std::io::BufWriter::new(
                        std::fs::File::create(path)
                            .with_context(|| format!("cannot write {}", path.display()))?,
                    );
                    wait::write_results(&client, &b, InputOrder::Server, &mut f).await?
                }
                None => {
                    let mut stdout = std::io::stdout().lock();
                    wait::write_results(&client, &b, InputOrder::Server, &mut stdout).await?
                }
            };
            eprintln!("{} succeeded, {} failed", outcome.succeeded, outcome.failed);
        }
    }
    Ok(0)
}

pub async fn files(args: FilesArgs) -> anyhow::Result<i32> {
    let client = args.client.client()?;
    let json = args.client.json;
    match args.command {
        FilesCommand::List {
            purpose,
            limit,
            after,
        } => {
            let page = client
                .list_files(purpose.as_deref(), limit, "desc", after.as_deref())
                .await?;
            if json {
                output::print_json(&page);
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = data(&page)
                .iter()
                .map(|f| {
                    vec![
                        output::text(&f["id"]),
                        output::text(&f["purpose"]),
                        output::bytes(&f["bytes"]),
                        output::time(&f["created_at"]),
                        output::time(&f["expires_at"]),
                        output::text(&f["filename"]),
                    ]
                })
                .collect();
            if rows.is_empty() {
                eprintln!("no files");
            } else {
                output::table(
                    &["id", "purpose", "size", "created", "expires", "filename"],
                    &rows,
                );
                more_hint(&page, "openbatch files list --after");
            }
        }
        FilesCommand::Upload { path, purpose } => {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .context("the path names no file")?
                .to_owned();
            let f = client.upload(&path, &name, &purpose).await?;
            if json {
                output::print_json(&f);
            } else {
                println!("{}", output::text(&f["id"]));
            }
        }
        FilesCommand::Download { id, output: out } => match out {
            Some(path) => {
                // Into a temporary name first, so an interrupted download leaves no partial file
                // under the name asked for.
                let tmp = PathBuf::from(format!("{}.part", path.display()));
                let mut f = tokio::fs::File::create(&tmp)
                    .await
                    .with_context(|| format!("cannot write {}", tmp.display()))?;
                let n = client.download_to(&id, &mut f).await?;
                f.sync_all().await?;
                tokio::fs::rename(&tmp, &path).await?;
                eprintln!("wrote {n} bytes to {}", path.display());
            }
            None => {
                let mut stdout = tokio::io::stdout();
                client.download_to(&id, &mut stdout).await?;
                stdout.flush().await?;
            }
        },
        FilesCommand::Delete { id } => {
            let d = client.delete_file(&id).await?;
            if json {
                output::print_json(&d);
            } else {
                println!("deleted {id}");
            }
        }
    }
    Ok(0)
}

/// The same retry command (batch and filters) sends the same key, so running it again after a
/// dropped connection re-attaches instead of retrying twice.
fn retry_key(id: &str, body: &Value) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{id}\n{body}").as_bytes());
    format!("openbatch-cli-retry-{}", hex::encode(&digest[..16]))
}

fn data(page: &Value) -> Vec<Value> {
    page["data"].as_array().cloned().unwrap_or_default()
}

fn more_hint(page: &Value, command: &str) {
    if page["has_more"] == Value::Bool(true) {
        if let Some(last) = page["last_id"].as_str() {
            eprintln!("more: {command} {last}");
        }
    }
}
