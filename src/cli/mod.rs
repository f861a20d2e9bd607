//! `openbatch` as a client of an OpenBatch (or any OpenAI-compatible) server: `submit`,
//! `batches …`, `files …`. It only speaks the public `/v1` API, like the SDKs, and reads the
//! same `OPENAI_BASE_URL` / `OPENAI_API_KEY`.

mod batches;
mod client;
mod files;
mod keys;
mod output;
mod submit;
mod wait;
mod webhooks;

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::Value;

pub use client::{Client, ServerError};
pub use keys::KeysCommand;
pub use submit::SubmitArgs;
pub use wait::{EXIT_BATCH_FAILED, EXIT_DETACHED};

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
pub struct KeysArgs {
    /// An admin key: the commands then use the server's Admin API at --base-url. Without one
    /// they write to the database (OPENBATCH__DATABASE__URL).
    #[arg(long, env = "OPENAI_ADMIN_KEY", hide_env_values = true, global = true)]
    pub admin_key: Option<String>,
    /// The server's API base, `/v1` included (with an admin key).
    #[arg(
        long,
        env = "OPENAI_BASE_URL",
        default_value = "http://127.0.0.1:8080/v1",
        global = true
    )]
    pub base_url: String,
    /// Send the admin key over plain http:// to a host other than this machine.
    #[arg(long, global = true)]
    pub insecure: bool,
    #[command(subcommand)]
    pub command: KeysCommand,
}

pub async fn keys(args: KeysArgs) -> anyhow::Result<i32> {
    let client = Client::new(&args.base_url, args.admin_key, args.insecure)?;
    keys::run(&client, args.command).await
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
    batches::run(args).await
}

pub async fn files(args: FilesArgs) -> anyhow::Result<i32> {
    files::run(args).await
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
