//! `openbatch batches …`: list, show, wait for, cancel, retry a batch, and write its results.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use super::wait::{self, InputOrder, WaitOptions};
use super::{data, more_hint, output, BatchesArgs, BatchesCommand, Client};

pub(super) async fn run(args: BatchesArgs) -> anyhow::Result<i32> {
    let client = args.client.client()?;
    let json = args.client.json;
    match args.command {
        BatchesCommand::List { limit, after } => list(&client, json, limit, after).await?,
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
            error_codes,
            status_codes,
            wait: follow,
            output: out,
            poll_interval,
        } => {
            let filters = RetryFilters {
                error_codes,
                status_codes,
            };
            let follow = follow.then_some((out, poll_interval));
            return retry(&client, json, &id, filters, follow).await;
        }
        BatchesCommand::Results { id, output: out } => {
            results(&client, &id, out.as_deref()).await?
        }
    }
    Ok(0)
}

async fn list(
    client: &Client,
    json: bool,
    limit: u32,
    after: Option<String>,
) -> anyhow::Result<()> {
    let page = client.list_batches(limit, after.as_deref()).await?;
    if json {
        output::print_json(&page);
        return Ok(());
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
    Ok(())
}

/// Which failed lines a retry runs again.
struct RetryFilters {
    error_codes: Vec<String>,
    status_codes: Vec<u16>,
}

/// Retries a batch's failed lines; with `follow` (results path, poll interval), watches the
/// retry until it ends.
async fn retry(
    client: &Client,
    json: bool,
    id: &str,
    mut filters: RetryFilters,
    follow: Option<(Option<PathBuf>, f64)>,
) -> anyhow::Result<i32> {
    filters.error_codes.sort();
    filters.status_codes.sort_unstable();
    let body = serde_json::json!({
        "error_codes": filters.error_codes,
        "status_codes": filters.status_codes,
    });
    let created = client.retry_batch(id, &body, &retry_key(id, &body)).await?;
    let b = &created.batch;
    let new_id = output::text(&b["id"]);
    let Some((out, poll_interval)) = follow else {
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
    };
    eprintln!("{id}: retrying as {new_id}");
    let opts = WaitOptions {
        cancel_on_interrupt: false,
        poll: Duration::from_secs_f64(poll_interval.max(0.05)),
        events: true,
    };
    wait::wait_and_report(
        client,
        &new_id,
        &opts,
        out.as_deref(),
        InputOrder::Server,
        json,
    )
    .await
}

async fn results(client: &Client, id: &str, out: Option<&Path>) -> anyhow::Result<()> {
    let b = client.get_batch(id).await?;
    anyhow::ensure!(
        wait::is_terminal(&b),
        "batch {id} is still {}; wait for it with: openbatch batches wait {id}",
        output::text(&b["status"])
    );
    let outcome = match out {
        Some(path) => {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot write {}", path.display()))?,
            );
            wait::write_results(client, &b, InputOrder::Server, &mut f).await?
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            wait::write_results(client, &b, InputOrder::Server, &mut stdout).await?
        }
    };
    eprintln!("{} succeeded, {} failed", outcome.succeeded, outcome.failed);
    Ok(())
}

/// The same retry command (batch and filters) sends the same key, so running it again after a
/// dropped connection re-attaches instead of retrying twice.
fn retry_key(id: &str, body: &Value) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{id}\n{body}").as_bytes());
    format!("openbatch-cli-retry-{}", hex::encode(&digest[..16]))
}
