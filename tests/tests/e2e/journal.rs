//! The durable journal (`connmirror mirror --journal DIR`) end to end: what a
//! crash, a torn tail or a damaged sealed segment leaves is exactly what was sent
//! (a prefix of it), with the state a run without a crash reports for that
//! prefix; the daemon recovers it, and `journal inspect` / `journal dump`
//! describe it; the flow state says why a flow could not be restored
//! (`no-handshake`, `missing-bytes` with the range).
//!
//! Run through `sudo -E cargo xtask test` (root, and `CONNMIRROR_BIN`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use connmirror_tests::journal::{
    self, Flow, HeldConnection, Inspection, Readiness, SynOptions, Way, kind,
};
use connmirror_tests::mirror::{FlowStatus, READY_TIMEOUT, tiny_ring_mirror};
use connmirror_tests::repair::{WRAP_CLIENT_SEQ, WRAP_SERVER_SEQ, wrapping_pair};
use connmirror_tests::traffic::SplitMix64;
use connmirror_tests::{
    Digest, Family, Mirror, MirrorCommand, MirrorExit, Topology, WorkDir, bidirectional,
    require_root_and_bin,
};

const PORT: u16 = 7000;
/// The client's port for the `TCP_REPAIR` pair (the namespaces are fresh).
const REPAIR_CLIENT_PORT: u16 = 41000;
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(300);
/// Time for the last ACKs to cross the gateway and reach the journal before the
/// mirror stops (a held connection is otherwise idle).
const SETTLE: Duration = Duration::from_millis(300);

/// `mirror --iface gw-c --iface gw-s --service SERVICE --journal DIR` plus `extra`.
fn journaled(topo: &Topology, service: SocketAddr, dir: &Path, extra: &[&str]) -> MirrorCommand {
    extra.iter().fold(
        MirrorCommand::new()
            .ifaces(topo.gateway_ifaces())
            .service(service)
            .arg("--journal")
            .arg(&dir.display().to_string()),
        |command, arg| command.arg(arg),
    )
}

/// Asserts the restarted mirror's log says it recovered the journal.
fn assert_recovered(mirror: &Mirror) {
    let log = mirror.stderr();
    assert!(
        log.contains("journal recovered"),
        "the restarted mirror's stderr does not mention `journal recovered`:\n{log}"
    );
}

/// Dumps both directions of `flow` from `dir` into `scratch` and asserts each is
/// exactly the first `side.delivered` bytes of what was sent that way, starting
/// at stream offset 0 (no note about released bytes). Returns (c2s, s2c) lengths.
fn assert_dumps_are_exact_prefixes(
    dir: &Path,
    flow: &Flow,
    scratch: &Path,
    what: &str,
) -> (u64, u64) {
    let mut lens = [0u64; 2];
    for (i, way) in Way::BOTH.into_iter().enumerate() {
        let out = scratch.join(format!("flow{}-{}.bin", flow.id, way.name()));
        let note = journal::dump_to(dir, flow.id, way, &out);
        assert_eq!(
            note,
            "",
            "{what}: {} dump of flow {} starts after offset 0",
            way.name(),
            flow.id
        );
        let what = format!("{what}: {} of flow {}", way.name(), flow.id);
        let len = journal::assert_stream_piece(&out, way.seed(), 0, &what);
        assert_eq!(
            len,
            flow.side(way).delivered,
            "{what}: dump length vs inspect's delivered: {flow:#?}"
        );
        std::fs::remove_file(&out).ok();
        lens[i] = len;
    }
    (lens[0], lens[1])
}

// ---------------------------------------------------------------------------
// 1. Crash loop
// ---------------------------------------------------------------------------

const CRASH_ROUNDS: usize = 20;
const CRASH_STREAM: u64 = 200_000_000;
/// SIGKILL comes this long after the exchange starts: a random point during
/// it, and never past three quarters of the crash-free run's exchange
/// (captured whole on TC ingress, an exchange took as little as 1.25 s).
const KILL_AFTER_MS: std::ops::Range<u64> = 100..1500;
/// Set to replay a failing run's kill points.
const CRASH_SEED_ENV: &str = "CONNMIRROR_CRASH_SEED";
/// How far a sender's `next_seq` may run ahead of the bytes journaled that way:
/// bytes in flight, sent but not yet captured when the mirror died.
const MAX_IN_FLIGHT: u64 = 16 << 20;

/// The crash mirror's flags (besides interfaces, service and journal). The
/// attach points are left to `auto`: on these veths, TC ingress on both links
/// and no egress, where every segment is captured once, as a GSO skb of up to
/// nine records, and the ring fills often enough that backpressure drops are
/// part of every run. That found two faults: a crash inside a new flow's
/// first read slice recovered its bytes without its handshake (`NoHandshake`),
/// and a GSO skb dropped part-way through left its chunks in the ring.
const CRASH_FLAGS: [&str; 4] = ["--retention", "full", "--history-cap", "512M"];

/// What a run without a crash reports for the exchange, as `journal inspect`
/// shows its journal: the reference for the state of every crash round.
#[derive(Debug)]
struct CrashFree {
    /// Each side's SYN options, indexed like [`Way::BOTH`] (the ISNs are left
    /// out: they are random per connection).
    syn: [SynOptions; 2],
    /// The readiness of the flow once both FINs are in the journal.
    closed_readiness: Readiness,
    /// How long its exchange took, captured from start to end.
    exchange: Duration,
}

/// What one crash round left in the journal.
#[derive(Debug)]
struct CrashRound {
    kill_after: Duration,
    /// How long the whole exchange took (the mirror died part-way).
    exchange: Duration,
    /// Bytes the crash left torn at the end of the newest segment.
    torn_tail: Option<u64>,
    c2s: u64,
    s2c: u64,
    readiness: Option<Readiness>,
    /// Per direction, how far the sender's `next_seq` ran past the journaled
    /// bytes (in flight at the kill, FIN included).
    in_flight: [u64; 2],
}

#[test]
fn journal_survives_sigkill_at_random_points_as_an_exact_prefix() {
    require_root_and_bin();
    let seed = std::env::var(CRASH_SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos() as u64
        });
    println!("crash loop: kill points from seed {seed} (set {CRASH_SEED_ENV}={seed} to replay)");
    let mut rng = SplitMix64::new(seed);
    let topo = Topology::new();
    let service = topo.service(Family::V4, PORT);
    let started = Instant::now();

    let crash_free = crash_free_round(&topo, service);
    println!(
        "crash-free run in {:.1?} (exchange {:.2?}): c2s SYN {:?}, s2c SYN {:?}, readiness at \
         the end {:?}",
        started.elapsed(),
        crash_free.exchange,
        crash_free.syn[0],
        crash_free.syn[1],
        crash_free.closed_readiness
    );

    let mut rounds = Vec::new();
    let mut failed = Vec::new();
    let latest = (KILL_AFTER_MS.end).min(crash_free.exchange.as_millis() as u64 * 3 / 4);
    let span = latest.saturating_sub(KILL_AFTER_MS.start).max(1);
    for round in 0..CRASH_ROUNDS {
        let kill_after = Duration::from_millis(KILL_AFTER_MS.start + rng.next_u64() % span);
        // A failing round is reported and the loop goes on, so one run shows
        // how often (and at which kill points) the journal fails.
        match catch_unwind(AssertUnwindSafe(|| {
            crash_round(&topo, service, &crash_free, round, kill_after)
        })) {
            Ok(r) => {
                println!(
                    "round {round:2}: SIGKILL after {:>4} ms of a {:.2?} exchange: torn tail {:?}, \
                     journaled c2s {:>10} s2c {:>10} bytes, readiness {:?}, in flight {:?}",
                    r.kill_after.as_millis(),
                    r.exchange,
                    r.torn_tail,
                    r.c2s,
                    r.s2c,
                    r.readiness,
                    r.in_flight
                );
                rounds.push(r);
            }
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let first = msg.lines().next().unwrap_or_default().to_owned();
                println!(
                    "round {round:2}: SIGKILL after {:>4} ms: FAILED: {first}",
                    kill_after.as_millis()
                );
                failed.push((round, kill_after, msg));
            }
        }
    }

    let nonempty = rounds.iter().filter(|r| r.c2s > 0 && r.s2c > 0).count();
    let mut readiness: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rounds {
        *readiness.entry(format!("{:?}", r.readiness)).or_default() += 1;
    }
    let mut c2s: Vec<u64> = rounds.iter().map(|r| r.c2s).collect();
    c2s.sort_unstable();
    println!(
        "crash loop: {CRASH_ROUNDS} rounds in {:.1?}: {} failed; {nonempty} journaled bytes both \
         ways; c2s journaled min {:?} median {:?} max {:?}; readiness {readiness:?}",
        started.elapsed(),
        failed.len(),
        c2s.first(),
        c2s.get(c2s.len() / 2),
        c2s.last(),
    );
    assert!(
        failed.is_empty(),
        "{} of {CRASH_ROUNDS} rounds failed (seed {seed}):\n{}",
        failed.len(),
        failed
            .iter()
            .map(|(round, kill, msg)| format!("round {round} (SIGKILL after {kill:?}): {msg}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        nonempty > CRASH_ROUNDS / 2,
        "only {nonempty} of {CRASH_ROUNDS} rounds journaled bytes both ways: {rounds:#?}"
    );
}

/// The reference run: the same mirror journals the whole 200 MB exchange and is
/// stopped with SIGINT after it. Its journal holds the flow, closed, with every
/// byte; the SYN options it recorded are what each crash round must show.
fn crash_free_round(topo: &Topology, service: SocketAddr) -> CrashFree {
    let dir = WorkDir::new("journal");
    let command = journaled(topo, service, dir.path(), &CRASH_FLAGS).without_dumps();
    let mirror = Mirror::start(&topo.gateway, &command);
    let x = bidirectional(topo, service, CRASH_STREAM, TRAFFIC_TIMEOUT);
    assert_eq!(x.server.received, x.client.sent, "crash-free run");
    assert_eq!(x.client.received, x.server.sent, "crash-free run");
    thread::sleep(SETTLE);
    let _ = mirror.stop();

    let inspection = journal::inspect(dir.path());
    assert_eq!(inspection.truncated_tail, None, "crash-free run");
    assert_eq!(
        inspection.flows.len(),
        1,
        "crash-free run: {:#?}",
        inspection.flows
    );
    let flow = &inspection.flows[0];
    assert_eq!(
        (flow.server, flow.client),
        (service, x.client.addr),
        "crash-free run"
    );
    assert_eq!(
        (flow.c2s.delivered, flow.s2c.delivered),
        (CRASH_STREAM, CRASH_STREAM),
        "crash-free run: {flow:#?}"
    );
    assert!(
        flow.handshake && flow.c2s.state.fin && flow.s2c.state.fin && !flow.rst,
        "crash-free run: a handshake, both FINs, no RST: {flow:#?}"
    );
    let syn = Way::BOTH.map(|way| {
        flow.side(way)
            .state
            .syn
            .unwrap_or_else(|| panic!("crash-free run: no {} SYN: {flow:#?}", way.name()))
            .options()
    });
    // The sequence checks of the crash rounds hold here too, at their tightest:
    // everything sent was captured, FIN included.
    let violations = sequence_violations(flow);
    assert!(
        violations.is_empty(),
        "crash-free run:\n{}\n{flow:#?}",
        violations.join("\n")
    );
    assert_eq!(
        flow.readiness,
        Readiness::Closed,
        "crash-free run: the exchange ended with both FINs: {flow:#?}"
    );
    CrashFree {
        syn,
        closed_readiness: flow.readiness,
        exchange: x.elapsed,
    }
}

/// Per direction, the sender's sequence marks against the bytes journaled that
/// way (the journal is a prefix, so every mark is a stream offset from the
/// sender's ISN + 1, modulo 2^32): the sender's `next_seq` is at or past the
/// journaled bytes, by at most [`MAX_IN_FLIGHT`]; the receiver's `ack` never
/// passes them (one more for the FIN), so no byte the receiver holds is missing
/// from the journal. Returns the violations, empty when all hold.
fn sequence_violations(flow: &Flow) -> Vec<String> {
    let mut violations = Vec::new();
    for way in Way::BOTH {
        let sender = &flow.side(way).state;
        let receiver = &flow.side(way.reverse()).state;
        let delivered = flow.side(way).delivered;
        let Some(syn) = sender.syn else {
            violations.push(format!("{}: no SYN from the sender", way.name()));
            continue;
        };
        let base = syn.isn.wrapping_add(1);
        match sender.next_seq {
            None => violations.push(format!("{}: no next_seq", way.name())),
            Some(next) => {
                let sent = u64::from(next.wrapping_sub(base));
                if sent < delivered || sent > delivered + MAX_IN_FLIGHT {
                    violations.push(format!(
                        "{}: sender's next_seq {next} is stream offset {sent} (isn {}), \
                         outside [delivered {delivered}, delivered + {MAX_IN_FLIGHT}]",
                        way.name(),
                        syn.isn
                    ));
                }
            }
        }
        match receiver.ack {
            None => violations.push(format!("{}: the receiver sent no ACK", way.name())),
            Some(ack) => {
                let acked = u64::from(ack.wrapping_sub(base));
                if acked > delivered + 1 {
                    violations.push(format!(
                        "{}: receiver's ack {ack} is stream offset {acked} (sender isn {}), \
                         past delivered {delivered} + 1: acknowledged bytes the journal lacks",
                        way.name(),
                        syn.isn
                    ));
                }
            }
        }
    }
    violations
}

/// Whether every one of `flow`'s `missing-bytes` ranges is a server → client
/// hole the server still had to resend: above every byte journaled and every
/// byte the client acknowledged, below what the server had sent, so bytes it
/// sent after the hole were held out of order. Under backpressure the gateway
/// drops what it cannot capture, and TCP resends it; until then a running
/// mirror reports the same range, and a checkpoint written then journals the
/// bytes behind the hole (on TC ingress, with a GSO skb per drop, the wait can
/// outlast a checkpoint). A crash before the resent bytes are journaled
/// leaves exactly that state, which a crash-free run had at the same point.
fn only_holes_the_server_still_resends(flow: &Flow) -> bool {
    let s2c = &flow.s2c;
    let sent = match (s2c.state.syn, s2c.state.next_seq) {
        (Some(syn), Some(next)) => u64::from(next.wrapping_sub(syn.isn.wrapping_add(1))),
        _ => return false,
    };
    !flow.ranges.is_empty()
        && flow.ranges.iter().all(|range| {
            range.dir == "s2c" && range.start >= s2c.delivered.max(s2c.acked) && range.end < sent
        })
}

/// Asserts the recovered `flow` has the state a crash-free run reports for the
/// same prefix: the SYN options of [`CrashFree`], `ready` while the flow was
/// open at the kill (`missing-bytes` for a hole the server was resending,
/// [`only_holes_the_server_still_resends`]; `closed` once both FINs are
/// journaled), and sequence marks consistent with the journaled bytes
/// ([`sequence_violations`]). Returns, per direction, how far the sender's
/// `next_seq` runs past the journaled bytes.
fn assert_state_as_without_a_crash(
    flow: &Flow,
    crash_free: &CrashFree,
    round: usize,
    crashed_tail: &str,
) -> [u64; 2] {
    let resending = only_holes_the_server_still_resends(flow);
    if flow.readiness == Readiness::MissingBytes && !resending {
        panic!(
            "round {round}: readiness missing-bytes, ranges {:?}, not only holes the server \
             was resending; a crash-free run of the same prefix reports ready; the crashed \
             journal ended with {crashed_tail}\n\
             state:\n{flow:#?}",
            flow.ranges
        );
    }
    let mut violations = Vec::new();
    for (i, way) in Way::BOTH.into_iter().enumerate() {
        let syn = flow.side(way).state.syn.map(|s| s.options());
        if syn != Some(crash_free.syn[i]) {
            violations.push(format!(
                "{}: SYN options {syn:?}, the crash-free run's {:?}",
                way.name(),
                crash_free.syn[i]
            ));
        }
    }
    let both_fins = flow.c2s.state.fin && flow.s2c.state.fin;
    let expected = if both_fins {
        crash_free.closed_readiness
    } else if resending {
        Readiness::MissingBytes
    } else {
        Readiness::Ready
    };
    if flow.readiness != expected {
        violations.push(format!(
            "readiness {:?} (ranges {:?}), a crash-free run reports {expected:?} \
             (FINs journaled: c2s {}, s2c {})",
            flow.readiness, flow.ranges, flow.c2s.state.fin, flow.s2c.state.fin
        ));
    }
    violations.extend(sequence_violations(flow));
    assert!(
        violations.is_empty(),
        "round {round}: the recovered state differs from a crash-free run's:\n{}\n\
         the crashed journal ended with {crashed_tail}\nstate:\n{flow:#?}",
        violations.join("\n")
    );
    Way::BOTH.map(|way| {
        let side = flow.side(way);
        let base = side.state.syn.expect("checked").isn.wrapping_add(1);
        let sent = u64::from(side.state.next_seq.expect("checked").wrapping_sub(base));
        sent - side.delivered
    })
}

/// How many records [`journal_tail`] describes.
const TAIL_RECORDS: usize = 12;

/// The kinds of the last records of the newest segment in `dir`, oldest first
/// (`DATA(len)`, `UPDATE`, ...): with a failure, where the crash cut the
/// journal relative to the state updates.
fn journal_tail(dir: &Path, torn: bool) -> String {
    if torn {
        return "a torn tail (records not listed)".to_owned();
    }
    let Some(newest) = journal::segment_files(dir).pop() else {
        return "no segment".to_owned();
    };
    let frames = journal::records(&newest);
    let tail: Vec<String> = frames[frames.len().saturating_sub(TAIL_RECORDS)..]
        .iter()
        .map(|f| match f.kind {
            kind::OPEN => "OPEN".to_owned(),
            kind::DATA => format!("DATA({})", f.len),
            kind::UPDATE => "UPDATE".to_owned(),
            kind::CLOSE => "CLOSE".to_owned(),
            kind::CHECKPOINT_BEGIN => "CHECKPOINT-BEGIN".to_owned(),
            kind::CHECKPOINT_FLOW => "CHECKPOINT-FLOW".to_owned(),
            kind::CHECKPOINT_END => "CHECKPOINT-END".to_owned(),
            other => format!("kind {other}"),
        })
        .collect();
    format!(
        "these {} of its {} records in {}: {}",
        tail.len(),
        frames.len(),
        newest.display(),
        tail.join(" ")
    )
}

/// One round: a journaling mirror is SIGKILLed `kill_after` into a 200 MB
/// exchange; the exchange finishes uncaptured; a new mirror recovers the journal
/// and stops; whatever the journal then holds must be an exact prefix of each
/// direction, with the state a crash-free run reports for that prefix.
fn crash_round(
    topo: &Topology,
    service: SocketAddr,
    crash_free: &CrashFree,
    round: usize,
    kill_after: Duration,
) -> CrashRound {
    let dir = WorkDir::new("journal");
    let command = journaled(topo, service, dir.path(), &CRASH_FLAGS).without_dumps();
    let mirror = Mirror::start(&topo.gateway, &command);

    let (x, killed_mid_transfer) = thread::scope(|s| {
        let traffic = s.spawn(|| bidirectional(topo, service, CRASH_STREAM, TRAFFIC_TIMEOUT));
        thread::sleep(kill_after);
        let mid = !traffic.is_finished();
        drop(mirror); // SIGKILL, no chance to flush or close anything
        match traffic.join() {
            Ok(x) => (x, mid),
            Err(payload) => std::panic::resume_unwind(payload),
        }
    });
    if !killed_mid_transfer {
        // Exchanges vary (0.55 to 1.8 s in one run here): one that ended
        // first tells nothing about a crash. Kill the next at half its time.
        assert!(
            kill_after > Duration::from_millis(KILL_AFTER_MS.start),
            "round {round}: the exchange ({:.2?}) ended before the SIGKILL at {kill_after:?}",
            x.elapsed
        );
        println!(
            "round {round:2}: the exchange ({:.2?}) ended before the SIGKILL at {kill_after:?}; \
             again, killing at half its time",
            x.elapsed
        );
        drop(dir);
        return crash_round(topo, service, crash_free, round, x.elapsed / 2);
    }
    assert_eq!(x.server.received, x.client.sent, "round {round}");
    assert_eq!(x.client.received, x.server.sent, "round {round}");

    // What the crash left, read-only: recovery must keep all of it.
    let crashed = journal::inspect(dir.path());
    let crashed_tail = journal_tail(dir.path(), crashed.truncated_tail.is_some());

    let restarted = Mirror::start(&topo.gateway, &command);
    assert_recovered(&restarted);
    let (report, _mirror_dir) = restarted.stop();

    let inspection = journal::inspect(dir.path());
    let counts = |i: &Inspection| -> Vec<(u64, u64, u64)> {
        i.flows
            .iter()
            .map(|f| (f.id, f.c2s.delivered, f.s2c.delivered))
            .collect()
    };
    assert_eq!(
        counts(&inspection),
        counts(&crashed),
        "round {round}: flows after recovery vs the crashed journal (torn tail {:?})",
        crashed.truncated_tail
    );
    assert_eq!(
        inspection.truncated_tail, None,
        "round {round}: recovery left a torn tail"
    );
    assert!(
        inspection.flows.len() <= 1,
        "round {round}: one connection, flows: {:#?}",
        inspection.flows
    );
    let Some(flow) = inspection.flows.first() else {
        return CrashRound {
            kill_after,
            exchange: x.elapsed,
            torn_tail: crashed.truncated_tail.map(|(_, n)| n),
            c2s: 0,
            s2c: 0,
            readiness: None,
            in_flight: [0, 0],
        };
    };
    assert_eq!(
        (flow.server, flow.client),
        (service, x.client.addr),
        "round {round}"
    );
    // The restarted mirror holds the flow it recovered, byte for byte.
    let held: Vec<_> = report.flows.iter().filter(|f| f.id == flow.id).collect();
    assert_eq!(
        held.len(),
        1,
        "round {round}: the restarted mirror's report lacks flow {}: {:#?}",
        flow.id,
        report.flows
    );
    assert_eq!(
        (held[0].c2s.delivered, held[0].s2c.delivered),
        (flow.c2s.delivered, flow.s2c.delivered),
        "round {round}: restarted mirror vs journal"
    );

    let scratch = WorkDir::new("crash-dumps");
    let (c2s, s2c) = assert_dumps_are_exact_prefixes(
        dir.path(),
        flow,
        scratch.path(),
        &format!("round {round}"),
    );
    assert!(c2s <= CRASH_STREAM && s2c <= CRASH_STREAM);
    let in_flight = assert_state_as_without_a_crash(flow, crash_free, round, &crashed_tail);
    CrashRound {
        kill_after,
        exchange: x.elapsed,
        torn_tail: crashed.truncated_tail.map(|(_, n)| n),
        c2s,
        s2c,
        readiness: Some(flow.readiness),
        in_flight,
    }
}

// ---------------------------------------------------------------------------
// 2. Torn tail
// ---------------------------------------------------------------------------

const SMALL_STREAM: u64 = 2_000_000;
/// Cuts checked with `journal inspect` are every offset of the last record when
/// it is at most this long, else this many spread over it.
const MAX_INSPECTED_CUTS: u64 = 4096;

#[test]
fn a_torn_journal_tail_is_reported_and_recovery_keeps_the_records_before_it() {
    require_root_and_bin();
    let topo = Topology::new();
    let service = topo.service(Family::V4, PORT);
    let dir = WorkDir::new("journal");
    let command = journaled(&topo, service, dir.path(), &["--retention", "full"]).without_dumps();
    let mirror = Mirror::start(&topo.gateway, &command);
    let mut conn = HeldConnection::open(&topo.client, &topo.server, service);
    conn.exchange(SMALL_STREAM, TRAFFIC_TIMEOUT);
    thread::sleep(SETTLE);
    // Stopped while the connection is open: the flow stays live in the journal,
    // so a restarted mirror carries it over.
    let _ = mirror.stop();

    let intact = journal::inspect(dir.path());
    assert_eq!(intact.truncated_tail, None);
    assert_eq!(intact.flows.len(), 1, "{:#?}", intact.flows);
    assert_eq!(
        (intact.flows[0].c2s.delivered, intact.flows[0].s2c.delivered),
        (SMALL_STREAM, SMALL_STREAM),
        "{:#?}",
        intact.flows[0]
    );
    let scratch = WorkDir::new("torn");
    assert_dumps_are_exact_prefixes(dir.path(), &intact.flows[0], scratch.path(), "intact");

    let newest = journal::segment_files(dir.path())
        .pop()
        .expect("a segment file");
    let name = newest.file_name().expect("file name").to_owned();
    let frames = journal::records(&newest);
    let last = *frames.last().expect("records in the newest segment");
    let file_len = std::fs::metadata(&newest).expect("stat").len();
    assert_eq!(last.end(), file_len);
    println!(
        "newest segment {}: {} records, the last one kind {} at {} ({} payload bytes)",
        newest.display(),
        frames.len(),
        last.kind,
        last.offset,
        last.len
    );

    // The journal as it stood before its last record: what recovery must keep.
    let before = scratch.path().join("before-last");
    journal::copy_dir(dir.path(), &before);
    truncate(&before.join(&name), last.offset);
    let (reference, out) = journal::inspect_with(&before, &[]);
    assert_eq!(reference.truncated_tail, None);
    let reference_flows = flows_json(&out.stdout);

    // Keep `kept` bytes of the last record: recovery would cut exactly those.
    let record_len = last.end() - last.offset;
    let cuts: Vec<u64> = if record_len - 1 <= MAX_INSPECTED_CUTS {
        (1..record_len).collect()
    } else {
        let step = record_len / MAX_INSPECTED_CUTS;
        (1..journal::RECORD_HEADER_LEN + 1)
            .chain((journal::RECORD_HEADER_LEN + 1..record_len).step_by(step as usize))
            .chain([record_len - 1])
            .collect()
    };
    let torn = scratch.path().join("torn");
    for &kept in &cuts {
        std::fs::remove_dir_all(&torn).ok();
        journal::copy_dir(dir.path(), &torn);
        let file = torn.join(&name);
        truncate(&file, last.offset + kept);

        let table = journal::run(&["inspect", &torn.display().to_string()]);
        let stdout = String::from_utf8_lossy(&table.stdout);
        assert!(
            table.status.success(),
            "inspect with {kept} bytes of the last record: {}; stderr:\n{}",
            table.status,
            String::from_utf8_lossy(&table.stderr)
        );
        let line = format!(
            "torn tail: recovery would cut {kept} bytes from {}",
            file.display()
        );
        assert!(
            stdout.lines().any(|l| l == line),
            "inspect with {kept} bytes of the last record: no line `{line}` in:\n{stdout}"
        );
        let (inspection, out) = journal::inspect_with(&torn, &[]);
        assert_eq!(
            inspection.truncated_tail,
            Some((file.clone(), kept)),
            "{kept} bytes of the last record kept"
        );
        assert_eq!(
            flows_json(&out.stdout),
            reference_flows,
            "with {kept} bytes of the last record the flows differ from the journal before it"
        );
    }
    println!("inspect checked {} cuts of the last record", cuts.len());

    // A mirror recovers a torn copy: it cuts the tail, and keeps the flow.
    for kept in [1, journal::RECORD_HEADER_LEN, record_len - 1] {
        std::fs::remove_dir_all(&torn).ok();
        journal::copy_dir(dir.path(), &torn);
        let file = torn.join(&name);
        truncate(&file, last.offset + kept);
        let command = journaled(&topo, service, &torn, &["--retention", "full"]).without_dumps();
        let mirror = Mirror::start(&topo.gateway, &command);
        let log = mirror.stderr();
        let bytes = format!("bytes={kept}");
        let warning = log.lines().find(|l| {
            l.contains("truncated a torn tail")
                && l.contains(&file.display().to_string())
                && l.split_whitespace().any(|w| w == bytes)
        });
        assert!(
            warning.is_some(),
            "recovering with {kept} bytes of the last record: no warning naming {} and \
             `{bytes}` in the log:\n{log}",
            file.display()
        );
        assert_recovered(&mirror);
        let _ = mirror.stop();

        let recovered = journal::inspect(&torn);
        assert_eq!(recovered.truncated_tail, None, "{kept}: torn tail left");
        assert_eq!(recovered.flows.len(), 1, "{kept}: {:#?}", recovered.flows);
        let flow = &recovered.flows[0];
        assert_eq!(
            (flow.id, flow.c2s.delivered, flow.s2c.delivered),
            (
                reference.flows[0].id,
                reference.flows[0].c2s.delivered,
                reference.flows[0].s2c.delivered
            ),
            "{kept} bytes of the last record kept: the recovered flow vs the journal before it"
        );
        assert_eq!(
            (flow.c2s.state, flow.s2c.state),
            (reference.flows[0].c2s.state, reference.flows[0].s2c.state),
            "{kept}"
        );
        assert_dumps_are_exact_prefixes(
            &torn,
            flow,
            scratch.path(),
            &format!("recovered with {kept} bytes of the last record"),
        );
    }
    drop(conn);
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .unwrap_or_else(|e| panic!("truncate {} to {len}: {e}", path.display()));
}

/// The `flows` of `journal inspect --json` output, as JSON.
fn flows_json(stdout: &[u8]) -> serde_json::Value {
    let mut value: serde_json::Value = serde_json::from_slice(stdout).expect("inspect JSON");
    value["flows"].take()
}

// ---------------------------------------------------------------------------
// 3. Corruption in a sealed segment
// ---------------------------------------------------------------------------

const SEGMENTED_STREAM: u64 = 4_000_000;

#[test]
fn a_flipped_byte_in_a_sealed_segment_names_file_and_offset_and_salvage_skips_it() {
    require_root_and_bin();
    let topo = Topology::new();
    let service = topo.service(Family::V4, PORT);
    let dir = WorkDir::new("journal");
    // All traffic in one run: a restart would checkpoint and drop older segments.
    let mirror = Mirror::start(
        &topo.gateway,
        &journaled(&topo, service, dir.path(), &["--segment-bytes", "1M"]).without_dumps(),
    );
    let x = bidirectional(&topo, service, SEGMENTED_STREAM, TRAFFIC_TIMEOUT);
    assert_eq!(x.server.received, x.client.sent);
    let _ = mirror.stop();

    let segments = journal::segment_files(dir.path());
    assert!(
        segments.len() >= 2,
        "{SEGMENTED_STREAM} bytes each way with --segment-bytes 1M made {segments:?}"
    );
    let pristine = journal::inspect(dir.path());
    assert_eq!(pristine.salvaged, 0);
    assert_eq!(pristine.segments.len(), segments.len());

    let sealed = &segments[0];
    let data = journal::records(sealed)
        .into_iter()
        .find(|f| f.kind == kind::DATA && f.len > 0)
        .unwrap_or_else(|| panic!("no data record in {}", sealed.display()));
    let at = data.offset + journal::RECORD_HEADER_LEN + u64::from(data.len / 2);
    let mut bytes = std::fs::read(sealed).expect("read sealed segment");
    bytes[at as usize] ^= 0x5a;
    std::fs::write(sealed, &bytes).expect("write sealed segment");
    println!(
        "flipped byte {at} of {} (payload of the data record at {}, {} bytes)",
        sealed.display(),
        data.offset,
        data.len
    );

    let out = journal::run(&["inspect", &dir.path().display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    let expected = format!(
        "error: corrupt journal record in {} at byte offset {}: checksum mismatch",
        sealed.display(),
        data.offset
    );
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert_eq!(errors, [expected.as_str()], "stderr:\n{stderr}");

    let (salvaged, _) = journal::inspect_with(dir.path(), &["--salvage"]);
    assert_eq!(salvaged.salvaged, 1, "{salvaged:#?}");
    assert_eq!(salvaged.segments, pristine.segments);
    assert_eq!(salvaged.flows.len(), 1, "{:#?}", salvaged.flows);

    // The daemon refuses the damaged journal: exit 1, never `ready`, one error
    // naming the file and the record's offset, and the journal left as it was.
    let before = journal_files(dir.path());
    let scratch = WorkDir::new("mirror-exit");
    let exit = MirrorExit::run(
        &topo.gateway,
        &[],
        &journaled(&topo, service, dir.path(), &["--segment-bytes", "1M"]).without_dumps(),
        scratch.path(),
        READY_TIMEOUT,
    );
    let expected = format!(
        "error: opening the journal: corrupt journal record in {} at byte offset {}: \
         checksum mismatch",
        sealed.display(),
        data.offset
    );
    assert_eq!(exit.status.code(), Some(1), "{exit:#?}");
    assert!(
        !exit.stdout.lines().any(|l| l.trim() == "ready"),
        "the mirror claimed to be ready on a damaged journal: {exit:#?}"
    );
    assert_eq!(exit.error_lines(), [expected.as_str()], "{exit:#?}");
    assert_eq!(
        journal_files(dir.path()),
        before,
        "the failed start changed the journal directory"
    );

    // With --salvage it skips the damaged record, says how many, and runs.
    let mirror = Mirror::start(
        &topo.gateway,
        &journaled(
            &topo,
            service,
            dir.path(),
            &["--segment-bytes", "1M", "--salvage"],
        )
        .without_dumps(),
    );
    let log = mirror.stderr();
    assert!(
        log.lines().any(|l| l.contains(" WARN ")
            && l.contains("journal: salvage skipped damaged records")
            && l.split_whitespace().any(|t| t == "skipped=1")),
        "no `journal: salvage skipped damaged records skipped=1` warning in stderr:\n{log}"
    );
    // SIGINT; `stop` asserts exit status 0.
    let _ = mirror.stop();
}

/// Every file in a journal directory: name → (size, contents).
fn journal_files(dir: &Path) -> BTreeMap<String, (u64, Digest)> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|entry| {
            let entry = entry.expect("dir entry");
            let path = entry.path();
            let len = entry
                .metadata()
                .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
                .len();
            let name = entry.file_name().to_string_lossy().into_owned();
            let digest = if path.is_file() {
                Digest::of_file(&path)
            } else {
                Digest::of(b"")
            };
            (name, (len, digest))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 4. No handshake
// ---------------------------------------------------------------------------

const BEFORE_MIRROR: u64 = 1_000_000;
const WITH_MIRROR: u64 = 1_000_000;

#[test]
fn a_flow_started_before_the_mirror_is_reported_no_handshake() {
    require_root_and_bin();
    let topo = Topology::new();
    let service = topo.service(Family::V4, PORT);
    let mut conn = HeldConnection::open(&topo.client, &topo.server, service);
    conn.exchange(BEFORE_MIRROR, TRAFFIC_TIMEOUT);
    thread::sleep(SETTLE);

    let mirror = Mirror::start(
        &topo.gateway,
        &MirrorCommand::new()
            .ifaces(topo.gateway_ifaces())
            .service(service),
    );
    conn.exchange(WITH_MIRROR, TRAFFIC_TIMEOUT);
    thread::sleep(SETTLE);
    let (report, _mirror_dir) = mirror.stop();

    assert_eq!(report.flows.len(), 1, "{:#?}", report.flows);
    let flow = &report.flows[0];
    assert_eq!((flow.server, flow.client), (service, conn.client_addr()));
    assert_eq!(flow.readiness, Readiness::NoHandshake, "{flow:#?}");
    assert!(!flow.handshake, "{flow:#?}");
    assert_eq!(flow.status, FlowStatus::Open, "{flow:#?}");
    assert_eq!((flow.c2s.state.syn, flow.s2c.state.syn), (None, None));
    // Captured from the first segment the mirror saw: exactly the bytes sent
    // while it ran.
    for way in Way::BOTH {
        let side = flow.side(way);
        let file = side.file.as_ref().expect("dump file");
        let len = journal::assert_stream_piece(file, way.seed(), BEFORE_MIRROR, way.name());
        assert_eq!(len, WITH_MIRROR, "{}: {flow:#?}", way.name());
        assert_eq!(side.delivered, WITH_MIRROR, "{}: {flow:#?}", way.name());
    }
    drop(conn);
}

// ---------------------------------------------------------------------------
// 5. Pass-policy gap
// ---------------------------------------------------------------------------

const TINY_RING_STREAM: u64 = 20_000_000;
/// After the ring-full events, this many small exchanges with pauses, so the
/// ring drains and later bytes are captured: the gap is then inside the stream.
const TRAILING_EXCHANGES: usize = 20;
const TRAILING_BYTES: u64 = 8192;

#[test]
fn a_pass_policy_gap_is_reported_as_missing_bytes_with_its_range() {
    require_root_and_bin();
    let (topo, service, mirror) = tiny_ring_mirror(PORT, "pass");
    let mut conn = HeldConnection::open(&topo.client, &topo.server, service);
    conn.exchange(TINY_RING_STREAM, TRAFFIC_TIMEOUT);
    for _ in 0..TRAILING_EXCHANGES {
        thread::sleep(Duration::from_millis(50));
        conn.exchange(TRAILING_BYTES, TRAFFIC_TIMEOUT);
    }
    thread::sleep(SETTLE);
    let (report, _mirror_dir) = mirror.stop();

    assert!(
        report.counter(connmirror_common::Counter::RingFull) > 0,
        "{:?}",
        report.counters
    );
    assert_eq!(report.flows.len(), 1, "{:#?}", report.flows);
    let flow = &report.flows[0];
    println!(
        "{} missing ranges (c2s {}, s2c {}), first {:?}, last {:?}; kernel gaps {}",
        flow.ranges.len(),
        flow.ranges_of(Way::C2s).len(),
        flow.ranges_of(Way::S2c).len(),
        flow.ranges.first(),
        flow.ranges.last(),
        flow.kernel_gaps
    );
    assert_eq!(flow.readiness, Readiness::MissingBytes, "{flow:#?}");
    assert!(!flow.ranges.is_empty(), "{flow:#?}");
    assert!(flow.kernel_gaps > 0, "{flow:#?}");
    let sent = |way: Way| match way {
        Way::C2s => conn.c2s_bytes,
        Way::S2c => conn.s2c_bytes,
    };
    for r in &flow.ranges {
        assert!(r.dir == "c2s" || r.dir == "s2c", "{r:?}");
    }
    for way in Way::BOTH {
        let ranges = flow.ranges_of(way);
        let Some(first) = ranges.first() else {
            continue;
        };
        for pair in ranges.windows(2) {
            assert!(pair[0].end <= pair[1].start, "{}: {ranges:?}", way.name());
        }
        for r in &ranges {
            assert!(r.start < r.end, "{r:?}");
            assert!(
                r.end <= sent(way),
                "{r:?} past the {} bytes sent",
                sent(way)
            );
        }
        let side = flow.side(way);
        let file = side.file.as_ref().expect("dump file");
        let len = journal::assert_stream_piece(file, way.seed(), 0, way.name());
        assert_eq!(
            len,
            first.start,
            "{}: the dump must stop exactly where the first missing range starts: {flow:#?}",
            way.name()
        );
        if let Some(stopped) = side.dump_stopped_at {
            assert_eq!(stopped, first.start, "{}: {flow:#?}", way.name());
        }
    }
    drop(conn);
}

// ---------------------------------------------------------------------------
// 6. Wraparound through the journal
// ---------------------------------------------------------------------------

const WRAP_STREAM: u64 = 8_000_000;
const _: () = assert!(WRAP_CLIENT_SEQ as u64 + WRAP_STREAM > 1 << 32);
const _: () = assert!(WRAP_SERVER_SEQ as u64 + WRAP_STREAM > 1 << 32);

#[test]
fn wrapped_sequence_numbers_survive_the_journal_and_recovery() {
    require_root_and_bin();
    let topo = Topology::new();
    let service = topo.service(Family::V4, PORT);
    let client = SocketAddr::new(topo.client_addr(Family::V4), REPAIR_CLIENT_PORT);
    let dir = WorkDir::new("journal");
    // The first mirror appends with direct I/O, the restarted one through
    // the page cache: both write the same journal format.
    let direct = journaled(
        &topo,
        service,
        dir.path(),
        &["--retention", "full", "--journal-direct"],
    )
    .without_dumps();
    let command = journaled(&topo, service, dir.path(), &["--retention", "full"]).without_dumps();
    let mirror = Mirror::start(&topo.gateway, &direct);
    let (c, s) = wrapping_pair(&topo, client, service);
    let mut conn = HeldConnection::from_streams(c, s);
    conn.exchange(WRAP_STREAM, TRAFFIC_TIMEOUT);
    thread::sleep(SETTLE);
    let expected = format!(
        "journal {}: appending with direct I/O (O_DIRECT)",
        dir.path().display()
    );
    let log = mirror.stderr();
    assert!(
        log.contains(&expected),
        "no `{expected}` in the mirror's stderr:\n{log}"
    );
    // Stopped with the connection open, so recovery carries the flow over.
    let _ = mirror.stop();

    let first = journal::inspect(dir.path());
    let flow = assert_wrapped_flow(&first, service, client, &dir, "journal");

    let restarted = Mirror::start(&topo.gateway, &command);
    assert_recovered(&restarted);
    let (report, _mirror_dir) = restarted.stop();
    assert_eq!(report.flows.len(), 1, "{:#?}", report.flows);
    assert_eq!(
        (report.flows[0].c2s.delivered, report.flows[0].s2c.delivered),
        (WRAP_STREAM, WRAP_STREAM)
    );

    let second = journal::inspect(dir.path());
    let recovered = assert_wrapped_flow(&second, service, client, &dir, "after recovery");
    assert_eq!(recovered.id, flow.id);
    assert_eq!(
        (recovered.c2s.state, recovered.s2c.state),
        (flow.c2s.state, flow.s2c.state)
    );
    drop(conn);
}

/// The one flow of a wrapped exchange: both streams exactly as sent, and the
/// sequence and ACK marks past the wrap.
fn assert_wrapped_flow(
    inspection: &Inspection,
    service: SocketAddr,
    client: SocketAddr,
    dir: &WorkDir,
    what: &str,
) -> Flow {
    assert_eq!(inspection.truncated_tail, None, "{what}");
    assert_eq!(inspection.flows.len(), 1, "{what}: {:#?}", inspection.flows);
    let flow = inspection.flows[0].clone();
    assert_eq!((flow.server, flow.client), (service, client), "{what}");
    assert_eq!(flow.readiness, Readiness::NoHandshake, "{what}: {flow:#?}");
    for way in Way::BOTH {
        let bytes = journal::dump(dir.path(), flow.id, way);
        assert_eq!(bytes.len() as u64, WRAP_STREAM, "{what}: {}", way.name());
        journal::assert_bytes_piece(&bytes, way.seed(), 0, &format!("{what}: {}", way.name()));
    }
    let c2s_end = WRAP_CLIENT_SEQ.wrapping_add(WRAP_STREAM as u32);
    let s2c_end = WRAP_SERVER_SEQ.wrapping_add(WRAP_STREAM as u32);
    assert_eq!(
        (flow.c2s.state.next_seq, flow.s2c.state.ack),
        (Some(c2s_end), Some(c2s_end)),
        "{what}: client → server marks past the wrap: {flow:#?}"
    );
    assert_eq!(
        (flow.s2c.state.next_seq, flow.c2s.state.ack),
        (Some(s2c_end), Some(s2c_end)),
        "{what}: server → client marks past the wrap: {flow:#?}"
    );
    flow
}
