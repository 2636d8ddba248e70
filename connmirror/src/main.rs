//! The `connmirror` command.

use std::{
    io::{IsTerminal as _, Write as _},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::FromArgMatches as _;
use connmirror::{
    cluster::EtcdArgs,
    daemon::agent,
    daemon::cli::{Cli, Command, ConfigCommand, JournalCommand, LAYOUT, Way, cli_command},
    daemon::config::{self, Config},
    daemon::control::{self, Request, Response},
    daemon::mirror,
    daemon::standby,
    failover::takeover::TakeoverReport,
    flow::inspect,
};
use connmirror_common::Direction;
use tracing_subscriber::EnvFilter;

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
