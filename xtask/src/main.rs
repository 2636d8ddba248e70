//! `cargo xtask`: bootstrap, build, run, test, demo, bench and lint connmirror,
//! and check its module dependencies.
//!
//! Every task prints each command it runs (`==> cargo build --release -p connmirror`)
//! and stops at the first failing step with an error that says what failed and how
//! to fix it. The tasks that load eBPF programs (`run`, `test`, `demo`, `bench`)
//! need root.
//!
//! This crate must build with nothing but a stable toolchain: it depends only on
//! `anyhow` and `clap`, and installs everything else (`setup`).

mod apt;
mod bpf_linker;
mod build_env;
mod cargo_fuzz;
mod deps;
mod host;
mod lint;
mod run;
mod rustup;
mod setup;
mod tasks;
mod workspace;

use std::path::PathBuf;
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
    /// benchmarks use (iperf3 memcached prometheus redis-server socat tcpdump
    /// ethtool iproute2 procps util-linux fonts-dejavu-core, through apt-get,
    /// which needs root). Prints
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
    /// Build the daemon and run it with ARGS as root (through `sudo -E` if needed).
    ///
    /// Builds like `build` (release unless --debug), then runs `<daemon> ARGS`:
    /// directly when running as root, else as `sudo -E <daemon> ARGS`, which may
    /// ask for a password. The daemon replaces this process, so it gets the
    /// terminal and Ctrl-C, and its exit status is this command's.
    #[command(after_help = "Example: cargo xtask run -- mirror --help")]
    Run {
        /// Build and run the debug profile instead of the default, release.
        #[arg(long)]
        debug: bool,
        /// The daemon's arguments, after `--` (e.g. `-- mirror --help`).
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Run all lints, then all tests: unit and property tests, then the
    /// end-to-end tests (needs root).
    ///
    /// Runs setup, builds the release daemon, mounts bpffs at /sys/fs/bpf when it
    /// is not mounted, runs every check of `lint`, then runs
    /// `cargo test --release -p connmirror-common --features connmirror-common/std -p connmirror -p connmirror-handoff -p connmirror-fuzz -p xtask`
    /// and `cargo test --release -p connmirror-tests -- --test-threads=1` with
    /// CONNMIRROR_BIN set to the daemon (and CONNMIRROR_ECHO_EXAMPLE to the echo
    /// example). Needs root: the end-to-end tests create
    /// network namespaces and load eBPF programs (try: sudo -E cargo xtask test).
    /// The tests run even when a lint fails; the task then fails. The last line
    /// counts the tests: `cargo xtask test: N passed, N failed`.
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
    /// Run the chaos soak for N minutes and record its summary (needs root).
    ///
    /// Runs setup, builds the release daemon, mounts bpffs when needed, then
    /// runs `connmirror-bench soak --minutes N`: four echo streams and a run
    /// of short connections through cycles of forged and delayed heartbeats,
    /// the primary host killed, an automatic takeover and a failback by
    /// migration, checked after every cycle (tests/src/soak.rs). The summary
    /// goes to bench/data/soak.json and the "Chaos soak" section of
    /// bench/RESULTS.md. Fails if a stream lost a byte, a RST reached one,
    /// or the standby's memory or open files grew.
    Soak {
        /// How long to soak.
        #[arg(long, value_name = "N", default_value_t = 30,
              value_parser = clap::value_parser!(u64).range(1..))]
        minutes: u64,
    },
    /// Fuzz the decoders of outside bytes and record what each target did.
    ///
    /// Runs setup, installs cargo-fuzz if it is missing, then `cargo run
    /// --release -p connmirror-tests --bin connmirror-bench -- fuzz [TARGET]
    /// --time S --runs N`: each target of fuzz/ (fuzz/README.md) runs with
    /// `cargo fuzz run` on nightly from its corpus in fuzz/corpus/, until S
    /// seconds or N executions, whichever comes first. The corpus keeps what
    /// the fuzzer found; bench/data/fuzz.json and the "Fuzzing" section of
    /// bench/RESULTS.md get each target's run. Fails if a target crashed,
    /// hung or ran out of memory (libFuzzer saved the input under
    /// fuzz/artifacts/TARGET/; the output is in target/fuzz-logs/TARGET.log).
    /// Needs no root.
    Fuzz {
        /// One target (default: every target, one after the other).
        target: Option<String>,
        /// Seconds per target at most.
        #[arg(long, value_name = "S", default_value_t = 600)]
        time: u64,
        /// Executions per target at most.
        #[arg(long, value_name = "N", default_value_t = 10_000_000)]
        runs: u64,
    },
    /// Check formatting, clippy lints, module dependencies and file sizes.
    ///
    /// Runs, reporting every failure at the end: `cargo fmt --all --check`;
    /// `cargo clippy --workspace --exclude connmirror-ebpf --all-targets -- -D
    /// warnings` (which builds the eBPF object, so the build prerequisites are
    /// ensured first); `rustup run nightly cargo clippy -p connmirror-ebpf
    /// --target bpfel-unknown-none -Z build-std=core -- -D warnings` (adding
    /// nightly's clippy component if missing); `cargo xtask deps`; and a check
    /// that no .rs file under connmirror/src is over 800 lines and no function
    /// there over 80 (files named tests.rs and files under a tests/ folder are
    /// exempt). `test` runs all of it.
    Lint,
    /// Check that the daemon's top-level modules depend on each other without cycles.
    ///
    /// Each top-level module of the source tree (`name.rs` or `name/` with
    /// `name/mod.rs`) is a node; `lib.rs` and `main.rs` are the crate root, not
    /// nodes. An edge is any path to another top-level module from the crate
    /// root (`use crate::a::b`, `use crate::{a, b::c}`, `crate::a::f()` in code,
    /// or `super::` climbing to the root), in any code, tests included; comments,
    /// doc comments and string literals are ignored. Prints each module with the
    /// modules it uses, then the layers from roles (top) to leaves (bottom).
    /// Fails on a cycle, printing it as `a -> b -> a` with the file:line of one
    /// reference per edge: move that code so the edge points one way.
    #[command(
        after_help = "Example: cargo xtask deps --markdown  (Mermaid for docs/architecture.md)"
    )]
    Deps {
        /// The source tree to check, relative to the workspace root.
        #[arg(long, value_name = "DIR", default_value = deps::DEFAULT_SRC)]
        src: PathBuf,
        /// Also print the graph as a Mermaid `graph TD` block in Markdown.
        #[arg(long)]
        markdown: bool,
    },
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
    /// Client stall through an automatic failover against connection age
    /// (p50/p99/max), live replay against replay at takeover, with Redis
    /// (well over an hour; CONNMIRROR_BENCH_RESUME_RUNS and
    /// CONNMIRROR_BENCH_RESUME_AGES reduce it); then the cost on the
    /// protected path, the takeover of 10,000 idle connections, splice(2)
    /// against copy_bidirectional, and memory (the standby's RSS over 60 s of
    /// 100 streaming connections, CONNMIRROR_BENCH_RESUME_MEMORY_SECONDS).
    /// CONNMIRROR_BENCH_RESUME_PARTS=stall,cost,takeover,splice,memory picks
    /// the parts (docs/benchmarks.md).
    Resume,
    /// Heartbeat lateness under load: the gaps between the primary's
    /// heartbeats at the standby while iperf3 -P 8 saturates the host (600 s;
    /// CONNMIRROR_BENCH_HEARTBEAT_SECONDS changes it), and which detection
    /// settings they allow.
    Heartbeats,
    /// The mirror as a box of its own: a router's throughput with its mirror
    /// as a ratio to without, and the highest rate a tap's mirror keeps with
    /// no gapped flow, as a fraction of the link's rate.
    Mirror,
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
            Area::Resume => "resume",
            Area::Heartbeats => "heartbeats",
            Area::Mirror => "mirror",
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
        Task::Run { debug, args } => {
            tasks::run_daemon(workspace::Profile::from_debug(debug), &args)
        }
        Task::Test { args } => tasks::test(&args),
        Task::Demo => tasks::demo(),
        Task::Bench { area } => tasks::bench(area),
        Task::Fuzz { target, time, runs } => tasks::fuzz(target.as_deref(), time, runs),
        Task::Soak { minutes } => tasks::soak(minutes),
        Task::Lint => lint::lint(),
        Task::Deps { src, markdown } => deps::run(&src, markdown),
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

    /// `run` passes everything after `--` to the daemon, flags like `--help` too.
    #[test]
    fn run_passes_everything_after_double_dash_to_the_daemon() {
        let cli = Cli::parse_from(["xtask", "run", "--debug", "--", "mirror", "--help"]);
        let Task::Run { debug, args } = cli.task else {
            panic!("parsed {cli:?}");
        };
        assert!(debug);
        assert_eq!(args, ["mirror", "--help"]);
    }

    /// `deps` checks connmirror/src unless told otherwise.
    #[test]
    fn deps_defaults_to_the_daemon_sources() {
        let cli = Cli::parse_from(["xtask", "deps"]);
        let Task::Deps { src, markdown } = cli.task else {
            panic!("parsed {cli:?}");
        };
        assert_eq!((src, markdown), (PathBuf::from("connmirror/src"), false));
    }
}
