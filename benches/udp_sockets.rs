//! UDP sockets and readiness for the benchmark binaries: nonblocking IPv4 sockets with deep
//! buffers, a small level-triggered epoll wrapper, and the receive batch size they use.
//! Shared by `loadgen.rs` and `forwarder.rs` (each includes it as a module).
//!
//! The batched system calls themselves are rendez's own (`rendez::net::batch`, the layer the
//! UDP workers use), so the generator and the raw ceiling pay the same per-packet syscall
//! costs as the server they measure. Everything here is IPv4 only: the benchmarks run on
//! 127.0.0.1 and nowhere else.

use std::io;
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use rendez::net::batch::RecvBatch;

/// Room for one datagram in a receive batch; the benchmarks never send more than this.
pub const DATAGRAM_CAPACITY: usize = 2048;

/// A receive batch of [`DATAGRAM_CAPACITY`]-byte slots, without headroom.
pub fn recv_batch() -> RecvBatch {
    RecvBatch::with_payload(DATAGRAM_CAPACITY, 0, 0)
}

/// Socket buffer size asked for (the kernel caps it at `net.core.[rw]mem_max`): deep enough
/// that a burst of a full window of 1200-byte packets to one socket is not dropped by the
/// generator's own sockets.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// A nonblocking UDP socket on `addr` (port 0: any) with large buffers.
pub fn bind_udp(addr: SocketAddrV4) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    let sock = socket2::SockRef::from(&socket);
    // Best effort: a smaller buffer still works, only with more loss at bursts.
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    Ok(socket)
}

/// A level-triggered epoll set whose events carry a caller-chosen token.
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
    ready: usize,
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 1024],
            ready: 0,
        })
    }

    /// Watches `fd` for readability; its events carry `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `event` is valid for the call; the kernel copies it.
        let rc =
            unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` (nanosecond resolution) for readable sockets; then
    /// [`Epoll::tokens`] lists them. An interrupted wait reports nothing ready.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<usize> {
        let timeout = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `events` has room for its length; a null sigmask keeps the current one.
        let n = unsafe {
            libc::epoll_pwait2(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                &timeout,
                std::ptr::null(),
            )
        };
        if n < 0 {
            self.ready = 0;
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::Interrupted => Ok(0),
                _ => Err(error),
            };
        }
        self.ready = n as usize;
        Ok(self.ready)
    }

    /// Tokens of the sockets found readable by the last [`Epoll::wait`].
    pub fn tokens(&self) -> impl Iterator<Item = u64> + '_ {
        // Copy the field out: epoll_event is packed on x86_64, so no reference to it.
        self.events[..self.ready].iter().map(|event| event.u64)
    }
}
