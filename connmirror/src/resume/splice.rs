//! Relaying a resumed connection inside the kernel: `splice(2)` through a
//! pipe per direction, on tokio's readiness.
//!
//! Why: after a takeover by replay or live replay the daemon relays every
//! byte between the restored client socket and its standby instance for the
//! rest of the connection's life. A userspace copy (`copy_bidirectional`)
//! reads each chunk into an 8 KiB buffer and writes it out again; splice(2)
//! moves up to a pipe's worth (64 KiB) of page references from one socket to
//! the other with no copy through the daemon. `cargo xtask bench resume`
//! (its `splice` part, bench/RESULTS.md) measures both on real TCP sockets,
//! and says why the kernel's sockmap is not among them: relaying bulk both
//! ways, splice(2) took about 0.6× the relay CPU per GiB at slightly higher
//! throughput; a small request/response round trip costs about the same
//! (within a microsecond, some 10 % more relay CPU), which the bulk saving
//! outweighs.
//!
//! Each direction reads into its pipe only when the pipe is empty and then
//! writes all of it out, so an `EAGAIN` always means the socket waited on is
//! not ready (never that the pipe is full or empty), which is what tokio's
//! readiness needs to be told. At the end of one side's stream the other
//! side's write half is shut down (half-close passes through, as with
//! `copy_bidirectional`), and the first error ends both directions.
//!
//! Where the kernel refuses to splice (the first call fails with `EINVAL`
//! or `EOPNOTSUPP`: a socket type without `splice_read`), or no pipe can be
//! made (`EMFILE`: splicing takes two descriptors per direction), that
//! direction falls back to a userspace copy.

use std::io;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};

use tokio::io::{AsyncWriteExt as _, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

use crate::sys::pipe;

/// Bytes asked of one splice call: a default pipe's capacity (16 pages).
const CHUNK: usize = 1 << 16;

/// Relays both ways between `a` and `b` until both directions have ended,
/// and returns the bytes moved (a → b, b → a), as
/// [`tokio::io::copy_bidirectional`] does.
pub async fn relay(a: &mut TcpStream, b: &mut TcpStream) -> io::Result<(u64, u64)> {
    let (mut a_read, mut a_write) = a.split();
    let (mut b_read, mut b_write) = b.split();
    tokio::try_join!(
        one_way(&mut a_read, &mut b_write),
        one_way(&mut b_read, &mut a_write)
    )
}

/// `from` to `to` until the end of `from`'s stream, then shuts `to` down
/// for writing; the bytes moved.
async fn one_way(from: &mut ReadHalf<'_>, to: &mut WriteHalf<'_>) -> io::Result<u64> {
    let spliced = match pipe::pipe() {
        Ok(pipe) => spliced(from.as_ref(), to.as_ref(), pipe).await?,
        Err(err) => {
            tracing::debug!(%err, "no pipe for splice(2); copying instead");
            None
        }
    };
    let moved = match spliced {
        Some(moved) => moved,
        None => tokio::io::copy(from, to).await?,
    };
    to.shutdown().await?;
    Ok(moved)
}

/// Splices `from` to `to` through the pipe `(read end, write end)` until the
/// end of `from`'s stream: the bytes moved, or `None` if the kernel refused
/// the first splice (nothing has moved then).
async fn spliced(
    from: &TcpStream,
    to: &TcpStream,
    (pipe_out, pipe_in): (OwnedFd, OwnedFd),
) -> io::Result<Option<u64>> {
    let mut moved = 0u64;
    loop {
        let into = (from.as_fd(), pipe_in.as_fd());
        let read = ready_splice(from, Interest::READABLE, into, CHUNK).await;
        let n = match read {
            Err(err) if moved == 0 && refused(&err) => {
                tracing::debug!(%err, "splice(2) refused; copying instead");
                return Ok(None);
            }
            n => n?,
        };
        if n == 0 {
            return Ok(Some(moved));
        }
        let mut left = n;
        while left > 0 {
            let out = (pipe_out.as_fd(), to.as_fd());
            let written = ready_splice(to, Interest::WRITABLE, out, left).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            left -= written;
        }
        moved += n as u64;
    }
}

/// One splice of up to `len` bytes `(from, to)` once `stream` is ready for
/// `interest` (the socket end of the pair), retried while it would block.
/// Writes ask for exactly what the pipe holds: asking for more would make
/// the kernel send with `MSG_MORE` (more is coming), holding back a small
/// reply.
async fn ready_splice(
    stream: &TcpStream,
    interest: Interest,
    (from, to): (BorrowedFd<'_>, BorrowedFd<'_>),
    len: usize,
) -> io::Result<usize> {
    loop {
        stream.ready(interest).await?;
        let result = stream.try_io(interest, || Ok(pipe::splice(from, to, len)?));
        match result {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}

/// Whether `err` says the kernel cannot splice these descriptors at all
/// (`EINVAL`, `EOPNOTSUPP`), as opposed to a failure of the connection.
fn refused(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::{Shutdown, TcpListener};
    use std::os::fd::AsFd as _;
    use std::thread::JoinHandle;

    use sha2::{Digest as _, Sha256};

    use super::*;
    use crate::{sys::sockopt, testing::pseudo_random};

    /// A client and a server, each connected over loopback to one side of
    /// a relay running as a task: (client, server, relay).
    async fn relayed() -> (
        std::net::TcpStream,
        std::net::TcpStream,
        tokio::task::JoinHandle<io::Result<(u64, u64)>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (relay_client, _) = listener.accept().unwrap();
        let relay_app = std::net::TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        let [mut a, mut b] = [relay_client, relay_app].map(|s| {
            s.set_nonblocking(true).unwrap();
            TcpStream::from_std(s).unwrap()
        });
        let relay = tokio::spawn(async move { relay(&mut a, &mut b).await });
        (client, server, relay)
    }

    /// Sends `data` on `end`, shuts its write side, and reads it to the end:
    /// on a thread, returning what it read.
    fn exchange(mut end: std::net::TcpStream, data: Vec<u8>) -> JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut writer = end.try_clone().unwrap();
            let sending = std::thread::spawn(move || {
                writer.write_all(&data).unwrap();
                writer.shutdown(Shutdown::Write).unwrap();
            });
            let mut got = Vec::new();
            end.read_to_end(&mut got).unwrap();
            sending.join().unwrap();
            got
        })
    }

    #[tokio::test]
    async fn a_few_mib_pass_both_ways_byte_exact() {
        let (client, server, relay) = relayed().await;
        let up = pseudo_random(1, 5 << 20);
        let down = pseudo_random(2, 3 << 20);
        let (up_hash, down_hash) = (Sha256::digest(&up), Sha256::digest(&down));

        let at_client = exchange(client, up);
        let at_server = exchange(server, down);

        assert_eq!(relay.await.unwrap().unwrap(), (5 << 20, 3 << 20));
        assert_eq!(Sha256::digest(at_server.join().unwrap()), up_hash);
        assert_eq!(Sha256::digest(at_client.join().unwrap()), down_hash);
    }

    #[tokio::test]
    async fn a_half_close_passes_through_and_the_other_way_goes_on() {
        let (mut client, mut server, relay) = relayed().await;

        let reply = tokio::task::spawn_blocking(move || {
            client.write_all(b"request").unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            let mut request = Vec::new();
            server.read_to_end(&mut request).unwrap();
            assert_eq!(request, b"request", "the client's end reached the server");
            server.write_all(b"late reply").unwrap();
            server.shutdown(Shutdown::Write).unwrap();
            let mut reply = Vec::new();
            client.read_to_end(&mut reply).unwrap();
            reply
        });

        assert_eq!(reply.await.unwrap(), b"late reply");
        assert_eq!(relay.await.unwrap().unwrap(), (7, 10));
    }

    #[tokio::test]
    async fn a_peer_reset_ends_the_relay_with_the_error() {
        let (mut client, server, relay) = relayed().await;

        sockopt::linger_zero(server.as_fd()).unwrap();
        drop(server);
        let err = relay.await.unwrap().unwrap_err();

        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(
            err.to_string(),
            "splice: Connection reset by peer (os error 104)"
        );
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"", "the client sees the relay close");
    }

    #[tokio::test]
    async fn the_resumed_connection_gets_the_extra_bytes_first() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (restored, _) = listener.accept().unwrap();
        let app = std::net::TcpStream::connect(addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        app.set_nonblocking(true).unwrap();
        let app = TcpStream::from_std(app).unwrap();
        let spliced = tokio::spawn(crate::resume::splice(
            restored,
            app,
            b"ahead ".to_vec(),
            "test".to_owned(),
        ));

        let got = tokio::task::spawn_blocking(move || {
            server.write_all(b"then the rest").unwrap();
            server.shutdown(Shutdown::Write).unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).unwrap();
            got
        });

        assert_eq!(got.await.unwrap(), b"ahead then the rest");
        spliced.await.unwrap();
    }

    #[test]
    fn only_a_kernel_refusal_falls_back() {
        let err = |errno| {
            io::Error::from(crate::sys::SyscallError {
                call: "splice",
                io_error: io::Error::from_raw_os_error(errno),
            })
        };
        assert!(refused(&err(libc::EINVAL)));
        assert!(refused(&err(libc::EOPNOTSUPP)));
        assert!(!refused(&err(libc::ECONNRESET)));
        assert!(!refused(&err(libc::EPIPE)));
    }
}
