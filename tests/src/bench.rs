//! Measurements for `cargo xtask bench journal` that run in this process: the
//! disk's own sequential write rate, the journal's append rate on the same disk,
//! the time to recover a journal, and the memory an idle flow costs.

use std::{
    fs,
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use connmirror::{
    flow::FlowTable,
    flow::record::Record,
    flow::recovery::recover,
    flow::stream::StreamLimits,
    journal::{FsyncPolicy, JournalConfig, JournalWriter, ReadMode, read_journal},
};
use connmirror_common::{Direction, FlowKey, RecordHeader, map::FAMILY_V4, record::tcp_flags::SYN};

/// Payload of each journal record the append benchmark writes (a reassembled
/// 64 KiB GSO segment's worth).
const RECORD_PAYLOAD: usize = 64 << 10;

/// Writes `bytes` of zeros to `dir/dd.bin` with `dd ... conv=fdatasync` (the
/// everyday baseline) and returns the rate in bytes per second.
pub fn disk_write_rate(dir: &Path, bytes: u64) -> Result<f64> {
    let file = dir.join("dd.bin");
    let count = (bytes >> 20).to_string();
    let started = Instant::now();
    let status = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "conv=fdatasync"])
        .arg(format!("of={}", file.display()))
        .arg(format!("count={count}"))
        .stderr(std::process::Stdio::null())
        .status()
        .context("running dd")?;
    let elapsed = started.elapsed();
    anyhow::ensure!(status.success(), "dd failed: {status}");
    fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
    Ok(bytes as f64 / elapsed.as_secs_f64())
}

/// Appends `bytes` of data records to a fresh journal in `dir` with the default
/// `interval` fsync policy, then closes it (a final sync); bytes per second.
pub fn journal_append_rate(dir: &Path, bytes: u64) -> Result<f64> {
    let (mut writer, _) = JournalWriter::open(JournalConfig {
        fsync: FsyncPolicy::INTERVAL,
        ..JournalConfig::new(dir)
    })?;
    let open = Record::Open {
        id: 1,
        key: key(1),
        service_id: 0,
    };
    let mut payload = Vec::new();
    open.encode(&mut payload);
    writer.append(open.kind() as u8, &payload)?;
    let data: Vec<u8> = (0..RECORD_PAYLOAD).map(|i| (i * 7 % 251) as u8).collect();
    let started = Instant::now();
    let mut offset = 0u64;
    while offset < bytes {
        let record = Record::Data {
            id: 1,
            dir: Direction::ClientToServer,
            offset,
            bytes: data.clone().into(),
        };
        payload.clear();
        record.encode(&mut payload);
        writer.append(record.kind() as u8, &payload)?;
        writer.commit_due()?;
        offset += RECORD_PAYLOAD as u64;
    }
    writer.close()?;
    Ok(offset as f64 / started.elapsed().as_secs_f64())
}

/// Reads and recovers the journal in `dir` (what recovery does before it
/// restores flows); returns the time taken and the bytes recovered.
pub fn journal_recovery_time(dir: &Path) -> Result<(Duration, u64)> {
    let started = Instant::now();
    let scan = read_journal(dir, ReadMode::Strict)?;
    let bytes = scan.records.iter().map(|r| r.payload.len() as u64).sum();
    let recovered = recover(scan.records.into_iter().map(Ok))?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        recovered.flows.len() == 1,
        "expected one flow in the journal"
    );
    Ok((elapsed, bytes))
}

/// Resident memory added per idle flow when `flows` flows have each seen one
/// SYN, measured from the process's RSS (`/proc/self/statm`).
pub fn idle_flow_bytes(flows: u32) -> Result<f64> {
    let before = resident_bytes()?;
    let mut table = FlowTable::new(
        StreamLimits {
            keep_delivered: 0,
            ..StreamLimits::default()
        },
        None,
    );
    for i in 0..flows {
        let mut h = RecordHeader::zeroed();
        h.family = FAMILY_V4;
        h.src_addr[..4].copy_from_slice(&[198, 18, (i >> 16) as u8, (i >> 8) as u8]);
        h.dst_addr[..4].copy_from_slice(&[198, 19, 0, 1]);
        h.src_port = (i & 0xff) as u16 + 1024;
        h.dst_port = 7000;
        h.tcp_flags = SYN;
        h.direction = Direction::ClientToServer as u8;
        table.record(&h, b"")?;
    }
    let after = resident_bytes()?;
    anyhow::ensure!(
        table.len() == flows as usize,
        "{} flows tracked",
        table.len()
    );
    let per_flow = after.saturating_sub(before) as f64 / f64::from(flows);
    drop(table);
    Ok(per_flow)
}

fn resident_bytes() -> Result<u64> {
    let statm = fs::read_to_string("/proc/self/statm").context("reading /proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .context("parsing /proc/self/statm")?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    Ok(pages * page)
}

fn key(port: u16) -> FlowKey {
    let mut key = FlowKey {
        server_addr: [0; 16],
        client_addr: [0; 16],
        server_port: 7000,
        client_port: port,
        family: FAMILY_V4,
        _pad: [0; 3],
    };
    key.server_addr[..4].copy_from_slice(&[198, 18, 1, 2]);
    key.client_addr[..4].copy_from_slice(&[198, 18, 0, 2]);
    key
}

/// Size of every file in `dir`, for the journal bytes a mirrored run wrote.
pub fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Prints `line` and flushes, for progress on long steps.
pub fn progress(line: &str) {
    print!("{line}");
    let _ = std::io::stdout().flush();
}
