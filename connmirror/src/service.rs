//! Protected services: the (address, port) pairs whose connections are captured.

use std::{fmt, net::SocketAddr, str::FromStr};

use connmirror_common::{
    ServiceKey,
    map::{FAMILY_V4, FAMILY_V6},
};

/// One protected service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    /// Id stored in the services map and carried by every record.
    pub id: u32,
    /// Address and port clients connect to.
    pub addr: SocketAddr,
}

impl Service {
    /// The services-map key for this service.
    pub fn key(&self) -> ServiceKey {
        let (addr, family) = addr_bytes(&self.addr);
        ServiceKey {
            addr,
            port: self.addr.port(),
            family,
            _pad: 0,
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (id {})", self.addr, self.id)
    }
}

/// A service as given on the command line: `IP:PORT` or `[IPv6]:PORT`,
/// optionally `=unacked`, `=full` or `=restore` for its own retention policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceAddr(pub SocketAddr, pub Option<RetentionName>);

/// A retention policy named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetentionName {
    /// Keep bytes until acknowledged.
    Unacked,
    /// Keep the whole history (up to the history cap).
    Full,
    /// Keep only the server's unacknowledged bytes; client payload is not copied.
    Restore,
}

impl FromStr for ServiceAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, retention) = match text.split_once('=') {
            Some((addr, "unacked")) => (addr, Some(RetentionName::Unacked)),
            Some((addr, "full")) => (addr, Some(RetentionName::Full)),
            Some((addr, "restore")) => (addr, Some(RetentionName::Restore)),
            Some((_, other)) => {
                return Err(format!(
                    "{text:?}: unknown retention {other:?} (expected unacked, full or restore)"
                ));
            }
            None => (text, None),
        };
        let addr = SocketAddr::from_str(addr)
            .map_err(|_| format!("{text:?} is not IP:PORT (write IPv6 services as [ADDR]:PORT)"))?;
        if addr.port() == 0 {
            return Err(format!("{text:?} has port 0"));
        }
        Ok(Self(addr, retention))
    }
}

/// The 16-byte map form of an address (IPv4 in the first 4 bytes) and its family tag.
pub fn addr_bytes(addr: &SocketAddr) -> ([u8; 16], u8) {
    let mut bytes = [0u8; 16];
    match addr {
        SocketAddr::V4(a) => {
            bytes[..4].copy_from_slice(&a.ip().octets());
            (bytes, FAMILY_V4)
        }
        SocketAddr::V6(a) => (a.ip().octets(), FAMILY_V6),
    }
}

/// The socket address stored in map form (the inverse of [`addr_bytes`]).
pub fn socket_addr(bytes: [u8; 16], family: u8, port: u16) -> SocketAddr {
    if family == FAMILY_V4 {
        SocketAddr::from(([bytes[0], bytes[1], bytes[2], bytes[3]], port))
    } else {
        SocketAddr::from((bytes, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_addresses_round_trip_through_map_form() {
        for text in ["198.18.1.2:7000", "[fd00:0:0:2::2]:7000"] {
            let ServiceAddr(addr, _) = text.parse().unwrap();
            let (bytes, family) = addr_bytes(&addr);
            assert_eq!(socket_addr(bytes, family, addr.port()), addr);
        }
    }

    #[test]
    fn services_may_name_their_retention() {
        assert_eq!(
            "[fd00::2]:7000=full".parse::<ServiceAddr>(),
            Ok(ServiceAddr(
                "[fd00::2]:7000".parse().unwrap(),
                Some(RetentionName::Full)
            ))
        );
        assert_eq!(
            "198.18.1.2:7000=all".parse::<ServiceAddr>(),
            Err(
                "\"198.18.1.2:7000=all\": unknown retention \"all\" (expected unacked, full or restore)"
                    .to_owned()
            )
        );
    }

    #[test]
    fn service_addresses_reject_missing_ports() {
        assert_eq!(
            "198.18.1.2".parse::<ServiceAddr>(),
            Err("\"198.18.1.2\" is not IP:PORT (write IPv6 services as [ADDR]:PORT)".to_owned())
        );
    }
}
