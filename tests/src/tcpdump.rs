//! `tcpdump -w FILE` as a running capture: the everyday alternative the
//! capture benchmark compares the mirror with.
//!
//! tcpdump copies every matching packet from a `PACKET_MMAP` ring (`packet(7)`)
//! into a pcap file. When it falls behind, the kernel drops packets from that
//! ring rather than slowing the traffic; tcpdump reports them on exit as
//! "packets dropped by kernel" (`pcap_stats(3PCAP)`).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::Netns;

/// How long tcpdump may take to attach its filter, and to exit after SIGINT.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A `tcpdump -w` process; dropping it kills and reaps tcpdump and deletes
/// its file.
pub struct Tcpdump {
    child: Child,
    file: PathBuf,
    stderr: mpsc::Receiver<String>,
}

/// What tcpdump reported when it stopped, and the file it wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpdumpStats {
    /// "packets captured": written to the file.
    pub captured: u64,
    /// "packets dropped by kernel": matched the filter, lost before tcpdump read them.
    pub dropped: u64,
    /// Size of the pcap file.
    pub file_bytes: u64,
}

impl Tcpdump {
    /// Starts `tcpdump -i DEV -n -w FILE FILTER...` in `ns` and returns once it
    /// says it is listening (its filter is attached), at most 10 s.
    pub fn start(ns: &Netns, dev: &str, file: &Path, filter: &[&str]) -> Result<Tcpdump> {
        let mut child = ns
            .command("tcpdump")
            .args(["-i", dev, "-n", "-w"])
            .arg(file)
            .args(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn tcpdump (installed by `cargo xtask setup`)")?;
        let stderr = stderr_lines(&mut child);
        // From here on, drop kills and reaps tcpdump on every path.
        let tcpdump = Tcpdump {
            child,
            file: file.to_owned(),
            stderr,
        };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tcpdump.stderr.recv_timeout(left) {
                Ok(line) if line.contains("listening on") => return Ok(tcpdump),
                Ok(_) => {}
                Err(_) => bail!(
                    "tcpdump on {dev} in {} did not say it was listening within {TIMEOUT:?}",
                    ns.name()
                ),
            }
        }
    }

    /// The process id (`ip netns exec` execs tcpdump, so it is tcpdump's own).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Stops tcpdump with SIGINT (it then flushes its file and prints its
    /// statistics), waits at most 10 s, and returns the statistics; the file
    /// is deleted when `self` drops.
    pub fn stop(mut self) -> Result<TcpdumpStats> {
        // SAFETY: kill(2) on our own child's pid; it has not been reaped yet.
        if unsafe { libc::kill(self.pid(), libc::SIGINT) } != 0 {
            return Err(std::io::Error::last_os_error()).context("kill(tcpdump, SIGINT)");
        }
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().context("waitpid(tcpdump)")? {
                break status;
            }
            if Instant::now() >= deadline {
                bail!("tcpdump did not exit within {TIMEOUT:?} of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at EOF, so this collects everything left.
        let lines: Vec<String> = self.stderr.iter().collect();
        let text = lines.join("\n");
        if !status.success() {
            bail!("tcpdump exited with {status}: {text}");
        }
        let file_bytes = std::fs::metadata(&self.file)
            .with_context(|| format!("stat {}", self.file.display()))?
            .len();
        Ok(TcpdumpStats {
            captured: count(&text, "packets captured")?,
            dropped: count(&text, "packets dropped by kernel")?,
            file_bytes,
        })
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        // Harmless once tcpdump has exited: kill fails, wait returns the status.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The lines `child` prints on its (piped) stderr, read on a thread so that it
/// never blocks on a full pipe; the channel closes at EOF.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The number before `what` on a line of tcpdump's closing statistics
/// ("1234 packets captured").
fn count(text: &str, what: &str) -> Result<u64> {
    text.lines()
        .find_map(|line| line.trim().strip_suffix(what)?.trim().parse().ok())
        .with_context(|| format!("tcpdump printed no \"N {what}\" line: {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The closing statistics tcpdump 4.99 prints parse into exact counts.
    #[test]
    fn closing_statistics_parse() {
        let text = "tcpdump: listening on gw-c, link-type EN10MB (Ethernet), snapshot length 262144 bytes\n\
                    812345 packets captured\n\
                    812999 packets received by filter\n\
                    654 packets dropped by kernel";
        assert_eq!(count(text, "packets captured").unwrap(), 812_345);
        assert_eq!(count(text, "packets dropped by kernel").unwrap(), 654);
        assert_eq!(
            count("nothing", "packets captured")
                .unwrap_err()
                .to_string(),
            "tcpdump printed no \"N packets captured\" line: \"nothing\""
        );
    }
}
