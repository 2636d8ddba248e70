//! Addresses on this host's links: making a service address local
//! ([`address`], netlink `RTM_NEWADDR`) and telling the segment it moved
//! ([`announce`], gratuitous ARP and unsolicited neighbour advertisements).
//!
//! Uses: [`crate::sys`]. Must not use: flows, repair, or any role.

pub mod address;
pub mod announce;
