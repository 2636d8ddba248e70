//! The takeover sequence: how a standby becomes the server of a service's
//! connections (docs/architecture.md, "Restore order", "Resumption").
//!
//! 1. **quiesce**: the capture programs drop client → service segments at
//!    ingress ([`ServiceMode::QUIESCED`]), so no client segment reaches this
//!    kernel while it has no socket for it (it would answer with a RST); clients
//!    retransmit them later.
//! 2. **fence**: they also drop the old primary's segments for the service
//!    ([`ServiceMode::FENCED`]).
//! 3. **drain** (the step's name in reports): every record already in the ring
//!    reaches the flow table ([`Engine::read_ring`]), which
//!    is then final for these flows.
//! 4. **restore**: every `ready` flow is rebuilt with `TCP_REPAIR` in parallel
//!    batches ([`crate::repair::restore`]), each socket staying in repair mode; flows
//!    that cannot be restored are reset with the sequence numbers the client
//!    expects, and counted by reason.
//! 5. **address**: the service address becomes local (RTM_NEWADDR, see
//!    [`crate::net::address`]), only now that a socket exists for every flow: a
//!    client segment that arrives while the capture cannot quiesce it (an
//!    on-host standby is not on the path) finds its socket, not a RST.
//!    **leave-repair**: the sockets leave repair mode, in parallel.
//! 6. **unquiesce**: the service becomes [`ServiceMode::OWNED`] (still fenced),
//!    so client segments reach the restored sockets.
//! 7. **announce**: gratuitous ARP / unsolicited neighbour advertisements on the
//!    configured L2 interfaces, in the background.
//! 8. **resume**: each socket goes to the application: handed off over the
//!    handoff socket (one blocking task per service, in bundles of up to 253
//!    sockets per message), or spliced to a standby instance after a verified
//!    replay.
//!
//! Every step is logged with its duration and listed in the [`TakeoverReport`].

use std::{
    collections::{BTreeMap, HashMap},
    iter,
    net::{IpAddr, SocketAddr, TcpStream},
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
    time::{Duration, Instant},
};

use connmirror_common::ServiceMode;

use crate::{
    engine::Engine,
    flow::state::{Readiness, after},
    flow::{FlowTable, TakeoverFlow, TakeoverSide},
    net::address::LocalAddress,
    net::announce,
    repair::restore::{
        self, QueueMode, RepairedSocket, RestoreOptions, RestorePlan, RestoreWindow, WindowScale,
    },
    resume::handoff::{FlowMeta, Handoff, HandoffServer, Recorded, reset_undelivered},
    resume::{Outcome, Unrecoverable, abort},
    resume::{
        live::{self, Live},
        replay,
    },
    service::Service,
};

mod report;
pub use report::{Step, TakeoverReport, families};

/// How a service's restored connections continue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Pass each socket to an application registered on the handoff socket.
    Handoff,
    /// Replay the recorded client bytes into a standby instance of the
    /// application at this address, verify its output, then splice.
    Replay(SocketAddr),
    /// Live replay: the standby instance at this address was fed all along
    /// ([`crate::resume::live`]); finish its comparison, then splice.
    Live(SocketAddr),
}

/// What to do with a flow first seen mid-stream (no handshake captured).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MidStream {
    /// Reset it and count it: its options (MSS, window scale, SACK) are unknown.
    Reset,
    /// Restore it with conservative options: MSS 536, no window scaling, no
    /// SACK; timestamps only if its segments carried them.
    Restore,
}

/// Takeover settings of a standby.
#[derive(Debug)]
pub struct TakeoverConfig {
    /// Interface the service addresses are added to.
    pub address_iface: String,
    /// Interfaces to send gratuitous ARP / neighbour advertisements on.
    pub announce: Vec<String>,
    /// How many announcements per address and interface, 100 ms apart.
    pub announce_count: u32,
    /// Threads that rebuild sockets in parallel.
    pub workers: usize,
    /// Policy for flows first seen mid-stream.
    pub mid_stream: MidStream,
    /// How the send queue is refilled.
    pub queue: QueueMode,
    /// Resumption per service address; services not listed use handoff.
    pub resume: BTreeMap<SocketAddr, Resume>,
    /// How long a restored socket waits for an application on the handoff socket.
    pub handoff_wait: Duration,
    /// How long a replay may take to reproduce the recorded output.
    pub replay_timeout: Duration,
    /// Where to keep a duplicate of every socket handed to an application,
    /// for a later migration ([`crate::failover::migrate`]); `None` keeps none.
    pub keep: Option<Kept>,
    /// Live replay of the services resumed `live`, fed by the standby's capture
    /// or replica; `None` when there are none.
    pub live: Option<Live>,
    /// The capture mode the services get at the unquiesce step when this
    /// node protects them for a second failure (cluster mode): `0`
    /// (capture) or [`ServiceMode::SYNC`] (capture and hold each outgoing
    /// segment until the standbys left have it). Every segment the rebuilt
    /// sockets exchange from then on is captured, so the standbys' copy has
    /// no gap; the old primary is then fenced by its epoch rather than by
    /// the capture programs. `None`: the services pass uncaptured, the old
    /// primary fenced (`FENCED | OWNED`).
    pub capture_after: Option<u32>,
}

/// Duplicates of the sockets handed to applications (see
/// [`TakeoverConfig::keep`]).
pub type Kept = Arc<std::sync::Mutex<Vec<TcpStream>>>;

/// Times steps and logs each one.
struct Steps {
    steps: Vec<Step>,
}

impl Steps {
    fn run<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.record(name, start);
        out
    }

    fn record(&mut self, name: &str, start: Instant) {
        let elapsed = start.elapsed();
        tracing::info!(step = name, ms = elapsed.as_secs_f64() * 1e3, "takeover");
        self.steps.push(Step {
            name: name.to_owned(),
            micros: elapsed.as_micros() as u64,
        });
    }
}

/// What started a takeover, for its report.
#[derive(Clone, Copy, Debug)]
pub struct Trigger {
    /// `manual`, `heartbeats-missed` or `migration`.
    pub name: &'static str,
    /// The epoch the standby holds afterwards.
    pub epoch: u64,
}

/// A flow rebuilt, waiting to be resumed.
struct Rebuilt {
    flow: TakeoverFlow,
    service: SocketAddr,
    stream: TcpStream,
}

/// Runs the whole takeover of `services`.
pub(crate) async fn run(
    mirror: &mut Engine,
    config: &TakeoverConfig,
    handoff: Option<Arc<HandoffServer>>,
    services: &[Service],
    trigger: Trigger,
) -> anyhow::Result<TakeoverReport> {
    let mut report = TakeoverReport::started(services, trigger);
    let mut steps = Steps { steps: Vec::new() };
    let quiesced = ServiceMode::QUIESCED;
    steps.run("quiesce", || mirror.set_modes(services, quiesced))?;
    let fenced = quiesced | ServiceMode::FENCED;
    steps.run("fence", || mirror.set_modes(services, fenced))?;
    steps.run("drain", || mirror.read_ring())?;
    let flows: Vec<(SocketAddr, TakeoverFlow)> = services
        .iter()
        .flat_map(|s| {
            let table = &mirror.reader.table;
            table.takeover(s.id).into_iter().map(|f| (s.addr, f))
        })
        .collect();
    let built = steps.run("restore", || restore_flows(config, flows, &mut report));
    steps.run("address", || add_addresses(config, services))?;
    let rebuilt: Vec<Rebuilt> = (steps.run("leave-repair", || leave(config, built, &mut report)))
        .into_iter()
        .map(|(stream, (service, flow))| {
            report.mid_stream += u64::from(flow.readiness == Readiness::NoHandshake);
            Rebuilt {
                flow,
                service,
                stream,
            }
        })
        .collect();
    report.flows = rebuilt.iter().map(|r| r.flow.endpoints()).collect();
    serve(&mut steps, mirror, config, services)?;
    let start = Instant::now();
    resume(config, handoff, &mirror.reader.table, rebuilt, &mut report).await;
    steps.record("resume", start);
    report.steps = steps.steps;
    Ok(report)
}

/// Takes over `services` with connections migrated from the primary
/// ([`crate::failover::migrate`], a planned migration): `plans` are the saves of its
/// sockets, made while the services were quiesced (here inline, on the
/// primary's own capture on-host), and replace the flow table's view. The
/// same steps as [`run`] from **restore** on; each socket goes to an
/// application on the handoff socket with no recorded bytes (it continues
/// where the primary's stood).
pub(crate) async fn adopt(
    mirror: &mut Engine,
    config: &TakeoverConfig,
    handoff: Option<Arc<HandoffServer>>,
    services: &[Service],
    plans: Vec<RestorePlan>,
    trigger: Trigger,
) -> anyhow::Result<TakeoverReport> {
    let mut report = TakeoverReport::started(services, trigger);
    let mut steps = Steps { steps: Vec::new() };
    let built = steps.run("restore", || {
        let planned = plans.iter().map(|p| (p.server, p.client)).collect();
        build(config, plans, planned, &mut report)
    });
    steps.run("address", || add_addresses(config, services))?;
    let rebuilt = steps.run("leave-repair", || leave(config, built, &mut report));
    report.flows = rebuilt.iter().map(|(_, ends)| *ends).collect();
    serve(&mut steps, mirror, config, services)?;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let handoffs = (rebuilt.into_iter().enumerate()).map(|(id, (stream, (server, client)))| {
        crate::failover::migrate::handoff_here(stream, id as u64 + 1, server, client)
    });
    spawn_hand_offs(&mut tasks, config, handoff, handoffs.collect());
    collect(tasks, &mut report).await;
    steps.record("resume", start);
    report.steps = steps.steps;
    Ok(report)
}

/// The **unquiesce** and **announce** steps: client segments reach the
/// rebuilt sockets (the old primary stays fenced) and the neighbours learn
/// the addresses' new home.
fn serve(
    steps: &mut Steps,
    mirror: &mut Engine,
    config: &TakeoverConfig,
    services: &[Service],
) -> anyhow::Result<()> {
    let owned = (config.capture_after).unwrap_or(ServiceMode::FENCED | ServiceMode::OWNED);
    steps.run("unquiesce", || mirror.set_modes(services, owned))?;
    let start = Instant::now();
    announce_in_background(config, services);
    steps.record("announce", start);
    Ok(())
}

fn addresses(services: &[Service]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = services.iter().map(|s| s.addr.ip()).collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Makes every service address local. The addresses stay after the takeover:
/// this host serves them now.
fn add_addresses(config: &TakeoverConfig, services: &[Service]) -> anyhow::Result<()> {
    for ip in addresses(services) {
        let local = LocalAddress::add(&config.address_iface, ip)?;
        tracing::info!(%ip, iface = config.address_iface, added = local.added(), "address local");
    }
    Ok(())
}

fn announce_in_background(config: &TakeoverConfig, services: &[Service]) {
    if config.announce.is_empty() || config.announce_count == 0 {
        return;
    }
    let ifaces = config.announce.clone();
    let count = config.announce_count;
    let ips = addresses(services);
    tokio::spawn(async move {
        for round in 0..count {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            for iface in &ifaces {
                for ip in &ips {
                    if let Err(err) = announce::announce(iface, *ip) {
                        tracing::warn!(%ip, iface, %err, "announcing the address");
                    }
                }
            }
        }
    });
}

/// Plans every flow, rebuilds the restorable ones in parallel and resets the
/// others.
fn restore_flows(
    config: &TakeoverConfig,
    flows: Vec<(SocketAddr, TakeoverFlow)>,
    report: &mut TakeoverReport,
) -> Vec<(RepairedSocket, (SocketAddr, TakeoverFlow))> {
    let mut plans = Vec::new();
    let mut planned = Vec::new();
    let mut resets = Vec::new();
    for (service, flow) in flows {
        let resume = resume_of(config, service);
        match plan(&flow, resume, config) {
            Ok(plan) => {
                plans.push(plan);
                planned.push((service, flow));
            }
            Err(None) => report.closed += 1,
            Err(Some(reason)) => {
                tracing::info!(
                    client = %flow.endpoints().1,
                    id = flow.id,
                    reason = reason.name(),
                    readiness = ?flow.readiness,
                    c2s = ?flow.c2s.marks,
                    s2c = ?flow.s2c.marks,
                    "flow not restored: its client is reset"
                );
                report.unrecoverable(reason);
                resets.extend(reset_plan(&flow));
            }
        }
    }
    let built = build(config, plans, planned, report);
    reset_all(config, &resets, report);
    built
}

/// Rebuilds `plans` in parallel, each socket staying in repair mode; `items`
/// (one per plan) come back with the sockets that made it. Failures are
/// counted as `restore-failed`.
fn build<T>(
    config: &TakeoverConfig,
    plans: Vec<RestorePlan>,
    items: Vec<T>,
    report: &mut TakeoverReport,
) -> Vec<(RepairedSocket, T)> {
    let built = restore::build_all(&plans, config.workers);
    let mut sockets = Vec::new();
    for (result, item) in built.into_iter().zip(items) {
        match result {
            Ok(socket) => sockets.push((socket, item)),
            Err(err) => fail(report, Unrecoverable::RestoreFailed, err.to_string()),
        }
    }
    sockets
}

/// Takes the [`build`] sockets out of repair mode in parallel, once the
/// service addresses are local. Failures are counted as `restore-failed`.
fn leave<T>(
    config: &TakeoverConfig,
    built: Vec<(RepairedSocket, T)>,
    report: &mut TakeoverReport,
) -> Vec<(TcpStream, T)> {
    let (sockets, items): (Vec<RepairedSocket>, Vec<T>) = built.into_iter().unzip();
    let left = restore::leave_all(sockets, config.workers);
    let mut rebuilt = Vec::new();
    for (result, item) in left.into_iter().zip(items) {
        match result {
            Ok(stream) => rebuilt.push((stream, item)),
            Err(err) => fail(report, Unrecoverable::RestoreFailed, err.to_string()),
        }
    }
    rebuilt
}

fn fail(report: &mut TakeoverReport, reason: Unrecoverable, error: String) {
    tracing::warn!(reason = reason.name(), error, "flow not restored");
    report.unrecoverable(reason);
    report.errors.push(error);
}

/// Sends one RST to the client of each flow in `plans` (see [`reset_plan`]).
fn reset_all(config: &TakeoverConfig, plans: &[RestorePlan], report: &mut TakeoverReport) {
    for result in restore::build_all(plans, config.workers) {
        match result.and_then(RepairedSocket::reset) {
            Ok(()) => report.reset += 1,
            Err(err) => {
                tracing::warn!(%err, "resetting an unrecoverable flow");
                report.errors.push(err.to_string());
            }
        }
    }
}

fn resume_of(config: &TakeoverConfig, service: SocketAddr) -> Resume {
    config
        .resume
        .get(&service)
        .copied()
        .unwrap_or(Resume::Handoff)
}

/// MSS assumed when the peer's is unknown (RFC 9293 §3.7.1 default).
const DEFAULT_MSS: u16 = 536;

/// The restore plan of one flow, or why there is none (`None`: closed, nothing
/// to do).
fn plan(
    flow: &TakeoverFlow,
    resume: Resume,
    config: &TakeoverConfig,
) -> Result<RestorePlan, Option<Unrecoverable>> {
    let TakeoverFlow { c2s, s2c, .. } = flow;
    match flow.readiness {
        Readiness::Closed => return Err(None),
        Readiness::MissingBytes(_) => return Err(Some(Unrecoverable::Gapped)),
        Readiness::NoHandshake if config.mid_stream == MidStream::Reset => {
            return Err(Some(Unrecoverable::NoHandshake));
        }
        Readiness::NoHandshake | Readiness::Ready => {}
    }
    if c2s.state.fin || s2c.state.fin {
        return Err(Some(Unrecoverable::Closing));
    }
    let replay = matches!(resume, Resume::Replay(_));
    if replay && !(has_history(c2s) && has_history(s2c)) {
        return Err(Some(Unrecoverable::OverCap));
    }
    let no_handshake = Some(Unrecoverable::NoHandshake);
    let recv_seq = c2s.seq_at(c2s.marks.next).ok_or(no_handshake)?;
    // The client's last acknowledgment is the restored socket's `snd_una`.
    let acked = s2c.marks.acked;
    let send_seq = s2c.seq_at(acked).ok_or(no_handshake)?;
    let send_queue = s2c
        .bytes_from(acked)
        .ok_or(Some(Unrecoverable::Gapped))?
        .to_vec();
    let options = options(flow);
    Ok(RestorePlan {
        server: flow.endpoints().0,
        client: flow.endpoints().1,
        send_seq,
        recv_seq,
        send_queue,
        options,
        window: window(c2s, s2c, recv_seq),
        timestamp: timestamp(options, s2c),
        queue: config.queue,
    })
}

/// The whole history from offset 0 is held (what replay needs).
fn has_history(side: &TakeoverSide) -> bool {
    side.retained_start == 0 && !side.marks.handoff_only
}

/// The options both SYNs agreed on; conservative defaults without a handshake.
fn options(flow: &TakeoverFlow) -> RestoreOptions {
    let (Some(client), Some(server)) = (flow.c2s.state.syn, flow.s2c.state.syn) else {
        return RestoreOptions {
            mss: DEFAULT_MSS,
            window_scale: None,
            sack: false,
            timestamps: flow.c2s.state.tsval.is_some() && flow.s2c.state.tsval.is_some(),
        };
    };
    RestoreOptions {
        mss: client.mss.unwrap_or(DEFAULT_MSS),
        window_scale: client
            .window_scale
            .zip(server.window_scale)
            .map(|(send, receive)| WindowScale { send, receive }),
        sack: client.sack_permitted && server.sack_permitted,
        timestamps: client.timestamps && server.timestamps,
    }
}

/// The windows as last advertised: the client's is our send window, the
/// primary's our receive window, whose right edge stays where the primary put
/// it (`rcv_wup` = the primary's last acknowledgment).
fn window(c2s: &TakeoverSide, s2c: &TakeoverSide, recv_seq: u32) -> RestoreWindow {
    let snd_wnd = c2s.state.window_scaled.max(1);
    let rcv_wup = match s2c.state.ack {
        Some(ack) if !after(ack, recv_seq) => ack,
        _ => recv_seq,
    };
    RestoreWindow {
        snd_wl1: recv_seq,
        snd_wnd,
        max_window: snd_wnd,
        rcv_wnd: s2c.state.window_scaled.max(u32::from(DEFAULT_MSS)),
        rcv_wup,
    }
}

/// How far past the primary's highest captured TSval the restored socket's
/// clock starts: the primary kept ticking between its last captured segment
/// and its death. A jump forward is harmless (the client only updates its
/// `ts_recent`); a step back gets every segment dropped by PAWS.
const TIMESTAMP_MARGIN: u32 = 1000;

/// `TCP_TIMESTAMP` for the restored socket: the primary's highest TSval plus
/// [`TIMESTAMP_MARGIN`], so the client's PAWS check (RFC 7323 §5) never sees
/// time go back. Bit 0 stays clear: on kernel ≥ 6.7 it would select a
/// microsecond clock (docs/architecture.md, "Implementation notes"); the primary's clock
/// is assumed to be Linux's default millisecond one.
fn timestamp(options: RestoreOptions, s2c: &TakeoverSide) -> Option<u32> {
    if !options.timestamps {
        return None;
    }
    s2c.state
        .tsval
        .map(|tsval| tsval.wrapping_add(TIMESTAMP_MARGIN) & !1)
}

/// A plan whose only purpose is a RST the client accepts: its sequence number
/// is the client's last acknowledgment (RFC 5961 §3.2: an exact match resets,
/// anything else in the window only draws a challenge ACK).
fn reset_plan(flow: &TakeoverFlow) -> Option<RestorePlan> {
    let send_seq = flow.c2s.state.ack?;
    let recv_seq = flow.c2s.state.next_seq?;
    let window = u32::from(u16::MAX);
    Some(RestorePlan {
        server: flow.endpoints().0,
        client: flow.endpoints().1,
        send_seq,
        recv_seq,
        send_queue: Vec::new(),
        options: RestoreOptions {
            mss: DEFAULT_MSS,
            window_scale: None,
            sack: false,
            timestamps: false,
        },
        window: RestoreWindow {
            snd_wl1: recv_seq,
            snd_wnd: window,
            max_window: window,
            rcv_wnd: window,
            rcv_wup: recv_seq,
        },
        timestamp: None,
        queue: QueueMode::Sent,
    })
}

/// Hands each rebuilt socket to its application, or replays into it; flows
/// that cannot continue are reset and counted.
async fn resume(
    config: &TakeoverConfig,
    handoff: Option<Arc<HandoffServer>>,
    table: &FlowTable,
    rebuilt: Vec<Rebuilt>,
    report: &mut TakeoverReport,
) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut handoffs = Vec::new();
    for Rebuilt {
        flow,
        service,
        stream,
    } in rebuilt
    {
        // The service is no longer captured, so its flows in the table are
        // final: their histories can be copied now, with the clients running.
        let flow = table.takeover_history(&flow.key).unwrap_or(flow);
        match resume_of(config, service) {
            Resume::Handoff => handoffs.push(handoff_of(flow, service, stream)),
            Resume::Replay(app) => {
                let timeout = config.replay_timeout;
                tasks.spawn(async move { vec![replay::resume(stream, &flow, app, timeout).await] });
            }
            Resume::Live(_) => {
                let (live, timeout) = (config.live.clone(), config.replay_timeout);
                tasks.spawn(async move { vec![live::resume(stream, &flow, live, timeout).await] });
            }
        }
    }
    spawn_hand_offs(&mut tasks, config, handoff, handoffs);
    collect(tasks, report).await;
}

/// Hands `handoffs` to applications from one blocking task per service (each
/// sends its connections in bundles, [`HandoffServer::deliver_all`]).
fn spawn_hand_offs(
    tasks: &mut tokio::task::JoinSet<Vec<Outcome>>,
    config: &TakeoverConfig,
    server: Option<Arc<HandoffServer>>,
    handoffs: Vec<Handoff>,
) {
    let mut by_service: BTreeMap<SocketAddr, Vec<Handoff>> = BTreeMap::new();
    for handoff in handoffs {
        let service = handoff.meta.service;
        by_service.entry(service).or_default().push(handoff);
    }
    for handoffs in by_service.into_values() {
        let (server, wait, keep) = (server.clone(), config.handoff_wait, config.keep.clone());
        tasks.spawn_blocking(move || hand_off(server.as_deref(), handoffs, wait, keep.as_ref()));
    }
}

/// Counts each resumption's outcome in `report`.
async fn collect(mut tasks: tokio::task::JoinSet<Vec<Outcome>>, report: &mut TakeoverReport) {
    while let Some(outcomes) = tasks.join_next().await {
        let outcomes = match outcomes {
            Ok(outcomes) => outcomes,
            Err(err) => {
                report.errors.push(format!("resume task: {err}"));
                continue;
            }
        };
        for outcome in outcomes {
            count(outcome, report);
        }
    }
}

/// Counts one resumption's outcome in `report`.
fn count(outcome: Outcome, report: &mut TakeoverReport) {
    match outcome {
        Outcome::HandedOff => {
            report.restored += 1;
            report.handed_off += 1;
        }
        Outcome::Replayed => {
            report.restored += 1;
            report.replayed += 1;
        }
        Outcome::Live => {
            report.restored += 1;
            report.live += 1;
        }
        Outcome::Divergent(error) => {
            tracing::warn!(error, "replay diverged: connection reset");
            report.divergent += 1;
            report.errors.push(error);
        }
        Outcome::Failed(reason, error) => fail(report, reason, error),
    }
}

/// Delivers `handoffs` (resetting those no application took), keeping a
/// duplicate of each delivered socket in `keep` ([`TakeoverConfig::keep`]).
fn hand_off(
    server: Option<&HandoffServer>,
    handoffs: Vec<Handoff>,
    wait: Duration,
    keep: Option<&Kept>,
) -> Vec<Outcome> {
    let no_application = |error| Outcome::Failed(Unrecoverable::NoApplication, error);
    let Some(server) = server else {
        let no_socket = |h: Handoff| {
            let service = h.meta.service;
            abort(h.stream);
            no_application(format!("{service}: no handoff socket configured"))
        };
        return handoffs.into_iter().map(no_socket).collect();
    };
    // Duplicated before delivery, by descriptor: an undelivered handoff comes
    // back still holding its descriptor, so its number names its duplicate.
    let mut dups: HashMap<RawFd, TcpStream> = (handoffs.iter())
        .filter(|_| keep.is_some())
        .filter_map(|h| Some((h.stream.as_raw_fd(), h.stream.try_clone().ok()?)))
        .collect();
    let total = handoffs.len();
    let failures = server.deliver_all(handoffs, wait);
    let delivered = total - failures.len();
    let mut outcomes: Vec<Outcome> = iter::repeat_with(|| Outcome::HandedOff)
        .take(delivered)
        .collect();
    for (handoff, err) in failures {
        dups.remove(&handoff.stream.as_raw_fd());
        outcomes.push(no_application(reset_undelivered(handoff, err)));
    }
    if let Some(keep) = keep {
        keep.lock()
            .expect("kept sockets")
            .extend(dups.into_values());
    }
    outcomes
}

fn handoff_of(flow: TakeoverFlow, service: SocketAddr, stream: TcpStream) -> Handoff {
    let (server, client) = flow.endpoints();
    let recorded = |side: &TakeoverSide| Recorded {
        start: side.bytes_start,
        end: side.marks.next,
        acked: side.marks.acked,
    };
    Handoff {
        stream,
        meta: FlowMeta {
            id: flow.id,
            service,
            server,
            client,
            c2s: recorded(&flow.c2s),
            s2c: recorded(&flow.s2c),
        },
        c2s: flow.c2s.bytes,
        s2c: flow.s2c.bytes,
    }
}

#[cfg(test)]
mod tests;
