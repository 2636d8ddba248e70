//! The short chaos soak: two cycles of `connmirror_tests::soak` (heartbeats
//! forged and delayed, the primary host killed, an automatic takeover, a
//! failback by migration) under four long echo streams and a run of short
//! connections. `cargo xtask soak --minutes N` runs the long one.

use std::time::Duration;

use connmirror_tests::soak::{self, SoakOptions};

#[test]
fn two_cycles_of_failover_and_failback_keep_every_stream_exact() {
    let summary = soak::run(SoakOptions {
        cycles: 2,
        duration: Duration::from_secs(150),
    });
    eprintln!("{summary:#?}");
    assert_eq!(summary.cycles.len(), 2);
    assert_eq!(summary.streams, 4);
    summary.assert_held();
}
