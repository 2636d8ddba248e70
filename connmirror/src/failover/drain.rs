//! Failback by draining: the standby hands a service address back to the
//! returning primary but keeps serving the connections it restored until they
//! close, while new connections reach the primary.
//!
//! On an inline standby (the clients' router) the service address on its `lo`
//! is what makes it deliver segments for the service locally; once the address
//! goes, segments to it are forwarded to the primary again. Draining keeps
//! local delivery for exactly the restored 4-tuples with policy routing
//! ([ip-rule(8)]), the mechanism a transparent proxy uses:
//!
//! - one rule per restored flow, `from CLIENT to SERVICE ipproto tcp sport
//!   CLIENT_PORT dport SERVICE_PORT lookup TABLE` (`RTM_NEWRULE`; port and
//!   protocol selectors need Linux 4.17), at a priority before the main table;
//! - in `TABLE`, one `local SERVICE dev lo` route per service address
//!   (`RTM_NEWROUTE`, type `RTN_LOCAL`).
//!
//! - per flow and per capture interface, a fence: `iif IF from SERVICE to
//!   CLIENT ipproto tcp sport SERVICE_PORT dport CLIENT_PORT blackhole`. The
//!   service is captured again (no longer fenced as a whole, so the primary's
//!   new connections pass), but a segment the primary sends on a drained
//!   connection (a returning primary that did not reboot still has its old
//!   sockets, which retransmit) is dropped when the standby would forward it:
//!   it would draw a RST from the client. The standby's own segments are not
//!   affected (`iif` names a real interface, which matches forwarded packets
//!   only). A fence outlives its connection by [`FENCE_GRACE`].
//!
//! A segment of a restored flow matches its rule, the lookup in `TABLE` says
//! "local", and `ip_local_deliver()` finds the established socket by its
//! 4-tuple (the socket lookup does not ask whether the address is configured).
//! Every other segment for the service, a new SYN included, misses the rules
//! and is routed by the main table to the primary. The restored sockets keep
//! sending from the service address after it is gone from `lo`: they were
//! built with `IP_TRANSPARENT` / `IPV6_TRANSPARENT` ([`crate::repair::restore`]), so
//! the output route lookup accepts a source that is not local
//! (`FLOWI_FLAG_ANYSRC`, `inet_sk_flowi_flags()` in include/net/inet_sock.h).
//! Checked here on kernel 6.18, IPv4 and IPv6: the drained connections kept
//! their byte streams exact while a new connection reached the primary.
//!
//! [`Drain::prune`] removes the rule of each flow whose socket is gone (or in
//! `TIME-WAIT`), read from `/proc/net/tcp` and `/proc/net/tcp6`, the local
//! routes with the last rule, and fences once they are [`FENCE_GRACE`] old.
//!
//! [ip-rule(8)]: https://man7.org/linux/man-pages/man8/ip-rule.8.html

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::{
    IpProtocol, RouteNetlinkMessage,
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
    rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange},
};
use thiserror::Error;

use crate::net::address::{self, AddressError, Rtnl};
use crate::repair::sockets;

/// Routing table that holds the drained services' `local` routes unless
/// configured otherwise.
pub const DEFAULT_TABLE: u32 = 7402;
/// Priority of the per-flow rules: before the `main` table's rule (32766).
pub const RULE_PRIORITY: u32 = 7402;
/// How long a drained connection's fence stays after its socket is gone:
/// twice the 30 s `TCP_TIMEWAIT_LEN` maximum segment lifetime, by which time
/// the old primary's stale sockets have given up retransmitting to it.
pub const FENCE_GRACE: Duration = Duration::from_secs(60);

/// One end-to-end connection: the service side and the client side.
pub type FlowEnds = (SocketAddr, SocketAddr);

/// Why draining could not be set up or torn down.
#[derive(Debug, Error)]
pub enum DrainError {
    /// The netlink socket could not be opened, or `lo` is missing.
    #[error(transparent)]
    Netlink(#[from] AddressError),
    /// The kernel refused a rule or a route.
    #[error("netlink {call} for {what}: {error}")]
    Refused {
        /// `RTM_NEWRULE`, `RTM_DELRULE`, `RTM_NEWROUTE` or `RTM_DELROUTE`.
        call: &'static str,
        /// The flow or the address.
        what: String,
        /// The errno the kernel answered with.
        error: io::Error,
    },
}

/// Restored flows delivered locally while their service address is gone.
#[derive(Debug)]
pub struct Drain {
    table: u32,
    /// Interfaces the fences apply to (segments forwarded from them).
    ifaces: Vec<String>,
    flows: Vec<FlowEnds>,
    locals: BTreeSet<IpAddr>,
    /// Fences of connections that closed, with when they were seen gone.
    closed: Vec<(FlowEnds, Instant)>,
}

impl Drain {
    /// Installs the `local` routes in `table`, one rule per flow, and the
    /// flows' fences on `ifaces`. Call it while the service addresses are
    /// still local, then release them.
    pub fn install(flows: &[FlowEnds], table: u32, ifaces: &[String]) -> Result<Drain, DrainError> {
        let rtnl = Rtnl::open()?;
        let lo = address::ifindex("lo")?;
        let locals: BTreeSet<IpAddr> = flows.iter().map(|(server, _)| server.ip()).collect();
        let mut drain = Drain {
            table,
            ifaces: ifaces.to_vec(),
            flows: Vec::new(),
            locals: BTreeSet::new(),
            closed: Vec::new(),
        };
        for ip in &locals {
            let route = RouteNetlinkMessage::NewRoute(local_route(*ip, lo, table));
            refused(
                rtnl.request(route, NLM_F_CREATE | NLM_F_REPLACE),
                "RTM_NEWROUTE",
                ip,
            )?;
            drain.locals.insert(*ip);
        }
        for flow in flows {
            for rule in drain.rules(*flow) {
                let rule = RouteNetlinkMessage::NewRule(rule);
                refused(rtnl.request(rule, NLM_F_CREATE), "RTM_NEWRULE", &show(flow))?;
            }
            drain.flows.push(*flow);
        }
        Ok(drain)
    }

    /// A flow's local-delivery rule, then its fences.
    fn rules(&self, flow: FlowEnds) -> Vec<RuleMessage> {
        let fences = self.ifaces.iter().map(|iface| fence_rule(flow, iface));
        std::iter::once(flow_rule(flow, self.table))
            .chain(fences)
            .collect()
    }

    /// Whether a flow of the service at `addr` is still delivered locally.
    pub fn serves(&self, addr: SocketAddr) -> bool {
        self.flows.iter().any(|(server, _)| *server == addr)
    }

    /// Flows still delivered locally.
    pub fn remaining(&self) -> usize {
        self.flows.len()
    }

    /// Whether nothing is left: no connection and no fence.
    pub fn is_done(&self) -> bool {
        self.flows.is_empty() && self.closed.is_empty()
    }

    /// Drops the local-delivery rules of flows whose sockets are gone (closed
    /// or in `TIME-WAIT`), the `local` routes once no flow is left, and fences
    /// older than [`FENCE_GRACE`]. Returns how many flows remain.
    pub fn prune(&mut self) -> Result<usize, DrainError> {
        let live = live_flows();
        let (keep, gone): (Vec<FlowEnds>, Vec<FlowEnds>) =
            self.flows.iter().partition(|flow| live.contains(flow));
        self.flows = keep;
        let rtnl = Rtnl::open()?;
        for flow in gone {
            let rule = RouteNetlinkMessage::DelRule(flow_rule(flow, self.table));
            refused(rtnl.request(rule, 0), "RTM_DELRULE", &show(&flow))?;
            tracing::info!(flow = show(&flow), "drained: connection closed");
            self.closed.push((flow, Instant::now()));
        }
        let (old, young) = std::mem::take(&mut self.closed)
            .into_iter()
            .partition(|(_, at)| at.elapsed() >= FENCE_GRACE);
        self.closed = young;
        self.unfence(&rtnl, old.into_iter().map(|(flow, _)| flow))?;
        self.remove_locals(&rtnl)?;
        Ok(self.flows.len())
    }

    /// Removes every rule and route now.
    pub fn clear(&mut self) -> Result<(), DrainError> {
        let rtnl = Rtnl::open()?;
        for flow in std::mem::take(&mut self.flows) {
            let rule = RouteNetlinkMessage::DelRule(flow_rule(flow, self.table));
            refused(rtnl.request(rule, 0), "RTM_DELRULE", &show(&flow))?;
            self.closed.push((flow, Instant::now()));
        }
        let closed = std::mem::take(&mut self.closed);
        self.unfence(&rtnl, closed.into_iter().map(|(flow, _)| flow))?;
        self.remove_locals(&rtnl)
    }

    fn unfence(
        &self,
        rtnl: &Rtnl,
        flows: impl Iterator<Item = FlowEnds>,
    ) -> Result<(), DrainError> {
        for flow in flows {
            for iface in &self.ifaces {
                let rule = RouteNetlinkMessage::DelRule(fence_rule(flow, iface));
                refused(rtnl.request(rule, 0), "RTM_DELRULE", &show(&flow))?;
            }
        }
        Ok(())
    }

    /// Removes the `local` routes once no flow needs them.
    fn remove_locals(&mut self, rtnl: &Rtnl) -> Result<(), DrainError> {
        if !self.flows.is_empty() || self.locals.is_empty() {
            return Ok(());
        }
        let lo = address::ifindex("lo")?;
        for ip in std::mem::take(&mut self.locals) {
            let route = RouteNetlinkMessage::DelRoute(local_route(ip, lo, self.table));
            refused(rtnl.request(route, 0), "RTM_DELROUTE", &ip)?;
        }
        Ok(())
    }
}

fn show((server, client): &FlowEnds) -> String {
    format!("{server} ↔ {client}")
}

fn refused(
    result: io::Result<()>,
    call: &'static str,
    what: &dyn ToString,
) -> Result<(), DrainError> {
    result.map_err(|error| DrainError::Refused {
        call,
        what: what.to_string(),
        error,
    })
}

/// `ip rule add from CLIENT to SERVER ipproto tcp sport P dport Q lookup TABLE
/// priority RULE_PRIORITY`.
fn flow_rule((server, client): FlowEnds, table: u32) -> RuleMessage {
    let mut msg = tcp_rule(client, server, RuleAction::ToTable);
    msg.attributes.push(RuleAttribute::Table(table));
    msg
}

/// `ip rule add iif IFACE from SERVER to CLIENT ipproto tcp sport Q dport P
/// blackhole priority RULE_PRIORITY`.
fn fence_rule((server, client): FlowEnds, iface: &str) -> RuleMessage {
    let mut msg = tcp_rule(server, client, RuleAction::Blackhole);
    msg.attributes
        .push(RuleAttribute::Iifname(iface.to_owned()));
    msg
}

/// A rule selecting TCP segments from `from` to `to`, exactly.
fn tcp_rule(from: SocketAddr, to: SocketAddr, action: RuleAction) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = address::family(to.ip());
    msg.header.src_len = address::host_prefix(from.ip());
    msg.header.dst_len = address::host_prefix(to.ip());
    // A table above 255 goes in FRA_TABLE; the header then says "unspec".
    msg.header.table = RouteHeader::RT_TABLE_UNSPEC;
    msg.header.action = action;
    let port = |p: u16| RulePortRange { start: p, end: p };
    msg.attributes = vec![
        RuleAttribute::Source(from.ip()),
        RuleAttribute::Destination(to.ip()),
        RuleAttribute::IpProtocol(IpProtocol::Tcp),
        RuleAttribute::SourcePortRange(port(from.port())),
        RuleAttribute::DestinationPortRange(port(to.port())),
        RuleAttribute::Priority(RULE_PRIORITY),
    ];
    msg
}

/// `ip route add local IP dev lo table TABLE`.
fn local_route(ip: IpAddr, lo: u32, table: u32) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = address::family(ip);
    msg.header.destination_prefix_length = address::host_prefix(ip);
    msg.header.table = RouteHeader::RT_TABLE_UNSPEC;
    msg.header.protocol = RouteProtocol::Static;
    msg.header.scope = RouteScope::Host;
    msg.header.kind = RouteType::Local;
    msg.attributes = vec![
        RouteAttribute::Destination(RouteAddress::from(ip)),
        RouteAttribute::Oif(lo),
        RouteAttribute::Table(table),
    ];
    msg
}

/// Every TCP socket of this network namespace that is neither closed nor in
/// `TIME-WAIT`, as (local, remote).
fn live_flows() -> BTreeSet<FlowEnds> {
    (sockets::entries().into_iter())
        .filter(sockets::Entry::is_live)
        .map(|e| (e.local, e.remote))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_rule_selects_exactly_its_four_tuple() {
        let flow = (
            "198.18.1.2:7000".parse().unwrap(),
            "198.18.0.2:40312".parse().unwrap(),
        );

        let rule = flow_rule(flow, DEFAULT_TABLE);

        assert_eq!((rule.header.src_len, rule.header.dst_len), (32, 32));
        assert_eq!(rule.header.action, RuleAction::ToTable);
        assert!(
            rule.attributes
                .contains(&RuleAttribute::SourcePortRange(RulePortRange {
                    start: 40312,
                    end: 40312
                }))
        );
        assert!(
            rule.attributes
                .contains(&RuleAttribute::Table(DEFAULT_TABLE))
        );
    }
}
