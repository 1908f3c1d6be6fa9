//! `bulkhead`: the companion program of the Bulkhead PostgreSQL extension.
//!
//! The extension owns all state and decisions; this program carries out side effects and shows
//! the system at work. Today: `bulkhead demo`. The job worker arrives with the daemon issue.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod demo;

#[derive(Parser)]
#[command(
    name = "bulkhead",
    version,
    about = "Companion program of the Bulkhead PostgreSQL extension"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Narrated walk-through of tenant isolation on a fresh database (recreated at every run).
    Demo {
        /// Superuser URL of the database to (re)create for the demo.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Demo { database_url } => demo::run(&database_url).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bulkhead: {err}");
            ExitCode::FAILURE
        }
    }
}
