//! `openbatch webhooks …`: manage the project's webhook endpoints (an OpenBatch extension).

use clap::Subcommand;
use serde_json::{json, Value};

use super::{data, more_hint, output, Client};

#[derive(Subcommand)]
pub enum WebhooksCommand {
    /// Register an endpoint; prints its signing secret (shown only now and on rotate).
    Create {
        url: String,
        /// Event types to send (default: all), e.g. --events batch.completed,batch.failed
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
    },
    /// List endpoints, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        after: Option<String>,
    },
    /// Show one endpoint.
    Get { id: String },
    /// Delete an endpoint (its pending deliveries are dropped).
    Delete { id: String },
    /// Issue a new secret; the old one keeps signing for the grace period.
    Rotate {
        id: String,
        /// Seconds the old secret still signs (default: the server's setting; 0 = at once).
        #[arg(long)]
        grace_period_seconds: Option<i64>,
    },
    /// Re-enable an endpoint disabled after too many failed deliveries.
    Enable { id: String },
    /// The endpoint's delivery log, newest first.
    Deliveries {
        id: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        after: Option<String>,
    },
}

pub async fn run(client: &Client, command: WebhooksCommand, json: bool) -> anyhow::Result<()> {
    // `None`: shown as text already.
    let shown = match command {
        WebhooksCommand::Create { url, events } => create(client, json, url, events).await?,
        WebhooksCommand::List { limit, after } => list(client, json, limit, after).await?,
        WebhooksCommand::Get { id } => {
            let e = client
                .get_json(&format!("/webhook_endpoints/{id}"), &[])
                .await?;
            shown_unless(json, e, print_endpoint)
        }
        WebhooksCommand::Delete { id } => {
            let d = client
                .delete_json(&format!("/webhook_endpoints/{id}"))
                .await?;
            shown_unless(json, d, |_| println!("deleted {id}"))
        }
        WebhooksCommand::Rotate {
            id,
            grace_period_seconds,
        } => rotate(client, json, &id, grace_period_seconds).await?,
        WebhooksCommand::Enable { id } => {
            let e = client
                .post_json(&format!("/webhook_endpoints/{id}/enable"), &json!({}))
                .await?;
            shown_unless(json, e, print_endpoint)
        }
        WebhooksCommand::Deliveries { id, limit, after } => {
            deliveries(client, json, &id, limit, after).await?
        }
    };
    if let Some(v) = shown {
        output::print_json(&v);
    }
    Ok(())
}

/// The object to print as JSON, or `None` once `text` has shown it.
fn shown_unless(json: bool, v: Value, text: impl FnOnce(&Value)) -> Option<Value> {
    if json {
        return Some(v);
    }
    text(&v);
    None
}

fn page_query(limit: u32, after: Option<String>) -> Vec<(&'static str, String)> {
    let mut query = vec![("limit", limit.to_string())];
    query.extend(after.map(|a| ("after", a)));
    query
}

async fn create(
    client: &Client,
    json: bool,
    url: String,
    events: Vec<String>,
) -> anyhow::Result<Option<Value>> {
    let mut body = json!({ "url": url });
    if !events.is_empty() {
        body["events"] = json!(events);
    }
    let e = client.post_json("/webhook_endpoints", &body).await?;
    Ok(shown_unless(json, e, |e| {
        eprintln!(
            "created {} for {}",
            output::text(&e["id"]),
            output::text(&e["url"])
        );
        eprintln!("signing secret (shown only now; verify with client.webhooks.unwrap):");
        println!("{}", output::text(&e["secret"]));
    }))
}

async fn list(
    client: &Client,
    json: bool,
    limit: u32,
    after: Option<String>,
) -> anyhow::Result<Option<Value>> {
    let page = client
        .get_json("/webhook_endpoints", &page_query(limit, after))
        .await?;
    Ok(shown_unless(json, page, |page| {
        let rows: Vec<Vec<String>> = data(page).iter().map(endpoint_row).collect();
        if rows.is_empty() {
            eprintln!("no webhook endpoints");
        } else {
            output::table(&["id", "status", "url", "events", "created"], &rows);
            more_hint(page, "openbatch webhooks list --after");
        }
    }))
}

async fn rotate(
    client: &Client,
    json: bool,
    id: &str,
    grace_period_seconds: Option<i64>,
) -> anyhow::Result<Option<Value>> {
    let body = match grace_period_seconds {
        Some(g) => json!({ "grace_period_seconds": g }),
        None => json!({}),
    };
    let e = client
        .post_json(&format!("/webhook_endpoints/{id}/rotate_secret"), &body)
        .await?;
    Ok(shown_unless(json, e, |e| {
        eprintln!(
            "rotated; the previous secret signs until {}",
            output::time(&e["previous_secret_expires_at"])
        );
        println!("{}", output::text(&e["secret"]));
    }))
}

async fn deliveries(
    client: &Client,
    json: bool,
    id: &str,
    limit: u32,
    after: Option<String>,
) -> anyhow::Result<Option<Value>> {
    let page = client
        .get_json(
            &format!("/webhook_endpoints/{id}/deliveries"),
            &page_query(limit, after),
        )
        .await?;
    Ok(shown_unless(json, page, |page| {
        let rows: Vec<Vec<String>> = data(page).iter().map(delivery_row).collect();
        if rows.is_empty() {
            eprintln!("no deliveries");
        } else {
            output::table(
                &[
                    "event",
                    "type",
                    "batch",
                    "status",
                    "attempts",
                    "last",
                    "next",
                    "delivered",
                ],
                &rows,
            );
            more_hint(page, &format!("openbatch webhooks deliveries {id} --after"));
        }
    }))
}

fn events(e: &Value) -> String {
    e["events"]
        .as_array()
        .map(|a| a.iter().map(output::text).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

fn endpoint_row(e: &Value) -> Vec<String> {
    vec![
        output::text(&e["id"]),
        output::text(&e["status"]),
        output::text(&e["url"]),
        events(e),
        output::time(&e["created_at"]),
    ]
}

fn print_endpoint(e: &Value) {
    println!("id        {}", output::text(&e["id"]));
    println!("url       {}", output::text(&e["url"]));
    println!("events    {}", events(e));
    println!("status    {}", output::text(&e["status"]));
    if !e["disabled_reason"].is_null() {
        println!("reason    {}", output::text(&e["disabled_reason"]));
    }
    println!("created   {}", output::time(&e["created_at"]));
}

fn delivery_row(d: &Value) -> Vec<String> {
    let last = match (&d["last_status_code"], &d["last_error"]) {
        (Value::Null, Value::Null) => "-".to_owned(),
        (Value::Null, err) => output::text(err),
        (code, _) => format!("HTTP {}", output::text(code)),
    };
    vec![
        output::text(&d["event_id"]),
        output::text(&d["event_type"]),
        output::text(&d["batch_id"]),
        output::text(&d["status"]),
        output::text(&d["attempts"]),
        last,
        output::time(&d["next_attempt_at"]),
        output::time(&d["delivered_at"]),
    ]
}
