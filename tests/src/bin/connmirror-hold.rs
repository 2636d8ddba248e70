//! `connmirror-hold SERVER N SOURCE...`: holds `N` idle connections to the
//! Redis at `SERVER`, opened from the `SOURCE` addresses in turn, for the
//! churn test (`tests/src/churn.rs`, [`connmirror_tests::churn::Holder`]).
//! A process holds at most its open-file limit, so the test runs several.
//!
//! Prints `held N` once every connection is open. Then, for each line
//! `ping STEP` on stdin, sends `PING` on every STEP-th connection and prints
//! `pong` once each answered `+PONG` (or `error: ...`). At the end of stdin
//! it exits, which closes them all.

use std::io::BufRead as _;
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, bail};
use connmirror_tests::churn::{Client, raise_file_limit};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, n, sources @ ..] = args.as_slice() else {
        bail!("usage: connmirror-hold SERVER N SOURCE...");
    };
    let server: SocketAddr = server.parse().context("SERVER")?;
    let n: u64 = n.parse().context("N")?;
    let sources: Vec<IpAddr> = (sources.iter())
        .map(|s| s.parse().context("SOURCE"))
        .collect::<anyhow::Result<_>>()?;
    if sources.is_empty() {
        bail!("no SOURCE address");
    }
    let files = raise_file_limit();
    if n + 64 > files {
        bail!("{n} connections need more files than this process may open ({files})");
    }
    let client = Client::here();
    let mut held = client.hold(server, &sources, n);
    println!("held {}", held.len());
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading stdin")?;
        let step = line
            .strip_prefix("ping ")
            .and_then(|s| s.trim().parse().ok());
        let Some(step) = step else {
            bail!("unknown command {line:?}");
        };
        match client.ping(&mut held, step) {
            Ok(()) => println!("pong"),
            Err(e) => println!("error: {e}"),
        }
    }
    Ok(())
}
