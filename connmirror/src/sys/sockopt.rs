//! `setsockopt(2)` and `getsockopt(2)` on plain-old-data values: the one
//! place where restore, takeover and the tests' fixtures cross into libc for
//! socket options (std exposes only a few of them).

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use libc::c_int;

/// `setsockopt(fd, level, name, value)`.
///
/// # Safety
///
/// `T` must be plain old data laid out as the kernel expects for option
/// `name` (an `int`, `struct linger`, `struct tcp_repair_window`, ...): the
/// kernel reads `size_of_val(value)` bytes of it.
pub unsafe fn set<T: ?Sized>(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is valid for reads of its size; the caller vouches for
    // its layout.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of_val(value) as libc::socklen_t,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// `setsockopt(fd, level, name, &value)` for an `int` option.
pub fn set_int(fd: BorrowedFd<'_>, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    // SAFETY: an `int` is what every int-valued option reads.
    unsafe { set(fd, level, name, &value) }
}

/// `getsockopt(fd, level, name)` for an `int` option.
pub fn get_int(fd: BorrowedFd<'_>, level: c_int, name: c_int) -> io::Result<c_int> {
    let mut value: c_int = 0;
    let mut len = size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes, and `len` is its size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    match rc {
        0 => Ok(value),
        _ => Err(io::Error::last_os_error()),
    }
}

/// `SO_LINGER {on, 0 s}`: the socket's `close(2)` then sends a RST instead of
/// a FIN and drops whatever is unsent (`tcp_close()` in net/ipv4/tcp.c).
pub fn linger_zero(fd: BorrowedFd<'_>) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: SO_LINGER reads a `struct linger`.
    unsafe { set(fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger) }
}
