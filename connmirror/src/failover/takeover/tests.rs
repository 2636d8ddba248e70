//! Unit tests of `failover/takeover.rs`.

use connmirror_common::{FlowKey, map::FAMILY_V4};

use super::*;
use crate::{
    flow::state::{MissingRange, SideState, SynState},
    flow::stream::StreamMarks,
};

const CLIENT_ISN: u32 = u32::MAX - 10;
const SERVER_ISN: u32 = 5000;

fn config(mid_stream: MidStream) -> TakeoverConfig {
    TakeoverConfig {
        address_iface: "lo".into(),
        announce: Vec::new(),
        announce_count: 0,
        workers: 1,
        mid_stream,
        queue: QueueMode::Unsent,
        resume: BTreeMap::new(),
        handoff_wait: Duration::ZERO,
        replay_timeout: Duration::ZERO,
        keep: None,
        live: None,
        capture_after: None,
    }
}

fn syn(isn: u32, mss: u16, window_scale: u8) -> Option<SynState> {
    Some(SynState {
        isn,
        mss: Some(mss),
        window_scale: Some(window_scale),
        sack_permitted: true,
        timestamps: true,
    })
}

/// A side that sent `sent` bytes after its SYN, of which the peer
/// acknowledged `acked`, retaining everything from `retained_start`.
fn side(syn: Option<SynState>, isn: u32, sent: u64, acked: u64, start: u64) -> TakeoverSide {
    let origin = isn.wrapping_add(1);
    TakeoverSide {
        state: SideState {
            syn,
            next_seq: Some(origin.wrapping_add(sent as u32)),
            ack: None,
            window: 1000,
            window_scaled: 1000 << 7,
            tsval: Some(77_777),
            tsecr: Some(1),
            fin: false,
            rst: false,
        },
        marks: StreamMarks {
            origin: Some(origin),
            handshake: syn.is_some(),
            next: sent,
            acked,
            fin: None,
            handoff_only: false,
        },
        retained_start: start,
        bytes_start: start,
        bytes: (start..sent).map(|i| i as u8).collect(),
    }
}

/// Client sent 300 bytes (server acked 250); server sent 200 (client acked 120).
fn flow(readiness: Readiness) -> TakeoverFlow {
    let mut c2s = side(syn(CLIENT_ISN, 1460, 7), CLIENT_ISN, 300, 250, 0);
    let mut s2c = side(syn(SERVER_ISN, 1400, 9), SERVER_ISN, 200, 120, 120);
    c2s.state.ack = Some(SERVER_ISN + 1 + 120);
    s2c.state.ack = Some(CLIENT_ISN.wrapping_add(1 + 250));
    TakeoverFlow {
        id: 1,
        key: FlowKey {
            server_addr: [198, 18, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            client_addr: [198, 18, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            server_port: 7000,
            client_port: 40312,
            family: FAMILY_V4,
            _pad: [0; 3],
        },
        readiness,
        c2s,
        s2c,
    }
}

#[test]
fn a_ready_flow_is_planned_from_its_marks_across_wraparound() {
    let plan = plan(
        &flow(Readiness::Ready),
        Resume::Handoff,
        &config(MidStream::Reset),
    )
    .expect("restorable");

    assert_eq!(plan.server, "198.18.1.2:7000".parse().unwrap());
    assert_eq!(plan.client, "198.18.0.2:40312".parse().unwrap());
    // rcv_nxt: every client byte captured (ISN + 1 + 300, wrapped).
    assert_eq!(plan.recv_seq, CLIENT_ISN.wrapping_add(301));
    // snd_una: the client's acknowledgment; the queue is what it lacks.
    assert_eq!(plan.send_seq, SERVER_ISN + 1 + 120);
    assert_eq!(
        plan.send_queue,
        (120..200).map(|i| i as u8).collect::<Vec<_>>()
    );
    assert_eq!(
        plan.options,
        RestoreOptions {
            mss: 1460,
            window_scale: Some(WindowScale {
                send: 7,
                receive: 9
            }),
            sack: true,
            timestamps: true,
        }
    );
    assert_eq!(
        plan.window,
        RestoreWindow {
            snd_wl1: plan.recv_seq,
            snd_wnd: 1000 << 7,
            max_window: 1000 << 7,
            rcv_wnd: 1000 << 7,
            rcv_wup: CLIENT_ISN.wrapping_add(251),
        }
    );
    assert_eq!(plan.timestamp, Some(78_776));
    assert_eq!(plan.queue, QueueMode::Unsent);
}

#[test]
fn flows_that_cannot_be_restored_say_why() {
    let reset = config(MidStream::Reset);
    let gap = Readiness::MissingBytes(vec![MissingRange {
        dir: "c2s",
        start: 10,
        end: 20,
    }]);
    let mut closing = flow(Readiness::Ready);
    closing.s2c.state.fin = true;
    let replay = Resume::Replay("127.0.0.1:7001".parse().unwrap());

    let reason = |f: &TakeoverFlow, resume, config: &TakeoverConfig| plan(f, resume, config).err();
    assert_eq!(
        reason(&flow(Readiness::Closed), Resume::Handoff, &reset),
        Some(None)
    );
    assert_eq!(
        reason(&flow(gap), Resume::Handoff, &reset),
        Some(Some(Unrecoverable::Gapped))
    );
    assert_eq!(
        reason(&flow(Readiness::NoHandshake), Resume::Handoff, &reset),
        Some(Some(Unrecoverable::NoHandshake))
    );
    assert_eq!(
        reason(&closing, Resume::Handoff, &reset),
        Some(Some(Unrecoverable::Closing))
    );
    // The server side keeps only unacknowledged bytes: no replay possible.
    assert_eq!(
        reason(&flow(Readiness::Ready), replay, &reset),
        Some(Some(Unrecoverable::OverCap))
    );
}

#[test]
fn a_mid_stream_flow_is_restored_conservatively_when_the_policy_allows() {
    let mut mid = flow(Readiness::NoHandshake);
    mid.c2s.state.syn = None;
    mid.s2c.state.syn = None;

    let plan = plan(&mid, Resume::Handoff, &config(MidStream::Restore)).expect("allowed");

    assert_eq!(
        plan.options,
        RestoreOptions {
            mss: DEFAULT_MSS,
            window_scale: None,
            sack: false,
            timestamps: true,
        }
    );
}

#[test]
fn a_reset_carries_the_clients_last_acknowledgment() {
    let flow = flow(Readiness::NoHandshake);

    let plan = reset_plan(&flow).expect("the client acknowledged something");

    assert_eq!(plan.send_seq, SERVER_ISN + 1 + 120);
    assert_eq!(plan.recv_seq, CLIENT_ISN.wrapping_add(301));
    assert!(plan.send_queue.is_empty());
}
