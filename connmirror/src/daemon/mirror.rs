//! The `mirror` role: the engine run on its own until SIGINT or SIGTERM.
//!
//! With `--replicate-to` it is a capture box of its own (a router or load
//! balancer on the path that is not the host that takes over): it streams
//! its journal records to each standby over the replication channel the
//! on-host agent uses ([`crate::daemon::protection::Links`]: the same
//! checkpoint for a standby that connects late, acknowledgments and lag),
//! and a standby fed this way takes over as it does from an on-host agent.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{
    daemon::protection::Links,
    engine::{
        Engine, Event, EventSource, MirrorArgs, Never, Signals, announce_ready, detach_pinned,
    },
    key::Key,
    replication::channel::{Hello, LinkEvent},
};

/// `connmirror mirror`'s flags: the engine's, and where to stream.
#[derive(Clone, Debug, clap::Args)]
pub struct MirrorRoleArgs {
    /// What to capture, and how.
    #[command(flatten)]
    pub engine: MirrorArgs,
    /// A standby's replication listener (its `--replication-listen`): stream
    /// the journal records there, so that it can take over from this box's
    /// capture. Repeat for several standbys, each on a channel of its own.
    #[arg(long = "replicate-to", value_name = "IP:PORT", requires = "key")]
    pub replicate_to: Vec<SocketAddr>,
    /// The key the replication channel is authenticated and encrypted with
    /// (the standbys' `--key`).
    #[arg(long, value_name = "PATH")]
    pub key: Option<PathBuf>,
    /// With --replicate-to: milliseconds between the keepalives the mirror
    /// sends each standby when it has nothing else to send.
    #[arg(long, value_name = "MS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub health_interval: u32,
    /// With --replicate-to: keepalives a standby may miss before it declares
    /// this mirror lost (its status then says `unprotected: mirror lost`).
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub health_missed: u32,
}

/// Runs the mirror until SIGINT or SIGTERM (or with `--detach-all`, removes
/// what is pinned).
pub async fn run(args: MirrorRoleArgs) -> anyhow::Result<()> {
    let MirrorRoleArgs {
        mut engine,
        replicate_to,
        key,
        health_interval,
        health_missed,
    } = args;
    let hello = Hello {
        role: "mirror".into(),
        interval_ms: health_interval,
        missed: health_missed,
    };
    if engine.detach_all {
        return detach_pinned(&engine);
    }
    if !replicate_to.is_empty() {
        // The standbys decide how they resume: give them every client byte.
        engine.client_payload = engine.services.iter().map(|s| s.0).collect();
    }
    let key = key.as_deref().map(Key::load).transpose()?;
    let mut mirror = Engine::start(engine)?;
    let mut replication = key.map(|key| {
        tracing::info!(standbys = ?replicate_to, "replicating the journal");
        Replication::start(&mut mirror, (&replicate_to, &hello), &key)
    });
    // Handlers first: a SIGINT sent the moment `ready` appears must already
    // detach cleanly rather than kill the process.
    let mut signals = Signals::install()?;
    announce_ready()?;
    match &mut replication {
        Some(replication) => replicate(&mut mirror, &mut signals, replication).await?,
        None => capture(&mut mirror, &mut signals).await?,
    }
    mirror.finish(serde_json::Map::new())?;
    Ok(())
}

/// Captures, answering scrapes, until a signal.
async fn capture(mirror: &mut Engine, signals: &mut Signals) -> anyhow::Result<()> {
    while let Event::Scrape(scrape) = mirror.next_event(signals, None::<&mut Never>).await? {
        scrape.answer(mirror.families());
    }
    Ok(())
}

/// Captures and streams to the standbys, answering scrapes, until a signal.
async fn replicate(
    mirror: &mut Engine,
    signals: &mut Signals,
    replication: &mut Replication,
) -> anyhow::Result<()> {
    loop {
        match mirror.next_event(signals, Some(&mut *replication)).await? {
            Event::Stop => return Ok(()),
            Event::Scrape(scrape) => {
                let mut families = mirror.families();
                families.extend(replication.links.families(mirror));
                scrape.answer(families);
            }
            Event::Message(ReplicationEvent::Link(index, event)) => {
                (replication.links).follow(mirror, None, (index, event))?
            }
            Event::Message(ReplicationEvent::Keepalive) => {
                replication.links.keepalive(mirror, None)?;
            }
        }
    }
}

/// The links to the standbys and the keepalive tick.
struct Replication {
    links: Links,
    keepalive: tokio::time::Interval,
}

impl Replication {
    /// Starts a link to each of `standbys`, keeping alive every
    /// `hello.interval_ms`.
    fn start(mirror: &mut Engine, to: (&[SocketAddr], &Hello), key: &Key) -> Replication {
        let interval = Duration::from_millis(to.1.interval_ms.into());
        let mut keepalive = tokio::time::interval(interval);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Replication {
            links: Links::start(mirror, to, key, (false, false)),
            keepalive,
        }
    }
}

/// What wakes the replicating mirror besides the ring and the signals.
enum ReplicationEvent {
    /// What the link of the standby of this index reported.
    Link(usize, LinkEvent),
    Keepalive,
}

impl EventSource<ReplicationEvent> for Replication {
    async fn next(&mut self) -> ReplicationEvent {
        tokio::select! {
            (index, event) = self.links.next() => ReplicationEvent::Link(index, event),
            _ = self.keepalive.tick() => ReplicationEvent::Keepalive,
        }
    }
}
