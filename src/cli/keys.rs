//! `openbatch keys`: create, list and revoke API keys. With an admin key at hand
//! (`OPENAI_ADMIN_KEY`, as the OpenAI SDKs read it) the commands are clients of the Admin API on
//! the server at `OPENAI_BASE_URL`, like any other tool; without one they write to the database
//! named by `OPENBATCH__DATABASE__URL` (`main.rs`), which is how the first admin key is made.

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};

use super::{Client, ServerError};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key; prints it, once, on stdout. A project key belongs to a new service account
    /// of its project (the project is created if new); an admin key (`--admin`, database only)
    /// to no project: it can use only the Admin API (`/v1/organization/*`).
    Create {
        /// The tenant's name (`default` is reserved for the built-in project).
        #[arg(long, required_unless_present_any = ["built_in", "admin"], conflicts_with_all = ["built_in", "admin"])]
        project: Option<String>,
        /// A key for the built-in project, which holds what was created with authentication
        /// off.
        #[arg(long, conflicts_with = "admin")]
        built_in: bool,
        /// An admin key, for the Admin API only.
        #[arg(long)]
        admin: bool,
        /// The admin key's or the service account's name.
        #[arg(long, default_value = "openbatch keys create")]
        name: String,
    },
    /// List keys by prefix, with their project and state (never the keys themselves).
    List,
    /// Revoke the key with this prefix.
    Revoke { prefix: String },
}

const BUILT_IN: &str = "proj_default";

/// Runs `command` through the Admin API.
pub async fn run(client: &Client, command: KeysCommand) -> anyhow::Result<i32> {
    match command {
        KeysCommand::Create { admin: true, .. } => anyhow::bail!(
            "admin keys are made with the database, not the API: unset OPENAI_ADMIN_KEY and set \
             OPENBATCH__DATABASE__URL"
        ),
        KeysCommand::Create { project, name, .. } => {
            let project = match project {
                Some(name) => project_named(client, &name).await?,
                None => {
                    client
                        .get_json(&format!("/organization/projects/{BUILT_IN}"), &[])
                        .await?
                }
            };
            let id = text(&project, "id")?;
            let made = client
                .post_json(
                    &format!("/organization/projects/{id}/service_accounts"),
                    &json!({ "name": name }),
                )
                .await?;
            let value = text(&made["api_key"], "value")?;
            eprintln!(
                "created key {} for project '{}' (service account {})",
                &value[..16],
                text(&project, "name")?,
                text(&made, "id")?
            );
            println!("{value}");
        }
        KeysCommand::List => list(client).await?,
        KeysCommand::Revoke { prefix } => revoke(client, &prefix).await?,
    }
    Ok(0)
}

fn text<'a>(v: &'a Value, field: &str) -> anyhow::Result<&'a str> {
    v[field]
        .as_str()
        .with_context(|| format!("the server's answer has no '{field}': {v}"))
}

/// Every object of an Admin API list, following `last_id`.
async fn all(client: &Client, path: &str, query: &[(&str, String)]) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = query.to_vec();
        q.push(("limit", "100".to_owned()));
        if let Some(a) = &after {
            q.push(("after", a.clone()));
        }
        let page = client.get_json(path, &q).await?;
        items.extend(page["data"].as_array().cloned().unwrap_or_default());
        match page["last_id"].as_str() {
            Some(last) if page["has_more"] == true => after = Some(last.to_owned()),
            _ => return Ok(items),
        }
    }
}

async fn projects(client: &Client) -> anyhow::Result<Vec<Value>> {
    let archived = [("include_archived", "true".to_owned())];
    all(client, "/organization/projects", &archived).await
}

/// The project with this name, created if there is none.
async fn project_named(client: &Client, name: &str) -> anyhow::Result<Value> {
    let found = projects(client)
        .await?
        .into_iter()
        .find(|p| p["name"] == name);
    match found {
        Some(p) if p["status"] == "archived" => {
            anyhow::bail!("project '{name}' is archived: its keys no longer work")
        }
        Some(p) => Ok(p),
        None => {
            let made = client
                .post_json("/organization/projects", &json!({ "name": name }))
                .await?;
            eprintln!("created project '{name}' ({})", text(&made, "id")?);
            Ok(made)
        }
    }
}

async fn list(client: &Client) -> anyhow::Result<()> {
    println!(
        "{:<20} {:<24} {:<12} {:<12} state",
        "prefix", "project", "created_at", "last_used"
    );
    for project in projects(client).await? {
        let id = text(&project, "id")?;
        let state = match project["status"].as_str() {
            Some("archived") => "project archived",
            _ => "active",
        };
        for key in all(
            client,
            &format!("/organization/projects/{id}/api_keys"),
            &[],
        )
        .await?
        {
            let prefix = text(&key, "redacted_value")?.trim_end_matches("_****");
            let used = key["last_used_at"]
                .as_i64()
                .map_or("-".to_owned(), |t| t.to_string());
            println!(
                "{prefix:<20} {:<24} {:<12} {used:<12} {state}",
                text(&project, "name")?,
                key["created_at"]
            );
        }
    }
    Ok(())
}

/// A key's prefix names its id (`obk_x` → `key_x`); the key is looked for in every project.
async fn revoke(client: &Client, prefix: &str) -> anyhow::Result<()> {
    let id = prefix
        .strip_prefix("obk_")
        .map(|rest| format!("key_{rest}"))
        .with_context(|| format!("'{prefix}' is not a key prefix (obk_…)"))?;
    for project in projects(client).await? {
        let path = format!(
            "/organization/projects/{}/api_keys/{id}",
            text(&project, "id")?
        );
        match client.delete_json(&path).await {
            Ok(_) => {
                eprintln!("revoked {prefix}");
                return Ok(());
            }
            Err(e)
                if e.downcast_ref::<ServerError>()
                    .is_some_and(|s| s.status == 404) => {}
            Err(e) => return Err(e),
        }
    }
    anyhow::bail!("no active key has the prefix '{prefix}'")
}
