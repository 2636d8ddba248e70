//! The application side of connmirror's handoff socket.
//!
//! On failover a connmirror standby rebuilds each protected TCP connection as
//! a kernel socket (`TCP_REPAIR`). For a service in `handoff` mode the daemon
//! then passes that socket to an application running on the standby, over a
//! Unix domain socket with an `SCM_RIGHTS` control message (see `unix(7)`,
//! `cmsg(3)`), together with [`FlowMeta`] and the bytes its journal recorded,
//! so the application finds where the connection stood and carries on.
//!
//! This crate is what such an application links: [`Application`] registers
//! for service addresses and receives each restored connection as a
//! [`Handoff`]. It speaks protocol version 2: the daemon passes up to 253
//! sockets in one message (a *bundle*), so a takeover of thousands of
//! connections costs tens of messages; [`Application::next`] still returns
//! one connection at a time, and [`Application::next_bundle`] a whole bundle. It needs neither the `connmirror` crate nor an async runtime;
//! the API is blocking std I/O, a plain [`std::net::TcpStream`] per
//! connection. The daemon (`connmirror::resume::handoff`) uses the same
//! [`wire`] module for its end, so both sides agree on every byte.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::path::Path;
//!
//! use connmirror_handoff::{Application, DEFAULT_SOCKET};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // One descriptor per connection: thousands after a takeover.
//! connmirror_handoff::raise_open_files_limit()?;
//! let service: SocketAddr = "198.18.0.1:7000".parse()?;
//! let mut app = Application::connect(Path::new(DEFAULT_SOCKET), &[service])?;
//! while let Some(handoff) = app.next()? {
//!     // Client bytes [c2s.start, c2s.end) are in handoff.c2s; the next byte
//!     // read from handoff.stream is client offset c2s.end.
//!     println!("resumed {} at c2s={}", handoff.meta.client, handoff.meta.c2s.end);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The [`wire`] module documents the protocol and what the offsets in
//! [`FlowMeta`] mean; `examples/echo.rs` is a complete application (one
//! `epoll` thread for every connection).
//!
//! # Minimum kernel version
//! `SCM_RIGHTS` and `SO_PEERCRED` on Unix stream sockets are ancient;
//! `SO_PROTOCOL` (used to check the received descriptor) needs 2.6.32.
//! Developed on 6.18.

#![deny(missing_docs)]

mod app;
mod error;
mod rlimit;
pub mod wire;

pub use app::Application;
pub use error::Error;
pub use rlimit::raise_open_files_limit;
pub use wire::{DEFAULT_SOCKET, FlowMeta, Handoff, Recorded};
