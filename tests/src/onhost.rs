//! On-host mode fixtures: an agent that captures on the primary's own link
//! and replicates its journal to a standby that captures nothing (and to a
//! second one, in the clients' namespace, for several standbys), and a
//! probing client whose kernel says how much of its stream the primary
//! acknowledged (to measure what a failover loses).

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::failover::{HEARTBEAT_PORT, Program, agent_args, gateway_addrs, start_agent_with};
use crate::mirror::{Mirror, MirrorCommand};
use crate::netns::Netns;
use crate::pinning::PinnedInstance;
use crate::topology::{CLIENT_IF, Family, GATEWAY_CLIENT_IF, SERVER_IF, Topology};
use crate::traffic::SplitMix64;

/// The standby's replication port in these fixtures.
pub const REPLICATION_PORT: u16 = connmirror::replication::channel::DEFAULT_PORT;

fn any(family: Family, port: u16) -> String {
    match family {
        Family::V4 => format!("0.0.0.0:{port}"),
        Family::V6 => format!("[::]:{port}"),
    }
}

/// The on-host standby: the clients' gateway still (so the takeover's
/// address step works as inline), but capturing nothing (`--ingress none
/// --egress none`): every flow it restores comes from the agent's journal.
/// `service` as `--service` takes it (`IP:PORT=full` keeps the history the
/// echo handoff resumes from: give the agent `--retention full` too), heartbeat
/// detection and the replication listener on every address.
pub fn onhost_standby_command(family: Family, service: &str, key: &Path) -> MirrorCommand {
    let listen = [any(family, HEARTBEAT_PORT), any(family, REPLICATION_PORT)];
    standby_listening(GATEWAY_CLIENT_IF, service, key, listen)
}

/// A standby capturing nothing on `iface`, heartbeats and replication
/// arriving at `listen` (in that order).
pub fn standby_listening(
    iface: &str,
    service: &str,
    key: &Path,
    listen: [String; 2],
) -> MirrorCommand {
    let [heartbeats, replication] = listen;
    MirrorCommand::standby()
        .iface(iface)
        .arg("--service")
        .arg(service)
        .ingress("none")
        .egress("none")
        .without_dumps()
        .arg("--heartbeat-listen")
        .arg(&heartbeats)
        .arg("--key")
        .arg(&key.display().to_string())
        .arg("--replication-listen")
        .arg(&replication)
}

/// The second standby's heartbeat port ([`second_standby`]).
pub const SECOND_HEARTBEAT_PORT: u16 = 7410;
/// The second standby's replication port.
pub const SECOND_REPLICATION_PORT: u16 = 7412;

/// Where the second standby listens: (heartbeats, replication), on the
/// client's address.
pub fn second_standby_addrs(topo: &Topology, family: Family) -> (SocketAddr, SocketAddr) {
    let ip = topo.client_addr(family);
    (
        SocketAddr::new(ip, SECOND_HEARTBEAT_PORT),
        SocketAddr::new(ip, SECOND_REPLICATION_PORT),
    )
}

/// A second on-host standby, in the clients' namespace (a host the primary
/// reaches through the gateway, like the first), on the client's address
/// and ports of its own ([`second_standby_addrs`]); node id `standby-2`, and
/// `--failover manual`: it holds a replica but never takes over by itself.
/// Its control and handoff sockets are in its own scratch directory.
pub fn second_standby(topo: &Topology, family: Family, service: &str, key: &Path) -> Mirror {
    let (heartbeats, replication) = second_standby_addrs(topo, family);
    let listen = [heartbeats.to_string(), replication.to_string()];
    let command = standby_listening(CLIENT_IF, service, key, listen)
        .arg("--node-id")
        .arg("standby-2")
        .arg("--failover")
        .arg("manual");
    Mirror::start(&topo.client, &command)
}

/// The agent's flags that add [`second_standby`]: its heartbeats and its
/// replication.
pub fn second_standby_flags(topo: &Topology, family: Family) -> [String; 4] {
    let (heartbeats, replication) = second_standby_addrs(topo, family);
    [
        "--standby".to_owned(),
        heartbeats.to_string(),
        "--replicate-to".to_owned(),
        replication.to_string(),
    ]
}

/// The standby's replication address, as the agent's `--replicate-to`
/// names it (and its metrics' `standby` label).
pub fn replication_addr(family: Family) -> SocketAddr {
    SocketAddr::new(gateway_addrs(family).0, REPLICATION_PORT)
}

/// The agent's series `name` for the standby replicating at `standby`:
/// `name{standby="IP:PORT"}`.
pub fn per_standby(name: &str, standby: SocketAddr) -> String {
    format!("{name}{{standby=\"{standby}\"}}")
}

/// Starts [`onhost_standby_command`] in the gateway namespace.
pub fn onhost_standby(topo: &Topology, family: Family, service: &str, key: &Path) -> Mirror {
    Mirror::start(&topo.gateway, &onhost_standby_command(family, service, key))
}

/// `connmirror agent` in on-host mode in the primary's namespace: the agent
/// of [`start_agent_with`] (heartbeats from its management address), with
/// the default attach points on its link (`auto`: TC ingress and egress on
/// a veth) and the journal replicated to the standby; `extra` adds flags
/// (`--sync`, `--retention full`).
pub fn start_onhost_agent(
    topo: &Topology,
    family: Family,
    service: SocketAddr,
    key: &Path,
    extra: &[&str],
) -> Program {
    let flags = onhost_flags(family, extra);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    start_agent_with(topo, family, service, key, &flags)
}

/// [`start_onhost_agent`] with `--pin NAME`, in the host's mount namespace
/// (the pins must outlive the agent).
pub fn start_pinned_onhost_agent(
    topo: &Topology,
    family: Family,
    service: SocketAddr,
    key: &Path,
    pin: &PinnedInstance,
    extra: &[&str],
) -> Program {
    let mut flags = onhost_flags(family, extra);
    flags.extend(["--pin".to_owned(), pin.name().to_owned()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let args = agent_args(family, service, key, &flags);
    Program::start_host_mounts(&topo.server, crate::connmirror_bin(), args, "ready")
}

/// The on-host flags of [`start_onhost_agent`], then `extra`.
fn onhost_flags(family: Family, extra: &[&str]) -> Vec<String> {
    let iface = SERVER_IF.to_owned();
    let replicate_to = replication_addr(family).to_string();
    ["--iface", &iface, "--replicate-to", &replicate_to]
        .into_iter()
        .chain(extra.iter().copied())
        .map(str::to_owned)
        .collect()
}

/// One connection that streams deterministic bytes to an echo server and
/// counts what comes back, and can tell how many of its bytes the peer
/// acknowledged (`SIOCOUTQ`).
pub struct Probe {
    stream: TcpStream,
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    writer: Option<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
}

/// What a [`Probe`] had done when its writer stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeState {
    /// Bytes written.
    pub sent: u64,
    /// Bytes written that the peer acknowledged (written minus `SIOCOUTQ`).
    pub acked: u64,
    /// Bytes read back.
    pub received: u64,
}

impl Probe {
    /// Connects from `ns` to `server` and streams `rate` bytes a second in
    /// 1 KiB writes.
    pub fn start(ns: &Netns, server: SocketAddr, rate: u64) -> Probe {
        let stream = ns.run(|| {
            TcpStream::connect_timeout(&server, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("probe connect to {server}: {e}"))
        });
        let local = stream.local_addr().expect("probe local address");
        stream
            .set_write_timeout(Some(Duration::from_millis(50)))
            .expect("write timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let writer = {
            let mut stream = stream.try_clone().expect("clone the probe socket");
            let (stop, sent) = (stop.clone(), sent.clone());
            thread::spawn(move || {
                let mut rng = SplitMix64::new(0x0510_57ed);
                let mut chunk = [0u8; 1024];
                let pause = Duration::from_secs_f64(chunk.len() as f64 / rate as f64);
                while !stop.load(Ordering::Relaxed) {
                    rng.fill(&mut chunk);
                    match stream.write(&chunk) {
                        Ok(n) => {
                            sent.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                        Err(_) => break,
                    }
                    thread::sleep(pause);
                }
            })
        };
        let reader = {
            let mut stream = stream.try_clone().expect("clone the probe socket");
            let received = received.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 16 << 10];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
            })
        };
        Probe {
            stream,
            local,
            stop,
            sent,
            received,
            writer: Some(writer),
            reader: Some(reader),
        }
    }

    /// The probe's local address (the flow's client end).
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Bytes read back so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Stops writing (at most one write timeout later) and reports what was
    /// written, acknowledged and read.
    pub fn freeze(&mut self) -> ProbeState {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(writer) = self.writer.take() {
            writer.join().expect("probe writer");
        }
        let mut outq: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int through the pointer; the fd is open.
        let rc = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::TIOCOUTQ, &mut outq) };
        assert_eq!(
            rc,
            0,
            "ioctl(SIOCOUTQ): {}",
            std::io::Error::last_os_error()
        );
        let sent = self.sent.load(Ordering::Relaxed);
        ProbeState {
            sent,
            acked: sent - outq as u64,
            received: self.received(),
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.stream.shutdown(Shutdown::Both);
        for handle in [self.writer.take(), self.reader.take()]
            .into_iter()
            .flatten()
        {
            let _ = handle.join();
        }
    }
}
