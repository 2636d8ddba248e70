//! Repair: a TCP socket's state saved and rebuilt with `TCP_REPAIR`.
//!
//! Holds the mechanisms that cross into the kernel for one connection's
//! state: [`restore`] rebuilds the server end of a connection, [`save`]
//! checkpoints a live one (CRIU's libsoccr order), and [`sockets`] finds the
//! established sockets of a namespace and the processes holding them.
//!
//! Uses: [`crate::sys`] for every raw call. Must not use: capture, flows,
//! journals, or any role: a repair knows one socket, not why it is moved.

pub mod restore;
pub mod save;
pub mod sockets;
