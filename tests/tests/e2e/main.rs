//! `e2e`: every end-to-end and kernel test of connmirror, in one test binary.
//!
//! Each module is one concept (capture, journal, failover, ownership, ...) and
//! its tests are named `module::test`. They build network namespaces, load the
//! real eBPF programs and run the real `connmirror` binary, so they need root and
//! fail (never skip) without it; the shared fixtures (namespaces, topology,
//! traffic, echo clients, the daemon under test) are the `connmirror_tests`
//! library in `tests/src/`.
//!
//! One binary rather than one per file, as aya's `test/integration-test` does:
//! each test binary links aya, tokio, snow and the daemon's library on its own,
//! so one binary per file meant 21 links of the same code (22 with the kernel
//! tests, once `connmirror/tests/kernel.rs`). Add a new concept as a module
//! here, never as a new file directly under `tests/tests/`.
//!
//! Run everything (as root) with `cargo xtask test`, which sets `CONNMIRROR_BIN`
//! and `CONNMIRROR_ECHO_EXAMPLE` and runs the tests one at a time. Run one
//! module with a filter: `cargo xtask test -- failover` (a filter matches
//! anywhere in the name; `failover::` picks that module alone), and harness
//! options after a second `--`: `cargo xtask test -- failover:: -- --nocapture`.

mod address;
mod attach;
mod capture;
mod churn;
mod cli_errors;
mod cluster;
mod config;
mod control;
mod demo;
mod disk;
mod failback;
mod failover;
mod fixtures;
mod handoff;
mod journal;
mod kernel;
mod live;
mod maintenance;
mod malformed;
mod metrics;
mod mirror_box;
mod onhost;
mod ownership;
mod payload;
mod replay;
mod restart;
mod restore;
mod soak;
mod unrecoverable;
mod wraparound;
