//! The mirror's durable journal (`connmirror mirror --journal DIR`), seen from
//! outside: `connmirror journal inspect` and `journal dump`, the segment files'
//! framing, and connections kept open across a mirror's stop.
//!
//! # Segment format (read here, never written)
//! A journal directory holds `seg-<20 digits>.cmj` files. Each starts with a
//! 24-byte header (`CMJOURN1`, version, sequence number, CRC32C), then records
//! back to back: 9 bytes of framing, `[len u32 LE][crc u32 LE][kind u8]`, then
//! `len` payload bytes. [`records`] walks that framing so a test can cut or
//! damage a chosen record; the checksums are the binary's business.
//!
//! # Flow state
//! `journal inspect --json` and `report.json` describe each flow with the same
//! object, so both are read into [`crate::mirror::Flow`] (id, readiness and its
//! missing ranges, per-side TCP state, byte counts); this module adds the
//! per-direction accessors the journal tests use.
//!
//! # Held connections
//! A journal keeps a flow only while it is live: the checkpoint a restarted
//! mirror writes leaves closed flows out. [`HeldConnection`] exchanges exact data
//! (the [`crate::traffic`] seeds, continuing across calls) without ever sending a
//! FIN, so a test can stop the mirror while the flow is still open.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;

pub use crate::mirror::{DirectionDump, Flow, MissingRange, Readiness, SynState, TcpState};
use crate::netns::Netns;
use crate::process::{describe, output_with_timeout, wait_with_timeout};
use crate::traffic::{C2S_SEED, S2C_SEED, SplitMix64, stream_bytes};

/// Length of a segment file's header.
pub const SEGMENT_HEADER_LEN: u64 = 24;
/// Length of a record's framing: `len`, `crc`, `kind`.
pub const RECORD_HEADER_LEN: u64 = 9;
/// First 8 bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"CMJOURN1";

/// Record kinds (the framing's `kind` byte).
pub mod kind {
    /// A flow was first seen: its id, 4-tuple and service id.
    pub const OPEN: u8 = 1;
    /// Bytes of one direction, in order, at a stream offset.
    pub const DATA: u8 = 2;
    /// The state of one direction changed.
    pub const UPDATE: u8 = 3;
    /// The flow left the table (closed or evicted).
    pub const CLOSE: u8 = 4;
    /// A checkpoint is a begin record, a flow record per live flow (each
    /// followed by that flow's retained bytes as data records), and an end.
    pub const CHECKPOINT_BEGIN: u8 = 5;
    /// One live flow of a checkpoint.
    pub const CHECKPOINT_FLOW: u8 = 6;
    /// The checkpoint is complete.
    pub const CHECKPOINT_END: u8 = 7;
    /// Live replay's instance diverged from the primary on a flow: its id,
    /// the server → client offset and both bytes.
    pub const DIVERGENT: u8 = 9;
}

/// How long one `connmirror journal ...` command may take (a dump of a 200 MB
/// stream replays the whole journal).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// A flow direction, as `journal dump --dir` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// Client → server.
    C2s,
    /// Server → client.
    S2c,
}

impl Way {
    /// Both directions, client → server first.
    pub const BOTH: [Way; 2] = [Way::C2s, Way::S2c];

    /// `c2s` or `s2c`.
    pub fn name(self) -> &'static str {
        match self {
            Way::C2s => "c2s",
            Way::S2c => "s2c",
        }
    }

    /// The opposite direction (the receiver of this one's bytes).
    pub fn reverse(self) -> Way {
        match self {
            Way::C2s => Way::S2c,
            Way::S2c => Way::C2s,
        }
    }

    /// The seed of the data [`crate::traffic`] sends this way.
    pub fn seed(self) -> u64 {
        match self {
            Way::C2s => C2S_SEED,
            Way::S2c => S2C_SEED,
        }
    }
}

// ---------------------------------------------------------------------------
// JSON: `journal inspect --json` and report.json
// ---------------------------------------------------------------------------

/// `connmirror journal inspect --json`.
#[derive(Clone, Debug, Deserialize)]
pub struct Inspection {
    /// Sequence numbers of the segment files found.
    pub segments: Vec<u64>,
    /// A torn tail recovery would cut: (file, bytes).
    pub truncated_tail: Option<(PathBuf, u64)>,
    /// Damaged records skipped (`--salvage`).
    pub salvaged: u64,
    /// Every flow in the journal, closed ones included.
    pub flows: Vec<Flow>,
}

impl Flow {
    /// One direction.
    pub fn side(&self, way: Way) -> &DirectionDump {
        match way {
            Way::C2s => &self.c2s,
            Way::S2c => &self.s2c,
        }
    }

    /// The missing ranges of one direction, in report order.
    pub fn ranges_of(&self, way: Way) -> Vec<MissingRange> {
        self.ranges
            .iter()
            .filter(|r| r.dir == way.name())
            .cloned()
            .collect()
    }
}

impl SynState {
    /// The options alone: what the same kernels over the same topology announce
    /// on every connection (the ISN is random per connection).
    pub fn options(&self) -> SynOptions {
        SynOptions {
            mss: self.mss,
            window_scale: self.window_scale,
            sack_permitted: self.sack_permitted,
            timestamps: self.timestamps,
        }
    }
}

/// The options of a [`SynState`], without its ISN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynOptions {
    /// Maximum segment size.
    pub mss: Option<u16>,
    /// Window scale shift this side applies to the windows it advertises.
    pub window_scale: Option<u8>,
    /// SACK permitted.
    pub sack_permitted: bool,
    /// Timestamps offered.
    pub timestamps: bool,
}

// ---------------------------------------------------------------------------
// The `connmirror journal` commands
// ---------------------------------------------------------------------------

/// Runs `connmirror journal <args>` to completion and returns what it did; a
/// non-zero exit is returned, not a panic.
pub fn run(args: &[&str]) -> Output {
    let mut cmd = Command::new(crate::connmirror_bin());
    cmd.arg("journal").args(args);
    output_with_timeout(&mut cmd, COMMAND_TIMEOUT)
}

/// [`run`], which must exit 0: panics with the command line, the status and
/// stderr otherwise.
fn run_ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "`connmirror journal {}` exited with {}; stderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `connmirror journal inspect DIR --json [extra]`, parsed. Panics with stderr
/// unless it exits 0.
pub fn inspect_with(dir: &Path, extra: &[&str]) -> (Inspection, Output) {
    let dir_arg = dir.display().to_string();
    let mut args = vec!["inspect", dir_arg.as_str(), "--json"];
    args.extend_from_slice(extra);
    let out = run_ok(&args);
    let inspection = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "journal inspect --json: {e}\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (inspection, out)
}

/// `connmirror journal inspect DIR --json`, parsed.
pub fn inspect(dir: &Path) -> Inspection {
    inspect_with(dir, &[]).0
}

/// `connmirror journal dump DIR --flow ID --dir WAY > out`. Panics unless it
/// exits 0; returns its stderr (a note when the bytes start after offset 0).
pub fn dump_to(dir: &Path, flow: u64, way: Way, out: &Path) -> String {
    let stdout = File::create(out).unwrap_or_else(|e| panic!("create {}: {e}", out.display()));
    let stderr_path = out.with_extension("stderr");
    let stderr = File::create(&stderr_path)
        .unwrap_or_else(|e| panic!("create {}: {e}", stderr_path.display()));
    let mut cmd = Command::new(crate::connmirror_bin());
    cmd.arg("journal").arg("dump").arg(dir).args([
        "--flow",
        &flow.to_string(),
        "--dir",
        way.name(),
    ]);
    let what = describe(&cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn `{what}`: {e}"));
    let status = wait_with_timeout(&mut child, COMMAND_TIMEOUT, &what);
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(
        status.success(),
        "`{what}` exited with {status}; stderr:\n{stderr}"
    );
    stderr
}

/// `connmirror journal dump` of a small stream, into memory.
pub fn dump(dir: &Path, flow: u64, way: Way) -> Vec<u8> {
    let dir_arg = dir.display().to_string();
    let flow_arg = flow.to_string();
    let args = [
        "dump",
        dir_arg.as_str(),
        "--flow",
        &flow_arg,
        "--dir",
        way.name(),
    ];
    run_ok(&args).stdout
}

// ---------------------------------------------------------------------------
// Comparing with the sent data
// ---------------------------------------------------------------------------

/// Where `actual` first differs from the stream seeded with `seed` starting at
/// stream offset `start` (`None`: it is an exact piece of that stream).
///
/// SplitMix64's state after `k` words is `seed + k·γ`, so the generator jumps
/// straight to `start` instead of regenerating everything before it.
pub fn first_difference(actual: &mut impl Read, seed: u64, start: u64) -> (u64, Option<u64>) {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
    const BLOCK: usize = 1 << 20;
    let mut rng = SplitMix64::new(seed.wrapping_add((start / 8).wrapping_mul(GAMMA)));
    let mut skip = (start % 8) as usize;
    let mut expected = vec![0u8; BLOCK + 8];
    let mut have = vec![0u8; BLOCK];
    let mut pending: Vec<u8> = Vec::new(); // expected bytes generated, not compared yet
    let mut compared = 0u64;
    loop {
        let n = match actual.read(&mut have) {
            Ok(0) => return (compared, None),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("read: {e}"),
        };
        while pending.len() < n {
            let words = (n - pending.len()).div_ceil(8) + 1;
            let buf = &mut expected[..words * 8];
            rng.fill(buf);
            pending.extend_from_slice(&buf[skip..]);
            skip = 0;
        }
        if let Some(i) = (0..n).find(|&i| have[i] != pending[i]) {
            return (compared + i as u64, Some(compared + i as u64));
        }
        pending.drain(..n);
        compared += n as u64;
    }
}

/// Asserts the file at `path` is exactly stream `seed`'s bytes from offset
/// `start` on (for as long as the file is); returns its length.
pub fn assert_stream_piece(path: &Path, seed: u64, start: u64, what: &str) -> u64 {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let (len, diff) = first_difference(&mut file, seed, start);
    if let Some(at) = diff {
        let file_len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        panic!(
            "{what}: {} ({file_len} bytes) differs from the sent stream at stream offset {} \
             (byte {at} of the file, which should start at stream offset {start})",
            path.display(),
            start + at,
        );
    }
    len
}

/// Asserts `bytes` is exactly stream `seed`'s bytes from offset `start` on.
pub fn assert_bytes_piece(bytes: &[u8], seed: u64, start: u64, what: &str) {
    let (_, diff) = first_difference(&mut &bytes[..], seed, start);
    if let Some(at) = diff {
        panic!(
            "{what}: {} bytes differ from the sent stream at stream offset {} (byte {at}, \
             expected the piece starting at stream offset {start})",
            bytes.len(),
            start + at
        );
    }
}

// ---------------------------------------------------------------------------
// Segment files
// ---------------------------------------------------------------------------

/// The segment files in `dir`, oldest first.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".cmj"))
        })
        .collect();
    files.sort();
    files
}

/// One record's framing in a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Byte offset of the 9-byte framing header in the file.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
    /// The record's kind byte, one of [`kind`].
    pub kind: u8,
}

impl Frame {
    /// One past the record's last byte.
    pub fn end(&self) -> u64 {
        self.offset + RECORD_HEADER_LEN + u64::from(self.len)
    }
}

/// Every record of an intact segment file, by its framing alone (checksums are
/// not checked). Panics if the header's magic is wrong or a record runs past the
/// end of the file.
pub fn records(path: &Path) -> Vec<Frame> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        data.len() as u64 >= SEGMENT_HEADER_LEN && data[..8] == SEGMENT_MAGIC[..],
        "{} is not a journal segment ({} bytes)",
        path.display(),
        data.len()
    );
    let mut frames = Vec::new();
    let mut at = SEGMENT_HEADER_LEN;
    while at < data.len() as u64 {
        let header = &data[at as usize..];
        assert!(
            header.len() as u64 >= RECORD_HEADER_LEN,
            "{}: {} stray bytes at offset {at}",
            path.display(),
            header.len()
        );
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let frame = Frame {
            offset: at,
            len,
            kind: header[8],
        };
        assert!(
            frame.end() <= data.len() as u64,
            "{}: record at {at} ({len} bytes) runs past the end ({} bytes)",
            path.display(),
            data.len()
        );
        frames.push(frame);
        at = frame.end();
    }
    frames
}

/// Copies the regular files of `from` into `to` (created), e.g. a journal to
/// damage without touching the original.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for entry in
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("read_dir {}: {e}", from.display()))
    {
        let entry = entry.expect("dir entry");
        if entry.file_type().expect("file type").is_file() {
            let dest = to.join(entry.file_name());
            std::fs::copy(entry.path(), &dest).unwrap_or_else(|e| {
                panic!("copy {} to {}: {e}", entry.path().display(), dest.display())
            });
        }
    }
}

// ---------------------------------------------------------------------------
// Connections that stay open
// ---------------------------------------------------------------------------

/// An established connection whose two ends exchange exact data and never send
/// a FIN (dropping it closes both sockets).
///
/// Client → server bytes continue the [`C2S_SEED`] stream and server → client
/// bytes the [`S2C_SEED`] stream, across every [`HeldConnection::exchange`].
#[derive(Debug)]
pub struct HeldConnection {
    /// The client's end.
    pub client: TcpStream,
    /// The server's end (the accepted socket).
    pub server: TcpStream,
    /// Bytes sent (and read by the peer) each way so far.
    pub c2s_bytes: u64,
    /// Server → client bytes sent (and read by the client) so far.
    pub s2c_bytes: u64,
}

impl HeldConnection {
    /// Listens on `service` in `server`, connects from `client`, accepts.
    pub fn open(client: &Netns, server: &Netns, service: SocketAddr) -> HeldConnection {
        let listener = server.run(|| {
            TcpListener::bind(service)
                .unwrap_or_else(|e| panic!("bind {service} in {}: {e}", server.name()))
        });
        let client_stream = client.run(|| {
            TcpStream::connect_timeout(&service, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("connect to {service} from {}: {e}", client.name()))
        });
        listener
            .set_nonblocking(true)
            .expect("set listener non-blocking");
        let deadline = Instant::now() + Duration::from_secs(10);
        let server_stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "accept on {service}: timed out");
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept on {service}: {e}"),
            }
        };
        server_stream
            .set_nonblocking(false)
            .expect("set stream blocking");
        HeldConnection::from_streams(client_stream, server_stream)
    }

    /// Wraps an established pair (e.g. from [`crate::repair::repaired_pair`]).
    pub fn from_streams(client: TcpStream, server: TcpStream) -> HeldConnection {
        HeldConnection {
            client,
            server,
            c2s_bytes: 0,
            s2c_bytes: 0,
        }
    }

    /// The client's address.
    pub fn client_addr(&self) -> SocketAddr {
        self.client.local_addr().expect("getsockname")
    }

    /// Sends `n` bytes each way at once, reads them on the other side and checks
    /// they are exactly the bytes sent. Panics after `timeout`.
    pub fn exchange(&mut self, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let c2s = stream_bytes(C2S_SEED, (self.c2s_bytes + n) as usize);
        let s2c = stream_bytes(S2C_SEED, (self.s2c_bytes + n) as usize);
        let c2s = &c2s[self.c2s_bytes as usize..];
        let s2c = &s2c[self.s2c_bytes as usize..];
        let (client, server) = (&self.client, &self.server);
        thread::scope(|s| {
            let handles = [
                s.spawn(move || write_all("client", client, c2s, deadline)),
                s.spawn(move || write_all("server", server, s2c, deadline)),
                s.spawn(move || read_exact("server", server, c2s, deadline)),
                s.spawn(move || read_exact("client", client, s2c, deadline)),
            ];
            for h in handles {
                if let Err(payload) = h.join() {
                    std::panic::resume_unwind(payload);
                }
            }
        });
        self.c2s_bytes += n;
        self.s2c_bytes += n;
    }
}

/// The loop of [`write_all`] and [`read_exact`]: calls `step` with the offset
/// reached and the socket timeout for its one read or write (what is left until
/// `deadline`, at most 200 ms) until `len` bytes went through; `step` returns
/// how many more did (0: none this time, try again). Panics once the deadline
/// has passed, saying how far `who` got with `doing` (`sending`, `receiving`).
fn until_all_moved(
    who: &str,
    doing: &str,
    len: usize,
    deadline: Instant,
    mut step: impl FnMut(usize, Duration) -> usize,
) {
    let mut off = 0;
    while off < len {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{who} {doing}: timed out after {off} of {len} bytes"
        );
        off += step(off, left.min(Duration::from_millis(200)));
    }
}

fn write_all(who: &str, mut stream: &TcpStream, data: &[u8], deadline: Instant) {
    until_all_moved(who, "sending", data.len(), deadline, |off, timeout| {
        stream
            .set_write_timeout(Some(timeout))
            .expect("set_write_timeout");
        match stream.write(&data[off..]) {
            Ok(0) => panic!("{who} sending: the socket accepts no more data"),
            Ok(k) => k,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => 0,
            Err(e) if e.kind() == ErrorKind::Interrupted => 0,
            Err(e) => panic!("{who} sending: write after {off} bytes: {e}"),
        }
    });
}

fn read_exact(who: &str, mut stream: &TcpStream, expected: &[u8], deadline: Instant) {
    let mut buf = vec![0u8; 256 * 1024];
    until_all_moved(
        who,
        "receiving",
        expected.len(),
        deadline,
        |off, timeout| {
            stream
                .set_read_timeout(Some(timeout))
                .expect("set_read_timeout");
            let want = (expected.len() - off).min(buf.len());
            match stream.read(&mut buf[..want]) {
                Ok(0) => panic!(
                    "{who} receiving: EOF after {off} of {} bytes",
                    expected.len()
                ),
                Ok(k) => {
                    assert!(
                        buf[..k] == expected[off..off + k],
                        "{who} received different bytes than were sent, within [{off}, {})",
                        off + k
                    );
                    k
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => 0,
                Err(e) if e.kind() == ErrorKind::Interrupted => 0,
                Err(e) => panic!("{who} receiving: read after {off} bytes: {e}"),
            }
        },
    );
}
