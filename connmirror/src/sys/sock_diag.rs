//! The TCP sockets of the calling thread's network namespace, as `ss -tan`
//! lists them: an `inet_diag` dump over `NETLINK_SOCK_DIAG` (sock_diag(7);
//! `inet_diag_dump()` in net/ipv4/inet_diag.c), not the text of
//! `/proc/net/tcp`. Every state is asked for; `TIME-WAIT` and request
//! sockets come with inode 0.
//!
//! Messages are built and decoded by `netlink-packet-sock-diag`; this file
//! only sends the two requests (IPv4, IPv6) and gathers the replies.

use std::{io, net::SocketAddr};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use super::SyscallError;

/// `TCP_ESTABLISHED` (include/net/tcp_states.h).
pub const ESTABLISHED: u8 = 1;
/// `TCP_TIME_WAIT`.
pub const TIME_WAIT: u8 = 6;
/// `TCP_CLOSE`.
pub const CLOSE: u8 = 7;
/// `TCP_LISTEN`.
pub const LISTEN: u8 = 10;

/// Receive buffer: a dump datagram is at most 32 KiB (`netlink_dump()` in
/// net/netlink/af_netlink.c caps its allocation there).
const RECV_BUF: usize = 64 << 10;

const CALL: &str = "sock_diag(SOCK_DIAG_BY_FAMILY, IPPROTO_TCP)";

/// One TCP socket, as `inet_diag` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    /// The local end.
    pub local: SocketAddr,
    /// The remote end (unspecified for a listener).
    pub remote: SocketAddr,
    /// `idiag_state`: a `TCP_*` state ([`ESTABLISHED`], [`LISTEN`], ...).
    pub state: u8,
    /// `idiag_inode`: the socket's inode (0 for a `TIME-WAIT` entry, which has
    /// no socket), as `/proc/PID/fd/N` shows it in `socket:[INODE]`.
    pub inode: u64,
}

impl TcpSocket {
    /// Whether the socket is neither closed nor in `TIME-WAIT`.
    pub fn is_live(&self) -> bool {
        self.state != TIME_WAIT && self.state != CLOSE
    }

    fn from_header(header: &InetResponseHeader) -> TcpSocket {
        let id = &header.socket_id;
        TcpSocket {
            local: SocketAddr::new(id.source_address, id.source_port),
            remote: SocketAddr::new(id.destination_address, id.destination_port),
            state: header.state,
            inode: u64::from(header.inode),
        }
    }
}

/// Every TCP socket of the namespace, IPv4 then IPv6. A kernel without IPv6
/// (no `inet6_diag` handler) contributes no IPv6 sockets.
pub fn tcp_sockets() -> Result<Vec<TcpSocket>, SyscallError> {
    let socket = open().map_err(|io_error| SyscallError {
        call: "socket(NETLINK_SOCK_DIAG)",
        io_error,
    })?;
    let mut all = dump(&socket, AF_INET)?;
    match dump(&socket, AF_INET6) {
        Ok(v6) => all.extend(v6),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e),
    }
    Ok(all)
}

fn open() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    Ok(socket)
}

/// One family's dump: the request, then replies until `NLMSG_DONE`.
fn dump(socket: &Socket, family: u8) -> Result<Vec<TcpSocket>, SyscallError> {
    let err = |io_error| SyscallError {
        call: CALL,
        io_error,
    };
    socket.send(&request(family), 0).map_err(err)?;
    let mut buf = vec![0u8; RECV_BUF];
    let mut found = Vec::new();
    loop {
        let len = socket.recv(&mut &mut buf[..], 0).map_err(err)?;
        if parse(buf.get(..len).unwrap_or_default(), &mut found).map_err(err)? {
            return Ok(found);
        }
    }
}

/// The serialized `inet_diag_req_v2` dump request for TCP sockets of
/// `family` in every state.
fn request(family: u8) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = match family {
        AF_INET6 => SocketId::new_v6(),
        _ => SocketId::new_v4(),
    };
    let request = SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id,
    });
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(request));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// Adds the sockets in one reply datagram to `found`; `Ok(true)` once the
/// dump is done. An `NLMSG_ERROR` becomes its errno.
fn parse(mut datagram: &[u8], found: &mut Vec<TcpSocket>) -> io::Result<bool> {
    while !datagram.is_empty() {
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(datagram).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("undecodable reply: {e}"),
            )
        })?;
        match msg.payload {
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) if e.code.is_none() => return Ok(true),
            NetlinkPayload::Error(e) => return Err(e.to_io()),
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                found.push(TcpSocket::from_header(&response.header));
            }
            _ => {}
        }
        // NLMSG_ALIGN: messages in one datagram start on 4-byte boundaries.
        let step = (msg.header.length as usize).next_multiple_of(4).max(4);
        datagram = datagram.get(step..).unwrap_or_default();
    }
    Ok(false)
}

#[cfg(test)]
#[path = "sock_diag_tests.rs"]
mod tests;
