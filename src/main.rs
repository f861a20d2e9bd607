use anyhow::Context;
use clap::{Parser, Subcommand};

use openbatch::cli::KeysCommand;
use openbatch::config::Settings;
use openbatch::startup::Application;

// Under load glibc's malloc took a quarter of a replica's CPU (perf: many small allocations per
// line across many threads); mimalloc does the same work for much less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (the Rust bindings do not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// By default mimalloc keeps freed memory for a while before handing it back; with lines of a
/// few KiB that kept a replica's RSS near 100 MiB where it needs half. Return it at once.
fn return_freed_memory_at_once() {
    // SAFETY: sets a process-wide allocator option (a plain store mimalloc reads on its next
    // purge); no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

#[derive(Parser)]
#[command(
    name = "openbatch",
    version,
    about = "OpenAI-compatible Batch and Files API server, and a client for it",
    after_help = "Server: `openbatch serve` (the default) reads OPENBATCH__* settings.\n\
                  Client: `submit`, `batches`, `files` talk to a server at OPENAI_BASE_URL \
                  (default http://127.0.0.1:8080/v1) with OPENAI_API_KEY, like the OpenAI SDKs.\n\
                  Example: openbatch submit requests.jsonl --wait"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (applies pending migrations first). The default.
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage API keys: through the Admin API when OPENAI_ADMIN_KEY is set, else in the
    /// database (how the first admin key is made).
    Keys(openbatch::cli::KeysArgs),
    /// Client: upload a JSONL file and create a batch (safe to re-run: same file and options,
    /// same batch, no second upload).
    Submit(openbatch::cli::SubmitArgs),
    /// Client: list, get, wait for, cancel batches and fetch their results.
    Batches(openbatch::cli::BatchesArgs),
    /// Client: list, upload, download and delete files.
    Files(openbatch::cli::FilesArgs),
    /// Client: manage webhook endpoints (create, list, get, delete, rotate, enable, deliveries).
    Webhooks(openbatch::cli::WebhooksArgs),
}

fn main() {
    return_freed_memory_at_once();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    // Client commands never read the server's settings: they talk to a server over HTTP.
    let result = match command {
        Command::Submit(args) => client(openbatch::cli::submit(args)),
        Command::Batches(args) => client(openbatch::cli::batches(args)),
        Command::Files(args) => client(openbatch::cli::files(args)),
        Command::Webhooks(args) => client(openbatch::cli::webhooks(args)),
        Command::Keys(args) if args.admin_key.as_deref().is_some_and(|k| !k.is_empty()) => {
            client(openbatch::cli::keys(args))
        }
        server => Settings::load().and_then(|settings| {
            runtime(Some(settings.worker.threads))?.block_on(run(server, settings))
        }),
    };
    if let Err(e) = result {
        eprintln!("openbatch: {e:#}");
        std::process::exit(1);
    }
}

/// Runs a client command and exits with its status.
fn client(work: impl std::future::Future<Output = anyhow::Result<i32>>) -> anyhow::Result<()> {
    let code = runtime(None)?.block_on(work)?;
    std::process::exit(code)
}

/// The process's runtime: `threads` workers for the server (`worker.threads`), tokio's default
/// (one per core) for a client.
fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn run(command: Command, mut settings: Settings) -> anyhow::Result<()> {
    let _telemetry = openbatch::telemetry::init(&settings.log, &settings.telemetry)?;
    // First run on a laptop: no URL configured and nothing on 127.0.0.1:5432 starts a private
    // PostgreSQL, stopped when this returns.
    let _local_pg = openbatch::local_pg::start_if_needed(&mut settings)?;
    match command {
        Command::Serve => {
            let app = Application::build(&settings).await?;
            app.run_until_stopped().await.context("server failed")
        }
        Command::Migrate => {
            let pool = openbatch::store::connect(&settings.database).await?;
            openbatch::store::migrate(&pool).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Keys(args) => {
            let pool = openbatch::store::connect(&settings.database).await?;
            openbatch::store::migrate(&pool).await?;
            keys(&pool, args.command).await
        }
        Command::Submit(_) | Command::Batches(_) | Command::Files(_) | Command::Webhooks(_) => {
            unreachable!("client commands are run by main")
        }
    }
}

/// `openbatch keys` straight to the database.
async fn keys(pool: &sqlx::PgPool, command: KeysCommand) -> anyhow::Result<()> {
    use openbatch::domain::ApiKey;
    use openbatch::store::keys;
    match command {
        KeysCommand::Create {
            project,
            built_in,
            admin,
            name: owner,
        } => {
            use openbatch::domain::{ProjectId, ProjectName, BUILT_IN_PROJECT_NAME};
            let key = ApiKey::generate();
            if admin {
                keys::insert_admin(pool, &key, &owner).await?;
                eprintln!("created admin key {} ('{owner}')", key.prefix);
                println!("{}", key.secret);
                return Ok(());
            }
            let (project_id, name) = match project {
                Some(raw) if !built_in => {
                    let name = ProjectName::parse(&raw).map_err(|e| {
                        anyhow::anyhow!(
                            "--project: {e} (--built-in gives a key access to the built-in \
                             project's data on purpose)"
                        )
                    })?;
                    let id = keys::ensure_project(pool, &name).await?;
                    (id, name.as_str().to_owned())
                }
                _ => (ProjectId::built_in(), BUILT_IN_PROJECT_NAME.to_owned()),
            };
            let (account, _) = keys::create_owned(pool, &project_id, &owner, &key).await?;
            eprintln!(
                "created key {} for project '{name}' (service account {})",
                key.prefix, account.id
            );
            println!("{}", key.secret);
        }
        KeysCommand::List => {
            println!(
                "{:<20} {:<24} {:<12} state",
                "prefix", "project", "created_at"
            );
            for k in keys::list(pool).await? {
                let state = match k.revoked_at {
                    Some(at) => format!("revoked at {at}"),
                    None => "active".to_owned(),
                };
                println!(
                    "{:<20} {:<24} {:<12} {state}",
                    k.prefix, k.project, k.created_at
                );
            }
        }
        KeysCommand::Revoke { prefix } => {
            anyhow::ensure!(
                keys::revoke(pool, &prefix).await?,
                "no active key has the prefix '{prefix}'"
            );
            eprintln!("revoked {prefix}");
        }
    }
    Ok(())
}
