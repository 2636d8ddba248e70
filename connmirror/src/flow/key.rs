//! Flow keys: from endpoints, from a captured header, and as a file-name-safe name.

use super::*;

/// The key of the flow between `server` and `client`.
pub fn key_of(server: SocketAddr, client: SocketAddr) -> FlowKey {
    let ((server_addr, family), (client_addr, _)) = (addr_bytes(&server), addr_bytes(&client));
    FlowKey {
        server_addr,
        client_addr,
        server_port: server.port(),
        client_port: client.port(),
        family,
        _pad: [0; 3],
    }
}

pub(super) fn flow_key(header: &RecordHeader, direction: Direction) -> FlowKey {
    let (server, client) = match direction {
        Direction::ClientToServer => (
            (header.dst_addr, header.dst_port),
            (header.src_addr, header.src_port),
        ),
        Direction::ServerToClient => (
            (header.src_addr, header.src_port),
            (header.dst_addr, header.dst_port),
        ),
    };
    FlowKey {
        server_addr: server.0,
        client_addr: client.0,
        server_port: server.1,
        client_port: client.1,
        family: header.family,
        _pad: [0; 3],
    }
}

/// The (server, client) socket addresses of a flow key.
pub fn endpoints(key: &FlowKey) -> (SocketAddr, SocketAddr) {
    (
        socket_addr(key.server_addr, key.family, key.server_port),
        socket_addr(key.client_addr, key.family, key.client_port),
    )
}

/// A file-name-safe name such as `198.18.1.2_7000-198.18.0.2_40312`.
pub(super) fn flow_name(key: &FlowKey) -> String {
    let (server, client) = endpoints(key);
    let part = |a: SocketAddr| format!("{}_{}", a.ip(), a.port()).replace(':', ".");
    format!("{}-{}", part(server), part(client))
}
