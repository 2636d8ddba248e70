//! What a takeover did ([`TakeoverReport`]): its steps with their durations,
//! and the connections restored, resumed, reset and unrecoverable; and the
//! metrics of every takeover run so far ([`families`]).

use std::{collections::BTreeMap, net::SocketAddr};

use prometheus_client::registry::Unit;
use serde::{Deserialize, Serialize};

use super::Trigger;
use crate::{
    metrics::{Family, Histogram},
    resume::Unrecoverable,
    service::Service,
};

/// One timed step of a takeover.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// `quiesce`, `fence`, `drain`, `address`, `restore`, `reset`, `unquiesce`,
    /// `announce`, `resume`.
    pub name: String,
    /// How long it took, in microseconds.
    pub micros: u64,
}

/// What a takeover did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TakeoverReport {
    /// What started it: `manual` (`connmirror takeover`), `heartbeats-missed`,
    /// or `migration` (a planned migration from the primary).
    #[serde(default)]
    pub trigger: String,
    /// The ownership epoch this standby holds after it (0 when the primary's
    /// epoch was never heard).
    #[serde(default)]
    pub epoch: u64,
    /// Services taken over.
    pub services: Vec<SocketAddr>,
    /// Steps in order, with durations.
    pub steps: Vec<Step>,
    /// Flows rebuilt and resumed.
    pub restored: u64,
    /// Flows handed to an application.
    pub handed_off: u64,
    /// Flows resumed by a verified replay.
    pub replayed: u64,
    /// Flows resumed by live replay: spliced to an instance fed all along.
    #[serde(default)]
    pub live: u64,
    /// Replays (and live replays) whose output differed from the recorded
    /// bytes (those flows are reset).
    pub divergent: u64,
    /// Flows not restored, by reason (divergent replays are counted separately).
    pub unrecoverable: BTreeMap<String, u64>,
    /// Flows first seen mid-stream that were rebuilt anyway (`--mid-stream
    /// restore`, with conservative options); included in `restored` once resumed.
    #[serde(default)]
    pub mid_stream: u64,
    /// RSTs sent for flows that could not be restored.
    pub reset: u64,
    /// Closed flows skipped (nothing to restore).
    pub closed: u64,
    /// Error messages for flows that failed (restore, handoff, replay).
    pub errors: Vec<String>,
    /// Every connection rebuilt, as (service end, client end): what a
    /// `drain` failback keeps serving here ([`crate::failover::drain`]).
    #[serde(default)]
    pub flows: Vec<(SocketAddr, SocketAddr)>,
}

impl TakeoverReport {
    /// An empty report of a takeover of `services`.
    pub(super) fn started(services: &[Service], trigger: Trigger) -> TakeoverReport {
        TakeoverReport {
            trigger: trigger.name.to_owned(),
            epoch: trigger.epoch,
            services: services.iter().map(|s| s.addr).collect(),
            ..TakeoverReport::default()
        }
    }

    pub(super) fn unrecoverable(&mut self, reason: Unrecoverable) {
        *self
            .unrecoverable
            .entry(reason.name().to_owned())
            .or_default() += 1;
    }

    /// Seconds the `restore` and `leave-repair` steps took: every
    /// connection rebuilt.
    pub fn restore_seconds(&self) -> f64 {
        (self.steps.iter())
            .filter(|step| step.name == "restore" || step.name == "leave-repair")
            .map(|step| step.micros as f64 / 1e6)
            .sum()
    }

    /// Total flows not restored.
    pub fn unrecoverable_total(&self) -> u64 {
        self.unrecoverable.values().sum()
    }
}

/// Upper bounds (seconds) of the restore-latency histogram buckets.
const RESTORE_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The counters summed over every takeover: name, help, the report's field.
type Total = (&'static str, &'static str, fn(&TakeoverReport) -> u64);

/// [`families`]' counters, in exposition order.
const COUNTERS: [Total; 7] = [
    (
        "restored_connections",
        "Connections rebuilt with TCP_REPAIR and resumed.",
        |r| r.restored,
    ),
    (
        "handed_off_connections",
        "Restored connections handed to an application.",
        |r| r.handed_off,
    ),
    (
        "replayed_connections",
        "Restored connections resumed by a verified replay.",
        |r| r.replayed,
    ),
    (
        "live_resumed_connections",
        "Restored connections spliced to a live-replay instance.",
        |r| r.live,
    ),
    (
        "mid_stream_restored_connections",
        "Connections first seen mid-stream that were rebuilt anyway (--mid-stream restore).",
        |r| r.mid_stream,
    ),
    (
        "divergent_replays",
        "Replays and live replays whose output differed from the recorded bytes (those connections are reset).",
        |r| r.divergent,
    ),
    (
        "reset_connections",
        "RSTs sent for connections that could not be restored.",
        |r| r.reset,
    ),
];

/// Metrics of the takeovers run so far.
pub fn families(reports: &[TakeoverReport]) -> Vec<Family> {
    let mut failovers = Family::counter("failovers", "Takeovers run, by trigger.", None);
    for trigger in ["manual", "heartbeats-missed", "migration"] {
        let n = reports.iter().filter(|r| r.trigger == trigger).count();
        failovers = failovers.count(vec![("trigger", trigger.into())], n as u64);
    }
    let mut unrecoverable = Family::counter(
        "unrecoverable_flows",
        "Flows a takeover could not restore, by reason (each one reset).",
        None,
    );
    for reason in Unrecoverable::ALL.map(Unrecoverable::name) {
        let n = reports
            .iter()
            .filter_map(|r| r.unrecoverable.get(reason))
            .sum();
        unrecoverable = unrecoverable.count(vec![("reason", reason.into())], n);
    }
    let restore_times = reports.iter().map(TakeoverReport::restore_seconds);
    let mut families = vec![failovers];
    families.extend(COUNTERS.iter().map(|(name, help, field)| {
        let total = reports.iter().map(field).sum();
        Family::counter(name, help, None).count(Vec::new(), total)
    }));
    families.extend([
        unrecoverable,
        Family::histogram(
            "restore",
            "Duration of each takeover's restore and leave-repair steps (every connection rebuilt).",
            Some(Unit::Seconds),
        )
        .observe(Vec::new(), Histogram::of(&RESTORE_BUCKETS, restore_times)),
    ]);
    families
}
