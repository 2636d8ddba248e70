//! Tests of the netfilter queue client: the bytes of the messages it sends,
//! decoding of crafted datagrams (no kernel involved), and a real queue in a
//! fresh network namespace that holds three UDP datagrams, drops one by a
//! single verdict and releases the other two by one batch verdict.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use super::*;

const PACKET: u16 = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET;

/// An attribute as the kernel lays it out: header, value, padding.
fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut out = ((NLA_HDRLEN + value.len()) as u16).to_ne_bytes().to_vec();
    out.extend(kind.to_ne_bytes());
    out.extend(value);
    out.resize(out.len().next_multiple_of(4), 0);
    out
}

/// A netlink message of `kind` with `body`, padded to 4 bytes.
fn nlmsg(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut out = ((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes().to_vec();
    out.extend(kind.to_ne_bytes());
    out.extend(0u16.to_ne_bytes());
    out.extend(seq.to_ne_bytes());
    out.extend(0u32.to_ne_bytes());
    out.extend(body);
    out.resize(out.len().next_multiple_of(4), 0);
    out
}

/// An `NFQNL_MSG_PACKET` message for queue 7.
fn packet_msg(id: u32, protocol: u16, payload: &[u8], cap_len: Option<u32>) -> Vec<u8> {
    let mut body = vec![libc::AF_INET as u8, NFNETLINK_V0, 0, 7];
    let mut hdr = id.to_be_bytes().to_vec();
    hdr.extend(protocol.to_be_bytes());
    hdr.push(3); // NF_INET_LOCAL_OUT
    body.extend(attr(NFQA_PACKET_HDR, &hdr));
    body.extend(attr(5, &1u32.to_be_bytes())); // NFQA_IFINDEX_INDEV: skipped
    body.extend(attr(NFQA_PAYLOAD, payload));
    if let Some(cap_len) = cap_len {
        body.extend(attr(NFQA_CAP_LEN, &cap_len.to_be_bytes()));
    }
    nlmsg(PACKET, 0, &body)
}

/// An `NLMSG_ERROR` answering message `seq` with `code`.
fn error_msg(seq: u32, code: i32) -> Vec<u8> {
    let mut body = code.to_ne_bytes().to_vec();
    body.extend([0; NLMSG_HDRLEN]); // the echoed request header
    nlmsg(NLMSG_ERROR, seq, &body)
}

fn decoded(datagram: &[u8]) -> Result<(Vec<Queued>, u64), NfqueueError> {
    let (mut out, mut errors) = (Vec::new(), 0);
    decode(datagram, &mut out, &mut errors).map(|()| (out, errors))
}

fn malformed_text(datagram: &[u8]) -> String {
    match decoded(datagram) {
        Err(e @ NfqueueError::Malformed(_)) => e.to_string(),
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn two_packets_in_one_datagram_decode_in_order() {
    let mut datagram = packet_msg(1, 0x0800, b"abc", None);
    datagram.extend(packet_msg(2, 0x86dd, b"defgh", None));
    let (packets, errors) = decoded(&datagram).unwrap();
    assert_eq!(errors, 0);
    assert_eq!(
        packets,
        [
            Queued {
                id: 1,
                protocol: 0x0800,
                len: 3,
                data: b"abc".to_vec()
            },
            Queued {
                id: 2,
                protocol: 0x86dd,
                len: 5,
                data: b"defgh".to_vec()
            },
        ]
    );
}

#[test]
fn cap_len_is_the_whole_length_of_a_truncated_copy() {
    let (packets, _) = decoded(&packet_msg(9, 0x0800, &[0x45; 128], Some(1500))).unwrap();
    assert_eq!(packets.len(), 1);
    assert_eq!(packets[0].len, 1500);
    assert_eq!(packets[0].data, [0x45; 128]);
}

#[test]
fn attribute_type_flag_bits_are_ignored() {
    let mut datagram = packet_msg(4, 0x0800, b"xy", None);
    // NLA_F_NET_BYTEORDER (1 << 14) on NFQA_PACKET_HDR, whose type field is
    // at 16 + 4 + 2.
    let at = NLMSG_HDRLEN + NFGENMSG_LEN + 2;
    let kind = u16::from_ne_bytes([datagram[at], datagram[at + 1]]) | 1 << 14;
    datagram[at..at + 2].copy_from_slice(&kind.to_ne_bytes());
    assert_eq!(decoded(&datagram).unwrap().0[0].id, 4);
}

#[test]
fn truncated_attribute_is_malformed() {
    let mut datagram = packet_msg(1, 0x0800, b"abcd", None);
    // The NFQA_PAYLOAD attribute (after the 12-byte header and the 8-byte
    // ifindex) claims 40 bytes; 8 are left.
    let at = NLMSG_HDRLEN + NFGENMSG_LEN + 12 + 8;
    datagram[at..at + 2].copy_from_slice(&40u16.to_ne_bytes());
    assert_eq!(
        malformed_text(&datagram),
        "malformed nfnetlink_queue datagram: attribute 10 claims 40 bytes, 8 are left"
    );
}

#[test]
fn message_length_past_the_end_is_malformed() {
    let mut datagram = packet_msg(1, 0x0800, b"abcd", None);
    let len = datagram.len() as u32;
    datagram[..4].copy_from_slice(&(len + 4).to_ne_bytes());
    assert_eq!(
        malformed_text(&datagram),
        format!(
            "malformed nfnetlink_queue datagram: netlink message at offset 0 claims {} bytes, {len} are left",
            len + 4
        )
    );
}

#[test]
fn short_packet_header_and_trailing_bytes_are_malformed() {
    let body = [&[2, 0, 0, 7][..], &attr(NFQA_PACKET_HDR, &[0, 0, 0, 1])].concat();
    assert_eq!(
        malformed_text(&nlmsg(PACKET, 0, &body)),
        "malformed nfnetlink_queue datagram: NFQA_PACKET_HDR of 4 bytes, expected at least 7"
    );
    let body = [&[2, 0, 0, 7][..], &attr(NFQA_PAYLOAD, b"abcd")].concat();
    assert_eq!(
        malformed_text(&nlmsg(PACKET, 0, &body)),
        "malformed nfnetlink_queue datagram: packet message without NFQA_PACKET_HDR"
    );
    let mut datagram = packet_msg(1, 0x0800, b"abcd", None);
    datagram.extend([0; 8]);
    let at = datagram.len() - 8;
    assert_eq!(
        malformed_text(&datagram),
        format!(
            "malformed nfnetlink_queue datagram: 8 trailing bytes at offset {at}, shorter than a netlink header"
        )
    );
}

#[test]
fn error_replies_are_counted_and_acks_skipped() {
    let mut datagram = error_msg(0, -libc::ENOENT);
    datagram.extend(error_msg(0, 0));
    datagram.extend(packet_msg(3, 0x0800, b"z", None));
    datagram.extend(error_msg(0, -libc::EPERM));
    let (packets, errors) = decoded(&datagram).unwrap();
    assert_eq!(errors, 2);
    assert_eq!(packets.len(), 1);
    assert_eq!(
        malformed_text(&nlmsg(NLMSG_ERROR, 0, &[1, 2])),
        "malformed nfnetlink_queue datagram: NLMSG_ERROR of 2 bytes, expected at least 4"
    );
}

#[test]
fn scan_ack_returns_the_awaited_code_and_keeps_packets() {
    let mut datagram = packet_msg(5, 0x0800, b"p", None);
    datagram.extend(error_msg(1, -libc::ENOENT));
    datagram.extend(error_msg(2, -libc::EPERM));
    let (mut pending, mut errors) = (Vec::new(), 0);
    let code = scan_ack(&datagram, 2, &mut pending, &mut errors).unwrap();
    assert_eq!(code, Some(-libc::EPERM));
    assert_eq!((pending.len(), errors), (1, 1));
    assert_eq!(
        scan_ack(&datagram, 3, &mut pending, &mut errors).unwrap(),
        None
    );
}

#[test]
fn bind_message_is_laid_out_as_the_uapi_says() {
    let msg = bind_message(0x1234, 7, 128, 1024);
    let mut want = nlmsg(0x0302, 7, &[]);
    want[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    want.extend([0, 0, 0x12, 0x34]); // AF_UNSPEC, NFNETLINK_V0, res_id be16
    want.extend(attr(1, &[1, 0, 0, 0])); // NFQNL_CFG_CMD_BIND
    want.extend(attr(2, &[0, 0, 0, 128, 2])); // copy_range, NFQNL_COPY_PACKET
    want.extend(attr(3, &1024u32.to_be_bytes()));
    want.extend(attr(4, &4u32.to_be_bytes())); // mask: NFQA_CFG_F_GSO
    want.extend(attr(5, &4u32.to_be_bytes())); // flags: NFQA_CFG_F_GSO
    let len = want.len() as u32;
    want[..4].copy_from_slice(&len.to_ne_bytes());
    assert_eq!(msg.bytes(), want);
}

#[test]
fn verdict_messages_are_laid_out_as_the_uapi_says() {
    let msg = verdict_message(7, NFQNL_MSG_VERDICT_BATCH, 0x0102_0304, Verdict::Accept);
    let mut want = nlmsg(0x0303, 0, &[0, 0, 0, 7]);
    want[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    want.extend(attr(2, &[0, 0, 0, 1, 1, 2, 3, 4]));
    let len = want.len() as u32;
    want[..4].copy_from_slice(&len.to_ne_bytes());
    assert_eq!(msg.bytes(), want);
    let drop = verdict_message(7, NFQNL_MSG_VERDICT, 9, Verdict::Drop);
    assert_eq!(drop.bytes()[4..6], 0x0301u16.to_ne_bytes());
    assert_eq!(drop.bytes()[24..32], [0, 0, 0, 0, 0, 0, 0, 9]);
}

#[test]
fn slots_hold_the_copy_range_and_metadata() {
    assert_eq!(slot_size(128), 128 + SLOT_OVERHEAD);
    assert_eq!(slot_size(0), slot_size(0xffff));
    assert!(slot_size(0) >= 0xffff + 1024);
}

const QUEUE_NUM: u16 = 4242;
const PAYLOADS: [&[u8]; 3] = [b"first", b"second, to be dropped", &[b'3'; 200]];

/// A real queue: three UDP datagrams to 127.0.0.1:9 are held, the second
/// dropped by one verdict, the first and third released by one batch
/// verdict. Runs on its own thread, moved into a fresh network namespace that
/// dies with it (rules included).
#[test]
fn kernel_holds_packets_until_their_verdicts() {
    in_fresh_netns(hold_and_release);
}

/// With `NFQA_CFG_F_GSO`, TCP over a 1500-byte-MTU loopback is queued in GSO
/// packets longer than the MTU (not segmented first), each copy cut at the
/// copy range and its whole length from `NFQA_CAP_LEN`; accepting every
/// packet by batch verdicts as it comes delivers the whole stream.
#[test]
fn kernel_queues_gso_packets_whole() {
    in_fresh_netns(stream_through_queue);
}

/// Runs `test` on a new thread moved into a fresh network namespace with
/// `lo` up; the thread, and with it the namespace, ends with `test`.
fn in_fresh_netns(test: fn()) {
    assert_eq!(
        crate::sys::process::euid(),
        0,
        "needs root: the test creates a network namespace (CLONE_NEWNET), adds an iptables NFQUEUE rule in it and binds a netfilter queue (CAP_NET_ADMIN)"
    );
    let thread = thread::spawn(move || {
        // SAFETY: moves only this thread, which is never reused, into a new
        // network namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            io::Error::last_os_error()
        );
        run("ip", &["link", "set", "lo", "up"]);
        test();
    });
    thread.join().expect("the namespace thread panicked");
}

/// `iptables -A OUTPUT -o lo -p PROTO --dport 9 -j NFQUEUE --queue-num 4242`.
fn queue_port_9(proto: &str) {
    let num = QUEUE_NUM.to_string();
    let rule = "-w -A OUTPUT -o lo -p PROTO --dport 9 -j NFQUEUE --queue-num";
    let mut args: Vec<&str> = rule
        .split(' ')
        .map(|arg| if arg == "PROTO" { proto } else { arg })
        .collect();
    args.push(&num);
    run("iptables", &args);
}

fn hold_and_release() {
    queue_port_9("udp");
    let mut queue = Queue::bind(QUEUE_NUM, 128, 1024, 1 << 20).expect("Queue::bind");
    assert_eq!(queue.num(), QUEUE_NUM);
    let busy = Queue::bind(QUEUE_NUM, 128, 1024, 1 << 20).expect_err("second bind");
    assert_eq!(
        busy.to_string(),
        "netfilter queue 4242 is already bound by another process"
    );
    let receiver = UdpSocket::bind("127.0.0.1:9").unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    for payload in PAYLOADS {
        sender.send_to(payload, "127.0.0.1:9").unwrap();
    }
    let packets = queued(&mut queue, 3);
    check_packets(&packets);
    queue.verdict(packets[1].id, Verdict::Drop).unwrap();
    queue.verdict_batch(packets[2].id, Verdict::Accept).unwrap();
    assert_eq!(received(&receiver), [PAYLOADS[0], PAYLOADS[2]]);
    errors_are_counted(&mut queue, packets[2].id);
}

/// Each packet: IPv4, its whole length, and its payload after the IPv4 and
/// UDP headers, cut at the 128-byte copy range.
fn check_packets(packets: &[Queued]) {
    assert_eq!(packets.len(), 3, "{packets:?}");
    for (packet, payload) in packets.iter().zip(PAYLOADS) {
        assert_eq!(packet.protocol, 0x0800);
        assert_eq!(packet.len as usize, 20 + 8 + payload.len());
        let copied = payload.len().min(128 - 28);
        assert_eq!(packet.data.len(), 28 + copied);
        assert_eq!(packet.data[28..], payload[..copied]);
    }
    assert!(packets[0].id < packets[1].id && packets[1].id < packets[2].id);
}

/// Waits, at most 5 s, until `queue` has handed out `count` packets.
fn queued(queue: &mut Queue, count: usize) -> Vec<Queued> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut packets = Vec::new();
    while packets.len() < count {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("only {} packets queued: {packets:?}", packets.len()));
        wait_readable(queue.as_fd(), left).unwrap();
        queue.recv(&mut packets).unwrap();
    }
    packets
}

/// The payloads `receiver` gets until nothing comes for 500 ms.
fn received(receiver: &UdpSocket) -> Vec<Vec<u8>> {
    receiver
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0; 512];
    while let Ok(n) = receiver.recv(&mut buf) {
        got.push(buf[..n].to_vec());
    }
    got
}

/// A verdict for an id the queue does not hold, and a batch verdict that
/// matches no packet: the kernel answers both with `ENOENT`, and [`Queue`]
/// counts the replies instead of returning them.
fn errors_are_counted(queue: &mut Queue, released: u32) {
    queue.verdict(released + 100, Verdict::Accept).unwrap();
    queue.verdict_batch(released, Verdict::Accept).unwrap();
    let mut packets = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while queue.verdict_errors() < 2 && Instant::now() < deadline {
        wait_readable(queue.as_fd(), Duration::from_millis(100)).unwrap();
        queue.recv(&mut packets).unwrap();
    }
    assert_eq!(queue.verdict_errors(), 2);
    assert!(packets.is_empty(), "{packets:?}");
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stream_through_queue() {
    const BYTES: usize = 1 << 20;
    run("ip", &["link", "set", "lo", "mtu", "1500"]);
    queue_port_9("tcp");
    let mut queue = Queue::bind(QUEUE_NUM, 128, 1024, 1 << 20).expect("Queue::bind");
    let listener = TcpListener::bind("127.0.0.1:9").unwrap();
    let reader = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).unwrap();
        got.len()
    });
    let writer = thread::spawn(|| {
        let mut stream = TcpStream::connect("127.0.0.1:9").unwrap();
        stream.write_all(&[7; BYTES]).unwrap();
    });
    let packets = accept_until(&mut queue, &reader);
    writer.join().unwrap();
    assert_eq!(reader.join().unwrap(), BYTES);
    assert!(
        packets
            .iter()
            .all(|p| p.data.len() == (p.len as usize).min(128))
    );
    let longest = packets.iter().map(|p| p.len).max().unwrap();
    assert!(
        longest > 1500,
        "no GSO packet among {}: longest {longest}",
        packets.len()
    );
    assert_eq!(queue.verdict_errors(), 0);
}

/// Accepts every packet `queue` hands out, one batch verdict per read, until
/// `until` ends (at most 10 s); returns them.
fn accept_until<T>(queue: &mut Queue, until: &thread::JoinHandle<T>) -> Vec<Queued> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut packets = Vec::new();
    while !until.is_finished() {
        assert!(
            Instant::now() < deadline,
            "stream stuck after {} packets",
            packets.len()
        );
        wait_readable(queue.as_fd(), Duration::from_millis(50)).unwrap();
        let before = packets.len();
        queue.recv(&mut packets).unwrap();
        if let Some(last) = packets[before..].last() {
            queue.verdict_batch(last.id, Verdict::Accept).unwrap();
        }
    }
    packets
}
