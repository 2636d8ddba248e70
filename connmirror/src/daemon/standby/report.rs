//! What the standby shows: its metric families, `connmirror status` and its keys in `report.json`.

use super::*;

impl Standby {
    /// The standby's metrics: the mirror's, heartbeats, rejected requests,
    /// takeovers and the epoch.
    pub(super) fn families(&self, mirror: &Engine, sources: &Sources) -> Vec<Family> {
        let mut families = mirror.families();
        if let Some(detector) = &sources.detector {
            families.extend(detector.stats().families());
            families.push(detector.gap_family());
        }
        let handoff_rejected = self.handoff.as_ref().map_or(0, |h| h.rejected());
        families.extend([
            Family::counter(
                "control_rejected",
                "Control requests refused (malformed, oversize, another user's).",
                None,
            )
            .count(Vec::new(), sources.control.rejected()),
            Family::counter("handoff_rejected", "Handoff registrations refused.", None)
                .count(Vec::new(), handoff_rejected),
            Family::gauge("epoch", "The highest ownership epoch held or seen.", None)
                .set(Vec::new(), self.epoch as f64),
            Family::counter(
                "failbacks",
                "Services handed back to a recovering primary, by policy.",
                None,
            )
            .count(vec![("policy", "drain".into())], self.failbacks)
            .count(vec![("policy", "migrate".into())], self.migrations),
            Family::counter(
                "planned_migrations",
                "Planned migrations from the primary (connmirror migrate on its agent), by outcome.",
                None,
            )
            .count(vec![("outcome", "taken".into())], self.migrations_in)
            .count(vec![("outcome", "refused".into())], self.migrations_refused),
            Family::counter(
                "step_downs",
                "Times this node stopped serving because a higher epoch claimed its services.",
                None,
            )
            .count(Vec::new(), self.step_downs),
            Family::gauge(
                "draining_connections",
                "Restored connections still served here after a drain failback.",
                None,
            )
            .set(Vec::new(), self.draining() as f64),
        ]);
        families.extend(takeover::families(&self.reports));
        if let Some(live) = &self.config.live {
            families.extend(live.families());
        }
        if let Some(replica) = &self.replica {
            families.extend(replica.families());
        }
        families
    }
    /// The node's status for `connmirror status`.
    pub(super) fn status(&self, mirror: &Engine, detector: Option<&Detector>) -> StatusReport {
        let mut live = (self.config.live.as_ref()).map_or_else(BTreeMap::new, Live::protection);
        let services = (mirror.services.iter())
            .map(|s| ServiceStatus {
                addr: s.addr,
                live: live.remove(&s.addr),
                exposure_bytes: None,
                state: if self.taken.contains_key(&s.addr) {
                    "taken-over".into()
                } else if self.drains.iter().any(|d| d.serves(s.addr)) {
                    "draining".into()
                } else if let Some(role) = self.replica.as_ref().and_then(Replica::lost) {
                    format!("unprotected: {role} lost")
                } else {
                    "protected".into()
                },
            })
            .collect();
        let counts = match &self.replica {
            Some(replica) if self.taken.is_empty() => replica.readiness_counts(),
            _ => mirror.reader.table.readiness_counts(),
        };
        let flows = (counts.into_iter())
            .map(|(readiness, n)| (readiness.to_owned(), n))
            .collect();
        let peer = detector.and_then(Detector::peer);
        StatusReport {
            role: if self.taken.is_empty() {
                "standby"
            } else {
                "owner"
            }
            .into(),
            epoch: self
                .epoch
                .max(peer.as_ref().map_or(0, |p| p.ownership.epoch)),
            peer,
            heartbeats: detector.map(Detector::stats),
            services,
            flows,
            refused_flows: mirror.reader.table.refused(),
            replication_lag: self.replica.as_ref().and_then(Replica::lag),
            takeovers: self.reports.len(),
        }
    }
}
