use anyhow::Context;
use clap::{Parser, Subcommand};

use openbatch::config::Settings;
use openbatch::startup::Application;

#[derive(Parser)]
#[command(
    name = "openbatch",
    version,
    about = "OpenAI-compatible Batch and Files API server"
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
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("openbatch: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load()?;
    openbatch::telemetry::init(&settings.log);
    match cli.command.unwrap_or(Command::Serve) {
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
    }
}
