//! `cargo xtask demo`, the README's first command, works and cleans up: the
//! demo program exits 0 with every byte verified across the failover, prints
//! the standby's key metrics, and leaves no namespace, network link, pin or
//! BPF link of its own behind.
//!
//! BPF links are listed from the kernel (every link whose program is a connmirror
//! program), not only through pins: a link outlives the process that made it
//! only through a pin or a file descriptor some process still holds, and this
//! sees both. The end-to-end tests run one at a time (`--test-threads=1`, one
//! test binary after another), so no other test's links show up here.

use std::process::Command;
use std::time::Duration;

use connmirror_tests::pinning::{connmirror_links, pinned_instances};
use connmirror_tests::process::output_with_timeout;

#[test]
fn the_demo_verifies_every_byte_across_the_failover_and_leaves_nothing_behind() {
    connmirror_tests::require_root();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_connmirror-demo"));
    let (pins_before, links_before) = (pinned_instances(), connmirror_links());
    let net_links_before = root_links();

    let out = output_with_timeout(&mut demo, Duration::from_secs(120));
    let (pins_after, links_after) = (pinned_instances(), connmirror_links());
    let net_links_after = root_links();
    let pid = out_pid(&out.stdout);
    let namespaces = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list")
            .stdout,
    )
    .into_owned();

    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("4 of 4 connections byte-exact") && stdout.contains("Result: OK."),
        "{stdout}"
    );
    assert!(
        stdout.contains("trigger: heartbeats-missed, epoch 2"),
        "{stdout}"
    );
    assert!(stdout.contains("RSTs seen by the clients: 0"), "{stdout}");
    for metric in [
        "connmirror_failovers_total{trigger=\"heartbeats-missed\"} 1\n",
        "connmirror_restored_connections_total 4\n",
        "connmirror_replication_lag_bytes ",
    ] {
        assert!(stdout.contains(metric), "no {metric:?} in:\n{stdout}");
    }
    assert_eq!(
        net_links_after, net_links_before,
        "the demo changed the host namespace's network links"
    );
    assert!(
        !namespaces.contains(&format!("cm-{pid}-")),
        "the demo left namespaces behind:\n{namespaces}"
    );
    let new_pins: Vec<&String> = pins_after.difference(&pins_before).collect();
    assert!(
        new_pins.is_empty(),
        "the demo left pins under /sys/fs/bpf/connmirror: {new_pins:?}"
    );
    let new_links: Vec<_> = links_after
        .iter()
        .filter(|(id, _)| !links_before.contains_key(id))
        .collect();
    assert!(
        new_links.is_empty(),
        "the demo left connmirror BPF links attached (id, program): {new_links:?}"
    );
}

/// The names of the network links in the host (test) namespace.
fn root_links() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link show");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut names: Vec<String> = (text.lines())
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect();
    names.sort();
    names
}

/// The demo's pid, from the namespace names it prints (`cm-PID-0-client, ...`).
fn out_pid(stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(stdout);
    let name = text
        .split_whitespace()
        .find(|w| w.starts_with("cm-") && w.contains("-client"))
        .unwrap_or_else(|| panic!("the demo printed no namespace names:\n{text}"));
    name.split('-').nth(1).expect("cm-PID-N-role").to_owned()
}
