//! `openbatch submit`: upload + create (+ wait), safe to run again.
//!
//! Re-running the same command must land on the same batch without a second upload:
//! * the idempotency key is derived from the file's SHA-256 and the batch parameters, so the
//!   server's idempotent create (same key, same parameters → the existing batch) re-attaches;
//! * the uploaded file's name carries the content hash (`requests.sha256-<32 hex>.jsonl`), so a
//!   re-run finds it in `GET /v1/files?purpose=batch` (name and size must both match) instead of
//!   uploading again. Reusing the same file id also keeps the parameters — and so the key's
//!   stored parameter hash — identical.
//!
//! The name is a claim the CLI makes about what it uploaded, not something the server checks;
//! within one project only its own callers can upload, so a lie would have to come from them.

use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::client::{Created, ServerError};
use super::wait::{self, InputOrder, WaitOptions};
use super::{output, Client, ClientOpts};

#[derive(Args)]
pub struct SubmitArgs {
    /// The JSONL file of requests (one `{"custom_id", "method", "url", "body"}` per line).
    pub file: PathBuf,
    /// The endpoint every line calls; default: the `url` of the file's first line.
    #[arg(long)]
    pub endpoint: Option<String>,
    #[arg(long, default_value = "24h")]
    pub completion_window: String,
    /// Metadata to attach, as key=value (repeatable).
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Watch the batch until it ends, then write the results and exit non-zero if anything
    /// failed.
    #[arg(long)]
    pub wait: bool,
    /// Where --wait writes the results (output and error lines, in input order);
    /// default: <file stem>.results.jsonl next to the input.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Create a fresh batch even if this file was already submitted with these parameters.
    #[arg(long)]
    pub new: bool,
    /// With --wait, Ctrl-C cancels the batch instead of detaching from it.
    #[arg(long)]
    pub cancel_on_interrupt: bool,
    /// Seconds between status checks while waiting.
    #[arg(long, default_value_t = 1.0, hide = true)]
    pub poll_interval: f64,
    /// A file bigger than this goes through the Uploads API, in parts (one `POST /v1/files`
    /// takes at most `limits.max_upload_bytes`, 512 MiB by default).
    #[arg(long, default_value_t = 64 << 20, hide = true)]
    pub parts_above: u64,
    /// The size of those parts (OpenAI's most, 64 MiB, by default).
    #[arg(long, default_value_t = 64 << 20, hide = true)]
    pub part_bytes: u64,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// What the CLI learns from reading the input once.
pub struct Digested {
    pub sha256: String,
    /// Hex, for an upload in parts to be checked against.
    pub md5: String,
    pub bytes: u64,
    pub first_url: Option<String>,
}

pub fn digest(path: &Path) -> anyhow::Result<Digested> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut first_line = Vec::new();
    // The first line is hashed too: it is read through the same reader.
    reader.read_until(b'\n', &mut first_line)?;
    let mut hasher = Sha256::new();
    let mut md5 = md5::Md5::new();
    hasher.update(&first_line);
    md5.update(&first_line);
    let mut bytes = first_line.len() as u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        md5.update(&buf[..n]);
        bytes += n as u64;
    }
    let first_url = serde_json::from_slice::<Value>(&first_line)
        .ok()
        .and_then(|v| v["url"].as_str().map(str::to_owned));
    Ok(Digested {
        sha256: hex::encode(hasher.finalize()),
        md5: hex::encode(md5.finalize()),
        bytes,
        first_url,
    })
}

/// The name the file is uploaded under: the original name with the content hash inserted.
pub fn tagged_filename(path: &Path, sha256: &str) -> String {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("requests");
    let ext = path.extension().and_then(|s| s.to_str()).unwrap_or("jsonl");
    format!("{stem}.sha256-{}.{ext}", &sha256[..32])
}

pub fn parse_metadata(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .with_context(|| format!("--metadata takes KEY=VALUE, got '{p}'"))?;
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// The content-derived key: one per (file content, endpoint, window, metadata).
pub fn derived_key(
    sha256: &str,
    endpoint: &str,
    window: &str,
    metadata: &BTreeMap<String, String>,
) -> String {
    let canonical = json!({
        "v": 1,
        "content_sha256": sha256,
        "endpoint": endpoint,
        "completion_window": window,
        "metadata": metadata,
    });
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    format!("openbatch-cli-{}", &hex::encode(digest)[..40])
}

pub async fn run(args: SubmitArgs) -> anyhow::Result<i32> {
    let client = args.client.client()?;
    let json = args.client.json;
    let human = !json;
    let d = digest(&args.file)?;
    anyhow::ensure!(d.bytes > 0, "{} is empty", args.file.display());
    let endpoint = args
        .endpoint
        .clone()
        .or(d.first_url.clone())
        .unwrap_or_else(|| "/v1/chat/completions".to_owned());
    let metadata = parse_metadata(&args.metadata)?;
    let key = if args.new {
        format!("openbatch-cli-new-{}", uuid::Uuid::new_v4().simple())
    } else {
        derived_key(&d.sha256, &endpoint, &args.completion_window, &metadata)
    };

    let plan = UploadPlan {
        parts_above: args.parts_above,
        part_bytes: args.part_bytes,
    };
    let file = upload_once(&client, &args.file, &d, &plan, human).await?;
    let file_id = file["id"].as_str().context("the upload answer has no id")?;

    let mut body = json!({
        "input_file_id": file_id,
        "endpoint": endpoint,
        "completion_window": args.completion_window,
        "idempotency_key": key,
    });
    if !metadata.is_empty() {
        body["metadata"] = json!(metadata);
    }
    let created = create(&client, &body).await?;
    let batch = created.batch;
    let id = batch["id"]
        .as_str()
        .context("the batch has no id")?
        .to_owned();
    if human {
        if created.replayed {
            eprintln!(
                "re-attached to batch {id} ({}), created earlier from the same file and parameters \
                 (--new creates another)",
                output::text(&batch["status"])
            );
        } else {
            eprintln!("created batch {id}");
        }
    }
    if !args.wait {
        if json {
            output::print_json(&batch);
        } else {
            println!("{id}");
        }
        return Ok(0);
    }
    let results_path = args
        .output
        .clone()
        .unwrap_or_else(|| default_results_path(&args.file));
    let opts = WaitOptions {
        cancel_on_interrupt: args.cancel_on_interrupt,
        poll: Duration::from_secs_f64(args.poll_interval.max(0.05)),
        events: true,
    };
    wait::wait_and_report(
        &client,
        &id,
        &opts,
        Some(&results_path),
        InputOrder::Local(&args.file),
        json,
    )
    .await
}

/// The file's earlier upload (same name, hash-tagged, and size), or a new one.
/// How a file goes up: in one request, or in parts of `part_bytes` above `parts_above`.
pub struct UploadPlan {
    pub parts_above: u64,
    pub part_bytes: u64,
}

async fn upload_once(
    client: &Client,
    file: &Path,
    d: &Digested,
    plan: &UploadPlan,
    human: bool,
) -> anyhow::Result<Value> {
    let filename = tagged_filename(file, &d.sha256);
    let existing = client.all_files("batch").await?.into_iter().find(|f| {
        f["filename"] == filename.as_str()
            && f["bytes"].as_u64() == Some(d.bytes)
            && !matches!(f["status"].as_str(), Some("deleted" | "error"))
    });
    Ok(match existing {
        Some(f) => {
            if human {
                eprintln!(
                    "{} already uploaded as {}",
                    file.display(),
                    output::text(&f["id"])
                );
            }
            f
        }
        None => {
            let f = if d.bytes > plan.parts_above {
                if human {
                    let parts = d.bytes.div_ceil(plan.part_bytes.max(1));
                    eprintln!("uploading {} in {parts} parts", file.display());
                }
                (client.upload_in_parts(file, &filename, "batch", d, plan.part_bytes)).await?
            } else {
                client.upload(file, &filename, "batch").await?
            };
            if human {
                eprintln!(
                    "uploaded {} ({}) as {}",
                    file.display(),
                    output::bytes(&f["bytes"]),
                    output::text(&f["id"])
                );
            }
            f
        }
    })
}

/// Creates the batch, explaining a key conflict (the idempotency key is derived from the file).
async fn create(client: &Client, body: &Value) -> anyhow::Result<Created> {
    match client.create_batch(body).await {
        Ok(c) => Ok(c),
        Err(e) => {
            if e.downcast_ref::<ServerError>()
                .is_some_and(|s| s.code.as_deref() == Some("idempotency_key_conflict"))
            {
                return Err(e.context(
                    "this file was submitted before with these parameters, from an upload that \
                     no longer matches (deleted?); pass --new to create a fresh batch",
                ));
            }
            Err(e)
        }
    }
}

fn default_results_path(input: &Path) -> PathBuf {
    let stem = input
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("requests");
    input.with_file_name(format!("{stem}.results.jsonl"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_depends_on_content_and_every_parameter() {
        let none = BTreeMap::new();
        let k = derived_key("aa", "/v1/chat/completions", "24h", &none);
        assert_eq!(k, derived_key("aa", "/v1/chat/completions", "24h", &none));
        assert!(k.starts_with("openbatch-cli-") && k.len() <= 255);
        assert_ne!(k, derived_key("ab", "/v1/chat/completions", "24h", &none));
        assert_ne!(k, derived_key("aa", "/v1/embeddings", "24h", &none));
        let meta: BTreeMap<_, _> = [("a".to_owned(), "b".to_owned())].into();
        assert_ne!(k, derived_key("aa", "/v1/chat/completions", "24h", &meta));
    }

    #[test]
    fn the_uploaded_name_carries_the_hash() {
        let sha = "0123456789abcdef".repeat(4);
        assert_eq!(
            tagged_filename(Path::new("/tmp/requests.jsonl"), &sha),
            "requests.sha256-0123456789abcdef0123456789abcdef.jsonl"
        );
        assert_eq!(
            default_results_path(Path::new("/tmp/requests.jsonl")),
            Path::new("/tmp/requests.results.jsonl")
        );
    }

    #[test]
    fn metadata_pairs_split_on_the_first_equals() {
        let m = parse_metadata(&["a=b=c".into(), "x=".into()]).unwrap();
        assert_eq!(m["a"], "b=c");
        assert_eq!(m["x"], "");
        assert!(parse_metadata(&["novalue".into()]).is_err());
    }
}
