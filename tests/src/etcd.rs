//! A real etcd cluster for cluster-mode tests: members each in a namespace
//! of their own, on one bridge (a management LAN, 198.18.8.0/24), which the
//! test's other namespaces join through an interface of their own
//! ([`MGMT_IF`]). Members are `etcd` (Debian's `etcd-server`), started by the
//! test with short raft timers ([`ELECTION_TIMEOUT_MS`]).
//!
//! Dropping it kills the members and deletes their namespaces, the switch
//! (and with it every link to the LAN) and their data directories.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
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
    /// With TLS: the certificates (clients must present one too).
    pki: Option<Pki>,
    dir: WorkDir,
}

/// A test CA, a server certificate for every member address and a client
/// certificate, made with `openssl` (PEM files in the cluster's directory).
pub struct Pki {
    /// The CA certificate (`--etcd-ca`).
    pub ca: PathBuf,
    /// The client certificate and key (`--etcd-cert`, `--etcd-key`).
    pub client_cert: PathBuf,
    /// The client key.
    pub client_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl Pki {
    /// Makes the CA and the certificates in `dir`, the server's valid for
    /// the first `members` member addresses.
    fn make(dir: &Path, members: usize) -> Pki {
        let path = |name: &str| dir.join(name);
        let ips: Vec<String> = (0..members)
            .map(|i| format!("IP:{}", member_addr(i)))
            .collect();
        let ca_pem = s(&path("ca.pem"));
        let ca_rest = [
            "-out",
            &ca_pem,
            "-days",
            "2",
            "-subj",
            "/CN=connmirror test CA",
        ];
        openssl_req(&["-x509"], &path("ca.key"), &ca_rest);
        let sign = |name: &str, extensions: &str| {
            let (key, csr, pem, ext) = (
                path(&format!("{name}.key")),
                path(&format!("{name}.csr")),
                path(&format!("{name}.pem")),
                path(&format!("{name}.ext")),
            );
            std::fs::write(&ext, extensions).expect("write the extensions");
            let (csr_path, subject) = (s(&csr), format!("/CN={name}"));
            openssl_req(&[], &key, &["-out", &csr_path, "-subj", &subject]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &s(&csr),
                "-CA",
                &s(&path("ca.pem")),
                "-CAkey",
                &s(&path("ca.key")),
                "-CAcreateserial",
                "-out",
                &s(&pem),
                "-days",
                "2",
                "-extfile",
                &s(&ext),
            ]);
            (pem, key)
        };
        let (server_cert, server_key) = sign(
            "server",
            &format!(
                "subjectAltName={}\nextendedKeyUsage=serverAuth\n",
                ips.join(",")
            ),
        );
        let (client_cert, client_key) = sign("client", "extendedKeyUsage=clientAuth\n");
        Pki {
            ca: path("ca.pem"),
            client_cert,
            client_key,
            server_cert,
            server_key,
        }
    }
}

/// A path as an argument.
fn s(path: &Path) -> String {
    path.display().to_string()
}

/// `openssl req` making a new P-256 key at `key`: `first` goes before the
/// key's options, `rest` after.
fn openssl_req(first: &[&str], key: &Path, rest: &[&str]) {
    let key = s(key);
    let new_key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec!["req"];
    args.extend(first);
    args.extend(new_key);
    args.extend(["-keyout", &key]);
    args.extend(rest);
    openssl(&args);
}

/// Runs `openssl args...`.
fn openssl(args: &[&str]) {
    crate::process::run_checked(std::process::Command::new("openssl").args(args));
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one is healthy.
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, false)
    }

    /// [`EtcdCluster::start`], with `tls`: client URLs over HTTPS, and
    /// clients must present a certificate of the test CA ([`Pki`]).
    pub fn start_with(n: usize, tls: bool) -> EtcdCluster {
        crate::require_root();
        let etcd = which("etcd");
        let switch = Netns::new("etcd-sw");
        switch.ip(["link", "add", "br0", "type", "bridge"]);
        switch.ip(["link", "set", "br0", "up"]);
        switch.ip(["addr", "add", "198.18.8.254/24", "dev", "br0"]);
        let dir = WorkDir::new("etcd");
        let cluster = EtcdCluster {
            members: Vec::new(),
            switch,
            links: std::cell::Cell::new(0),
            pki: tls.then(|| Pki::make(dir.path(), n)),
            dir,
        };
        let peers: Vec<String> = (0..n)
            .map(|i| format!("m{i}=http://{}:2380", member_addr(i)))
            .collect();
        let token = crate::unique_name("etcd");
        let mut members = Vec::new();
        for i in 0..n {
            let ns = Netns::new(&format!("etcd{i}"));
            cluster.join(&ns, member_addr(i));
            let mut args = member_args(i, &peers.join(","), &token, &cluster.dir, cluster.scheme());
            if let Some(pki) = &cluster.pki {
                args.extend([
                    "--cert-file".to_owned(),
                    s(&pki.server_cert),
                    "--key-file".to_owned(),
                    s(&pki.server_key),
                    "--client-cert-auth".to_owned(),
                    "--trusted-ca-file".to_owned(),
                    s(&pki.ca),
                ]);
            }
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
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The certificates, with TLS.
    pub fn pki(&self) -> Option<&Pki> {
        self.pki.as_ref()
    }

    /// `http` or `https`.
    fn scheme(&self) -> &'static str {
        if self.pki.is_some() { "https" } else { "http" }
    }

    /// Member `i`'s client URL.
    fn url(&self, i: usize) -> String {
        format!("{}://{}:2379", self.scheme(), member_addr(i))
    }

    /// `etcdctl` against the live members, from the switch; its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let live: Vec<String> = (0..self.members.len())
            .filter(|i| self.members[*i].etcd.is_some())
            .map(|i| self.url(i))
            .collect();
        let mut cmd = self.etcdctl_command(&live.join(","));
        cmd.arg("--command-timeout=2s").args(args);
        crate::process::run_checked(&mut cmd)
    }

    /// `etcdctl --endpoints ENDPOINTS`, with the client certificate under TLS.
    fn etcdctl_command(&self, endpoints: &str) -> std::process::Command {
        let mut cmd = self.switch.command("etcdctl");
        cmd.env("ETCDCTL_API", "3").args(["--endpoints", endpoints]);
        if let Some(pki) = &self.pki {
            cmd.args([
                "--cacert",
                &s(&pki.ca),
                "--cert",
                &s(&pki.client_cert),
                "--key",
                &s(&pki.client_key),
            ]);
        }
        cmd
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
            let url = self.url(i);
            loop {
                let mut cmd = self.etcdctl_command(&url);
                cmd.args(["endpoint", "health"]);
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
fn member_args(i: usize, peers: &str, token: &str, dir: &WorkDir, scheme: &str) -> Vec<String> {
    let ip = member_addr(i);
    let data = dir.path().join(format!("m{i}"));
    [
        "--name".to_owned(),
        format!("m{i}"),
        "--data-dir".to_owned(),
        data.display().to_string(),
        "--listen-client-urls".to_owned(),
        format!("{scheme}://{ip}:2379"),
        "--advertise-client-urls".to_owned(),
        format!("{scheme}://{ip}:2379"),
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
