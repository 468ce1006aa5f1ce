//! Batched UDP I/O for the benchmark binaries: `recvmmsg`/`sendmmsg` over IPv4 sockets and
//! a small epoll wrapper. Shared by `loadgen.rs` and `forwarder.rs` (each includes it as a
//! module), so the generator and the raw ceiling pay the same per-packet syscall costs.
//!
//! Everything here is IPv4 only: the benchmarks run on 127.0.0.1 and nowhere else.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// The most datagrams one `sendmmsg`/`recvmmsg` call moves.
pub const MAX_BATCH: usize = 64;

/// Room for one datagram in a receive batch; the benchmarks never send more than this.
pub const DATAGRAM_CAPACITY: usize = 2048;

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

/// One outgoing datagram: `to` is `None` on a connected socket.
#[derive(Clone, Copy)]
pub struct Datagram<'a> {
    pub payload: &'a [u8],
    pub to: Option<SocketAddrV4>,
}

/// Sends `datagrams` with as few `sendmmsg` calls as possible. Returns how many were sent:
/// fewer than asked when the socket buffer is full (the rest are the caller's to drop or
/// retry). Errors other than "would block" are returned only if nothing was sent.
pub fn send_many(fd: RawFd, datagrams: &[Datagram<'_>]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < datagrams.len() {
        let chunk = &datagrams[sent..datagrams.len().min(sent + MAX_BATCH)];
        match send_chunk(fd, chunk) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if sent == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(sent)
}

fn send_chunk(fd: RawFd, chunk: &[Datagram<'_>]) -> io::Result<usize> {
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut iovecs: [libc::iovec; MAX_BATCH] = unsafe { zeroed() };
    let mut names: [libc::sockaddr_in; MAX_BATCH] = unsafe { zeroed() };
    let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
    for (i, datagram) in chunk.iter().enumerate() {
        iovecs[i] = libc::iovec {
            iov_base: datagram.payload.as_ptr() as *mut libc::c_void,
            iov_len: datagram.payload.len(),
        };
        let header = &mut headers[i].msg_hdr;
        header.msg_iov = &mut iovecs[i];
        header.msg_iovlen = 1;
        if let Some(to) = datagram.to {
            names[i] = sockaddr_from(to);
            header.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
            header.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        }
    }
    // SAFETY: every header points into `iovecs`/`names` and the borrowed payloads, all of
    // which outlive the call; the count matches the initialised prefix.
    let n = unsafe {
        libc::sendmmsg(
            fd,
            headers.as_mut_ptr(),
            chunk.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Reusable buffers for `recvmmsg`: up to [`MAX_BATCH`] datagrams with their sources.
pub struct RecvBatch {
    buffers: Vec<u8>,
    lengths: [usize; MAX_BATCH],
    sources: [libc::sockaddr_in; MAX_BATCH],
    count: usize,
}

impl RecvBatch {
    pub fn new() -> Self {
        Self {
            buffers: vec![0; MAX_BATCH * DATAGRAM_CAPACITY],
            lengths: [0; MAX_BATCH],
            // SAFETY: all-zero is a valid sockaddr_in.
            sources: unsafe { zeroed() },
            count: 0,
        }
    }

    /// Receives what is waiting on `fd` (up to `limit`, at most [`MAX_BATCH`]) without
    /// blocking. Returns the count; 0 when nothing is waiting.
    pub fn recv(&mut self, fd: RawFd, limit: usize) -> io::Result<usize> {
        let limit = limit.clamp(1, MAX_BATCH);
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut iovecs: [libc::iovec; MAX_BATCH] = unsafe { zeroed() };
        let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
        let base = self.buffers.as_mut_ptr();
        for i in 0..limit {
            iovecs[i] = libc::iovec {
                // SAFETY: i * DATAGRAM_CAPACITY is inside `buffers`.
                iov_base: unsafe { base.add(i * DATAGRAM_CAPACITY) }.cast(),
                iov_len: DATAGRAM_CAPACITY,
            };
            let header = &mut headers[i].msg_hdr;
            header.msg_iov = &mut iovecs[i];
            header.msg_iovlen = 1;
            header.msg_name = (&mut self.sources[i] as *mut libc::sockaddr_in).cast();
            header.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        }
        // SAFETY: the headers point into `iovecs`, `self.buffers` and `self.sources`, which
        // outlive the call; a null timeout with MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                limit as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::WouldBlock => Ok(0),
                _ => Err(error),
            };
        }
        self.count = n as usize;
        for (length, header) in self.lengths.iter_mut().zip(&headers[..self.count]) {
            *length = header.msg_len as usize;
        }
        Ok(self.count)
    }

    /// The `i`-th datagram of the last receive.
    pub fn payload(&self, i: usize) -> &[u8] {
        let start = i * DATAGRAM_CAPACITY;
        &self.buffers[start..start + self.lengths[i]]
    }

    /// Where the `i`-th datagram of the last receive came from.
    pub fn source(&self, i: usize) -> SocketAddrV4 {
        let raw = &self.sources[i];
        SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr)),
            u16::from_be(raw.sin_port),
        )
    }
}

fn sockaddr_from(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
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
