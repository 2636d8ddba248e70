//! `cargo xtask demo`: live capture of a TCP stream by a gateway, checked byte for byte.
//!
//! Builds client ↔ gateway ↔ server out of network namespaces, starts
//! `connmirror mirror` on both gateway links (ingress capture on each, the inline
//! deployment of DESIGN.md), streams random data both ways for about ten seconds
//! while a live line shows the progress, then stops the mirror and compares the
//! SHA-256 of what each side sent with the mirror's dump of that direction.
//!
//! Exits 0 when both directions match and the flow is complete, 1 on any mismatch
//! or failure, 130 when interrupted (SIGINT/SIGTERM). The namespaces are removed in
//! every case.
//!
//! Needs root and `CONNMIRROR_BIN` (set by `cargo xtask demo`).

use std::collections::VecDeque;
use std::io::{IsTerminal as _, Write as _};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use connmirror_common::Counter;
use connmirror_tests::live::{self, Bounds, Interrupted, LiveStream};
use connmirror_tests::mirror::FlowStatus;
use connmirror_tests::{Digest, Family, Mirror, MirrorCommand, Topology};

/// How to run this program, for error messages.
const VIA: &str = "cargo xtask demo";
/// The service the server listens on and the mirror tracks.
const PORT: u16 = 7000;
/// How long the stream runs.
const STREAM_TIME: Duration = Duration::from_secs(10);
/// Cap on each direction, so a fast machine cannot fill the disk with dumps.
const MAX_BYTES_EACH_WAY: u64 = 4_000_000_000;
/// How long the stream may take to drain after the senders stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Ingress capture on both gateway links, nothing on egress: the inline mode. TC
/// rather than XDP because native XDP on a veth turns TSO off on its peer
/// (DESIGN.md, "Attach point matters more than the copy").
const INGRESS: &str = "tc";
const EGRESS: &str = "none";

fn main() -> ExitCode {
    let started = Instant::now();
    let pid = std::process::id();
    let outcome = catch_unwind(AssertUnwindSafe(run));
    // Every guard has dropped by now, on every path: check that it worked.
    let leftovers = live::namespaces_of(pid);
    let code = match outcome {
        Ok(Ok(true)) => {
            println!(
                "\nResult: OK. The mirror's copy of both directions is byte-exact ({:.0} s in all).",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Ok(Ok(false)) => {
            println!("\nResult: MISMATCH (see the table above).");
            ExitCode::FAILURE
        }
        Ok(Err(err)) if err.is::<Interrupted>() => {
            eprintln!("\ninterrupted: stopped early; the namespaces were removed");
            ExitCode::from(130)
        }
        Ok(Err(err)) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("\nerror: the demo failed (the message is above)");
            ExitCode::FAILURE
        }
    };
    if !leftovers.is_empty() {
        eprintln!(
            "error: namespaces left behind: {leftovers:?}; remove them with `ip netns del NAME`"
        );
        return ExitCode::FAILURE;
    }
    code
}

/// The whole demo. `Ok(true)` when every check passed.
fn run() -> Result<bool> {
    live::require_root("connmirror-demo", VIA)?;
    live::require_connmirror_bin(VIA)?;
    live::install_interrupt_handler()?;

    println!(
        "connmirror demo: a gateway between two network namespaces mirrors a live TCP stream \
         for {} s, then checks its copy byte for byte.\n",
        STREAM_TIME.as_secs()
    );

    live::wait_for_host(
        "      (waiting for another connmirror test or benchmark to release the host...)",
    )?;
    step(1, "Creating namespaces client <-> gateway <-> server");
    let topo = Topology::new();
    let names = topo.namespace_names();
    println!("      {}", names.join(", "));
    let service = topo.service(Family::V4, PORT);
    live::interrupt_point()?;

    let checks = {
        let [if_c, if_s] = topo.gateway_ifaces();
        step(
            2,
            &format!(
                "Starting the mirror in the gateway: connmirror mirror --iface {if_c} --iface {if_s} \
                 --service {service} --ingress {INGRESS} --egress {EGRESS}"
            ),
        );
        let command = MirrorCommand::new()
            .ifaces(topo.gateway_ifaces())
            .service(service)
            .ingress(INGRESS)
            .egress(EGRESS);
        let t = Instant::now();
        let mirror = Mirror::start(&topo.gateway, &command);
        println!(
            "      ready in {:.1} s: capture programs attached to {if_c} and {if_s}",
            t.elapsed().as_secs_f64()
        );
        live::interrupt_point()?;

        step(
            3,
            &format!(
                "Streaming random data both ways, client {} <-> server {service}, for {} s",
                topo.client_addr(Family::V4),
                STREAM_TIME.as_secs()
            ),
        );
        let stream = LiveStream::start(
            &topo.client,
            &topo.server,
            service,
            Bounds {
                duration: STREAM_TIME,
                max_bytes_each_way: MAX_BYTES_EACH_WAY,
            },
        )?;
        watch(&stream, &mirror)?;
        let exchange = stream.finish(DRAIN_TIMEOUT)?;
        println!(
            "      done: {} client -> server, {} server -> client in {:.1} s ({:.2} Gbit/s both ways together)",
            gb(exchange.client.sent_bytes),
            gb(exchange.server.sent_bytes),
            exchange.elapsed.as_secs_f64(),
            exchange.throughput_bytes_per_sec() * 8.0 / 1e9
        );

        step(
            4,
            "Stopping the mirror (SIGINT) and reading its report.json",
        );
        let t = Instant::now();
        let (report, dir) = mirror.stop();
        println!("      stopped in {:.1} s", t.elapsed().as_secs_f64());
        let flows: Vec<_> = report
            .flows
            .iter()
            .filter(|f| f.client == exchange.client.addr && f.server == service)
            .collect();
        let [flow] = flows[..] else {
            bail!(
                "report.json lists {} flows for {} -> {service} (expected 1); all flows: {:?}",
                flows.len(),
                exchange.client.addr,
                report.flows
            );
        };

        println!();
        println!(
            "      {:<16} {:>15}  {:<18} {:<18} {:<18} match",
            "direction", "bytes sent", "sha256 sent", "sha256 received", "sha256 mirror"
        );
        let mut all_ok = true;
        for (name, sender, receiver, dump) in [
            (
                "client -> server",
                &exchange.client,
                &exchange.server,
                &flow.c2s,
            ),
            (
                "server -> client",
                &exchange.server,
                &exchange.client,
                &flow.s2c,
            ),
        ] {
            let mirrored = dump.sha256();
            let ok = mirrored == sender.sent
                && receiver.received == sender.sent
                && dump.delivered == sender.sent_bytes;
            all_ok &= ok;
            println!(
                "      {name:<16} {:>15}  {:<18} {:<18} {:<18} {}",
                thousands(sender.sent_bytes),
                short(sender.sent),
                short(receiver.received),
                short(mirrored),
                if ok { "OK" } else { "MISMATCH" }
            );
            if dump.delivered != sender.sent_bytes || !dump.holes.is_empty() {
                println!(
                    "      {name}: the mirror reassembled {} bytes; holes {:?}; conflicting bytes {}",
                    thousands(dump.delivered),
                    dump.holes,
                    dump.conflicting_bytes
                );
            }
        }
        let status = match flow.status {
            FlowStatus::Complete => "complete (every byte up to both FINs, no gap)",
            FlowStatus::Open => "open (no FIN seen both ways, nothing missing)",
            FlowStatus::Reset => "reset (a RST ended it; nothing acknowledged is missing)",
            FlowStatus::Gapped => "GAPPED (acknowledged bytes are missing from the capture)",
        };
        all_ok &= flow.status == FlowStatus::Complete;
        println!(
            "\n      flow {} -> {}: {status}; handshake seen: {}; reset: {}",
            flow.client,
            flow.server,
            yes(flow.handshake),
            yes(flow.rst)
        );
        println!(
            "      kernel counters: packets_tracked {}, records {}, bytes_captured {}, \
             ring_full {}, backpressure_drops {}",
            thousands(report.counter(Counter::PacketsTracked)),
            thousands(report.counter(Counter::Records)),
            thousands(report.counter(Counter::BytesCaptured)),
            thousands(report.counter(Counter::RingFull)),
            thousands(report.counter(Counter::BackpressureDrops)),
        );
        if report.counter(Counter::BackpressureDrops) > 0 {
            println!(
                "      (backpressure: while the ring buffer was full the gateway dropped those \
                 segments instead of forwarding them uncaptured; TCP resent them and the \
                 copies were captured, so nothing is missing)"
            );
        }
        println!(
            "      userspace read {} records ({} undecodable)",
            thousands(report.userspace.records),
            report.userspace.decode_errors
        );
        drop(dir); // the dump files
        all_ok
    };

    step(5, "Removing the namespaces");
    drop(topo);
    let left = live::namespaces_of(std::process::id());
    if left.is_empty() {
        println!(
            "      done: `ip netns list` no longer shows {}",
            names.join(", ")
        );
    } else {
        bail!("namespaces left behind: {left:?}");
    }
    Ok(checks)
}

/// Prints the live line until the stream ends (or the signal flag is set).
///
/// On a terminal the line is redrawn in place four times a second (`\r` on
/// stderr); otherwise one line is printed every two seconds.
fn watch(stream: &LiveStream, mirror: &Mirror) -> Result<()> {
    let tty = std::io::stderr().is_terminal();
    let period = if tty {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(2)
    };
    let dump_dir = mirror.dump_dir();
    // (time, bytes delivered both ways) over the last second, for the rate.
    let mut window: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut last = Instant::now() - period;
    let deadline = Instant::now() + STREAM_TIME + DRAIN_TIMEOUT;
    loop {
        live::interrupt_point()?;
        let done = stream.is_finished() || Instant::now() >= deadline;
        if done || last.elapsed() >= period {
            last = Instant::now();
            let p = stream.progress();
            let total = p.c2s_received + p.s2c_received;
            window.push_back((last, total));
            while window.len() > 2 && last.duration_since(window[0].0) > Duration::from_secs(1) {
                window.pop_front();
            }
            let (t0, b0) = window[0];
            let secs = last.duration_since(t0).as_secs_f64();
            let rate = if secs > 0.0 {
                (total - b0) as f64 * 8.0 / secs / 1e9
            } else {
                0.0
            };
            let line = format!(
                "      {:>4.1} s  client -> server {}  server -> client {}  {rate:5.2} Gbit/s  mirror has {}",
                stream.elapsed().as_secs_f64().min(99.9),
                gb(p.c2s_received),
                gb(p.s2c_received),
                gb(live::dir_bytes(&dump_dir)),
            );
            let mut err = std::io::stderr().lock();
            if tty {
                let _ = write!(err, "\r{line}\x1b[K");
                if done {
                    let _ = writeln!(err);
                }
            } else {
                let _ = writeln!(err, "{line}");
            }
            let _ = err.flush();
        }
        if done {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn step(n: u32, what: &str) {
    println!("[{n}/5] {what}");
}

/// `1.23 GB`.
fn gb(bytes: u64) -> String {
    format!("{:6.2} GB", bytes as f64 / 1e9)
}

/// `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The first 16 hex digits of a digest.
fn short(d: Digest) -> String {
    d.to_string()[..16].to_owned()
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
