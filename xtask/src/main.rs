//! `cargo xtask`: bootstrap, build, test, demo, bench and lint connmirror.
//!
//! Every task prints each command it runs (`==> cargo build --release -p connmirror`)
//! and stops at the first failing step with an error that says what failed and how
//! to fix it. The tasks that load eBPF programs (`test`, `demo`, `bench`) need root.
//!
//! This crate must build with nothing but a stable toolchain: it depends only on
//! `anyhow` and `clap`, and installs everything else (`setup`).

mod apt;
mod bpf_linker;
mod build_env;
mod host;
mod run;
mod rustup;
mod setup;
mod tasks;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Developer tasks for connmirror: eBPF capture of TCP connections so a standby
/// host can restore them.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    after_help = "On a fresh machine, as root: `cargo xtask demo`, then `cargo xtask test`; \
                  both install what they need first. `cargo xtask help <COMMAND>` explains a \
                  command and its flags."
)]
struct Cli {
    /// The task to run.
    #[command(subcommand)]
    task: Task,
}

/// One `cargo xtask` subcommand.
#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing need; safe to run again.
    ///
    /// Ensures, in order: the nightly toolchain and its rust-src component (the
    /// eBPF crate is built with `-Z build-std=core`), bpf-linker 0.13.0 built
    /// against nightly's own LLVM, and the Debian packages the end-to-end tests and
    /// benchmarks use (iperf3 redis-server socat tcpdump ethtool iproute2 procps
    /// util-linux fonts-dejavu-core, through apt-get, which needs root). Prints
    /// "already present" or what it installed per item.
    Setup,
    /// Build the connmirror daemon (with its eBPF programs) and print its path.
    ///
    /// Installs the build prerequisites first when a cheap check finds one
    /// missing (nightly rust-src, bpf-linker). The Debian packages are left to
    /// `setup`, `test`, `demo` and `bench`, so building never needs root.
    Build {
        /// Build the debug profile instead of the default, release.
        #[arg(long)]
        debug: bool,
    },
    /// Run all tests: unit and property tests, then the end-to-end tests (needs root).
    ///
    /// Runs setup, builds the release daemon, mounts bpffs at /sys/fs/bpf when it
    /// is not mounted, then runs
    /// `cargo test --release -p connmirror-common --features connmirror-common/std -p connmirror -p xtask`
    /// and `cargo test --release -p connmirror-tests -- --test-threads=1` with
    /// CONNMIRROR_BIN set to the daemon (and CONNMIRROR_ECHO_EXAMPLE to the echo
    /// example). Needs root: the end-to-end tests create
    /// network namespaces and load eBPF programs (try: sudo -E cargo xtask test).
    Test {
        /// Extra arguments for both `cargo test` runs, after `--`: cargo options
        /// or a test-name filter, then optionally `--` and test-harness options
        /// (e.g. `cargo xtask test -- capture -- --nocapture`). Default: none.
        #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
        args: Vec<String>,
    },
    /// Run the demo over network namespaces and print what happened (needs root).
    ///
    /// Runs setup, builds the release daemon, mounts bpffs when needed, then runs
    /// `cargo run --release -p connmirror-tests --bin connmirror-demo` with
    /// CONNMIRROR_BIN set to the daemon.
    Demo,
    /// Run benchmarks, print their results and record them (needs root).
    ///
    /// Runs setup, builds the release daemon, mounts bpffs when needed, then runs
    /// `cargo run --release -p connmirror-tests --bin connmirror-bench -- AREA`
    /// with CONNMIRROR_BIN set to the daemon. Each area run replaces its result in
    /// bench/data/AREA.json; bench/RESULTS.md (one table per area) and the plots
    /// bench/*.png are then rewritten from every area's latest result.
    Bench {
        /// Which benchmarks to run.
        #[arg(value_enum, default_value_t = Area::All)]
        area: Area,
    },
    /// Check formatting and clippy lints of the whole workspace.
    ///
    /// Runs `cargo fmt --all --check` and `cargo clippy --workspace --exclude
    /// connmirror-ebpf --all-targets -- -D warnings` (which builds the eBPF object,
    /// so the build prerequisites are ensured first). connmirror-ebpf itself is
    /// skipped: it only builds for the bpf target, which clippy cannot check on
    /// the host.
    Lint,
}

/// A group of benchmarks run by `connmirror-bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Area {
    /// Every benchmark.
    All,
    /// Capture throughput per attach point (XDP native/generic, TC).
    Capture,
    /// Journal append rate against the disk, recovery time, idle-flow memory,
    /// and mirrored throughput with every byte journaled.
    Journal,
    /// Restore time against the number of connections, and takeover trigger
    /// to first byte (p50/p99).
    Failover,
    /// Automatic failover: primary death to the first resumed byte (p50/p99/max),
    /// then the on-host part.
    Ownership,
    /// On-host mode alone: throughput and request/echo latency with no mirror,
    /// asynchronous replication and `--sync`, as ratios in the same run.
    Onhost,
}

impl Area {
    /// The name `connmirror-bench` takes on its command line.
    pub fn as_arg(self) -> &'static str {
        match self {
            Area::All => "all",
            Area::Capture => "capture",
            Area::Journal => "journal",
            Area::Failover => "failover",
            Area::Ownership => "ownership",
            Area::Onhost => "onhost",
        }
    }
}

/// Parses the command line, runs the chosen task and prints its error, if any,
/// as one line of causes (no backtrace: the message says what to do).
fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the task `cli` names.
fn run(Cli { task }: Cli) -> anyhow::Result<()> {
    match task {
        Task::Setup => setup::ensure(setup::Scope::Full).map(drop),
        Task::Build { debug } => tasks::build(workspace::Profile::from_debug(debug)).map(drop),
        Task::Test { args } => tasks::test(&args),
        Task::Demo => tasks::demo(),
        Task::Bench { area } => tasks::bench(area),
        Task::Lint => tasks::lint(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The clap definition is consistent (no conflicting names or bad defaults).
    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    /// Arguments after `--`, including a second `--`, reach `test` untouched.
    #[test]
    fn test_passes_everything_after_double_dash() {
        let cli = Cli::parse_from(["xtask", "test", "--", "filter", "--", "--nocapture"]);
        let Task::Test { args } = cli.task else {
            panic!("parsed {cli:?}");
        };
        assert_eq!(args, ["filter", "--", "--nocapture"]);
    }
}
