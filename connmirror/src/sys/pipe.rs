//! `pipe2(2)` and `splice(2)`: moving bytes between a socket and a pipe
//! inside the kernel, without copying them through a user buffer.
//!
//! splice(2) needs a pipe on one side, so moving a socket's bytes to another
//! socket takes two calls: socket → pipe (`tcp_splice_read()` in
//! net/ipv4/tcp.c takes references to the received pages) and pipe → socket
//! (`splice_to_socket()` in fs/splice.c sends them with `MSG_SPLICE_PAGES`).
//! Both calls here are nonblocking (`SPLICE_F_NONBLOCK`, and the pipe is
//! `O_NONBLOCK`), for callers that wait on readiness themselves.

use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};

use super::{SyscallError, check};

/// A new nonblocking, close-on-exec pipe: (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd), SyscallError> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    check(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) },
        "pipe2",
    )?;
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `splice(from, NULL, to, NULL, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)`:
/// moves up to `len` bytes; one of the two must be a pipe. Returns the bytes
/// moved, 0 at the end of `from`'s stream; `EAGAIN` when nothing could move
/// without blocking.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> Result<usize, SyscallError> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: null offsets are valid for pipes and sockets; no memory is passed.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    check(n, "splice").map(|n| n as usize)
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd as _;

    use super::*;

    #[test]
    fn bytes_go_from_one_socket_to_another_through_a_pipe() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (from, _) = listener.accept().unwrap();
        let mut receiver = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (to, _) = listener.accept().unwrap();
        let (r, w) = pipe().unwrap();

        sender.write_all(b"spliced").unwrap();
        sender.shutdown(std::net::Shutdown::Write).unwrap();
        let mut moved = 0;
        while moved < 7 {
            match splice(from.as_fd(), w.as_fd(), 1 << 16) {
                Ok(n) => moved += n,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(splice(r.as_fd(), to.as_fd(), 1 << 16).unwrap(), 7);
        drop(to);
        let mut got = Vec::new();
        receiver.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"spliced");
        from.set_nonblocking(true).unwrap();
        assert_eq!(
            splice(from.as_fd(), w.as_fd(), 1 << 16).unwrap(),
            0,
            "end of stream"
        );
    }

    #[test]
    fn an_empty_pipe_would_block_and_two_sockets_are_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        let (r, w) = pipe().unwrap();

        let err = splice(r.as_fd(), a.as_fd(), 16).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EAGAIN), "{err}");
        let err = splice(a.as_fd(), b.as_fd(), 16).unwrap_err();
        assert_eq!(err.to_string(), "splice: Invalid argument (os error 22)");
        drop(w);
    }
}
