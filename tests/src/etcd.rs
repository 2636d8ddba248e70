//! A real etcd cluster for cluster-mode tests: members each in a namespace
//! of their own, on one bridge (a management LAN, 198.18.8.0/24), which the
//! test's other namespaces join through an interface of their own
//! ([`MGMT_IF`]). Members are `etcd` (Debian's `etcd-server`), started by the
//! test with short raft timers ([`ELECTION_TIMEOUT_MS`]).
//!
//! Dropping it kills the members and deletes their namespaces, the switch
//! (and with it every link to the LAN) and their data directories.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::failover::Program;
use crate::netns::Netns;
use crate::workdir::WorkDir;

/// The interface a namespace joined to the LAN gets.
pub const MGMT_IF: &str = "mgmt0";
/// etcd's raft heartbeat, in milliseconds.
pub const HEARTBEAT_MS: u64 = 50;
/// etcd's election timeout, in milliseconds: how long a cluster whose leader
/// died stays without one, at most (plus a vote).
pub const ELECTION_TIMEOUT_MS: u64 = 500;
/// How long members get to elect their first leader.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One member: its namespace and process.
struct Member {
    etcd: Option<Program>,
    ns: Netns,
}

/// A running etcd cluster. Fields drop in order: members, then the switch,
/// then the data.
pub struct EtcdCluster {
    members: Vec<Member>,
    switch: Netns,
    /// Links made so far (names the switch's veth ends).
    links: std::cell::Cell<u32>,
    dir: WorkDir,
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one is healthy.
    pub fn start(n: usize) -> EtcdCluster {
        crate::require_root();
        let etcd = which("etcd");
        let switch = Netns::new("etcd-sw");
        switch.ip(["link", "add", "br0", "type", "bridge"]);
        switch.ip(["link", "set", "br0", "up"]);
        switch.ip(["addr", "add", "198.18.8.254/24", "dev", "br0"]);
        let cluster = EtcdCluster {
            members: Vec::new(),
            switch,
            links: std::cell::Cell::new(0),
            dir: WorkDir::new("etcd"),
        };
        let peers: Vec<String> = (0..n)
            .map(|i| format!("m{i}=http://{}:2380", member_addr(i)))
            .collect();
        let token = crate::unique_name("etcd");
        let mut members = Vec::new();
        for i in 0..n {
            let ns = Netns::new(&format!("etcd{i}"));
            cluster.join(&ns, member_addr(i));
            let args = member_args(i, &peers.join(","), &token, &cluster.dir);
            let etcd = Program::spawn(&ns, &etcd, args);
            members.push(Member {
                etcd: Some(etcd),
                ns,
            });
        }
        let mut cluster = cluster;
        cluster.members = members;
        cluster.wait_healthy((0..n).collect());
        cluster
    }

    /// Joins `ns` to the LAN with address `ip` on [`MGMT_IF`].
    pub fn join(&self, ns: &Netns, ip: Ipv4Addr) {
        let n = self.links.get();
        self.links.set(n + 1);
        let port = format!("p{n}");
        self.switch.ip([
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            MGMT_IF,
            "netns",
            ns.name(),
        ]);
        self.switch
            .ip(["link", "set", &port, "master", "br0", "up"]);
        ns.ip(["addr", "add", &format!("{ip}/24"), "dev", MGMT_IF]);
        ns.ip(["link", "set", MGMT_IF, "up"]);
    }

    /// The client URLs, comma-separated (`--etcd`).
    pub fn endpoints(&self) -> String {
        (0..self.members.len())
            .map(|i| format!("http://{}:2379", member_addr(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `etcdctl` against the live members, from the switch; its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let live: Vec<String> = (0..self.members.len())
            .filter(|i| self.members[*i].etcd.is_some())
            .map(|i| format!("http://{}:2379", member_addr(i)))
            .collect();
        let mut cmd = self.switch.command("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(live.join(","))
            .arg("--command-timeout=2s")
            .args(args);
        crate::process::run_checked(&mut cmd)
    }

    /// The index of the current leader, waiting for one (at most 10 s).
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.etcdctl(&["endpoint", "status", "--write-out", "json"]);
            if let Some(leader) = leader_in(&status, &self.members.len()) {
                return leader;
            }
            assert!(Instant::now() < deadline, "no etcd leader: {status}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut etcd) = self.members[i].etcd.take() {
            etcd.kill();
        }
    }

    /// Member `i`'s namespace.
    pub fn member_ns(&self, i: usize) -> &Netns {
        &self.members[i].ns
    }

    /// Waits until each member in `which` answers `endpoint health`.
    fn wait_healthy(&self, which: Vec<usize>) {
        let deadline = Instant::now() + START_TIMEOUT;
        for i in which {
            let url = format!("http://{}:2379", member_addr(i));
            loop {
                let mut cmd = self.switch.command("etcdctl");
                cmd.env("ETCDCTL_API", "3")
                    .args(["--endpoints", &url, "endpoint", "health"]);
                let out = crate::process::output_with_timeout(&mut cmd, Duration::from_secs(5));
                if out.status.success() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {i} never became healthy: {}\nits log:\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.members[i]
                        .etcd
                        .as_ref()
                        .map(|e| e.stderr())
                        .unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Member `i`'s address on the LAN.
pub fn member_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 8, 1 + i as u8)
}

/// A node's address on the LAN (`host` from 0).
pub fn node_addr(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 8, 11 + host)
}

/// Member `i`'s command line.
fn member_args(i: usize, peers: &str, token: &str, dir: &WorkDir) -> Vec<String> {
    let ip = member_addr(i);
    let data = dir.path().join(format!("m{i}"));
    [
        "--name".to_owned(),
        format!("m{i}"),
        "--data-dir".to_owned(),
        data.display().to_string(),
        "--listen-client-urls".to_owned(),
        format!("http://{ip}:2379"),
        "--advertise-client-urls".to_owned(),
        format!("http://{ip}:2379"),
        "--listen-peer-urls".to_owned(),
        format!("http://{ip}:2380"),
        "--initial-advertise-peer-urls".to_owned(),
        format!("http://{ip}:2380"),
        "--initial-cluster".to_owned(),
        peers.to_owned(),
        "--initial-cluster-token".to_owned(),
        token.to_owned(),
        "--initial-cluster-state".to_owned(),
        "new".to_owned(),
        "--heartbeat-interval".to_owned(),
        HEARTBEAT_MS.to_string(),
        "--election-timeout".to_owned(),
        ELECTION_TIMEOUT_MS.to_string(),
    ]
    .to_vec()
}

/// The leader's index in `etcdctl endpoint status --write-out json`.
fn leader_in(status: &str, members: &usize) -> Option<usize> {
    let entries: serde_json::Value = serde_json::from_str(status).ok()?;
    let entries = entries.as_array()?;
    let leader = entries.iter().find_map(|e| {
        let status = &e["Status"];
        (status["leader"] == status["header"]["member_id"]).then(|| e["Endpoint"].as_str())?
    })?;
    (0..*members).find(|i| leader.contains(&member_addr(*i).to_string()))
}

/// The path of `program`, or a panic that says which package provides it.
fn which(program: &str) -> String {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    found.unwrap_or_else(|| {
        panic!("{program} not found: cluster tests need Debian's etcd-server and etcd-client (`cargo xtask setup` installs them)")
    })
}
