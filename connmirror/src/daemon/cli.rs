//! The `connmirror` command line: its subcommands and flags, and which of
//! them a configuration file (`--config`) may set ([`LAYOUT`]). The binary
//! parses with it and runs the roles; it lives in the library so that the
//! configuration's parser is fuzzed against the real definition
//! (`fuzz/`).

use std::path::PathBuf;

use clap::{CommandFactory as _, Parser, Subcommand};

use crate::{
    cluster::EtcdArgs,
    daemon::agent::AgentArgs,
    daemon::config::{self, Layout},
    daemon::control::DEFAULT_CONTROL,
    daemon::mirror::MirrorRoleArgs,
    daemon::standby::StandbyArgs,
};

/// Keeps TCP connections alive when the host that owns them dies.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
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
pub const LAYOUT: Layout<'static> = Layout {
    tables: &[
        "mirror", "standby", "agent", "takeover", "status", "migrate",
    ],
    inherit: &[(
        "control",
        &["standby", "agent"],
        &["takeover", "status", "migrate"],
    )],
};

/// `connmirror config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
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

/// `connmirror journal ...`.
#[derive(Debug, Subcommand)]
pub enum JournalCommand {
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
pub enum Way {
    /// Client to server.
    C2s,
    /// Server to client.
    S2c,
}

/// The command line's definition, with `--config` on the subcommands a file
/// configures.
pub fn cli_command() -> clap::Command {
    config::with_config_flag(Cli::command(), &LAYOUT)
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
