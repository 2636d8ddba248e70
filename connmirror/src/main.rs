//! The `connmirror` command.

use std::{
    io::{IsTerminal as _, Write as _},
    path::PathBuf,
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use connmirror::{
    journal::inspect,
    mirror::{self, MirrorArgs},
};
use connmirror_common::Direction;
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
    /// Take a journal apart without a running daemon.
    #[command(subcommand)]
    Journal(JournalCommand),
}

#[derive(Debug, Subcommand)]
enum JournalCommand {
    /// List the journal's flows: state, readiness, byte counts. Read-only.
    Inspect {
        /// The journal directory (`mirror --journal DIR`).
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Skip (and count) damaged records in sealed segments instead of failing.
        #[arg(long)]
        salvage: bool,
    },
    /// Write one direction of one flow, as journaled, to stdout.
    Dump {
        /// The journal directory.
        dir: PathBuf,
        /// Flow id (see `journal inspect`).
        #[arg(long)]
        flow: u64,
        /// Which direction.
        #[arg(long = "dir", value_enum)]
        direction: Way,
        /// Skip (and count) damaged records in sealed segments instead of failing.
        #[arg(long)]
        salvage: bool,
    },
}

/// A flow direction on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Way {
    /// Client to server.
    C2s,
    /// Server to client.
    S2c,
}

fn journal(command: JournalCommand) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match command {
        JournalCommand::Inspect { dir, json, salvage } => {
            let inspection = inspect::inspect(&dir, salvage)?;
            if json {
                serde_json::to_writer_pretty(&mut stdout, &inspection)?;
                writeln!(stdout)?;
            } else {
                inspect::print_table(&inspection, &mut stdout)?;
            }
        }
        JournalCommand::Dump {
            dir,
            flow,
            direction,
            salvage,
        } => {
            let direction = match direction {
                Way::C2s => Direction::ClientToServer,
                Way::S2c => Direction::ServerToClient,
            };
            let start = inspect::dump(&dir, flow, direction, salvage, &mut stdout)?;
            if start > 0 {
                eprintln!(
                    "note: the journal holds this stream from byte {start} on; earlier bytes \
                     were released under the retention policy"
                );
            }
        }
    }
    Ok(())
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
                    Command::Journal(command) => journal(command),
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
