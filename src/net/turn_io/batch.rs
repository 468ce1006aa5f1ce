//! Many datagrams per system call: `recvmmsg`/`sendmmsg` on Linux, a loop of
//! `recvfrom`/`sendto` elsewhere (or where the kernel lacks them).
//!
//! This is the crate's one batching layer: the UDP workers use it, and so do the benchmark
//! binaries (`benches/loadgen.rs`, `benches/forwarder.rs`), so the load generator and the raw
//! forwarder pay the same per-packet system call costs as the server they measure.
//!
//! [`RecvBatch`] owns fixed receive slots with headroom before each payload, so the TURN core
//! can frame a peer's datagram in place; nothing here allocates after construction. Slots hold
//! the largest UDP datagram by default; [`RecvBatch::with_payload`] makes them smaller where
//! datagrams are known to be small. Sending comes in three flavours:
//!
//! - [`send_all`] drops what the kernel refuses and goes on, as a router does (the relay);
//! - [`send_until_full`] stops at the first datagram the kernel refuses and says how many went,
//!   so the caller can count, retry or back off (a load generator);
//! - [`send_connected`] is [`send_until_full`] on a connected socket, where no destination is
//!   given and the kernel reuses the socket's cached route.
//!
//! A wildcard socket (`0.0.0.0`, `[::]`) receives for every address of the host, so its
//! replies must name the address to leave from: after [`report_destinations`] on it (Linux),
//! [`RecvBatch::destination`] says where each datagram was sent, and [`send_all_from`] sends
//! each reply from the address given. Both travel as packet-information control messages in
//! buffers allocated with the batch (see `pktinfo`); sockets that do not ask for them cost
//! nothing extra.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use socket2::SockAddr;

#[cfg(target_os = "linux")]
use super::pktinfo::{self, Control};

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Payload bytes per slot of [`RecvBatch::new`]: the largest UDP datagram.
pub const MAX_PAYLOAD: usize = 65_536;

/// Fixed receive buffers and their results.
pub struct RecvBatch {
    headroom: usize,
    /// Payload bytes per slot: longer datagrams are dropped.
    payload: usize,
    slot_len: usize,
    buffer: Vec<u8>,
    /// Datagrams the last receive returned.
    count: usize,
    lens: [usize; BATCH],
    /// `None` for a datagram to skip: an unknown address family, or truncated.
    sources: [Option<SocketAddr>; BATCH],
    /// Where each datagram was sent, when the socket reports it ([`report_destinations`]).
    destinations: [Option<IpAddr>; BATCH],
    #[cfg(target_os = "linux")]
    names: Vec<libc::sockaddr_storage>,
    /// Control data per slot, for the kernel to report destinations in.
    #[cfg(target_os = "linux")]
    controls: Vec<Control>,
    mmsg: Mmsg,
}

/// Whether the kernel has `recvmmsg`/`sendmmsg`; learnt from the first `ENOSYS`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mmsg {
    Yes,
    No,
}

impl RecvBatch {
    /// [`BATCH`] slots of [`MAX_PAYLOAD`] bytes; `headroom` free bytes precede each payload
    /// and `tailroom` follow it.
    pub fn new(headroom: usize, tailroom: usize) -> Self {
        Self::with_payload(MAX_PAYLOAD, headroom, tailroom)
    }

    /// [`BATCH`] slots of `payload` bytes (at least 1) instead of [`MAX_PAYLOAD`]: for
    /// callers that know their datagrams are small and keep the slots warm in the cache
    /// (the benchmark binaries use 2 KiB). A longer datagram is read cut short and dropped:
    /// [`RecvBatch::datagram`] and [`RecvBatch::received`] return `None` for it.
    pub fn with_payload(payload: usize, headroom: usize, tailroom: usize) -> Self {
        let payload = payload.clamp(1, MAX_PAYLOAD);
        let slot_len = headroom + payload + tailroom;
        Self {
            headroom,
            payload,
            slot_len,
            buffer: vec![0; slot_len * BATCH],
            count: 0,
            lens: [0; BATCH],
            sources: [None; BATCH],
            destinations: [None; BATCH],
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
            #[cfg(target_os = "linux")]
            names: vec![unsafe { std::mem::zeroed() }; BATCH],
            #[cfg(target_os = "linux")]
            controls: vec![Control::EMPTY; BATCH],
            mmsg: Mmsg::Yes,
        }
    }

    /// Receives up to [`BATCH`] datagrams. Returns how many; `WouldBlock` when none wait.
    pub fn recv(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        self.recv_at_most(socket, BATCH)
    }

    /// Receives up to `limit` datagrams (1 to [`BATCH`]; other values are clamped), leaving
    /// the rest queued. Returns how many; `WouldBlock` when none wait.
    pub fn recv_at_most(&mut self, socket: &impl AsRawFd, limit: usize) -> io::Result<usize> {
        let limit = limit.clamp(1, BATCH);
        self.count = 0;
        #[cfg(target_os = "linux")]
        if self.mmsg == Mmsg::Yes {
            match self.recv_mmsg(socket.as_raw_fd(), limit) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => self.mmsg = Mmsg::No,
                result => return result,
            }
        }
        self.recv_one(socket.as_raw_fd())
    }

    /// Datagram `i` of the last receive: source, its whole slot (headroom, payload,
    /// tailroom), and the payload length.
    pub fn datagram(&mut self, i: usize) -> Option<(SocketAddr, &mut [u8], usize)> {
        let source = self.source(i)?;
        let len = self.lens[i];
        let slot = &mut self.buffer[i * self.slot_len..(i + 1) * self.slot_len];
        Some((source, slot, len))
    }

    /// Datagram `i` of the last receive, read-only: its source and payload (without
    /// headroom or tailroom). The pair is an [`Outgoing`]: an echo sends it back as it is.
    pub fn received(&self, i: usize) -> Option<Outgoing<'_>> {
        let source = self.source(i)?;
        let start = i * self.slot_len + self.headroom;
        Some((source, &self.buffer[start..start + self.lens[i]]))
    }

    /// The local address datagram `i` of the last receive was sent to: reported only on a
    /// socket asked with [`report_destinations`] (a wildcard listener), else `None`.
    pub fn destination(&self, i: usize) -> Option<IpAddr> {
        self.source(i)?;
        self.destinations[i]
    }

    /// The whole of slot `i`, for sending what was framed in it.
    pub fn slot(&self, i: usize) -> &[u8] {
        self.buffer
            .get(i * self.slot_len..(i + 1) * self.slot_len)
            .unwrap_or(&[])
    }

    /// Free bytes before each payload.
    pub fn headroom(&self) -> usize {
        self.headroom
    }

    /// Payload bytes per slot: the longest datagram a slot takes.
    pub fn payload_capacity(&self) -> usize {
        self.payload
    }

    /// The source of datagram `i` of the last receive, if it is one to hand out.
    fn source(&self, i: usize) -> Option<SocketAddr> {
        if i >= self.count {
            return None;
        }
        self.sources[i]
    }

    #[cfg(target_os = "linux")]
    fn recv_mmsg(&mut self, fd: RawFd, limit: usize) -> io::Result<usize> {
        let mut iovecs = [EMPTY_IOVEC; BATCH];
        // SAFETY: mmsghdr is plain old data; every pointer is set below before use.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, (header, iovec)) in headers.iter_mut().zip(&mut iovecs).enumerate().take(limit) {
            header.msg_hdr = self.recv_header(i, iovec);
        }
        // SAFETY: the first `limit` headers point at live buffers owned by `self` or this
        // frame, sized as declared; the kernel writes at most those lengths.
        let received = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                limit as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        let received = received as usize;
        for (i, header) in headers.iter().enumerate().take(received) {
            self.keep_result(i, &header.msg_hdr, header.msg_len as usize);
        }
        self.count = received;
        Ok(received)
    }

    /// One `recvmsg` into slot 0: where the kernel lacks `recvmmsg`. It reads the same
    /// headers, so a wildcard listener learns destinations here too.
    #[cfg(target_os = "linux")]
    fn recv_one(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iovec = EMPTY_IOVEC;
        let mut header = self.recv_header(0, &mut iovec);
        // SAFETY: the header points at slot 0's buffers owned by `self` and at `iovec`,
        // sized as declared; the kernel writes at most those lengths.
        let len = unsafe { libc::recvmsg(fd, &mut header, libc::MSG_DONTWAIT) };
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        self.keep_result(0, &header, len as usize);
        self.count = 1;
        Ok(1)
    }

    /// The receive header for slot `i`: its payload (through `iovec`), its name and its
    /// control data.
    #[cfg(target_os = "linux")]
    fn recv_header(&mut self, i: usize, iovec: &mut libc::iovec) -> libc::msghdr {
        assert!(i < BATCH, "slot {i} of {BATCH}");
        // Pointers from `as_mut_ptr`, which (unlike indexing) makes no reference to the
        // whole vector, so the pointers made for the other slots stay valid; in bounds, as
        // each vector holds BATCH slots.
        let payload = i * self.slot_len + self.headroom;
        iovec.iov_base = self.buffer.as_mut_ptr().wrapping_add(payload).cast();
        iovec.iov_len = self.payload;
        // SAFETY: msghdr is plain old data; all zeroes is a valid value.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_name = self.names.as_mut_ptr().wrapping_add(i).cast();
        header.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        header.msg_iov = iovec;
        header.msg_iovlen = 1;
        header.msg_control = self.controls.as_mut_ptr().wrapping_add(i).cast();
        header.msg_controllen = pktinfo::CONTROL_LEN as _;
        header
    }

    /// Records what the kernel wrote for slot `i` through `header`: `len` bytes from a
    /// source, sent to a destination if the socket reports it.
    #[cfg(target_os = "linux")]
    fn keep_result(&mut self, i: usize, header: &libc::msghdr, len: usize) {
        self.lens[i] = len;
        let truncated = header.msg_flags & libc::MSG_TRUNC != 0;
        self.sources[i] = if truncated {
            None
        } else {
            socket_addr(&self.names[i])
        };
        self.destinations[i] = pktinfo::destination(header);
    }

    #[cfg(not(target_os = "linux"))]
    fn recv_one(&mut self, fd: RawFd) -> io::Result<usize> {
        let socket = borrow_socket(fd);
        let start = self.headroom;
        let slot = &mut self.buffer[start..start + self.payload];
        // SAFETY: MaybeUninit<u8> has the layout of u8 and the slot is initialised.
        let slot: &mut [MaybeUninit<u8>] = unsafe { std::mem::transmute(slot) };
        let mut bufs = [socket2::MaybeUninitSlice::new(slot)];
        let (len, flags, source) = socket.recv_from_vectored(&mut bufs)?;
        self.lens[0] = len;
        self.sources[0] = if flags.is_truncated() {
            None
        } else {
            source.as_socket()
        };
        self.count = 1;
        Ok(1)
    }
}

#[cfg(target_os = "linux")]
const EMPTY_IOVEC: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

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

/// One datagram to send from a chosen local address: how a wildcard socket answers from
/// the address a request came to ([`RecvBatch::destination`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutgoingFrom<'a> {
    /// The address to leave from, one of the host's own in the socket's family; `None`
    /// leaves it to the kernel (the socket's address, or for a wildcard socket the one its
    /// route to `to` prefers). Honoured on Linux; elsewhere the kernel always chooses.
    pub from: Option<IpAddr>,
    pub to: SocketAddr,
    pub bytes: &'a [u8],
}

/// Sends `datagrams` on `socket`, batching where the kernel can. A datagram the kernel
/// refuses (unreachable peer, full buffer) is dropped and the rest still go, as on any
/// router. Returns how many were sent.
pub fn send_all(socket: &impl AsRawFd, datagrams: &[Outgoing<'_>]) -> usize {
    send_each(socket.as_raw_fd(), datagrams)
}

/// [`send_all`], each datagram from the address it names.
pub fn send_all_from(socket: &impl AsRawFd, datagrams: &[OutgoingFrom<'_>]) -> usize {
    send_each(socket.as_raw_fd(), datagrams)
}

/// Sends one datagram on `socket`, from the address it names: a single reply, without the
/// set-up of a batch. An error says why the kernel refused it.
pub fn send_one_from(socket: &impl AsRawFd, datagram: OutgoingFrom<'_>) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let (mut name, mut control, mut iovec) =
            (MaybeUninit::uninit(), MaybeUninit::uninit(), EMPTY_IOVEC);
        let header = send_header(&datagram, &mut name, &mut control, &mut iovec);
        // SAFETY: the header points at `name`, `control`, `iovec` and the caller's bytes, all
        // alive for this call; the kernel only reads them.
        let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &header, libc::MSG_DONTWAIT) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    send_chunk(socket.as_raw_fd(), &[datagram]).map(drop)
}

/// Sends `datagrams` on `socket` in order, batching where the kernel can, and stops when the
/// kernel refuses one. Returns how many were sent: fewer than given when the
/// socket buffer is full (the rest are the caller's to drop or retry). An error (`WouldBlock`
/// for a full buffer) is returned only when not even the first was sent.
pub fn send_until_full(socket: &impl AsRawFd, datagrams: &[Outgoing<'_>]) -> io::Result<usize> {
    send_prefix(socket.as_raw_fd(), datagrams)
}

/// [`send_until_full`] on a connected socket: every payload goes to the socket's peer.
pub fn send_connected(socket: &impl AsRawFd, payloads: &[&[u8]]) -> io::Result<usize> {
    send_prefix(socket.as_raw_fd(), payloads)
}

/// Asks the kernel to report where each datagram `socket` receives was sent, for
/// [`RecvBatch::destination`]: for a socket bound to a wildcard address, whose replies must
/// name their source ([`send_all_from`]). A no-op where this is not supported (outside
/// Linux), where replies keep the source the kernel picks.
pub fn report_destinations(socket: &impl AsRawFd) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let local = borrow_socket(socket.as_raw_fd()).local_addr()?;
        pktinfo::enable(socket, local.is_ipv6())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        Ok(())
    }
}

/// A datagram as the send functions take it: bytes, a destination unless the socket is
/// connected, and a source if the kernel should not choose it.
trait ToSend {
    fn destination(&self) -> Option<SocketAddr>;
    fn bytes(&self) -> &[u8];
    fn source(&self) -> Option<IpAddr> {
        None
    }
}

impl ToSend for Outgoing<'_> {
    fn destination(&self) -> Option<SocketAddr> {
        Some(self.0)
    }

    fn bytes(&self) -> &[u8] {
        self.1
    }
}

impl ToSend for OutgoingFrom<'_> {
    fn destination(&self) -> Option<SocketAddr> {
        Some(self.to)
    }

    fn bytes(&self) -> &[u8] {
        self.bytes
    }

    fn source(&self) -> Option<IpAddr> {
        self.from
    }
}

impl ToSend for &[u8] {
    fn destination(&self) -> Option<SocketAddr> {
        None
    }

    fn bytes(&self) -> &[u8] {
        self
    }
}

/// Every datagram the kernel takes, skipping those it refuses; see [`send_all`].
fn send_each<D: ToSend>(fd: RawFd, datagrams: &[D]) -> usize {
    let mut done = 0;
    let mut sent = 0;
    while done < datagrams.len() {
        let chunk = &datagrams[done..datagrams.len().min(done + BATCH)];
        match send_chunk(fd, chunk) {
            Ok(0) | Err(_) => {
                // Skip the datagram that failed and go on.
                done += 1;
            }
            Ok(n) => {
                done += n;
                sent += n;
            }
        }
    }
    sent
}

/// The longest prefix of `datagrams` the kernel takes; see [`send_until_full`].
fn send_prefix<D: ToSend>(fd: RawFd, datagrams: &[D]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < datagrams.len() {
        let chunk = &datagrams[sent..datagrams.len().min(sent + BATCH)];
        match send_chunk(fd, chunk) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(e) if sent == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(sent)
}

/// Sends a prefix of `chunk` (at most [`BATCH`], at least one) with one system call.
#[cfg(target_os = "linux")]
fn send_chunk<D: ToSend>(fd: RawFd, chunk: &[D]) -> io::Result<usize> {
    send_chunk_with(fd, chunk, Mmsg::Yes)
}

/// [`send_chunk`] by `sendmmsg`, or with [`Mmsg::No`] (or a kernel without it) the first
/// datagram alone by `sendmsg`, from the same header: names, sources and all.
#[cfg(target_os = "linux")]
fn send_chunk_with<D: ToSend>(fd: RawFd, chunk: &[D], mmsg: Mmsg) -> io::Result<usize> {
    debug_assert!((1..=BATCH).contains(&chunk.len()));
    // Only the entries of `chunk` are written and read: no need to fill the rest.
    let mut names: [MaybeUninit<SockAddr>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
    let mut controls: [MaybeUninit<Control>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
    let mut iovecs = [EMPTY_IOVEC; BATCH];
    // SAFETY: mmsghdr is plain old data; every pointer is set below before use.
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, datagram) in chunk.iter().enumerate() {
        headers[i].msg_hdr = send_header(datagram, &mut names[i], &mut controls[i], &mut iovecs[i]);
    }
    if mmsg == Mmsg::Yes {
        // SAFETY: the headers point at `names`, `controls`, `iovecs` and the caller's byte
        // slices, all alive for this call; the kernel only reads them.
        let sent = unsafe {
            libc::sendmmsg(
                fd,
                headers.as_mut_ptr(),
                chunk.len() as u32,
                libc::MSG_DONTWAIT,
            )
        };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ENOSYS) {
            return Err(error);
        }
    }
    // SAFETY: as for sendmmsg, for the first header alone.
    let sent = unsafe { libc::sendmsg(fd, &headers[0].msg_hdr, libc::MSG_DONTWAIT) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(1)
}

/// The send header for `datagram`, pointing at its bytes (through `iovec`), its destination
/// (written into `name`) and its source (written into `control`).
#[cfg(target_os = "linux")]
fn send_header<D: ToSend>(
    datagram: &D,
    name: &mut MaybeUninit<SockAddr>,
    control: &mut MaybeUninit<Control>,
    iovec: &mut libc::iovec,
) -> libc::msghdr {
    let bytes = datagram.bytes();
    iovec.iov_base = bytes.as_ptr() as *mut libc::c_void;
    iovec.iov_len = bytes.len();
    // SAFETY: msghdr is plain old data; all zeroes is a valid value.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = iovec;
    header.msg_iovlen = 1;
    // No name on a connected socket: the kernel sends to its peer on the cached route.
    if let Some(to) = datagram.destination() {
        let name = name.write(SockAddr::from(to));
        header.msg_name = name.as_ptr() as *mut libc::c_void;
        header.msg_namelen = name.len();
    }
    // Control data only where a source is chosen: other sends cost what they always did.
    if let Some(from) = datagram.source() {
        let control = control.write(Control::EMPTY);
        header.msg_controllen = pktinfo::write_source(control, from) as _;
        header.msg_control = control.as_mut_ptr();
    }
    header
}

#[cfg(not(target_os = "linux"))]
fn send_chunk<D: ToSend>(fd: RawFd, chunk: &[D]) -> io::Result<usize> {
    let socket = borrow_socket(fd);
    let datagram = &chunk[0];
    match datagram.destination() {
        Some(to) => socket.send_to(datagram.bytes(), &SockAddr::from(to))?,
        None => socket.send(datagram.bytes())?,
    };
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
    fn a_limited_receive_leaves_the_rest_queued() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_nonblocking(true).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        let payloads: Vec<[u8; 1]> = (0..5u8).map(|i| [i]).collect();
        let datagrams: Vec<Outgoing<'_>> = payloads.iter().map(|p| (to, &p[..])).collect();
        assert_eq!(send_until_full(&sender, &datagrams).unwrap(), 5);

        let mut batch = RecvBatch::with_payload(16, 0, 0);
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while got.len() < 5 && std::time::Instant::now() < deadline {
            match batch.recv_at_most(&receiver, 2) {
                Ok(n) => {
                    assert!(n <= 2);
                    got.extend((0..n).map(|i| batch.received(i).unwrap().1[0]));
                    assert_eq!(batch.received(n), None, "nothing past the last receive");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_datagram_longer_than_its_slot_is_dropped() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.connect(receiver.local_addr().unwrap()).unwrap();
        let (long, short) = ([1u8; 9], [2u8; 8]);
        assert_eq!(
            send_connected(&sender, &[&long[..], &short[..]]).unwrap(),
            2
        );

        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut peek = [0u8; 16];
        receiver.peek(&mut peek).unwrap(); // both queued before the nonblocking receive
        receiver.set_nonblocking(true).unwrap();
        let mut batch = RecvBatch::with_payload(8, 4, 0);
        assert_eq!(batch.payload_capacity(), 8);
        let mut kept = Vec::new();
        let mut seen = 0;
        while seen < 2 {
            let n = batch.recv(&receiver).unwrap();
            seen += n;
            for i in 0..n {
                if let Some((from, payload)) = batch.received(i) {
                    assert_eq!(from, sender.local_addr().unwrap());
                    kept.push(payload.to_vec());
                }
            }
        }
        assert_eq!(kept, [short.to_vec()]);
    }

    #[test]
    fn sending_until_full_counts_only_what_left() {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(send_until_full(&sender, &[]).unwrap(), 0);
        // Not connected: a send without a destination fails, and nothing counts as sent.
        assert!(send_connected(&sender, &[&[1u8][..]]).is_err());
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        assert_eq!(send_all(&sender, &[(to, &[1u8][..])]), 1);
    }

    #[cfg(target_os = "linux")]
    /// A socket on `wildcard` (0.0.0.0 or ::) that reports destinations, and a client
    /// socket on `client_ip`.
    fn wildcard_pair(wildcard: &str, client_ip: &str) -> (UdpSocket, UdpSocket) {
        let listener = UdpSocket::bind((wildcard.parse::<IpAddr>().unwrap(), 0)).unwrap();
        report_destinations(&listener).unwrap();
        let client = UdpSocket::bind((client_ip.parse::<IpAddr>().unwrap(), 0)).unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        (listener, client)
    }

    #[cfg(target_os = "linux")]
    /// Receives one datagram on `socket` (waiting up to 2 s): its source and destination.
    fn receive_one(batch: &mut RecvBatch, socket: &UdpSocket) -> (SocketAddr, Option<IpAddr>) {
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        socket.peek(&mut [0u8; 1]).unwrap(); // one is queued before the nonblocking receive
        socket.set_nonblocking(true).unwrap();
        assert_eq!(batch.recv_at_most(socket, 1).unwrap(), 1);
        socket.set_nonblocking(false).unwrap();
        let (source, _) = batch.received(0).unwrap();
        (source, batch.destination(0))
    }

    #[cfg(target_os = "linux")] // where destinations are reported
    #[test]
    fn a_wildcard_socket_learns_each_destination_and_answers_from_it() {
        let cases = [
            (
                "0.0.0.0",
                "127.0.0.1",
                ["127.0.0.2", "127.0.0.3", "127.0.0.4"],
            ),
            ("::", "::1", ["::1", "::1", "::1"]),
        ];
        for (wildcard, client_ip, destinations) in cases {
            let (listener, client) = wildcard_pair(wildcard, client_ip);
            let port = listener.local_addr().unwrap().port();
            let mut batch = RecvBatch::with_payload(64, 0, 0);
            for (i, destination) in destinations.into_iter().enumerate() {
                let destination: IpAddr = destination.parse().unwrap();
                // The first by recvmmsg and sendmmsg, the second by their one-datagram
                // fallbacks, the third by recvmsg and the single send: all carry addresses.
                batch.mmsg = if i == 0 { Mmsg::Yes } else { Mmsg::No };
                client.send_to(b"ask", (destination, port)).unwrap();
                let (source, seen) = receive_one(&mut batch, &listener);
                assert_eq!(source, client.local_addr().unwrap());
                assert_eq!(seen, Some(destination), "{wildcard} via {destination}");
                let answer = OutgoingFrom {
                    from: seen,
                    to: source,
                    bytes: b"answer",
                };
                match i {
                    0 | 1 => {
                        let sent = send_chunk_with(listener.as_raw_fd(), &[answer], batch.mmsg);
                        assert_eq!(sent.unwrap(), 1);
                    }
                    _ => send_one_from(&listener, answer).unwrap(),
                }
                let mut buf = [0u8; 16];
                let (len, from) = client.recv_from(&mut buf).unwrap();
                assert_eq!(
                    (&buf[..len], from),
                    (&b"answer"[..], SocketAddr::new(destination, port))
                );
            }
        }
    }

    #[cfg(target_os = "linux")] // where destinations are reported
    #[test]
    fn a_socket_not_asked_reports_no_destination() {
        let listener = UdpSocket::bind("0.0.0.0:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        client.send_to(b"ask", ("127.0.0.2", port)).unwrap();
        let mut batch = RecvBatch::with_payload(64, 0, 0);
        assert_eq!(receive_one(&mut batch, &listener).1, None);
    }

    #[test]
    fn empty_socket_would_block() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let error = RecvBatch::new(0, 0).recv(&socket).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
    }
}
