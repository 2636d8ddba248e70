//! The `connmirror` command.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::{Parser, Subcommand};
use connmirror::mirror::{self, MirrorArgs};
use tracing_subscriber::EnvFilter;

/// Keeps TCP connections alive when the host that owns them dies.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Capture every segment of the given services on the given interfaces and
    /// reassemble each connection's byte streams.
    ///
    /// Prints `ready` on stdout once every program is attached. SIGINT or SIGTERM
    /// detaches the programs, drains the ring buffer and writes the report
    /// (--report, or DIR/report.json with --dump-dir). Logs go to stderr (RUST_LOG=debug for more).
    Mirror(MirrorArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            runtime.block_on(async {
                match cli.command {
                    Command::Mirror(args) => mirror::run(args).await,
                }
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
