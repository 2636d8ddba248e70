//! connmirror: capture, reassembly and (later) restore of TCP connections.
pub mod stream;
