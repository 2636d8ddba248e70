//! How the standby's ownership moves: a lost primary, a takeover, a higher epoch heard, a primary recovering.

use super::*;

impl Standby {
    /// The detector lost the primary: take over every service it owned that
    /// this standby protects, under the next epoch.
    pub(super) async fn primary_lost(&mut self, mirror: &mut Engine, ownership: Ownership) {
        self.epoch = self.epoch.max(ownership.epoch);
        if self.membership.is_some() {
            return self.claim_lost(mirror, ownership);
        }
        let trigger = Trigger {
            name: "heartbeats-missed",
            epoch: self.epoch + 1,
        };
        let owned = self.to_take(mirror, &ownership);
        if owned.is_empty() {
            return;
        }
        if let Err(err) = self.takeover(mirror, Some(owned), trigger).await {
            tracing::error!("automatic takeover failed: {err:#}");
        }
    }
    /// The services of a lost primary's `ownership` that this standby
    /// protects and has not taken over yet (none: it says so).
    pub(super) fn to_take(&self, mirror: &Engine, ownership: &Ownership) -> Vec<SocketAddr> {
        let owned: Vec<SocketAddr> = (ownership.services.iter())
            .filter(|s| {
                mirror.services.iter().any(|t| t.addr == **s) && !self.taken.contains_key(s)
            })
            .copied()
            .collect();
        if owned.is_empty() {
            tracing::warn!(
                node = ownership.node_id,
                "primary lost, but none of its services is left to take over"
            );
        }
        owned
    }
    pub(super) async fn takeover(
        &mut self,
        mirror: &mut Engine,
        asked: Option<Vec<SocketAddr>>,
        trigger: Trigger,
    ) -> anyhow::Result<TakeoverReport> {
        let services = self.select(&mirror.services, asked)?;
        if let Some(replica) = &self.replica {
            let flows = replica.restore_into(&mut mirror.reader.table, &services);
            tracing::info!(flows, "replicated flows put in the table for the takeover");
        }
        tracing::info!(services = ?services.iter().map(|s| s.addr).collect::<Vec<_>>(), trigger = trigger.name, "takeover");
        let report = takeover::run(
            mirror,
            &self.config,
            self.handoff.clone(),
            &services,
            trigger,
        )
        .await?;
        self.taken_over(&services, &report);
        Ok(report)
    }
    /// Records a takeover (or an adopted migration) of `services`: they are
    /// served here under the report's epoch.
    pub(super) fn taken_over(&mut self, services: &[Service], report: &TakeoverReport) {
        self.epoch = report.epoch;
        for service in services {
            self.taken.insert(service.addr, self.reports.len());
        }
        self.reports.push(report.clone());
    }
    /// What this node owns, once it took services over: announced to the
    /// old primary so that it steps down.
    pub(super) fn ownership(&self) -> Option<Ownership> {
        (!self.taken.is_empty()).then(|| Ownership {
            services: self.taken.keys().copied().collect(),
            ..self.ownership_record()
        })
    }
    /// Our ownership record, with no services.
    pub(super) fn ownership_record(&self) -> Ownership {
        Ownership {
            node_id: self.node_id.clone(),
            cluster_id: self.cluster_id.clone(),
            epoch: self.epoch,
            services: Vec::new(),
            macs: Vec::new(),
            policy: "auto".into(),
            applications: Vec::new(),
        }
    }
    /// Tells the detector what to send the primary: our ownership while we
    /// own services, `Yield` while handing them back, else nothing.
    pub(super) fn publish(&self, detector: &Detector) {
        match (self.ownership(), &self.handed_back) {
            (Some(owned), _) => detector.announce(owned),
            (None, Some(yielded)) => detector.hand_back(yielded.clone()),
            (None, None) => detector.withdraw(),
        }
    }
    /// A verified message about services we own or hand back, from `from`.
    pub(super) async fn claimed(
        &mut self,
        mirror: &mut Engine,
        message: Message,
        from: SocketAddr,
    ) {
        let theirs = &message.ownership;
        match message.kind {
            Kind::Heartbeat if self.taken.is_empty() && self.handed_back.is_some() => {
                self.epoch = self.epoch.max(theirs.epoch);
                self.handed_back = None;
                tracing::info!(
                    owner = theirs.node_id,
                    epoch = theirs.epoch,
                    "failback complete: the primary owns the services again"
                );
            }
            Kind::Heartbeat => self.step_down(mirror, theirs),
            Kind::Recovering => self.recovering(mirror, theirs, from).await,
            Kind::Solicit | Kind::Yield => {}
        }
    }
    /// The services of ours that `theirs` names.
    pub(super) fn ours_in(&self, mirror: &Engine, theirs: &Ownership) -> Vec<Service> {
        (mirror.services.iter())
            .filter(|s| self.taken.contains_key(&s.addr) && theirs.services.contains(&s.addr))
            .copied()
            .collect()
    }
    /// A higher epoch claims services we serve: stop serving them at once
    /// (two hosts never serve one address) and protect them again.
    pub(super) fn step_down(&mut self, mirror: &mut Engine, theirs: &Ownership) {
        let services = self.ours_in(mirror, theirs);
        if services.is_empty() || theirs.epoch <= self.epoch {
            return;
        }
        self.epoch = theirs.epoch;
        self.step_downs += 1;
        if let Err(err) = self.release(mirror, &services) {
            tracing::error!("stepping down: {err:#}");
        }
        tracing::warn!(
            owner = theirs.node_id,
            epoch = theirs.epoch,
            services = ?services.iter().map(|s| s.addr).collect::<Vec<_>>(),
            "stepped down: a higher epoch owns the services"
        );
    }
    /// Stops serving `services`: their addresses leave this host, their
    /// segments are captured again (unfenced), and they count as protected.
    pub(super) fn release(
        &mut self,
        mirror: &mut Engine,
        services: &[Service],
    ) -> anyhow::Result<()> {
        let mut ips: Vec<_> = services.iter().map(|s| s.addr.ip()).collect();
        ips.sort();
        ips.dedup();
        for ip in ips {
            let removed = address::release(ip)?;
            tracing::info!(%ip, removed, "service address released");
        }
        for service in services {
            self.taken.remove(&service.addr);
            mirror
                .capture
                .set_mode(service, 0)
                .with_context(|| format!("protecting {service} again"))?;
        }
        Ok(())
    }
    /// The old primary announced itself recovering (its agent at `from`):
    /// hand its services back under the `--failback` policy.
    pub(super) async fn recovering(
        &mut self,
        mirror: &mut Engine,
        theirs: &Ownership,
        from: SocketAddr,
    ) {
        self.recovering_at.insert(theirs.node_id.clone(), from);
        let services = self.ours_in(mirror, theirs);
        if services.is_empty() {
            return;
        }
        if self.failback == Failback::Manual {
            if !std::mem::replace(&mut self.recovering_seen, true) {
                tracing::warn!(
                    node = theirs.node_id,
                    "the primary is recovering; failback policy is manual: ownership stays here"
                );
            }
            return;
        }
        if self.failback == Failback::Migrate {
            match self
                .migrate_back(mirror, &services, from, &theirs.node_id)
                .await
            {
                Ok(receipt) => tracing::info!(
                    node = theirs.node_id,
                    epoch = self.epoch,
                    moved = receipt.restored,
                    "failback (migrate): connections moved to the primary"
                ),
                Err(err) => tracing::error!("failback (migrate) failed: {err:#}"),
            }
            return;
        }
        match self.drain_back(mirror, &services) {
            Ok(flows) => tracing::info!(
                node = theirs.node_id,
                epoch = self.epoch,
                flows,
                "failback (drain): restored connections stay here until they close; new ones go to the primary"
            ),
            Err(err) => tracing::error!("failback (drain) failed: {err:#}"),
        }
    }
}
