//! Many datagrams per system call: `recvmmsg`/`sendmmsg` on Linux, a loop of
//! `recvfrom`/`sendto` elsewhere (or where the kernel lacks them).
//!
//! [`RecvBatch`] owns fixed receive slots with headroom before each payload, so the TURN core
//! can frame a peer's datagram in place; nothing here allocates after construction.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use socket2::SockAddr;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Payload bytes per slot: the largest UDP datagram.
const SLOT_PAYLOAD: usize = 65_536;

/// Fixed receive buffers and their results.
pub struct RecvBatch {
    headroom: usize,
    slot_len: usize,
    buffer: Vec<u8>,
    lens: [usize; BATCH],
    sources: [Option<SocketAddr>; BATCH],
    #[cfg(target_os = "linux")]
    names: Vec<libc::sockaddr_storage>,
    mmsg: Mmsg,
}

/// Whether the kernel has `recvmmsg`/`sendmmsg`; learnt from the first `ENOSYS`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mmsg {
    Yes,
    No,
}

impl RecvBatch {
    /// `headroom` free bytes precede each payload and `tailroom` follow it.
    pub fn new(headroom: usize, tailroom: usize) -> Self {
        let slot_len = headroom + SLOT_PAYLOAD + tailroom;
        Self {
            headroom,
            slot_len,
            buffer: vec![0; slot_len * BATCH],
            lens: [0; BATCH],
            sources: [None; BATCH],
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
            #[cfg(target_os = "linux")]
            names: vec![unsafe { std::mem::zeroed() }; BATCH],
            mmsg: Mmsg::Yes,
        }
    }

    /// Receives up to [`BATCH`] datagrams. Returns how many; `WouldBlock` when none wait.
    pub fn recv(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        if self.mmsg == Mmsg::Yes {
            match self.recv_mmsg(socket.as_raw_fd()) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => self.mmsg = Mmsg::No,
                result => return result,
            }
        }
        self.recv_one(socket.as_raw_fd())
    }

    /// Datagram `i` of the last [`RecvBatch::recv`]: source, its whole slot (headroom,
    /// payload, tailroom), and the payload length.
    pub fn datagram(&mut self, i: usize) -> Option<(SocketAddr, &mut [u8], usize)> {
        let source = (*self.sources.get(i)?)?;
        let len = self.lens[i];
        let slot = &mut self.buffer[i * self.slot_len..(i + 1) * self.slot_len];
        Some((source, slot, len))
    }

    /// The whole of slot `i`, for sending what was framed in it.
    pub fn slot(&self, i: usize) -> &[u8] {
        self.buffer
            .get(i * self.slot_len..(i + 1) * self.slot_len)
            .unwrap_or(&[])
    }

    pub fn headroom(&self) -> usize {
        self.headroom
    }

    #[cfg(target_os = "linux")]
    fn recv_mmsg(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iovecs: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: mmsghdr is plain old data; every pointer is set below before use.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            let payload = &mut self.buffer[i * self.slot_len + self.headroom..];
            iovecs[i].iov_base = payload.as_mut_ptr().cast();
            iovecs[i].iov_len = SLOT_PAYLOAD;
            headers[i].msg_hdr.msg_name =
                (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            headers[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            headers[i].msg_hdr.msg_iov = &mut iovecs[i];
            headers[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at live buffers owned by `self` or this frame, sized
        // as declared; the kernel writes at most those lengths.
        let received = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        let received = received as usize;
        let results = headers.iter().zip(&self.names).take(received);
        for (i, (header, name)) in results.enumerate() {
            self.lens[i] = header.msg_len as usize;
            self.sources[i] = socket_addr(name);
        }
        Ok(received)
    }

    fn recv_one(&mut self, fd: RawFd) -> io::Result<usize> {
        let socket = borrow_socket(fd);
        let start = self.headroom;
        let slot = &mut self.buffer[start..start + SLOT_PAYLOAD];
        // SAFETY: MaybeUninit<u8> has the layout of u8 and the slot is initialised.
        let slot: &mut [std::mem::MaybeUninit<u8>] = unsafe { std::mem::transmute(slot) };
        let (len, source) = socket.recv_from(slot)?;
        self.lens[0] = len;
        self.sources[0] = source.as_socket();
        Ok(1)
    }
}

/// Reads an IPv4 or IPv6 address the kernel wrote into `storage`.
#[cfg(target_os = "linux")]
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it can contain.
            let v4 =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddrV4::new(ip, u16::from_be(v4.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6, which it can contain.
            let v6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(
                SocketAddrV6::new(
                    ip,
                    u16::from_be(v6.sin6_port),
                    v6.sin6_flowinfo,
                    v6.sin6_scope_id,
                )
                .into(),
            )
        }
        _ => None,
    }
}

/// One datagram to send: destination and bytes.
pub type Outgoing<'a> = (SocketAddr, &'a [u8]);

/// Sends `datagrams` on `socket`, batching where the kernel can. Returns how many were
/// sent; the rest are dropped (a full socket buffer is congestion, as on any router).
pub fn send_all(socket: &impl AsRawFd, datagrams: &[Outgoing<'_>]) -> usize {
    let fd = socket.as_raw_fd();
    let mut sent = 0;
    while sent < datagrams.len() {
        let chunk = &datagrams[sent..datagrams.len().min(sent + BATCH)];
        match send_chunk(fd, chunk) {
            Ok(0) | Err(_) => {
                // Skip the datagram that failed (unreachable peer, full buffer) and go on.
                sent += 1;
            }
            Ok(n) => sent += n,
        }
    }
    sent
}

#[cfg(target_os = "linux")]
fn send_chunk(fd: RawFd, chunk: &[Outgoing<'_>]) -> io::Result<usize> {
    let mut names: [SockAddr; BATCH] =
        std::array::from_fn(|_| SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0))));
    let mut iovecs: [libc::iovec; BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    // SAFETY: mmsghdr is plain old data; every pointer is set below before use.
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, (to, bytes)) in chunk.iter().enumerate() {
        names[i] = SockAddr::from(*to);
        iovecs[i].iov_base = bytes.as_ptr() as *mut libc::c_void;
        iovecs[i].iov_len = bytes.len();
        headers[i].msg_hdr.msg_name = names[i].as_ptr() as *mut libc::c_void;
        headers[i].msg_hdr.msg_namelen = names[i].len();
        headers[i].msg_hdr.msg_iov = &mut iovecs[i];
        headers[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the headers point at `names`, `iovecs` and the caller's byte slices, all
    // alive for this call; the kernel only reads them.
    let sent = unsafe {
        libc::sendmmsg(
            fd,
            headers.as_mut_ptr(),
            chunk.len() as u32,
            libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ENOSYS) {
            return send_one(fd, chunk);
        }
        return Err(error);
    }
    Ok(sent as usize)
}

#[cfg(not(target_os = "linux"))]
fn send_chunk(fd: RawFd, chunk: &[Outgoing<'_>]) -> io::Result<usize> {
    send_one(fd, chunk)
}

fn send_one(fd: RawFd, chunk: &[Outgoing<'_>]) -> io::Result<usize> {
    let socket = borrow_socket(fd);
    let (to, bytes) = chunk[0];
    socket.send_to(bytes, &SockAddr::from(to))?;
    Ok(1)
}

/// A `socket2::Socket` view of a descriptor we do not own (never closed by this view).
fn borrow_socket(fd: RawFd) -> std::mem::ManuallyDrop<socket2::Socket> {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is an open socket owned by the caller for the duration of the call;
    // ManuallyDrop keeps this view from closing it.
    std::mem::ManuallyDrop::new(unsafe { socket2::Socket::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn a_batch_sent_arrives_as_a_batch() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_nonblocking(true).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; usize::from(i) + 1]).collect();
        let datagrams: Vec<Outgoing<'_>> = payloads.iter().map(|p| (to, p.as_slice())).collect();
        assert_eq!(send_all(&sender, &datagrams), 40);

        let mut batch = RecvBatch::new(48, 3);
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while got.len() < 40 && std::time::Instant::now() < deadline {
            match batch.recv(&receiver) {
                Ok(n) => {
                    for i in 0..n {
                        let (from, slot, len) = batch.datagram(i).unwrap();
                        assert_eq!(from, sender.local_addr().unwrap());
                        got.push(slot[48..48 + len].to_vec());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, payloads);
    }

    #[test]
    fn empty_socket_would_block() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let error = RecvBatch::new(0, 0).recv(&socket).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
    }
}
