//! Moving connections between the standby and the primary: failback by migration, planned migrations in, and failback by drain.

use std::collections::HashSet;

use connmirror_common::FlowKey;

use super::*;
use crate::flow::key_of;

impl Standby {
    /// `connmirror migrate --to NODE`: moves the connections of `asked` (every
    /// service taken over when `None`) to the agent of `to`, heard recovering
    /// or as the primary, whatever the `--failback` policy.
    pub(super) async fn migrate_to(
        &mut self,
        mirror: &mut Engine,
        detector: Option<&Detector>,
        to: &str,
        asked: Option<Vec<SocketAddr>>,
    ) -> anyhow::Result<MigrateReport> {
        let peer = detector.and_then(Detector::peer);
        let agent = (self.recovering_at.get(to).copied())
            .or_else(|| {
                peer.filter(|p| p.ownership.node_id == to)
                    .map(|p| p.address)
            })
            .with_context(|| {
                format!("node {to:?} was never heard from: its agent must run (with --handoff)")
            })?;
        let addrs = asked.unwrap_or_else(|| self.taken.keys().copied().collect());
        anyhow::ensure!(!addrs.is_empty(), "no service is taken over here");
        let services: Vec<Service> = (addrs.iter())
            .map(|addr| {
                anyhow::ensure!(
                    self.taken.contains_key(addr),
                    "service {addr} is not taken over here"
                );
                mirror
                    .services
                    .iter()
                    .find(|s| s.addr == *addr)
                    .copied()
                    .with_context(|| format!("service {addr} is not protected by this standby"))
            })
            .collect::<anyhow::Result<_>>()?;
        let epoch = self.epoch;
        let receipt = self.migrate_back(mirror, &services, agent, to).await?;
        tracing::info!(to, %agent, moved = receipt.restored, "migrated on request");
        Ok(MigrateReport {
            to: to.to_owned(),
            peer: agent,
            services: addrs,
            moved: receipt.restored,
            errors: receipt.errors,
            epoch,
        })
    }
    /// `--failback migrate`: quiesce `services`, save their restored
    /// connections and send them to the agent at `agent` ([`migrate`]); once
    /// it took them, let ours go silently, release the services and yield.
    /// On failure every connection stays here, served as before.
    pub(super) async fn migrate_back(
        &mut self,
        mirror: &mut Engine,
        services: &[Service],
        agent: SocketAddr,
        to: &str,
    ) -> anyhow::Result<Receipt> {
        let (Some(kept), Some(key)) = (self.config.keep.clone(), self.key.clone()) else {
            anyhow::bail!(
                "this standby keeps no sockets to migrate: start it with --failback migrate or --keep-sockets"
            );
        };
        let addrs: Vec<SocketAddr> = services.iter().map(|s| s.addr).collect();
        let quiesced = ServiceMode::QUIESCED | ServiceMode::FENCED;
        mirror.set_modes(services, quiesced)?;
        // Quiesced first: no handshake completes while the namespace is read.
        let (sockets, own_count) = match to_migrate(&kept, &addrs).await {
            Ok(found) => found,
            Err(err) => {
                mirror.set_modes(services, ServiceMode::FENCED | ServiceMode::OWNED)?;
                return Err(err);
            }
        };
        let transfer = Transfer {
            node_id: self.node_id.clone(),
            to: to.to_owned(),
            counter: heartbeat::initial_counter(),
            epoch: self.epoch,
            plans: Vec::new(),
        };
        let progress = unseen_progress(&sockets);
        let (sockets, sent) = tokio::task::spawn_blocking(move || {
            let sent = migrate::send(agent, &key, &sockets, transfer);
            (sockets, sent)
        })
        .await
        .context("the migration task")?;
        let (receipt, plans) = match sent {
            Ok(sent) => sent,
            Err(err) => {
                // The accepted ones' duplicates go: their applications hold them.
                let own = sockets.into_iter().take(own_count);
                kept.lock().expect("kept sockets").extend(own);
                mirror.set_modes(services, ServiceMode::FENCED | ServiceMode::OWNED)?;
                return Err(err);
            }
        };
        drop(sockets);
        for error in &receipt.errors {
            tracing::warn!(error, "the primary could not take a connection");
        }
        let followed: HashSet<FlowKey> = (plans.iter())
            .filter(|plan| {
                let (received, acked) = progress
                    .get(&(plan.server, plan.client))
                    .copied()
                    .unwrap_or_default();
                mirror.reader.table.rebase(plan, received, acked)
            })
            .map(|plan| key_of(plan.server, plan.client))
            .collect();
        let ids: Vec<u32> = services.iter().map(|s| s.id).collect();
        let stale = mirror.reader.table.forget_served(&ids, &followed);
        tracing::info!(
            followed = followed.len(),
            of = plans.len(),
            stale,
            "migrated connections rebased in the flow table: capture follows them again; \
             the services' other flows, stale since the takeover, forgotten"
        );
        self.release(mirror, services)?;
        self.migrations += 1;
        self.handed_back = Some(Ownership {
            services: addrs,
            ..self.ownership_record()
        });
        Ok(receipt)
    }
    /// A planned migration from the primary at `from`: logs and counts it.
    pub(super) async fn migrated_in(
        &mut self,
        mirror: &mut Engine,
        stream: TcpStream,
        from: SocketAddr,
    ) {
        match self.take_migration(mirror, stream).await {
            Ok(report) => {
                self.migrations_in += 1;
                tracing::info!(
                    %from,
                    restored = report.restored,
                    failed = report.errors.len(),
                    epoch = report.epoch,
                    "planned migration: the primary's connections are served here"
                );
            }
            Err(err) => {
                self.migrations_refused += 1;
                tracing::warn!(%from, "planned migration refused: {err:#}");
            }
        }
    }
    /// Serves one planned migration ([`crate::failover::migrate`]): checks its
    /// [`Prepare`], quiesces and fences the services, answers, takes the
    /// [`Transfer`]'s connections over ([`takeover::adopt`]) and sends the
    /// receipt. If the primary goes away before its transfer, the services are
    /// protected again and nothing changed.
    pub(super) async fn take_migration(
        &mut self,
        mirror: &mut Engine,
        stream: TcpStream,
    ) -> anyhow::Result<TakeoverReport> {
        let key = self.key.clone().context("no key")?;
        let k = key.clone();
        let (stream, prepare) = on_stream(stream, move |s| {
            migrate::read_frame::<Prepare>(s, &k).context("reading a migration request")
        })
        .await?;
        let counter = prepare.counter;
        let services = match self.check_prepare(mirror, &prepare) {
            Ok(services) => services,
            Err(reason) => return Err(refuse_migration(stream, &key, counter, reason).await),
        };
        mirror.set_modes(&services, ServiceMode::QUIESCED | ServiceMode::FENCED)?;
        let (stream, transfer) = match exchange_transfer(stream, &key, counter, &services).await {
            Ok(exchanged) => exchanged,
            Err(err) => {
                mirror.set_modes(&services, 0)?;
                return Err(err);
            }
        };
        let trigger = Trigger {
            name: "migration",
            epoch: self.epoch.max(prepare.epoch) + 1,
        };
        let handoff = self.handoff.clone();
        let report = takeover::adopt(
            mirror,
            &self.config,
            handoff,
            &services,
            transfer.plans,
            trigger,
        )
        .await?;
        self.taken_over(&services, &report);
        send_receipt(stream, key, counter, &report).await;
        Ok(report)
    }
    /// The services of a planned migration's [`Prepare`], or why not.
    pub(super) fn check_prepare(
        &mut self,
        mirror: &Engine,
        prepare: &Prepare,
    ) -> Result<Vec<Service>, String> {
        let (to, from) = (&prepare.to, &prepare.node_id);
        migrate::check_frame(
            to,
            from,
            prepare.counter,
            &self.node_id,
            &mut self.migration_counter,
        )?;
        if prepare.services.is_empty() {
            return Err("the request names no service".into());
        }
        (prepare.services.iter())
            .map(|addr| {
                let service = (mirror.services.iter())
                    .find(|s| s.addr == *addr)
                    .ok_or_else(|| format!("service {addr} is not protected here"))?;
                if self.taken.contains_key(addr) {
                    return Err(format!("service {addr} is already served here"));
                }
                if let Some(Resume::Replay(_)) = self.config.resume.get(addr) {
                    return Err(format!(
                        "service {addr} resumes by replay here: migrated connections need an application on the handoff socket"
                    ));
                }
                if !self.handoff.as_ref().is_some_and(|h| h.serves(*addr)) {
                    return Err(format!(
                        "no application is registered on the handoff socket for {addr}"
                    ));
                }
                Ok(*service)
            })
            .collect()
    }
    /// `--failback drain`: keep delivering the restored connections of
    /// `services` here, then release them and yield ownership.
    pub(super) fn drain_back(
        &mut self,
        mirror: &mut Engine,
        services: &[Service],
    ) -> anyhow::Result<usize> {
        let addrs: Vec<SocketAddr> = services.iter().map(|s| s.addr).collect();
        let flows: Vec<drain::FlowEnds> = (self.reports.iter())
            .flat_map(|r| &r.flows)
            .filter(|(server, _)| addrs.contains(server))
            .copied()
            .collect();
        let drain = Drain::install(&flows, self.drain_table, &self.ifaces)
            .context("routing the drained connections")?;
        self.drains.push(drain);
        self.release(mirror, services)?;
        self.failbacks += 1;
        self.handed_back = Some(Ownership {
            services: addrs,
            ..self.ownership_record()
        });
        Ok(flows.len())
    }
    /// Drops the routes of drained connections that closed.
    pub(super) fn prune(&mut self) {
        for drain in &mut self.drains {
            if let Err(err) = drain.prune() {
                tracing::warn!("pruning drained connections: {err:#}");
            }
        }
        self.drains.retain(|d| !d.is_done());
    }
    /// Connections still served here after a drain.
    pub(super) fn draining(&self) -> usize {
        self.drains.iter().map(Drain::remaining).sum()
    }
}

/// Answers migration `counter` with a refusal for `reason` (best effort: the
/// primary may be gone) and returns the error that ends it.
async fn refuse_migration(
    stream: TcpStream,
    key: &Key,
    counter: u64,
    reason: String,
) -> anyhow::Error {
    let refused = Prepared {
        counter,
        refused: Some(reason.clone()),
    };
    let k = key.clone();
    let _ = on_stream(stream, move |s| Ok(migrate::write_frame(s, &k, &refused)?)).await;
    anyhow::anyhow!(reason)
}

/// Tells the primary that migration `counter` is ready, and reads its
/// [`Transfer`]: it must carry the same counter and only connections of
/// `services`.
async fn exchange_transfer(
    stream: TcpStream,
    key: &Key,
    counter: u64,
    services: &[Service],
) -> anyhow::Result<(TcpStream, Transfer)> {
    let k = key.clone();
    on_stream(stream, move |s| {
        let ready = Prepared {
            counter,
            refused: None,
        };
        migrate::write_frame(s, &k, &ready).context("answering the migration request")?;
        let transfer: Transfer = migrate::read_frame(s, &k).context("reading the transfer")?;
        anyhow::ensure!(
            transfer.counter == counter,
            "transfer {} in migration {counter}",
            transfer.counter
        );
        Ok(transfer)
    })
    .await
    .and_then(|(stream, transfer)| {
        let addrs: Vec<SocketAddr> = services.iter().map(|s| s.addr).collect();
        match transfer.plans.iter().find(|p| !addrs.contains(&p.server)) {
            Some(p) => anyhow::bail!(
                "the transfer has a connection of {}, not a service it named",
                p.server
            ),
            None => Ok((stream, transfer)),
        }
    })
}

/// Sends migration `counter`'s receipt for `report`; a failure is only
/// logged, since the connections are already served here.
async fn send_receipt(stream: TcpStream, key: Key, counter: u64, report: &TakeoverReport) {
    let receipt = Receipt {
        counter,
        restored: report.restored,
        errors: report.errors.clone(),
        refused: None,
    };
    if let Err(err) = on_stream(stream, move |s| {
        Ok(migrate::write_frame(s, &key, &receipt)?)
    })
    .await
    {
        tracing::warn!(
            "sending the migration receipt (the primary's copies stay behind the fence): {err:#}"
        );
    }
}

/// The sockets of `services` to migrate, with how many of them (the first)
/// are restored ones from `kept`; the others are duplicates of those this
/// host's applications accepted ([`take_accepted`]).
async fn to_migrate(
    kept: &Kept,
    services: &[SocketAddr],
) -> anyhow::Result<(Vec<TcpStream>, usize)> {
    let (own, addrs) = (take_kept(kept, services), services.to_vec());
    let (own, accepted) = tokio::task::spawn_blocking(move || {
        let accepted = take_accepted(&addrs, &own);
        (own, accepted)
    })
    .await
    .context("listing the services' connections")?;
    tracing::info!(
        restored = own.len(),
        accepted = accepted.len(),
        "migrating the connections restored and accepted here"
    );
    let own_count = own.len();
    Ok((own.into_iter().chain(accepted).collect(), own_count))
}
