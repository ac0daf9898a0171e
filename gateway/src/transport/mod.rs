//! SIP transports: UDP and TCP on one address, as a tokio shell that only moves bytes.
//!
//! Everything a transport hears arrives on one channel as [`Inbound`], already parsed: a
//! message is parsed on the task that heard it, so parsing runs beside the node's loop rather
//! than in it. Everything to send goes through [`Transports::send`]. TCP connections are found by the peer's address,
//! so a response goes back on the connection its request came in on.

pub mod framing;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::sip::message::{ParseError, SipMessage};
use framing::{Frame, Framer, MAX_MESSAGE_BYTES};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Udp,
    Tcp,
}

impl Protocol {
    /// The transport token of a Via header.
    pub fn via_token(self) -> &'static str {
        match self {
            Protocol::Udp => "UDP",
            Protocol::Tcp => "TCP",
        }
    }
}

/// A message heard on a transport, as parsed (an unparseable one still reaches the node,
/// which decides what to do about it).
#[derive(Debug, Clone)]
pub struct Inbound {
    pub message: Result<SipMessage, ParseError>,
    pub source: SocketAddr,
    pub protocol: Protocol,
}

#[derive(Debug, Clone)]
pub struct TransportOptions {
    pub max_tcp_connections: usize,
    /// A TCP connection silent this long is closed.
    pub tcp_idle: Duration,
    /// Inbound messages waiting for the node; beyond this, UDP drops and TCP waits.
    pub queue: usize,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            max_tcp_connections: 10_000,
            tcp_idle: Duration::from_secs(300),
            queue: 65_536,
        }
    }
}

type Connections = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

/// The bound sockets and the way to send through them.
#[derive(Clone)]
pub struct Transports {
    udp: Arc<UdpSocket>,
    local: SocketAddr,
    connections: Connections,
    inbound: mpsc::Sender<Inbound>,
    options: TransportOptions,
}

impl Transports {
    /// Bind UDP and TCP on `addr` (port 0 picks one free port for both).
    pub async fn bind(
        addr: SocketAddr,
        options: TransportOptions,
    ) -> std::io::Result<(Transports, mpsc::Receiver<Inbound>)> {
        let (udp, tcp) = bind_pair(addr).await?;
        let local = udp.local_addr()?;
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let transports = Transports {
            udp: Arc::new(udp),
            local,
            connections: Arc::new(Mutex::new(HashMap::new())),
            inbound: tx,
            options,
        };
        tokio::spawn(transports.clone().udp_loop());
        tokio::spawn(transports.clone().accept_loop(tcp));
        Ok((transports, rx))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Send bytes to a peer; over TCP, on its connection (opened if there is none).
    pub async fn send(&self, protocol: Protocol, dest: SocketAddr, bytes: Vec<u8>) -> std::io::Result<()> {
        match protocol {
            Protocol::Udp => self.udp.send_to(&bytes, dest).await.map(drop),
            Protocol::Tcp => {
                let existing = self.connection(dest);
                let sender = match existing {
                    Some(sender) => sender,
                    None => {
                        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(dest))
                            .await
                            .map_err(|_| {
                                std::io::Error::new(std::io::ErrorKind::TimedOut, "TCP connect timed out")
                            })??;
                        self.adopt(stream, dest)?
                    }
                };
                sender
                    .send(bytes)
                    .await
                    .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "connection closed"))
            }
        }
    }

    /// Sends UDP datagrams in one `sendmmsg` (the node's answers of one turn leave
    /// together); returns how many the kernel took. One it refuses (a full send buffer)
    /// is dropped, as the network may drop any datagram: SIP retransmits.
    pub fn send_udp_batch(&self, packets: &[(&[u8], SocketAddr)]) -> usize {
        use std::os::fd::AsRawFd;
        media::sys::send_batch(self.udp.as_raw_fd(), packets)
    }

    fn connection(&self, peer: SocketAddr) -> Option<mpsc::Sender<Vec<u8>>> {
        // A poisoned lock means a task panicked while holding it: the map is still usable.
        let map = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&peer).filter(|s| !s.is_closed()).cloned()
    }

    async fn udp_loop(self) {
        let mut buffer = vec![0u8; 65_535];
        loop {
            match self.udp.recv_from(&mut buffer).await {
                Ok((n, source)) => {
                    if n == 0 || n > MAX_MESSAGE_BYTES {
                        continue;
                    }
                    if buffer[..n].iter().all(|b| *b == b'\r' || *b == b'\n') {
                        // RFC 5626 keep-alive over UDP: answer CRLF.
                        let _ = self.udp.send_to(b"\r\n", source).await;
                        continue;
                    }
                    let message = Inbound {
                        message: SipMessage::parse(&buffer[..n]),
                        source,
                        protocol: Protocol::Udp,
                    };
                    // UDP under overload: drop rather than queue without bound.
                    if self.inbound.try_send(message).is_err() && self.inbound.is_closed() {
                        return;
                    }
                }
                Err(e) => {
                    // ICMP port unreachable from an earlier send shows up here on Linux.
                    tracing::debug!(error = %e, "UDP receive error");
                }
            }
        }
    }

    async fn accept_loop(self, listener: TcpListener) {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let open = self.connections.lock().unwrap_or_else(|p| p.into_inner()).len();
            if open >= self.options.max_tcp_connections {
                tracing::warn!(%peer, open, "refusing a TCP connection: too many open");
                continue;
            }
            if let Err(e) = self.adopt(stream, peer) {
                tracing::debug!(%peer, error = %e, "cannot adopt a TCP connection");
            }
        }
    }

    /// Register a connection and start its reader and writer.
    fn adopt(&self, stream: TcpStream, peer: SocketAddr) -> std::io::Result<mpsc::Sender<Vec<u8>>> {
        stream.set_nodelay(true)?;
        let (mut reader, mut writer) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, tx.clone());
        tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if writer.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
        let this = self.clone();
        let pong = tx.clone();
        tokio::spawn(async move {
            let mut framer = Framer::new();
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                let read = tokio::time::timeout(this.options.tcp_idle, reader.read(&mut buffer)).await;
                let n = match read {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => n,
                };
                framer.push(&buffer[..n]);
                loop {
                    match framer.next_frame() {
                        Ok(Some(Frame::Message(bytes))) => {
                            let message = Inbound {
                                message: SipMessage::parse(&bytes),
                                source: peer,
                                protocol: Protocol::Tcp,
                            };
                            // TCP has flow control: wait for room instead of dropping.
                            if this.inbound.send(message).await.is_err() {
                                return;
                            }
                        }
                        Ok(Some(Frame::KeepAlive)) => {
                            let _ = pong.send(b"\r\n".to_vec()).await;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "closing a TCP connection that broke framing");
                            this.forget(peer);
                            return;
                        }
                    }
                }
            }
            this.forget(peer);
        });
        Ok(tx)
    }

    fn forget(&self, peer: SocketAddr) {
        self.connections.lock().unwrap_or_else(|p| p.into_inner()).remove(&peer);
    }
}

/// What the UDP socket asks the kernel to buffer (capped by `net.core.rmem_max`): a burst
/// that arrives while the node loop is busy waits here instead of being dropped and coming
/// back as a retransmission 500 ms later.
const UDP_RECEIVE_BUFFER: libc::c_int = 8 << 20;

fn widen_receive_buffer(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size = UDP_RECEIVE_BUFFER;
    // SAFETY: the descriptor is open for the socket's lifetime; the option value is a c_int
    // that outlives the call, and its length is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "SO_RCVBUF not widened");
    }
}

/// UDP and TCP on the same port: when asked for port 0, retry until both bind.
async fn bind_pair(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last_error = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(addr).await?;
        widen_receive_buffer(&udp);
        let mut tcp_addr = addr;
        tcp_addr.set_port(udp.local_addr()?.port());
        match TcpListener::bind(tcp_addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no port free for both UDP and TCP")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] = b"OPTIONS sip:b.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bKt1\r\n\
        From: <sip:a@a.test>;tag=1\r\nTo: <sip:b@b.test>\r\nCall-ID: transport-test\r\nCSeq: 1 OPTIONS\r\n\
        Content-Length: 0\r\n\r\n";

    /// The Call-ID of what was heard, which must have parsed.
    fn call_id(heard: &Inbound) -> &str {
        &heard.message.as_ref().expect("parsed").call_id
    }

    async fn bound() -> (Transports, mpsc::Receiver<Inbound>) {
        let options = TransportOptions {
            tcp_idle: Duration::from_secs(5),
            ..TransportOptions::default()
        };
        Transports::bind("127.0.0.1:0".parse().unwrap(), options).await.unwrap()
    }

    #[tokio::test]
    async fn the_udp_socket_buffers_more_than_the_kernel_default() {
        use std::os::fd::AsRawFd;
        let (transports, _inbound) = bound().await;
        let default: libc::c_int = std::fs::read_to_string("/proc/sys/net/core/rmem_default")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(212_992);
        let mut size: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the socket is open; `size` and `len` outlive the call and match in size.
        let rc = unsafe {
            libc::getsockopt(
                transports.udp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut size as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        assert!(size > default, "SO_RCVBUF {size} is not above the default {default}");
    }

    #[tokio::test]
    async fn udp_in_and_out() {
        let (transports, mut inbound) = bound().await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(OPTIONS, transports.local_addr()).await.unwrap();
        let heard = inbound.recv().await.unwrap();
        assert_eq!((call_id(&heard), heard.protocol), ("transport-test", Protocol::Udp));
        client
            .send_to(b"garbage\r\n\r\n", transports.local_addr())
            .await
            .unwrap();
        let garbage = inbound.recv().await.unwrap();
        assert!(
            garbage.message.is_err(),
            "an unparseable datagram reaches the node as an error"
        );
        assert_eq!(heard.source, client.local_addr().unwrap());
        transports
            .send(Protocol::Udp, heard.source, b"SIP/2.0 200 OK\r\n\r\n".to_vec())
            .await
            .unwrap();
        let mut buffer = [0u8; 100];
        let (n, _) = client.recv_from(&mut buffer).await.unwrap();
        assert_eq!(&buffer[..n], b"SIP/2.0 200 OK\r\n\r\n");
    }

    #[tokio::test]
    async fn a_udp_batch_reaches_each_destination_in_order() {
        let (transports, _inbound) = bound().await;
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let big = vec![b'x'; 9_000];
        let packets: Vec<(&[u8], SocketAddr)> =
            vec![(b"one", to_a), (b"two", to_b), (big.as_slice(), to_a), (b"three", to_a)];
        assert_eq!(transports.send_udp_batch(&packets), 4);
        let mut buffer = vec![0u8; 65_536];
        let mut heard = Vec::new();
        for _ in 0..3 {
            let (n, from) = a.recv_from(&mut buffer).await.unwrap();
            assert_eq!(from, transports.local_addr());
            heard.push(buffer[..n].to_vec());
        }
        assert_eq!(heard, vec![b"one".to_vec(), big.clone(), b"three".to_vec()]);
        let (n, _) = b.recv_from(&mut buffer).await.unwrap();
        assert_eq!(&buffer[..n], b"two");
    }

    #[tokio::test]
    async fn tcp_frames_a_split_stream_and_answers_on_the_same_connection() {
        let (transports, mut inbound) = bound().await;
        let mut client = TcpStream::connect(transports.local_addr()).await.unwrap();
        client.write_all(&OPTIONS[..10]).await.unwrap();
        client.flush().await.unwrap();
        client.write_all(&OPTIONS[10..]).await.unwrap();
        client.write_all(b"\r\n\r\n").await.unwrap();
        client.write_all(OPTIONS).await.unwrap();
        let first = inbound.recv().await.unwrap();
        let second = inbound.recv().await.unwrap();
        assert_eq!(call_id(&first), "transport-test");
        assert_eq!(call_id(&second), "transport-test");
        assert_eq!(first.protocol, Protocol::Tcp);
        transports
            .send(Protocol::Tcp, first.source, b"SIP/2.0 200 OK\r\n\r\n".to_vec())
            .await
            .unwrap();
        // The keep-alive was answered first, then our response.
        let expected = b"\r\nSIP/2.0 200 OK\r\n\r\n";
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let mut buffer = [0u8; 64];
            let n = client.read(&mut buffer).await.unwrap();
            assert!(
                n > 0,
                "connection closed early after {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buffer[..n]);
        }
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_connection_that_breaks_framing_is_closed() {
        let (transports, _inbound) = bound().await;
        let mut client = TcpStream::connect(transports.local_addr()).await.unwrap();
        client
            .write_all(b"INVITE sip:x SIP/2.0\r\nContent-Length: 99999999\r\n\r\n")
            .await
            .unwrap();
        let mut buffer = [0u8; 16];
        let n = client.read(&mut buffer).await.unwrap_or(0);
        assert_eq!(n, 0, "the node closes the connection");
    }
}
