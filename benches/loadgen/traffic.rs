//! The data plane: measured packets (sequence number and send time in each), sent in
//! batches and paced by a rate or by a window of packets in flight; and the echo peers.
//!
//! Packets travel over UDP sockets (a burst is one sendmmsg) or over TCP/TLS streams (a
//! burst is one write of padded ChannelData frames, see `stream.rs`); pacing, loss and
//! round-trip accounting are the same for both.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rendez::net::batch::{send_connected, send_until_full, Outgoing, RecvBatch, BATCH};
use rendez::stun::MAGIC_COOKIE;

use crate::control::FIRST_CHANNEL;
use crate::measure::{Bitmap, Histogram, Snapshot, SocketDrops, Watched};
use crate::stream::{padded_len, Stream};
use crate::udp_sockets::{bind_udp, recv_batch, Epoll, DATAGRAM_CAPACITY};
use crate::Args;

/// How a measured packet looks on the wire. Each carries (sequence, send time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wire {
    /// ChannelData on channels 0x4000.. of each allocation.
    ChannelData { channels: u16 },
    /// The bare payload (through the raw forwarder).
    Raw,
    /// A 20-byte Binding request; sequence and time live in the transaction id.
    Binding,
}

/// Layouts. ChannelData: channel(2) length(2) seq(8) time(8) filler.
/// Raw: seq(8) time(8) filler. Binding: header with transaction id = seq(4) time(8).
impl Wire {
    fn packet_len(self, size: usize) -> usize {
        match self {
            Wire::ChannelData { .. } => 4 + size,
            Wire::Raw => size,
            Wire::Binding => 20,
        }
    }

    fn encode(self, out: &mut [u8], channel: u16, seq: u64, sent_ns: u64) {
        match self {
            Wire::ChannelData { .. } => {
                let payload_len = (out.len() - 4) as u16;
                out[0..2].copy_from_slice(&channel.to_be_bytes());
                out[2..4].copy_from_slice(&payload_len.to_be_bytes());
                out[4..12].copy_from_slice(&seq.to_le_bytes());
                out[12..20].copy_from_slice(&sent_ns.to_le_bytes());
            }
            Wire::Raw => {
                out[0..8].copy_from_slice(&seq.to_le_bytes());
                out[8..16].copy_from_slice(&sent_ns.to_le_bytes());
            }
            Wire::Binding => {
                out[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
                out[2..4].copy_from_slice(&[0, 0]);
                out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                out[8..12].copy_from_slice(&(seq as u32).to_le_bytes());
                out[12..20].copy_from_slice(&sent_ns.to_le_bytes());
            }
        }
    }

    /// (seq, sent_ns) of a packet that came back; None for anything else.
    fn decode(self, bytes: &[u8]) -> Option<(u64, u64)> {
        let read = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        match self {
            Wire::ChannelData { .. } if bytes.first()? >> 6 == 0b01 => Some((read(4)?, read(12)?)),
            Wire::ChannelData { .. } => None,
            Wire::Raw => Some((read(0)?, read(8)?)),
            Wire::Binding => {
                let header = bytes.get(..20)?;
                let is_success = header[0..2] == BINDING_SUCCESS.to_be_bytes()
                    && header[4..8] == MAGIC_COOKIE.to_be_bytes();
                let seq = u32::from_le_bytes(header[8..12].try_into().ok()?);
                is_success.then_some((u64::from(seq), read(12)?))
            }
        }
    }
}

const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
/// Sequence number of the raw mode's path-opening probes (never counted).
const PROBE_SEQ: u64 = u64::MAX;
/// Closed loop: with packets in flight and nothing received for this long, the ones in
/// flight are written off (lost), so a drop cannot shrink the window for good; one that
/// arrives after all is taken back (late, not lost).
const STALL_TIMEOUT: Duration = Duration::from_millis(50);
/// After the window, keep receiving this long for packets still on their way.
const DRAIN: Duration = Duration::from_millis(200);

#[derive(Default, Clone, Copy)]
pub(crate) struct Counters {
    pub(crate) sent: u64,
    /// Distinct packets received back.
    pub(crate) received: u64,
    pub(crate) duplicates: u64,
    /// Datagrams that were not measured packets (late STUN responses, probes, ...).
    pub(crate) foreign: u64,
    pub(crate) send_errors: u64,
    pub(crate) receive_errors: u64,
    /// Closed loop: packets written off after a stall and not received since.
    pub(crate) written_off: u64,
    /// Rate mode: packets the generator could not send on time and skipped.
    pub(crate) skipped: u64,
}

/// Everything a traffic run measured.
pub(crate) struct TrafficResult {
    /// Over the whole run, like the loss.
    pub(crate) drops: SocketDrops,
    pub(crate) start: Snapshot,
    pub(crate) end: Snapshot,
    /// Counters at the end (after draining); `in_window` over the measured window only.
    pub(crate) total: Counters,
    pub(crate) in_window: Counters,
    pub(crate) rtt: Histogram,
    /// Streams the server closed (or whose bytes could not be framed) during the run.
    pub(crate) closed_streams: usize,
}

/// What the packets travel over: UDP sockets, or TCP/TLS connections (one per allocation)
/// lent by the control plane for the run.
pub(crate) enum Links<'a> {
    Datagram(Vec<RawFd>),
    Stream(Vec<&'a mut Stream>),
}

impl Links<'_> {
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn len(&self) -> usize {
        match self {
            Links::Datagram(fds) => fds.len(),
            Links::Stream(streams) => streams.len(),
        }
    }

    fn fd(&self, i: usize) -> RawFd {
        match self {
            Links::Datagram(fds) => fds[i],
            Links::Stream(streams) => streams[i].fd(),
        }
    }
}

pub(crate) struct Traffic<'a> {
    wire: Wire,
    size: usize,
    links: Links<'a>,
    epoll: Epoll,
    received: RecvBatch,
    /// Outgoing datagrams are built here: one DATAGRAM_CAPACITY slot per batch entry.
    scratch: Vec<u8>,
    /// Outgoing stream bytes (a burst of padded frames) are built here.
    stream_out: Vec<u8>,
    rate: u64,
    window: usize,
    batch: usize,
    max_packets: u64,
    watched: Watched,
    clock: Instant,
    tally: Tally,
    next_socket: usize,
    next_channel: u16,
    last_receive: Instant,
    ready: Vec<u64>,
}

/// What came back: counters, the loss bitmap and the round-trip histogram.
struct Tally {
    counters: Counters,
    seen: Bitmap,
    rtt: Histogram,
    measuring: bool,
    /// `sent` at the last write-off: every packet below it not received then was written
    /// off, so one of those arriving later was late, not lost.
    written_off_below: u64,
}

impl Tally {
    /// Counts one received datagram or frame.
    fn record(&mut self, wire: Wire, bytes: &[u8], now_ns: u64) {
        match wire.decode(bytes) {
            Some((seq, sent_ns)) if seq < self.counters.sent => {
                if self.seen.insert(seq) {
                    self.counters.received += 1;
                    if seq < self.written_off_below {
                        // Late, not lost (a stream never loses one): back into the count,
                        // or the window would grow by every late packet.
                        self.counters.written_off = self.counters.written_off.saturating_sub(1);
                    }
                    if self.measuring {
                        self.rtt.record(now_ns.saturating_sub(sent_ns));
                    }
                } else {
                    self.counters.duplicates += 1;
                }
            }
            _ => self.counters.foreign += 1,
        }
    }
}

impl<'a> Traffic<'a> {
    pub(crate) fn new(args: &Args, wire: Wire, links: Links<'a>) -> anyhow::Result<Self> {
        let epoll = Epoll::new()?;
        for i in 0..links.len() {
            epoll.add(links.fd(i), i as u64)?;
        }
        Ok(Self {
            wire,
            size: args.size,
            links,
            epoll,
            received: recv_batch(),
            scratch: vec![0xA5; BATCH * DATAGRAM_CAPACITY],
            stream_out: Vec::with_capacity(BATCH * DATAGRAM_CAPACITY),
            rate: args.rate,
            window: args.window,
            batch: args.batch.min(BATCH),
            max_packets: args.max_packets,
            watched: args.watched(),
            clock: Instant::now(),
            tally: Tally {
                counters: Counters::default(),
                seen: Bitmap::new(args.max_packets),
                rtt: Histogram::default(),
                measuring: false,
                written_off_below: 0,
            },
            next_socket: 0,
            next_channel: 0,
            last_receive: Instant::now(),
            ready: Vec::new(),
        })
    }

    /// Raw mode: each client's first packet makes the forwarder open its relay socket;
    /// send probes until every client has heard its own back.
    pub(crate) fn open_raw_paths(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let Links::Datagram(sockets) = &self.links else {
            bail!("raw paths are UDP only");
        };
        let sockets = sockets.clone();
        let mut open = vec![false; sockets.len()];
        let mut probe = vec![0u8; self.size];
        Wire::Raw.encode(&mut probe, 0, PROBE_SEQ, 0);
        while open.contains(&false) {
            if Instant::now() >= deadline {
                bail!("the forwarder did not echo every client's probe in time");
            }
            for (socket, _) in sockets.iter().zip(&open).filter(|(_, &o)| !o) {
                let _ = send_connected(socket, &[&probe[..]]);
            }
            let wait_until = Instant::now() + Duration::from_millis(100);
            while let Some(left) = wait_until.checked_duration_since(Instant::now()) {
                self.epoll.wait(left)?;
                let tokens: Vec<u64> = self.epoll.tokens().collect();
                for token in tokens {
                    // "Connection refused" (the forwarder is not listening yet) is a
                    // pending error on the socket: read it and try again.
                    let socket = sockets[token as usize];
                    let count = self.received.recv(&socket).unwrap_or(0);
                    open[token as usize] |= count > 0;
                }
            }
        }
        Ok(())
    }

    /// Warm-up, measured window, drain.
    pub(crate) fn run(mut self, args: &Args) -> anyhow::Result<TrafficResult> {
        let drops_before = SocketDrops::take(self.watched.server_pid);
        self.clock = Instant::now();
        let window_start = self.clock + Duration::from_secs_f64(args.warmup);
        let window_end = window_start + Duration::from_secs_f64(args.duration);
        while Instant::now() < window_start {
            self.step()?;
        }
        let start = Snapshot::take(&self.watched, 0);
        let counters_at_start = self.tally.counters;
        self.tally.measuring = true;
        while Instant::now() < window_end {
            self.step()?;
        }
        self.tally.measuring = false;
        let end = Snapshot::take(&self.watched, 0);
        let counters_at_end = self.tally.counters;
        self.drain()?;
        let closed_streams = match &self.links {
            Links::Datagram(_) => 0,
            Links::Stream(streams) => streams.iter().filter(|s| s.closed).count(),
        };
        Ok(TrafficResult {
            drops: SocketDrops::take(self.watched.server_pid).minus(&drops_before),
            start,
            end,
            total: self.tally.counters,
            in_window: counters_at_end.minus(&counters_at_start),
            rtt: self.tally.rtt,
            closed_streams,
        })
    }

    /// Send what pacing allows, then wait for and take in what came back.
    fn step(&mut self) -> anyhow::Result<()> {
        let budget = self.send_budget();
        if budget > 0 {
            self.send(budget);
        }
        let timeout = self.wait_timeout();
        self.receive_ready(timeout)?;
        self.write_off_stalled();
        Ok(())
    }

    /// Packets that may leave now: the rate's schedule or the window's free room.
    fn send_budget(&mut self) -> u64 {
        let left = self.max_packets.saturating_sub(self.tally.counters.sent);
        if self.rate == 0 {
            let in_flight = self.in_flight();
            return (self.window as u64).saturating_sub(in_flight).min(left);
        }
        let elapsed = self.clock.elapsed().as_nanos();
        let due = (elapsed * u128::from(self.rate) / 1_000_000_000) as u64;
        let counters = &mut self.tally.counters;
        let behind = due.saturating_sub(counters.sent + counters.skipped);
        // Never catch up more than 1 ms of traffic in one go: a stalled generator would
        // otherwise flood the server with a burst nobody asked for.
        let burst = (self.rate / 1000).max(self.batch as u64);
        if behind > burst {
            counters.skipped += behind - burst;
        }
        behind.min(burst).min(left)
    }

    fn in_flight(&self) -> u64 {
        let c = &self.tally.counters;
        c.sent.saturating_sub(c.received + c.written_off)
    }

    fn wait_timeout(&self) -> Duration {
        if self.rate == 0 {
            return Duration::from_millis(5);
        }
        let interval = Duration::from_nanos(1_000_000_000 / self.rate);
        interval.clamp(Duration::from_micros(20), Duration::from_millis(5))
    }

    /// Spreads `budget` packets over the sockets, a burst of at most `batch` each.
    fn send(&mut self, mut budget: u64) {
        let links = self.links.len();
        let per_socket = budget.div_ceil(links as u64).min(self.batch as u64);
        for _ in 0..links {
            if budget == 0 {
                break;
            }
            let socket = self.next_socket;
            self.next_socket = (self.next_socket + 1) % links;
            if let Links::Stream(streams) = &mut self.links {
                // A stream whose earlier bytes still wait for the kernel takes no more.
                let stream = &mut streams[socket];
                if stream.closed
                    || stream.has_output() && (stream.flush().is_err() || stream.has_output())
                {
                    continue;
                }
            }
            let wanted = per_socket.min(budget) as usize;
            let sent = self.send_burst(socket, wanted);
            budget -= sent as u64;
            if sent < wanted {
                break; // that socket's buffer is full: let the receive side catch up
            }
        }
    }

    fn send_burst(&mut self, socket: usize, count: usize) -> usize {
        if let Links::Stream(_) = self.links {
            return self.send_stream_burst(socket, count);
        }
        let len = self.wire.packet_len(self.size);
        let sent_ns = self.clock.elapsed().as_nanos() as u64;
        for (i, slot) in self
            .scratch
            .chunks_mut(DATAGRAM_CAPACITY)
            .take(count)
            .enumerate()
        {
            let channel = next_channel(self.wire, &mut self.next_channel);
            self.wire.encode(
                &mut slot[..len],
                channel,
                self.tally.counters.sent + i as u64,
                sent_ns,
            );
        }
        let mut payloads: [&[u8]; BATCH] = [&[]; BATCH];
        for (payload, slot) in payloads
            .iter_mut()
            .zip(self.scratch.chunks(DATAGRAM_CAPACITY))
            .take(count)
        {
            *payload = &slot[..len];
        }
        match send_connected(&self.links.fd(socket), &payloads[..count]) {
            Ok(sent) => {
                self.tally.counters.sent += sent as u64;
                sent
            }
            Err(_) => {
                self.tally.counters.send_errors += 1;
                0
            }
        }
    }

    /// A burst on a stream: `count` ChannelData frames, each padded to 4 bytes, in one
    /// write. Once queued they are all sent (what the kernel does not take now waits in
    /// the stream), so they all count as sent.
    fn send_stream_burst(&mut self, link: usize, count: usize) -> usize {
        let len = self.wire.packet_len(self.size);
        let padded = padded_len(len);
        let sent_ns = self.clock.elapsed().as_nanos() as u64;
        self.stream_out.clear();
        for i in 0..count {
            let at = self.stream_out.len();
            self.stream_out.resize(at + padded, 0);
            let channel = next_channel(self.wire, &mut self.next_channel);
            self.wire.encode(
                &mut self.stream_out[at..at + len],
                channel,
                self.tally.counters.sent + i as u64,
                sent_ns,
            );
        }
        let Links::Stream(streams) = &mut self.links else {
            return 0;
        };
        let stream = &mut streams[link];
        if stream.closed {
            return 0;
        }
        match stream.send(&self.stream_out) {
            Ok(()) => {
                self.tally.counters.sent += count as u64;
                count
            }
            Err(_) => {
                self.tally.counters.send_errors += 1;
                0
            }
        }
    }

    fn receive_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.epoll.wait(timeout)?;
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.extend(self.epoll.tokens());
        for &token in &ready {
            self.receive(token as usize);
        }
        self.ready = ready;
        Ok(())
    }

    fn receive(&mut self, socket: usize) {
        if let Links::Stream(streams) = &mut self.links {
            let stream = &mut streams[socket];
            if stream.closed {
                return; // counted once, when it closed
            }
            let now_ns = self.clock.elapsed().as_nanos() as u64;
            let (tally, wire) = (&mut self.tally, self.wire);
            match stream.receive(|frame| tally.record(wire, frame, now_ns)) {
                Ok(0) => {}
                Ok(_) => self.last_receive = Instant::now(),
                Err(_) => tally.counters.receive_errors += 1,
            }
            return;
        }
        let count = match self.received.recv(&self.links.fd(socket)) {
            Ok(count) => count,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                self.tally.counters.receive_errors += 1;
                return;
            }
        };
        if count == 0 {
            return;
        }
        let now_ns = self.clock.elapsed().as_nanos() as u64;
        self.last_receive = Instant::now();
        for (_, payload) in (0..count).filter_map(|i| self.received.received(i)) {
            self.tally.record(self.wire, payload, now_ns);
        }
    }

    fn write_off_stalled(&mut self) {
        let in_flight = self.in_flight();
        if self.rate == 0 && in_flight > 0 && self.last_receive.elapsed() >= STALL_TIMEOUT {
            self.tally.counters.written_off += in_flight;
            self.tally.written_off_below = self.tally.counters.sent;
            self.last_receive = Instant::now();
        }
    }

    /// Receives (without sending) until nothing is in flight or DRAIN has passed.
    fn drain(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + DRAIN;
        while self.tally.counters.received < self.tally.counters.sent && Instant::now() < deadline {
            self.receive_ready(Duration::from_millis(5))?;
        }
        Ok(())
    }
}

/// The channel of the next packet: channels 0x4000.. of each allocation in turn.
fn next_channel(wire: Wire, next: &mut u16) -> u16 {
    let channels = match wire {
        Wire::ChannelData { channels } => channels,
        _ => 1,
    };
    let channel = FIRST_CHANNEL + *next;
    *next = (*next + 1) % channels;
    channel
}

impl Counters {
    fn minus(&self, earlier: &Counters) -> Counters {
        Counters {
            sent: self.sent - earlier.sent,
            received: self.received - earlier.received,
            duplicates: self.duplicates - earlier.duplicates,
            foreign: self.foreign - earlier.foreign,
            send_errors: self.send_errors - earlier.send_errors,
            receive_errors: self.receive_errors - earlier.receive_errors,
            // Late arrivals take written-off packets back, so this one can shrink.
            written_off: self.written_off.saturating_sub(earlier.written_off),
            skipped: self.skipped - earlier.skipped,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Echo peers: a thread that sends every datagram straight back to where it came from
// ---------------------------------------------------------------------------------------

pub(crate) struct EchoPeers {
    pub(crate) addresses: Vec<SocketAddrV4>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

impl EchoPeers {
    /// `count` sockets on `ip` (or the one `fixed` address); the thread ends when
    /// stopped or at `deadline`, whichever comes first.
    pub(crate) fn spawn(
        count: usize,
        ip: Ipv4Addr,
        fixed: Option<SocketAddrV4>,
        deadline: Instant,
    ) -> anyhow::Result<Self> {
        let sockets: Vec<UdpSocket> = match fixed {
            Some(address) => {
                vec![bind_udp(address).with_context(|| format!("bind echo peer {address}"))?]
            }
            None => (0..count)
                .map(|_| bind_udp(SocketAddrV4::new(ip, 0)).context("bind echo peer"))
                .collect::<anyhow::Result<_>>()?,
        };
        let addresses = sockets
            .iter()
            .map(|s| match s.local_addr() {
                Ok(SocketAddr::V4(a)) => Ok(a),
                other => bail!("echo peer address: {other:?}"),
            })
            .collect::<anyhow::Result<_>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("echo".into())
                .spawn(move || echo_loop(&sockets, &stop, deadline))?
        };
        Ok(Self {
            addresses,
            stop,
            thread,
        })
    }

    /// Stops the thread; returns how many datagrams it echoed.
    pub(crate) fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// Filler for the echo thread's fixed-size send array (no heap allocation per batch).
const NO_DATAGRAM: Outgoing<'static> = (
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
    &[],
);

fn echo_loop(sockets: &[UdpSocket], stop: &AtomicBool, deadline: Instant) -> u64 {
    let Ok(mut epoll) = Epoll::new() else {
        return 0;
    };
    for (i, socket) in sockets.iter().enumerate() {
        if epoll.add(socket.as_raw_fd(), i as u64).is_err() {
            return 0;
        }
    }
    let mut batch = recv_batch();
    let mut echoed = 0;
    let mut ready = Vec::new();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if epoll.wait(Duration::from_millis(10)).is_err() {
            break;
        }
        ready.clear();
        ready.extend(epoll.tokens());
        for &token in &ready {
            let fd = sockets[token as usize].as_raw_fd();
            let Ok(count) = batch.recv(&fd) else {
                continue;
            };
            let mut datagrams = [NO_DATAGRAM; BATCH];
            let mut echoes = 0;
            for datagram in (0..count).filter_map(|i| batch.received(i)) {
                datagrams[echoes] = datagram;
                echoes += 1;
            }
            echoed += send_until_full(&fd, &datagrams[..echoes]).unwrap_or(0) as u64;
        }
    }
    echoed
}

#[cfg(test)]
mod tests {
    use super::*;
    use rendez::stun::{Message, Method};

    #[test]
    fn every_wire_format_round_trips_sequence_and_time() {
        for wire in [Wire::ChannelData { channels: 2 }, Wire::Raw] {
            let mut packet = vec![0u8; wire.packet_len(160)];
            wire.encode(&mut packet, 0x4001, 42, 123_456);
            assert_eq!(wire.decode(&packet), Some((42, 123_456)));
        }
        let mut request = [0u8; 20];
        Wire::Binding.encode(&mut request, 0, 7, 99);
        assert!(Message::parse(&request).is_ok_and(|m| m.method() == Method::BINDING));
        // The server's answer keeps the transaction id; only the type changes.
        let mut response = request;
        response[0..2].copy_from_slice(&BINDING_SUCCESS.to_be_bytes());
        assert_eq!(Wire::Binding.decode(&response), Some((7, 99)));
        assert_eq!(Wire::Binding.decode(&request), None);
    }

    #[test]
    fn channel_data_header_states_the_payload_length() {
        let wire = Wire::ChannelData { channels: 1 };
        let mut packet = vec![0u8; wire.packet_len(1200)];
        wire.encode(&mut packet, 0x4000, 1, 1);
        let parsed = rendez::stun::ChannelData::parse(&packet).unwrap();
        assert_eq!((parsed.channel, parsed.payload.len()), (0x4000, 1200));
    }
}
