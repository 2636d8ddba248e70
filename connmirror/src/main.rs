//! The `connmirror` command.

use std::{
    io::{IsTerminal as _, Write as _},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use connmirror::{
    cluster::EtcdArgs,
    daemon::agent::{self, AgentArgs},
    daemon::config::{self, Config, Layout},
    daemon::control::{self, DEFAULT_CONTROL, Request, Response},
    daemon::mirror::{self, MirrorRoleArgs},
    daemon::standby::{self, StandbyArgs},
    failover::takeover::TakeoverReport,
    flow::inspect,
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
    ///
    /// On a box of its own (a router or load balancer on the path),
    /// --replicate-to streams the journal to standbys that take over from it
    /// as from an on-host agent.
    Mirror(MirrorRoleArgs),
    /// Run as the inline standby: mirror the services on both links and wait
    /// for a takeover (`connmirror takeover`).
    ///
    /// On takeover the standby quiesces the clients' segments and fences the
    /// old primary (XDP/TC drops), makes the service address local, rebuilds
    /// every restorable connection with TCP_REPAIR, resets and counts the
    /// others, and resumes each connection by handoff or replay (--resume).
    /// Prints `ready` on stdout once attached; SIGINT/SIGTERM stop it and write
    /// the report, takeovers included.
    Standby(Box<StandbyArgs>),
    /// Run on the primary: send authenticated heartbeats (HMAC-SHA256 under the
    /// shared key, a counter that only grows) with this node's ownership to the
    /// standby every --interval ms. Prints `ready` after the first one.
    ///
    /// With --iface and --replicate-to (on-host mode) it also captures the
    /// services on this host's interfaces and streams the journal to the
    /// standby over an encrypted, authenticated channel (Noise, keyed by
    /// --key); --sync holds outgoing segments until the standby has them.
    Agent(Box<AgentArgs>),
    /// Ask a running standby to take services over now.
    ///
    /// Prints what the takeover did: each step with its duration, flows
    /// restored, reset and unrecoverable by reason. Exits 1 if the standby
    /// refused or could not be reached.
    Takeover {
        /// Only this service (repeat for several) [default: every service].
        #[arg(long = "service", value_name = "IP:PORT")]
        services: Vec<std::net::SocketAddr>,
        /// The standby's control socket.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL)]
        control: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move the live connections of a node's services to NODE, which then
    /// owns them: planned maintenance, or failback by hand.
    ///
    /// Ask the node that serves the connections now, on its control socket:
    ///
    /// - the primary's agent (`agent --control PATH`), with no failure at
    ///   all: NODE is the standby (its `--node-id`). The services are
    ///   quiesced (by an inline standby on the path, on-host by the agent's
    ///   own capture), the agent saves the server's sockets (`TCP_REPAIR`,
    ///   taken from the server process with `pidfd_getfd`), the standby
    ///   rebuilds them and hands them to its application on the handoff
    ///   socket, and the agent steps down. The server's own sockets are let
    ///   go without a segment.
    ///
    /// - a standby that took services over: NODE's agent must be heard
    ///   (recovering, or as the primary) and run with `--handoff`; the
    ///   standby must keep its sockets (`--failback migrate` or
    ///   `--keep-sockets`).
    ///
    /// Prints what moved; exits 1 if the node refused or the migration failed
    /// (the connections then stay where they were).
    Migrate {
        /// The node id to move the connections to.
        #[arg(long, value_name = "NODE")]
        to: String,
        /// Only this service (repeat for several) [default: every service it serves].
        #[arg(long = "service", value_name = "IP:PORT")]
        services: Vec<std::net::SocketAddr>,
        /// The control socket of the node serving the connections (the
        /// standby's, or the agent's `--control`).
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL)]
        control: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a running node's status: role, epoch, the peer it hears (last
    /// heartbeat), services, flows by readiness, replication lag.
    ///
    /// A standby answers on its control socket; the primary's agent on its
    /// `--control` socket (role `primary`, `recovering` or `stepped-down`).
    Status {
        /// The node's control socket (the standby's, or the agent's `--control`).
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL)]
        control: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Show the whole cluster instead, from etcd (`--etcd`): every
        /// service's owner and epoch, its standbys, their lag and protection.
        #[arg(long, requires = "endpoints")]
        cluster: bool,
        /// With --cluster: the cluster's id.
        #[arg(long, value_name = "ID", default_value = "connmirror")]
        cluster_id: String,
        /// With --cluster: where etcd is.
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Take a journal apart without a running daemon.
    #[command(subcommand)]
    Journal(JournalCommand),
    /// Check configuration files (`--config FILE`).
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// What a configuration file configures: a table per subcommand, and the
/// client commands take the node's control socket (the standby's, else the
/// agent's) unless they set theirs.
const LAYOUT: Layout<'static> = Layout {
    tables: &[
        "mirror", "standby", "agent", "takeover", "status", "migrate",
    ],
    inherit: &[(
        "control",
        &["standby", "agent"],
        &["takeover", "status", "migrate"],
    )],
};

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a configuration file without starting anything, and print each of
    /// its tables as the settings it gives (file values, then defaults, as
    /// TOML). Exits 1 with `error: FILE:LINE: ...` at the first problem: TOML
    /// syntax, an unknown key, a value of the wrong type or one the flag's
    /// parser rejects, a table that lacks a required key.
    Check {
        /// The configuration file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum JournalCommand {
    /// List the journal's flows: state, readiness, byte counts, and live
    /// replay's divergences. Read-only.
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

fn config(command: ConfigCommand) -> anyhow::Result<()> {
    let ConfigCommand::Check { file } = command;
    let cmd = cli_command();
    let effective = Config::read(&file, &cmd, &LAYOUT)?.effective(&cmd)?;
    print!("{effective}");
    Ok(())
}

/// The command line's definition, with `--config` on the subcommands a file
/// configures.
fn cli_command() -> clap::Command {
    config::with_config_flag(Cli::command(), &LAYOUT)
}

/// Parses the command line, merged with the `--config` file it names. A bad
/// file is an `error:` line and exit 1; a bad command line is clap's usage
/// error (exit 2).
fn parse_cli() -> Result<Cli, config::ConfigError> {
    let cmd = cli_command();
    let argv = config::apply(&cmd, &LAYOUT, std::env::args_os().collect())?;
    let matches = cmd.get_matches_from(argv);
    Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

fn takeover(
    services: Vec<std::net::SocketAddr>,
    control: &std::path::Path,
    json: bool,
) -> anyhow::Result<()> {
    let request = Request::Takeover {
        services: (!services.is_empty()).then_some(services),
    };
    let pick = |response| match response {
        Response::Takeover(report) => Some(report),
        _ => None,
    };
    ask(control, &request, "a takeover", pick, json, print_takeover)
}

fn status(control: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let pick = |response| match response {
        Response::Status(status) => Some(status),
        _ => None,
    };
    ask(
        control,
        &Request::Status,
        "a status request",
        pick,
        json,
        |status, out| status.print(out),
    )
}

/// `connmirror status --cluster`: the cluster as etcd has it.
async fn cluster_status(etcd: &EtcdArgs, cluster_id: &str, json: bool) -> anyhow::Result<()> {
    let status = connmirror::daemon::status::cluster::read(etcd, cluster_id)
        .await
        .context("reading the cluster from etcd")?;
    let mut out = std::io::stdout().lock();
    match json {
        true => writeln!(out, "{}", serde_json::to_string_pretty(&status)?),
        false => status.print(&mut out),
    }
    .context("writing to stdout")
}

fn migrate(
    to: String,
    services: Vec<std::net::SocketAddr>,
    control: &std::path::Path,
    json: bool,
) -> anyhow::Result<()> {
    let request = Request::Migrate {
        to,
        services: (!services.is_empty()).then_some(services),
    };
    let pick = |response| match response {
        Response::Migrate(report) => Some(report),
        _ => None,
    };
    ask(
        control,
        &request,
        "a migration",
        pick,
        json,
        |report, out| {
            let services: Vec<String> = report.services.iter().map(ToString::to_string).collect();
            writeln!(
                out,
                "migrated {} connections of {} to {} (at {}); {} could not be taken; it claims epoch {}",
                report.moved,
                services.join(", "),
                report.to,
                report.peer,
                report.errors.len(),
                report.epoch + 1
            )
        },
    )
}

/// Sends `request` to the standby's control socket and prints the answer
/// `pick` accepts: as JSON with `json`, else with `human`. A refusal or
/// another kind of answer is an error naming `what` was asked.
fn ask<T: serde::Serialize>(
    control: &std::path::Path,
    request: &Request,
    what: &str,
    pick: impl FnOnce(Response) -> Option<T>,
    json: bool,
    human: impl FnOnce(&T, &mut std::io::StdoutLock<'static>) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let answer = match control::request(control, request)? {
        Response::Error(err) => anyhow::bail!("the node refused: {err}"),
        other => match pick(other) {
            Some(answer) => answer,
            None => anyhow::bail!("the node answered {what} with something else"),
        },
    };
    let mut stdout = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut stdout, &answer)?;
        writeln!(stdout)?;
    } else {
        human(&answer, &mut stdout)?;
    }
    Ok(())
}

fn print_takeover(report: &TakeoverReport, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let services: Vec<String> = report.services.iter().map(ToString::to_string).collect();
    writeln!(
        out,
        "takeover of {}: {} restored ({} handed off, {} live, {} replayed, {} first seen \
         mid-stream), {} divergent, {} unrecoverable, {} reset, {} closed",
        services.join(", "),
        report.restored,
        report.handed_off,
        report.live,
        report.replayed,
        report.mid_stream,
        report.divergent,
        report.unrecoverable_total(),
        report.reset,
        report.closed,
    )?;
    for (reason, n) in &report.unrecoverable {
        writeln!(out, "  unrecoverable {reason}: {n}")?;
    }
    for step in &report.steps {
        writeln!(
            out,
            "  {:<12} {:>10.3} ms",
            step.name,
            step.micros as f64 / 1e3
        )?;
    }
    for error in &report.errors {
        writeln!(out, "  error: {error}")?;
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
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(err) => {
            eprintln!("error: {:#}", anyhow::Error::from(err));
            return ExitCode::FAILURE;
        }
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            runtime.block_on(async {
                match cli.command {
                    Command::Mirror(args) => mirror::run(args).await,
                    Command::Standby(args) => standby::run(*args).await,
                    Command::Agent(args) => agent::run(*args).await,
                    Command::Status {
                        cluster: true,
                        cluster_id,
                        etcd,
                        json,
                        ..
                    } => cluster_status(&etcd, &cluster_id, json).await,
                    Command::Status { control, json, .. } => status(&control, json),
                    Command::Takeover {
                        services,
                        control,
                        json,
                    } => takeover(services, &control, json),
                    Command::Migrate {
                        to,
                        services,
                        control,
                        json,
                    } => migrate(to, services, &control, json),
                    Command::Journal(command) => journal(command),
                    Command::Config(command) => config(command),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line, `--config` included, is consistent (no conflicting
    /// names or bad defaults).
    #[test]
    fn cli_definition_is_valid() {
        cli_command().debug_assert();
    }
}
