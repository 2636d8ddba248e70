//! Tests of the `inet_diag` dump: decoding of crafted reply datagrams (no
//! kernel involved), and real loopback sockets found with their exact
//! 4-tuples, states and inodes.

use std::net::{IpAddr, TcpListener, TcpStream};
use std::num::NonZeroI32;

use netlink_packet_core::{DoneMessage, ErrorMessage, NetlinkPayload};
use netlink_packet_sock_diag::inet::InetResponse;

use super::*;

/// A serialized reply message of `payload`, as the kernel would send it.
fn message(payload: NetlinkPayload<SockDiagMessage>) -> Vec<u8> {
    let mut msg = NetlinkMessage::new(NetlinkHeader::default(), payload);
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

fn response(socket: TcpSocket) -> Vec<u8> {
    let (local, remote) = (socket.local, socket.remote);
    let mut socket_id = match local {
        SocketAddr::V4(_) => SocketId::new_v4(),
        SocketAddr::V6(_) => SocketId::new_v6(),
    };
    socket_id.source_address = local.ip();
    socket_id.source_port = local.port();
    socket_id.destination_address = remote.ip();
    socket_id.destination_port = remote.port();
    let header = InetResponseHeader {
        family: if local.is_ipv4() { AF_INET } else { AF_INET6 },
        state: socket.state,
        timer: None,
        socket_id,
        recv_queue: 0,
        send_queue: 0,
        uid: 0,
        inode: socket.inode as u32,
    };
    let response = InetResponse {
        header,
        nlas: Default::default(),
    };
    message(SockDiagMessage::InetResponse(Box::new(response)).into())
}

fn entry(local: &str, remote: &str, state: u8, inode: u64) -> TcpSocket {
    TcpSocket {
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        state,
        inode,
    }
}

#[test]
fn a_reply_datagram_decodes_to_exact_entries() {
    let v4 = entry("198.18.1.2:7000", "198.18.0.2:40312", ESTABLISHED, 81234);
    let closed = entry("198.18.1.2:7000", "198.18.0.2:40313", TIME_WAIT, 0);
    let v6 = entry(
        "[fd00:0:0:2::2]:7000",
        "[fd00:0:0:1::2]:40312",
        ESTABLISHED,
        99,
    );
    let datagram = [response(v4), response(closed), response(v6)].concat();
    let done = message(NetlinkPayload::Done(DoneMessage::default()));

    let mut found = Vec::new();
    assert!(!parse(&datagram, &mut found).unwrap(), "no NLMSG_DONE yet");
    assert!(parse(&done, &mut found).unwrap());

    assert_eq!(found, [v4, closed, v6]);
    assert_eq!((v4.is_live(), closed.is_live()), (true, false));
}

#[test]
fn an_error_reply_is_its_errno() {
    let mut error = ErrorMessage::default();
    error.code = NonZeroI32::new(-libc::EPERM);
    let datagram = message(NetlinkPayload::Error(error));

    let err = parse(&datagram, &mut Vec::new()).unwrap_err();

    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
}

/// The inode of the socket behind `fd` (`socket:[INODE]`).
fn inode(fd: &impl std::os::fd::AsRawFd) -> u64 {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    let link = link.to_str().unwrap();
    link["socket:[".len()..link.len() - 1].parse().unwrap()
}

#[test]
fn loopback_sockets_are_listed_with_exact_ends_state_and_inode() {
    for ip in ["127.0.0.1", "::1"] {
        let ip: IpAddr = ip.parse().unwrap();
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let service = listener.local_addr().unwrap();
        let client = TcpStream::connect(service).unwrap();
        let (server, _) = listener.accept().unwrap();
        let client_end = client.local_addr().unwrap();

        let all = tcp_sockets().unwrap();

        let unspecified = SocketAddr::new(
            match ip {
                IpAddr::V4(_) => IpAddr::from([0u8; 4]),
                IpAddr::V6(_) => IpAddr::from([0u16; 8]),
            },
            0,
        );
        let find = |local, remote| {
            let hits: Vec<_> = (all.iter())
                .filter(|s| s.local == local && s.remote == remote)
                .copied()
                .collect();
            assert_eq!(hits.len(), 1, "{local} ↔ {remote} in {all:?}");
            hits[0]
        };
        let listening = find(service, unspecified);
        let accepted = find(service, client_end);
        let connected = find(client_end, service);
        assert_eq!(listening.state, LISTEN);
        assert_eq!(listening.inode, inode(&listener));
        assert_eq!(
            (accepted.state, accepted.inode),
            (ESTABLISHED, inode(&server))
        );
        assert_eq!(
            (connected.state, connected.inode),
            (ESTABLISHED, inode(&client))
        );
        assert!(listening.is_live() && accepted.is_live());
    }
}
