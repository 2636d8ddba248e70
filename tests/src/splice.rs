//! `cargo xtask bench resume`, part `splice`: relaying a resumed connection
//! with `tokio::io::copy_bidirectional` against `splice(2)`.
//!
//! After a takeover by replay or live replay the daemon relays the restored
//! client socket to its standby instance for the rest of the connection's
//! life (`connmirror::resume`). Issue 14 asks to use the kernel's own
//! splicing where it pays and to measure it against the userspace copy; this
//! is that measurement, on real kernel TCP sockets over the loopback of a
//! namespace of its own (address [`ADDRESS`]).
//!
//! Each measurement gets fresh sockets: a client connected to the relay's
//! client side, the relay's application side connected to a server, and the
//! relay on a thread of its own running a current-thread tokio runtime, so
//! that thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, user + system) is the
//! relay's whole cost. Two measurements per relay and round:
//! - bulk: client and server each send [`BULK_BYTES`] at once and read the
//!   other's until the end of its stream (each shuts down its write side when
//!   done, so the relay's half-close carries the end through); the
//!   throughput is both directions' bytes over the wall time until both
//!   readers are done, and the relay's CPU time is per GiB relayed;
//! - round trips: [`ROUND_TRIPS`] requests of [`MESSAGE_BYTES`], each
//!   answered with as many bytes before the next is sent (`TCP_NODELAY` at
//!   both ends), timed one by one at the client, and the relay's CPU time
//!   per round trip.
//!
//! The relays alternate within each round (their order flips round by
//! round), so both see the same load on a shared machine; speed is judged
//! as ratios to `copy_bidirectional` of the medians. The kernel's sockmap
//! (`bpf_sk_redirect_map`) is not measured; [`SOCKMAP_NOT_MEASURED`] says why.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use serde::{Deserialize, Serialize};

use crate::Netns;
use crate::results::{RunInfo, median, quantile};

/// The loopback address of the benchmark's namespace.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 1);
/// Bytes each side sends in a bulk measurement.
pub const BULK_BYTES: u64 = 256 << 20;
/// Round trips per latency measurement.
pub const ROUND_TRIPS: usize = 5000;
/// Bytes of each request and of each response.
pub const MESSAGE_BYTES: usize = 64;
/// Rounds (each measures every relay once), unless
/// `CONNMIRROR_BENCH_SPLICE_ROUNDS` says otherwise.
pub const ROUNDS: usize = 10;
/// Why the sockmap is not among the relays; rendered in RESULTS.md.
pub const SOCKMAP_NOT_MEASURED: &str = "The kernel's sockmap (an `sk_skb` stream verdict \
     program calling `bpf_sk_redirect_map`) was not tried, within this measurement's time box, \
     because it does not carry the relay's semantics by itself. The bytes the restored socket \
     already holds (its restored receive queue) and the instance's `extra` output must reach \
     the other side before anything redirected, but the verdict program runs on the socket's \
     data-ready path as new segments arrive, so ordering them takes a userspace drain that \
     races those arrivals. A FIN is not redirected: userspace must still watch each socket for \
     its end and shut the other side down, while redirected bytes are sent asynchronously from \
     the peer's psock backlog (a workqueue, `sk_psock_backlog()` in net/core/skmsg.c), so that \
     `shutdown(SHUT_WR)` can overtake bytes still queued there and lose them. And the program \
     would have to be built into the daemon's eBPF crate (`connmirror-ebpf`) and loaded, with \
     its map, by the daemon. Those are correctness problems to solve before a throughput \
     number would mean anything.";

/// A way of relaying between two TCP sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relay {
    /// `tokio::io::copy_bidirectional`, the userspace copy.
    Copy,
    /// `connmirror::resume::splice::relay`: splice(2) through a pipe per direction.
    Splice,
}

impl Relay {
    /// Every relay, in the order a round starts with.
    pub const ALL: [Relay; 2] = [Relay::Copy, Relay::Splice];

    /// The relay's name in the results.
    pub fn name(self) -> &'static str {
        match self {
            Relay::Copy => "copy_bidirectional",
            Relay::Splice => "splice(2)",
        }
    }

    /// Relays between `a` and `b` on this thread until both directions end;
    /// the bytes moved each way and this thread's CPU time it took.
    fn run(self, a: TcpStream, b: TcpStream) -> Result<((u64, u64), Duration)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("tokio runtime")?;
        runtime.block_on(async {
            let streams = [a, b].map(|s| {
                s.set_nonblocking(true)?;
                tokio::net::TcpStream::from_std(s)
            });
            let [a, b] = streams;
            let (mut a, mut b) = (a.context("relay socket")?, b.context("relay socket")?);
            let started = thread_cpu()?;
            let moved = match self {
                Relay::Copy => tokio::io::copy_bidirectional(&mut a, &mut b).await,
                Relay::Splice => connmirror::resume::splice::relay(&mut a, &mut b).await,
            };
            let cpu = thread_cpu()? - started;
            Ok((
                moved.with_context(|| format!("{} relay", self.name()))?,
                cpu,
            ))
        })
    }
}

/// The CPU time (user + system) of the calling thread.
fn thread_cpu() -> Result<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill in.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    ensure!(
        rc == 0,
        "clock_gettime(CLOCK_THREAD_CPUTIME_ID): {}",
        std::io::Error::last_os_error()
    );
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// The part's results, stored in `bench/data/resume.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpliceResults {
    /// Where and how it ran.
    pub info: RunInfo,
    /// Bytes each side sent per bulk measurement.
    pub bulk_bytes: u64,
    /// Round trips per latency measurement.
    pub round_trips: usize,
    /// Bytes of each request and response.
    pub message_bytes: usize,
    /// Rounds; each measured every relay once.
    pub rounds: usize,
    /// The environment settings that replaced the default rounds; empty
    /// with the default.
    pub overrides: Vec<String>,
    /// One per relay, [`Relay::ALL`]'s order.
    pub relays: Vec<RelayRuns>,
}

/// One relay's measurements, one entry per round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelayRuns {
    /// [`Relay::name`].
    pub relay: String,
    /// Bulk: both directions' bytes over the wall time, Gbit/s.
    pub gbps: Vec<f64>,
    /// Bulk: the relay thread's CPU time per GiB relayed, in milliseconds.
    pub cpu_ms_per_gib: Vec<f64>,
    /// Round trips: the median, in microseconds.
    pub rtt_p50_us: Vec<f64>,
    /// Round trips: the 99th percentile, in microseconds.
    pub rtt_p99_us: Vec<f64>,
    /// Round trips: the relay thread's CPU time per round trip, in
    /// microseconds.
    pub cpu_us_per_round_trip: Vec<f64>,
}

/// Replaces [`ROUNDS`]: a positive integer.
pub const ROUNDS_VAR: &str = "CONNMIRROR_BENCH_SPLICE_ROUNDS";

/// Runs the part: every relay once per round, the order flipping round by
/// round, printing each measurement. `info` is filled in by the caller.
pub fn measure(info: RunInfo) -> Result<SpliceResults> {
    let mut overrides = Vec::new();
    let mut rounds = ROUNDS;
    if let Ok(value) = std::env::var(ROUNDS_VAR) {
        rounds = (value.trim().parse().ok())
            .filter(|&n: &usize| n > 0)
            .with_context(|| format!("{ROUNDS_VAR}={value:?}: expected a positive integer"))?;
        overrides.push(format!("{ROUNDS_VAR}={value}"));
    }
    let started = Instant::now();
    let ns = Netns::new("splice");
    ns.ip(["link", "set", "lo", "up"]);
    ns.ip(["addr", "add", &format!("{ADDRESS}/32"), "dev", "lo"]);
    println!(
        "resume benchmark, splice: relaying copy_bidirectional vs splice(2), {rounds} rounds of \
         {} MiB each way and {ROUND_TRIPS} round trips of {MESSAGE_BYTES} bytes\n",
        BULK_BYTES >> 20
    );
    let mut relays: Vec<RelayRuns> = (Relay::ALL.iter())
        .map(|r| RelayRuns {
            relay: r.name().to_owned(),
            gbps: Vec::new(),
            cpu_ms_per_gib: Vec::new(),
            rtt_p50_us: Vec::new(),
            rtt_p99_us: Vec::new(),
            cpu_us_per_round_trip: Vec::new(),
        })
        .collect();
    for round in 1..=rounds {
        let mut order: Vec<usize> = (0..Relay::ALL.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for i in order {
            measure_one(&ns, Relay::ALL[i], round, rounds, &mut relays[i])?;
        }
    }
    Ok(SpliceResults {
        info: RunInfo {
            seconds: started.elapsed().as_secs_f64(),
            ..info
        },
        bulk_bytes: BULK_BYTES,
        round_trips: ROUND_TRIPS,
        message_bytes: MESSAGE_BYTES,
        rounds,
        overrides,
        relays,
    })
}

/// One round of one relay: bulk, then round trips, into `runs`.
fn measure_one(
    ns: &Netns,
    relay: Relay,
    round: usize,
    rounds: usize,
    runs: &mut RelayRuns,
) -> Result<()> {
    crate::live::interrupt_point()?;
    crate::bench::progress(&format!(
        "[{:<18} {round:>2}/{rounds}] bulk both ways, round trips ... ",
        relay.name()
    ));
    let (wall, cpu) = bulk(relay, connect(ns)?)?;
    let gib = (2 * BULK_BYTES) as f64 / f64::from(1 << 30);
    let gbps = (2 * BULK_BYTES * 8) as f64 / wall.as_secs_f64() / 1e9;
    let (rtts, cpu_rt) = round_trips(relay, connect(ns)?)?;
    let (p50, p99) = (quantile(&rtts, 0.5), quantile(&rtts, 0.99));
    let cpu_per_rt = cpu_rt.as_secs_f64() * 1e6 / ROUND_TRIPS as f64;
    println!(
        "{gbps:6.2} Gbit/s, {:6.0} ms CPU/GiB; round trip p50 {p50:5.1} µs p99 {p99:6.1} µs, \
         {cpu_per_rt:4.1} µs CPU each",
        cpu.as_secs_f64() * 1e3 / gib
    );
    runs.gbps.push(gbps);
    runs.cpu_ms_per_gib.push(cpu.as_secs_f64() * 1e3 / gib);
    runs.rtt_p50_us.push(p50);
    runs.rtt_p99_us.push(p99);
    runs.cpu_us_per_round_trip.push(cpu_per_rt);
    Ok(())
}

/// Fresh connections in `ns`: (client, relay's client side, relay's
/// application side, server).
pub struct Sockets {
    /// The client's end.
    pub client: TcpStream,
    /// The relay's end of the client's connection.
    pub relay_client: TcpStream,
    /// The relay's end of the server's connection.
    pub relay_app: TcpStream,
    /// The server's end.
    pub server: TcpStream,
}

/// Two connections over `ns`'s loopback, made inside it.
fn connect(ns: &Netns) -> Result<Sockets> {
    ns.run(|| {
        let listener = TcpListener::bind(SocketAddr::from((ADDRESS, 0))).context("bind")?;
        let addr = listener.local_addr().context("local_addr")?;
        let pair = || -> Result<(TcpStream, TcpStream)> {
            let out = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
            let (accepted, _) = listener.accept().context("accept")?;
            Ok((out, accepted))
        };
        let (client, relay_client) = pair()?;
        let (relay_app, server) = pair()?;
        Ok(Sockets {
            client,
            relay_client,
            relay_app,
            server,
        })
    })
}

/// Bulk: [`BULK_BYTES`] each way at once through `relay`; the wall time
/// until both ends have read the other's whole stream, and the relay's CPU
/// time.
fn bulk(relay: Relay, s: Sockets) -> Result<(Duration, Duration)> {
    let started = Instant::now();
    std::thread::scope(|scope| {
        let relayed = scope.spawn(|| relay.run(s.relay_client, s.relay_app));
        let ends = [&s.client, &s.server].map(|end| {
            let sending = scope.spawn(move || send(end, BULK_BYTES));
            let received = scope.spawn(move || receive(end));
            (sending, received)
        });
        for (sending, received) in ends {
            sending.join().expect("sender panicked")?;
            let got = received.join().expect("receiver panicked")?;
            ensure!(got == BULK_BYTES, "received {got} bytes, sent {BULK_BYTES}");
        }
        let wall = started.elapsed();
        let ((a_to_b, b_to_a), cpu) = relayed.join().expect("relay panicked")?;
        ensure!(
            (a_to_b, b_to_a) == (BULK_BYTES, BULK_BYTES),
            "the relay moved {a_to_b} and {b_to_a} bytes"
        );
        Ok((wall, cpu))
    })
}

/// Writes `bytes` to `end`, then shuts its write side down.
fn send(mut end: &TcpStream, bytes: u64) -> Result<()> {
    let chunk: Vec<u8> = (0..1 << 18).map(|i| (i % 251) as u8).collect();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        end.write_all(&chunk[..n]).context("bulk write")?;
        left -= n as u64;
    }
    end.shutdown(Shutdown::Write).context("shutdown(SHUT_WR)")
}

/// Reads `end` to the end of its stream; the bytes read.
fn receive(mut end: &TcpStream) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 18];
    let mut got = 0u64;
    loop {
        match end.read(&mut buf).context("bulk read")? {
            0 => return Ok(got),
            n => got += n as u64,
        }
    }
}

/// Round trips: [`ROUND_TRIPS`] request/response exchanges through `relay`;
/// each round trip in microseconds, and the relay's CPU time.
fn round_trips(relay: Relay, s: Sockets) -> Result<(Vec<f64>, Duration)> {
    s.client.set_nodelay(true).context("TCP_NODELAY")?;
    s.server.set_nodelay(true).context("TCP_NODELAY")?;
    std::thread::scope(|scope| {
        let relayed = scope.spawn(|| relay.run(s.relay_client, s.relay_app));
        let served = scope.spawn(|| answer(&s.server));
        let mut client = &s.client;
        let request = [0x5a; MESSAGE_BYTES];
        let mut response = [0u8; MESSAGE_BYTES];
        let mut rtts = Vec::with_capacity(ROUND_TRIPS);
        for _ in 0..ROUND_TRIPS {
            let sent = Instant::now();
            client.write_all(&request).context("request")?;
            client.read_exact(&mut response).context("response")?;
            rtts.push(sent.elapsed().as_secs_f64() * 1e6);
            ensure!(response == [0xa5; MESSAGE_BYTES], "wrong response");
        }
        client
            .shutdown(Shutdown::Write)
            .context("shutdown(SHUT_WR)")?;
        ensure!(receive(client)? == 0, "bytes after the last response");
        let answered = served.join().expect("server panicked")?;
        ensure!(answered == ROUND_TRIPS, "the server answered {answered}");
        let (_, cpu) = relayed.join().expect("relay panicked")?;
        Ok((rtts, cpu))
    })
}

/// Answers each request on `end` until the end of its stream; the number
/// answered.
fn answer(mut end: &TcpStream) -> Result<usize> {
    let mut request = [0u8; MESSAGE_BYTES];
    let mut answered = 0;
    loop {
        match end.read_exact(&mut request) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e).context("request read"),
        }
        end.write_all(&[0xa5; MESSAGE_BYTES]).context("response")?;
        answered += 1;
    }
    end.shutdown(Shutdown::Write).context("shutdown(SHUT_WR)")?;
    Ok(answered)
}

/// The RESULTS.md subsection: its own run facts, a table with the medians
/// and their ratios to `copy_bidirectional`, and the verdict.
pub fn render(r: &SpliceResults) -> String {
    let method = format!(
        "Real kernel TCP sockets over the loopback of a namespace of the benchmark's own \
         ({ADDRESS}): per measurement, fresh connections client → relay → server, the relay on \
         a thread of its own running a current-thread tokio runtime, relaying with \
         `tokio::io::copy_bidirectional` (what `resume::splice` used before) or with \
         `connmirror::resume::splice::relay` (splice(2) through a 64 KiB pipe per direction, \
         nonblocking, on tokio readiness). Bulk: client and server each send {} MiB at once and \
         read the other's stream to its end (each shuts down its write side when done); \
         throughput is both directions' bytes over the wall time until both readers are done; \
         relay CPU is that thread's `CLOCK_THREAD_CPUTIME_ID` (user + system) per GiB relayed. \
         Round trips: {} requests of {} bytes, each answered with as many before the next \
         (`TCP_NODELAY` at both ends), timed at the client; relay CPU per round trip likewise. \
         The relays alternate within each round, the order flipping round by round; the \
         ratios are of the medians over the rounds, against copy_bidirectional, in the same \
         run. The host was shared with other builds and a benchmark while this ran: compare \
         the ratios, not the absolute numbers.",
        r.bulk_bytes >> 20,
        r.round_trips,
        r.message_bytes
    );
    let mut s = String::from("### Resume: relaying after takeover, splice(2) against copy\n\n");
    s.push_str(&r.info.render(&method));
    let how = if r.overrides.is_empty() {
        "the default".to_owned()
    } else {
        let set: Vec<String> = r.overrides.iter().map(|o| format!("`{o}`")).collect();
        format!("set by {}, instead of the default", set.join(" "))
    };
    let _ = writeln!(s, "- rounds: {} ({how})\n", r.rounds);
    s.push_str(&table(r));
    let _ = writeln!(s, "\n{}\n\n{SOCKMAP_NOT_MEASURED}", verdict(r));
    s
}

/// One row per relay: medians and ratios to the first relay (the copy).
fn table(r: &SpliceResults) -> String {
    let mut t = String::from(
        "| relay | throughput (Gbit/s) | / copy | relay CPU (ms per GiB) | / copy | round trip p50 (µs) | / copy | round trip p99 (µs) | relay CPU per round trip (µs) | / copy |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let Some(base) = r.relays.first() else {
        return t;
    };
    for runs in &r.relays {
        let ratio = |f: fn(&RelayRuns) -> &Vec<f64>| median(f(runs)) / median(f(base));
        let _ = writeln!(
            t,
            "| {} | {:.2} | {:.2} | {:.0} | {:.2} | {:.1} | {:.2} | {:.1} | {:.2} | {:.2} |",
            runs.relay,
            median(&runs.gbps),
            ratio(|r| &r.gbps),
            median(&runs.cpu_ms_per_gib),
            ratio(|r| &r.cpu_ms_per_gib),
            median(&runs.rtt_p50_us),
            ratio(|r| &r.rtt_p50_us),
            median(&runs.rtt_p99_us),
            median(&runs.cpu_us_per_round_trip),
            ratio(|r| &r.cpu_us_per_round_trip),
        );
    }
    t
}

/// Whether splice(2) pays by the rule the issue set: clearly better bulk
/// throughput (≥ 1.1×) or relay CPU (≤ 0.9×) at equal latency (round trip
/// p50 within 1.1×).
fn verdict(r: &SpliceResults) -> String {
    let find = |relay: Relay| r.relays.iter().find(|x| x.relay == relay.name());
    let (Some(copy), Some(splice)) = (find(Relay::Copy), find(Relay::Splice)) else {
        return "Decision: not made (a relay is missing from the results).".to_owned();
    };
    let ratio = |f: fn(&RelayRuns) -> &Vec<f64>| median(f(splice)) / median(f(copy));
    let (gbps, cpu, rtt, cpu_rt) = (
        ratio(|r| &r.gbps),
        ratio(|r| &r.cpu_ms_per_gib),
        ratio(|r| &r.rtt_p50_us),
        ratio(|r| &r.cpu_us_per_round_trip),
    );
    let pays = (gbps >= 1.1 || cpu <= 0.9) && rtt <= 1.1;
    let decision = match pays {
        true => {
            "it pays, and the daemon's `resume::splice` relays with splice(2) \
                 (connmirror/src/resume/splice.rs), falling back to a userspace copy per \
                 direction where the kernel refuses"
        }
        false => "it does not pay, so the daemon keeps copy_bidirectional",
    };
    format!(
        "Decision (splice(2) pays if bulk throughput ≥ 1.1× or relay CPU ≤ 0.9× of the copy's, \
         with round trip p50 within 1.1×): throughput {gbps:.2}×, CPU {cpu:.2}×, round trip \
         p50 {rtt:.2}×: {decision}. For small request/response exchanges the relay's CPU per \
         round trip is {cpu_rt:.2}× the copy's: splice(2) saves CPU on bulk transfers, not on \
         small messages."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two rounds: splice(2) at `gbps` Gbit/s, `cpu` ms per GiB and `rtt` µs
    /// p50, against the copy's 5 Gbit/s, 1000 ms per GiB and 20 µs.
    fn results(gbps: f64, cpu: f64, rtt: f64) -> SpliceResults {
        let runs = |relay: Relay, gbps: f64, cpu: f64, rtt: f64| RelayRuns {
            relay: relay.name().to_owned(),
            gbps: vec![gbps, gbps],
            cpu_ms_per_gib: vec![cpu, cpu],
            rtt_p50_us: vec![rtt, rtt],
            rtt_p99_us: vec![4.0 * rtt, 4.0 * rtt],
            cpu_us_per_round_trip: vec![10.0, 10.0],
        };
        SpliceResults {
            info: crate::results::tests::info(),
            bulk_bytes: BULK_BYTES,
            round_trips: ROUND_TRIPS,
            message_bytes: MESSAGE_BYTES,
            rounds: 2,
            overrides: vec![format!("{ROUNDS_VAR}=2")],
            relays: vec![
                runs(Relay::Copy, 5.0, 1000.0, 20.0),
                runs(Relay::Splice, gbps, cpu, rtt),
            ],
        }
    }

    #[test]
    fn the_table_gives_medians_and_ratios_to_the_copy() {
        let page = render(&results(7.5, 600.0, 21.0));
        assert!(page.contains(
            "| copy_bidirectional | 5.00 | 1.00 | 1000 | 1.00 | 20.0 | 1.00 | 80.0 | 10.00 | 1.00 |\n\
             | splice(2) | 7.50 | 1.50 | 600 | 0.60 | 21.0 | 1.05 | 84.0 | 10.00 | 1.00 |\n"
        ));
        assert!(page.contains(
            "- rounds: 2 (set by `CONNMIRROR_BENCH_SPLICE_ROUNDS=2`, instead of the default)"
        ));
        assert!(page.contains("throughput 1.50×, CPU 0.60×, round trip p50 1.05×: it pays"));
        assert!(page.contains("the relay's CPU per round trip is 1.00× the copy's"));
    }

    #[test]
    fn splice_does_not_pay_when_it_is_slower_to_answer() {
        let page = render(&results(7.5, 600.0, 30.0));
        assert!(page.contains(
            "throughput 1.50×, CPU 0.60×, round trip p50 1.50×: it does not pay, so the daemon \
             keeps copy_bidirectional."
        ));
        let page = render(&results(5.2, 950.0, 20.0));
        assert!(page.contains("it does not pay"), "{page}");
    }
}
