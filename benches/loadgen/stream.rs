//! TURN over TCP and TLS for the relay mode: one connection per allocation, carrying STUN
//! messages framed by their length and ChannelData padded to a multiple of 4 bytes
//! (RFC 8656 §12.5). The relay to the peers stays UDP (REQUESTED-TRANSPORT UDP).
//!
//! A connection is connected (and its TLS handshake done) blocking, under a deadline, then
//! switched to nonblocking and driven by the same epoll loops as the UDP sockets: writes
//! go out at once and what the kernel does not take waits in the connection's own buffer
//! (a stream cannot drop half a frame); reads take what is there and cut it into frames.
//!
//! TLS uses rustls with ring. The generator talks to loopback servers with self-signed
//! certificates, so its verifier accepts any certificate (the handshake signature is still
//! checked): [`tls_config`] exists only in this benchmark binary.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

use crate::TlsVersion;

/// Bytes asked of the kernel per read call.
const READ_CHUNK: usize = 64 * 1024;
/// Read calls per [`Stream::receive`] at most, so one busy connection cannot starve the
/// others (epoll is level-triggered: what is left is read on the next turn).
const READS_PER_TURN: usize = 4;
/// Bytes of a STUN header (RFC 8489 §5).
const STUN_HEADER_LEN: usize = 20;

/// One TURN-over-TCP (or TLS) connection.
pub(crate) struct Stream {
    tcp: TcpStream,
    tls: Option<Box<ClientConnection>>,
    /// Received plaintext not yet cut into frames, from `start`.
    input: Vec<u8>,
    start: usize,
    /// Plain TCP: bytes the kernel has not taken yet. (TLS keeps its own records.)
    output: Vec<u8>,
    /// The server closed the connection or broke the framing.
    pub(crate) closed: bool,
}

impl Stream {
    /// Connects to `server` (retrying while nothing listens yet) and, with `tls`, completes
    /// the handshake; both before `deadline`. The returned stream is nonblocking.
    pub(crate) fn connect(
        server: SocketAddrV4,
        tls: Option<&Arc<ClientConfig>>,
        deadline: Instant,
    ) -> anyhow::Result<Self> {
        let tcp = loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|left| !left.is_zero())
                .with_context(|| format!("no TCP connection to {server} before the deadline"))?;
            match TcpStream::connect_timeout(&SocketAddr::V4(server), left) {
                Ok(tcp) => break tcp,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::thread::sleep(Duration::from_millis(20).min(left));
                }
                Err(e) => return Err(e).with_context(|| format!("connect to {server}")),
            }
        };
        // TURN clients and servers send small messages that must not wait for Nagle.
        tcp.set_nodelay(true)?;
        let tls = match tls {
            Some(config) => Some(Box::new(handshake(&tcp, server, config, deadline)?)),
            None => None,
        };
        tcp.set_nonblocking(true)?;
        Ok(Self {
            tcp,
            tls,
            input: Vec::with_capacity(READ_CHUNK),
            start: 0,
            output: Vec::new(),
            closed: false,
        })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.tcp.as_raw_fd()
    }

    /// The negotiated TLS version and cipher suite, for the report.
    pub(crate) fn tls_parameters(&self) -> Option<(String, String)> {
        let tls = self.tls.as_ref()?;
        let version = tls.protocol_version()?;
        let suite = tls.negotiated_cipher_suite()?;
        Some((format!("{version:?}"), format!("{:?}", suite.suite())))
    }

    /// Queues whole frames and writes what the kernel takes now. A frame, once queued, is
    /// sent (a stream cannot drop part of one): the caller holds back while
    /// [`Stream::has_output`].
    pub(crate) fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            // Unlimited buffer (see handshake): write_all only encrypts into records.
            Some(tls) => tls.writer().write_all(bytes)?,
            None => self.output.extend_from_slice(bytes),
        }
        self.flush()
    }

    /// Writes queued bytes until done or the kernel's buffer is full.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        let result = match &mut self.tls {
            Some(tls) => write_tls(tls, &self.tcp),
            None => write_plain(&mut self.output, &self.tcp),
        };
        if result.is_err() {
            self.closed = true;
        }
        result
    }

    /// Bytes queued that the kernel has not taken yet.
    pub(crate) fn has_output(&self) -> bool {
        match &self.tls {
            Some(tls) => tls.wants_write(),
            None => !self.output.is_empty(),
        }
    }

    /// Reads what has arrived and calls `on_frame` with every whole frame (STUN message or
    /// padded ChannelData). Returns the number of frames; an error when the connection
    /// ended or its bytes cannot be framed.
    pub(crate) fn receive(&mut self, mut on_frame: impl FnMut(&[u8])) -> io::Result<usize> {
        if self.closed {
            return Err(io::ErrorKind::NotConnected.into());
        }
        let read = match &mut self.tls {
            Some(tls) => read_tls(tls, &self.tcp, &mut self.input),
            None => read_plain(&self.tcp, &mut self.input),
        };
        let mut frames = 0;
        let mut invalid = false;
        while let Some(rest) = self.input.get(self.start..) {
            match frame_len(rest) {
                Frame::Complete(len) => {
                    on_frame(&rest[..len]);
                    self.start += len;
                    frames += 1;
                }
                Frame::Incomplete => break,
                Frame::Invalid => {
                    invalid = true;
                    break;
                }
            }
        }
        self.input.drain(..self.start);
        self.start = 0;
        if let Some(tls) = &mut self.tls {
            // Alerts or key updates the read produced.
            if tls.wants_write() {
                let _ = write_tls(tls, &self.tcp);
            }
        }
        match read {
            Err(e) => {
                self.closed = true;
                Err(e)
            }
            Ok(_) if invalid => {
                self.closed = true;
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unframeable bytes",
                ))
            }
            Ok(_) => Ok(frames),
        }
    }
}

/// The blocking TLS handshake on a fresh connection.
fn handshake(
    tcp: &TcpStream,
    server: SocketAddrV4,
    config: &Arc<ClientConfig>,
    deadline: Instant,
) -> anyhow::Result<ClientConnection> {
    let name = ServerName::from(IpAddr::V4(*server.ip()));
    let mut tls = ClientConnection::new(config.clone(), name).context("TLS client")?;
    // The generator's window bounds what is queued; rustls must not refuse a write.
    tls.set_buffer_limit(None);
    let mut io = tcp;
    while tls.is_handshaking() {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .with_context(|| format!("TLS handshake with {server} not done before the deadline"))?;
        tcp.set_read_timeout(Some(left))?;
        tcp.set_write_timeout(Some(left))?;
        tls.complete_io(&mut io)
            .with_context(|| format!("TLS handshake with {server}"))?;
    }
    while tls.wants_write() {
        tls.write_tls(&mut io)?;
    }
    tcp.set_read_timeout(None)?;
    tcp.set_write_timeout(None)?;
    Ok(tls)
}

fn write_plain(output: &mut Vec<u8>, mut tcp: &TcpStream) -> io::Result<()> {
    let mut written = 0;
    while written < output.len() {
        match tcp.write(&output[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    output.drain(..written);
    Ok(())
}

fn write_tls(tls: &mut ClientConnection, mut tcp: &TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(&mut tcp) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Appends what the kernel has (up to READS_PER_TURN reads) to `input`.
fn read_plain(mut tcp: &TcpStream, input: &mut Vec<u8>) -> io::Result<()> {
    for _ in 0..READS_PER_TURN {
        let len = input.len();
        input.resize(len + READ_CHUNK, 0);
        let result = tcp.read(&mut input[len..]);
        input.truncate(len + *result.as_ref().unwrap_or(&0));
        match result {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) if n < READ_CHUNK => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads records (up to READS_PER_TURN reads), decrypts them and appends the plaintext.
fn read_tls(
    tls: &mut ClientConnection,
    mut tcp: &TcpStream,
    input: &mut Vec<u8>,
) -> io::Result<()> {
    for _ in 0..READS_PER_TURN {
        match tls.read_tls(&mut tcp) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        tls.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        // Take all plaintext now: rustls refuses to read more while its buffer is full.
        loop {
            let len = input.len();
            input.resize(len + READ_CHUNK, 0);
            let result = tls.reader().read(&mut input[len..]);
            input.truncate(len + *result.as_ref().unwrap_or(&0));
            match result {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// What the start of a stream buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    /// A whole frame of this many bytes (ChannelData padding included).
    Complete(usize),
    Incomplete,
    /// Neither STUN nor ChannelData: the stream cannot be resynchronised.
    Invalid,
}

/// The generator's own framing, independent of the server's: STUN by its length field,
/// ChannelData by its length rounded up to 4 (RFC 8656 §12.5).
fn frame_len(buffer: &[u8]) -> Frame {
    let Some(header) = buffer.get(..4) else {
        return match buffer.first() {
            Some(b) if b >> 6 > 1 => Frame::Invalid,
            _ => Frame::Incomplete,
        };
    };
    let declared = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let total = match header[0] >> 6 {
        0b00 => STUN_HEADER_LEN + declared,
        0b01 => 4 + declared.next_multiple_of(4),
        _ => return Frame::Invalid,
    };
    if buffer.len() >= total {
        Frame::Complete(total)
    } else {
        Frame::Incomplete
    }
}

/// ChannelData as sent on a stream: the datagram form followed by zero padding to a
/// multiple of 4 bytes.
pub(crate) fn padded_len(len: usize) -> usize {
    len.next_multiple_of(4)
}

/// A client configuration that accepts any server certificate (self-signed, for
/// 127.0.0.1) but checks the handshake signature, as a real client's work would. The
/// versions asked for; no ALPN, like browsers' TURN clients.
pub(crate) fn tls_config(version: TlsVersion) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match version {
        TlsVersion::Any => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_2 => &[&rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts every certificate: only for the benchmark's loopback servers.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Opens a connection and sends Binding requests over it until one is answered: the
/// server's stream listener (and TLS) is up. Bounded by 10 s like the UDP check.
pub(crate) fn wait_until_ready(
    server: SocketAddrV4,
    tls: Option<&Arc<ClientConfig>>,
    request: &[u8],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = Stream::connect(server, tls, deadline)?;
    stream.send(request)?;
    let mut answered = false;
    while !answered && Instant::now() < deadline {
        while stream.has_output() {
            stream.flush()?;
        }
        let mut poll = libc::pollfd {
            fd: stream.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut poll, 1, 50) };
        stream
            .receive(|frame| answered |= frame.len() >= STUN_HEADER_LEN && frame[..2] == [1, 1])
            .with_context(|| format!("Binding over the stream to {server}"))?;
    }
    if !answered {
        bail!("no Binding response over the stream from {server} within 10 s");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_by_length_with_channel_data_padding() {
        let stun = [0x01, 0x01, 0, 8, 0x21, 0x12, 0xA4, 0x42];
        assert_eq!(frame_len(&stun), Frame::Incomplete);
        let mut message = stun.to_vec();
        message.resize(28, 0);
        assert_eq!(frame_len(&message), Frame::Complete(28));
        // 5 payload bytes: 4 + 5 + 3 padding.
        let mut channel_data = vec![0x40, 0x00, 0, 5];
        channel_data.resize(11, 0);
        assert_eq!(frame_len(&channel_data), Frame::Incomplete);
        channel_data.push(0);
        assert_eq!(frame_len(&channel_data), Frame::Complete(12));
        assert_eq!(frame_len(&[0x80]), Frame::Invalid);
        assert_eq!(frame_len(&[]), Frame::Incomplete);
        assert_eq!(padded_len(104), 104);
        assert_eq!(padded_len(1005), 1008);
    }

    /// A STUN message and a padded ChannelData, written by the "server" in pieces that
    /// cut both, come out as exactly those two frames.
    fn frames() -> Vec<u8> {
        let mut bytes = vec![0x01, 0x01, 0, 4, 0x21, 0x12, 0xA4, 0x42];
        bytes.resize(24, 7);
        bytes.extend_from_slice(&[0x40, 0x01, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0]);
        bytes
    }

    fn collect(stream: &mut Stream) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < 2 && Instant::now() < deadline {
            stream.receive(|f| got.push(f.to_vec())).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        got
    }

    #[test]
    fn tcp_stream_cuts_frames_across_reads() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(address) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        let server = std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            let bytes = frames();
            for piece in bytes.chunks(7) {
                peer.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            // Open until the client is done: a close would end its stream early.
            let _ = peer.read(&mut [0; 1]);
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stream = Stream::connect(address, None, deadline).unwrap();
        let got = collect(&mut stream);
        drop(stream);
        server.join().unwrap();
        assert_eq!(got, vec![frames()[..24].to_vec(), frames()[24..].to_vec()]);
    }

    #[test]
    fn tls_stream_accepts_a_self_signed_certificate_and_cuts_frames() {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(address) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        let versions = [(TlsVersion::V1_2, "TLSv1_2"), (TlsVersion::V1_3, "TLSv1_3")];
        let server = std::thread::spawn(move || {
            for _ in versions {
                let (mut tcp, _) = listener.accept().unwrap();
                let mut tls = rustls::ServerConnection::new(config.clone()).unwrap();
                while tls.is_handshaking() {
                    tls.complete_io(&mut tcp).unwrap();
                }
                for piece in frames().chunks(7) {
                    tls.writer().write_all(piece).unwrap();
                    tls.complete_io(&mut tcp).unwrap();
                }
                let _ = tcp.read(&mut [0; 1]);
            }
        });
        for (version, name) in versions {
            let deadline = Instant::now() + Duration::from_secs(5);
            let client = tls_config(version).unwrap();
            let mut stream = Stream::connect(address, Some(&client), deadline).unwrap();
            assert_eq!(stream.tls_parameters().unwrap().0, name);
            let got = collect(&mut stream);
            assert_eq!(got, vec![frames()[..24].to_vec(), frames()[24..].to_vec()]);
            drop(stream);
        }
        server.join().unwrap();
    }
}
