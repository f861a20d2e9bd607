//! `openbatch files …`: list, upload, download and delete files.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::io::AsyncWriteExt;

use super::{data, more_hint, output, Client, FilesArgs, FilesCommand};

pub(super) async fn run(args: FilesArgs) -> anyhow::Result<i32> {
    let client = args.client.client()?;
    let json = args.client.json;
    match args.command {
        FilesCommand::List {
            purpose,
            limit,
            after,
        } => list(&client, json, purpose, limit, after).await?,
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
        FilesCommand::Download { id, output: out } => {
            download(&client, &id, out.as_deref()).await?
        }
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

async fn list(
    client: &Client,
    json: bool,
    purpose: Option<String>,
    limit: u32,
    after: Option<String>,
) -> anyhow::Result<()> {
    let page = client
        .list_files(purpose.as_deref(), limit, "desc", after.as_deref())
        .await?;
    if json {
        output::print_json(&page);
        return Ok(());
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
    Ok(())
}

async fn download(client: &Client, id: &str, out: Option<&Path>) -> anyhow::Result<()> {
    match out {
        Some(path) => {
            // Into a temporary name first, so an interrupted download leaves no partial file
            // under the name asked for.
            let tmp = PathBuf::from(format!("{}.part", path.display()));
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            let n = client.download_to(id, &mut f).await?;
            f.sync_all().await?;
            tokio::fs::rename(&tmp, path).await?;
            eprintln!("wrote {n} bytes to {}", path.display());
        }
        None => {
            let mut stdout = tokio::io::stdout();
            client.download_to(id, &mut stdout).await?;
            stdout.flush().await?;
        }
    }
    Ok(())
}
