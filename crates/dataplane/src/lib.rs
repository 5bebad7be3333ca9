//! The QUIC chunk protocol (ALPN `collective/1`): how chunk bytes move between clients and
//! storage nodes, over mutual TLS with quinn.
//!
//! One bidirectional stream carries one chunk operation: a length-prefixed `ChunkRequest`
//! (with the coordinator-signed token), the payload for a put, then a length-prefixed
//! `ChunkResponse` and the payload for a get. Many streams run at once on one connection,
//! so several chunks are in flight per node. This crate owns the framing, the QUIC
//! endpoint setup and a pooled client; what a node does with a request lives in the node.

pub mod congestion;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use collective_core::ChunkId;
use collective_pki::{ALPN_QUIC, TlsIdentity};
use collective_proto::v1::{ChunkOp, ChunkRequest, ChunkResponse, ChunkStatus};
use prost::Message;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::sync::Mutex;

/// Version of the chunk protocol carried in every request.
pub const PROTOCOL_VERSION: u32 = 1;
pub use collective_core::MAX_CHUNK_BYTES;
/// Largest request/response header.
pub const MAX_FRAME_BYTES: usize = 64 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a read waits on its first replica's connection before it also tries the next
/// one (a handshake takes milliseconds on a LAN, tens across the internet): a dead node
/// costs this once, not the connect timeout.
pub const HEDGE_AFTER: Duration = Duration::from_millis(300);
/// How long a read's first copy may take to connect while the second copy's node is
/// already connected before the read goes to the second (a LAN handshake takes a few
/// milliseconds).
const FIRST_PREFERENCE: Duration = Duration::from_millis(50);
/// Longest one chunk operation may go without finishing (a stopped node never answers).
const OP_TIMEOUT: Duration = Duration::from_secs(30);
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Bytes one client connection may have in flight towards a node (bounds node memory).
const NODE_RECEIVE_WINDOW: u32 = 8 << 20;
/// Bytes nodes may have in flight towards one client (read-ahead of gets).
const CLIENT_RECEIVE_WINDOW: u32 = 16 << 20;
/// Unacknowledged bytes we keep buffered for one peer.
const SEND_WINDOW: u64 = 4 << 20;
/// Requested UDP socket buffer size.
const SOCKET_BUFFER_BYTES: libc::c_int = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot reach {node} at {addr}: {detail}")]
    Connect { node: String, addr: String, detail: String },
    #[error("{node} skipped: it failed moments ago (circuit breaker open; next attempt in {:.1} s)", .retry_in.as_secs_f64())]
    Skipped { node: String, retry_in: Duration },
    #[error("{node}: {detail}")]
    Transfer { node: String, detail: String },
    #[error("{node} refused the request: {detail}")]
    Denied { node: String, detail: String },
    #[error("{node} does not have chunk {chunk}")]
    NotFound { node: String, chunk: String },
    #[error("{node} reports chunk {chunk} corrupt: {detail}")]
    Corrupt { node: String, chunk: String, detail: String },
    #[error("{node} sent bytes that do not match chunk {chunk}")]
    Mismatch { node: String, chunk: String },
    #[error("{node} is out of space: {detail}")]
    NoSpace { node: String, detail: String },
    #[error("{node} failed: {detail}")]
    Remote { node: String, detail: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("QUIC setup failed: {0}")]
    Setup(String),
}

impl DataError {
    /// Whether the replica itself is bad (so it should be reported), not just unreachable.
    pub fn is_bad_replica(&self) -> bool {
        matches!(
            self,
            DataError::Corrupt { .. } | DataError::Mismatch { .. } | DataError::NotFound { .. }
        )
    }
}

/// Reordering (in packets) tolerated before a packet counts as lost.
const REORDER_PACKETS: u32 = 1 << 16;
/// Reordering (as a factor of the RTT) tolerated before a packet counts as lost.
const REORDER_TIME: f32 = 1.25;

/// Largest UDP payload two endpoints on this machine exchange: an IPv4 datagram's
/// 65,535 bytes less the IPv4 and UDP headers (the loopback MTU is 65,536).
const LOOPBACK_UDP_PAYLOAD: u16 = 65_507;

/// What a loopback connection falls back to if it ever takes losses for a black hole
/// (quinn then drops to its minimum). The client's first packet is padded to this size,
/// and handshake packets (QUIC long headers) cannot exceed 16,383 bytes.
const LOOPBACK_MIN_UDP_PAYLOAD: u16 = 16_000;

/// Whether a peer address is this machine (so datagrams never leave the loopback device).
fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Transport tuning for bulk chunk transfer: windows large enough to keep loopback and LAN
/// links full, `receive_window` bounding what one peer can make us buffer.
///
/// `loopback`: the peer is on this machine. Then packets are sized for the loopback
/// device's 64 KiB MTU from the first one, instead of probing up from 1,200 bytes towards
/// Ethernet's 1,500: most of what a packet costs (acknowledgement, loss tracking, a system
/// call, a wake-up) does not depend on its size, and a 1 MiB chunk then takes 17 packets
/// instead of 720.
pub fn transport_config(receive_window: u32, loopback: bool) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    if loopback {
        t.min_mtu(LOOPBACK_MIN_UDP_PAYLOAD);
        t.initial_mtu(LOOPBACK_UDP_PAYLOAD);
        t.mtu_discovery_config(None);
        // A segmentation-offload batch must fit in one 64 KiB send; batches of packets this
        // large do not, and the kernel refuses them (quinn then takes them for lost).
        t.enable_segmentation_offload(false);
    }
    t.max_concurrent_bidi_streams(256u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window((receive_window / 4).into());
    t.receive_window(receive_window.into());
    t.send_window(SEND_WINDOW);
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // Links between homes reorder (jitter, Wi-Fi, bonded lines). With the default of 3
    // packets, every reordered burst looks like loss, the congestion window collapses and a
    // 1 MiB chunk takes minutes at 100 ms ± 20 ms; declare loss by time only, a quarter RTT
    // after the packet should have arrived (tests/netfaults.rs).
    t.packet_threshold(REORDER_PACKETS);
    t.time_threshold(REORDER_TIME);
    // CUBIC on a LAN, BBR between homes (see `congestion`).
    t.congestion_controller_factory(Arc::new(congestion::AdaptiveConfig));

    if let Ok(idle) = IDLE_TIMEOUT.try_into() {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// A node's QUIC endpoint: it requires client certificates chained to what we trust, and
/// tunes each connection for where its peer is (see [`transport_config`]).
pub struct ChunkServer {
    pub endpoint: quinn::Endpoint,
    /// The configuration for peers on this machine (the endpoint's default serves the rest).
    local: Arc<quinn::ServerConfig>,
}

impl ChunkServer {
    pub fn bind(identity: &TlsIdentity, addr: SocketAddr) -> Result<ChunkServer, DataError> {
        let tls = identity.server_config(ALPN_QUIC).map_err(|e| DataError::Setup(e.to_string()))?;
        let crypto = Arc::new(QuicServerConfig::try_from((*tls).clone()).map_err(|e| DataError::Setup(e.to_string()))?);
        let config = |loopback| {
            let mut cfg = quinn::ServerConfig::with_crypto(crypto.clone());
            cfg.transport_config(Arc::new(transport_config(NODE_RECEIVE_WINDOW, loopback)));
            cfg
        };
        let local = Arc::new(config(true));
        let endpoint = endpoint(addr, Some(config(false)))?;
        Ok(ChunkServer { endpoint, local })
    }

    /// The next incoming connection, still to be handshaken; `None` once the endpoint closed.
    pub async fn accept(&self) -> Option<quinn::Connecting> {
        loop {
            let incoming = self.endpoint.accept().await?;
            let accepted = if is_loopback(incoming.remote_address()) {
                incoming.accept_with(self.local.clone())
            } else {
                incoming.accept()
            };
            match accepted {
                Ok(connecting) => return Some(connecting),
                Err(e) => tracing::debug!("QUIC connection refused: {e}"),
            }
        }
    }
}

/// A QUIC endpoint on `addr` with large socket buffers.
fn endpoint(addr: SocketAddr, server: Option<quinn::ServerConfig>) -> Result<quinn::Endpoint, DataError> {
    let socket = std::net::UdpSocket::bind(addr).map_err(|e| DataError::Setup(format!("cannot bind QUIC on {addr}: {e}")))?;
    grow_socket_buffers(&socket);
    let mut config = quinn::EndpointConfig::default();
    // Accept datagrams up to the loopback MTU: peers on this machine send them (peers
    // elsewhere never exceed what their path MTU discovery finds).
    config
        .max_udp_payload_size(LOOPBACK_UDP_PAYLOAD)
        .map_err(|e| DataError::Setup(format!("QUIC payload size: {e}")))?;
    let runtime = quinn::default_runtime().ok_or_else(|| DataError::Setup("no async runtime for QUIC".into()))?;
    quinn::Endpoint::new(config, server, socket, runtime).map_err(|e| DataError::Setup(format!("cannot start QUIC on {addr}: {e}")))
}

/// Asks for large UDP buffers so bursts of chunk data are not dropped by the kernel
/// (the kernel caps the request at net.core.rmem_max / wmem_max; failure is harmless).
fn grow_socket_buffers(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = SOCKET_BUFFER_BYTES;
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: a valid socket fd and a correctly sized int option value.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &size as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// The principal and role of the peer of an established connection.
pub fn peer_of(conn: &quinn::Connection) -> Option<(collective_core::Principal, collective_core::Role)> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    collective_pki::peer_from_der(certs.first()?).ok()
}

/// Writes a u32-LE length and an encoded message.
pub async fn write_frame<M: Message>(send: &mut quinn::SendStream, msg: &M) -> Result<(), quinn::WriteError> {
    let body = msg.encode_to_vec();
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    send.write_all(&buf).await
}

/// Why a frame or a payload could not be read from a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("chunk of {0} bytes exceeds the {MAX_CHUNK_BYTES}-byte limit")]
    PayloadTooLarge(u64),
    /// The stream failed or ended early while reading `what`.
    #[error("reading {what}: {detail}")]
    Read { what: &'static str, detail: String },
    #[error("decoding frame: {0}")]
    Decode(String),
    /// The sender reset the stream because its copy of the chunk is corrupt.
    #[error("the sender found the chunk corrupt")]
    SenderCorrupt,
    /// The payload did not arrive whole (the words say how).
    #[error("{0}")]
    Payload(String),
}

/// The body length a frame header announces, refusing oversized frames.
fn frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Reads one length-prefixed message, refusing oversized frames.
pub async fn read_frame<M: Message + Default>(recv: &mut quinn::RecvStream) -> Result<M, FrameError> {
    let read = |what: &'static str| {
        move |e: quinn::ReadExactError| FrameError::Read {
            what,
            detail: e.to_string(),
        }
    };
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await.map_err(read("frame length"))?;
    let mut body = vec![0u8; frame_len(header)?];
    recv.read_exact(&mut body).await.map_err(read("frame"))?;
    M::decode(body.as_slice()).map_err(|e| FrameError::Decode(e.to_string()))
}

/// [`read_frame`] for a node's answer to a get, telling a stream the node reset because
/// its copy is corrupt apart (the reset may overtake the answer).
async fn read_response(recv: &mut quinn::RecvStream) -> Result<ChunkResponse, PayloadError> {
    let fail = |what: &str, e: quinn::ReadExactError| match e {
        quinn::ReadExactError::ReadError(e) => payload_error(e),
        e => PayloadError::Other(format!("reading {what}: {e}")),
    };
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await.map_err(|e| fail("frame length", e))?;
    let mut body = vec![0u8; frame_len(header).map_err(|e| PayloadError::Other(e.to_string()))?];
    recv.read_exact(&mut body).await.map_err(|e| fail("frame", e))?;
    ChunkResponse::decode(body.as_slice()).map_err(|e| PayloadError::Other(format!("decoding frame: {e}")))
}

/// Parses one frame from the start of `buf` exactly as [`read_frame`] reads it from a
/// stream; returns the message and the bytes it took.
pub fn decode_frame<M: Message + Default>(buf: &[u8]) -> Result<(M, usize), FrameError> {
    let header: [u8; 4] = buf.get(..4).and_then(|h| h.try_into().ok()).ok_or(FrameError::Read {
        what: "frame length",
        detail: "too short".into(),
    })?;
    let len = frame_len(header)?;
    let body = buf.get(4..4 + len).ok_or(FrameError::Read {
        what: "frame",
        detail: "stream ended".into(),
    })?;
    let m = M::decode(body).map_err(|e| FrameError::Decode(e.to_string()))?;
    Ok((m, 4 + len))
}

/// Reads exactly `size` payload bytes into one contiguous buffer (copied once from
/// QUIC's receive buffers, never zero-filled first; contiguous so BLAKE3 can hash it with
/// full SIMD parallelism).
pub async fn read_payload(recv: &mut quinn::RecvStream, size: u64) -> Result<Bytes, FrameError> {
    if size > MAX_CHUNK_BYTES {
        return Err(FrameError::PayloadTooLarge(size));
    }
    read_payload_whole(recv, size).await.map_err(|e| match e {
        PayloadError::Corrupt => FrameError::SenderCorrupt,
        PayloadError::Other(detail) => FrameError::Payload(detail),
    })
}

/// The code a node resets a get's stream with when the chunk it was sending turns out
/// corrupt on its disk (it sends a large chunk while still reading it, so it knows only at
/// the end). The node has quarantined its copy by then.
pub const RESET_CORRUPT: u32 = 0xC0;
/// The code a node resets a get's stream with when reading the chunk from its disk fails
/// part-way.
pub const RESET_IO: u32 = 0xC1;
/// The code a node resets a stream with when it did not complete within its deadline (no
/// request in time, or an upload that stalled).
pub const RESET_TIMEOUT: u32 = 0xC2;

/// Why a chunk's payload did not arrive.
enum PayloadError {
    /// The node found its copy corrupt while sending it.
    Corrupt,
    Other(String),
}

/// The [`PayloadError`] for a failed stream read.
fn payload_error(e: quinn::ReadError) -> PayloadError {
    match e {
        quinn::ReadError::Reset(code) if code.into_inner() == u64::from(RESET_CORRUPT) => PayloadError::Corrupt,
        quinn::ReadError::Reset(code) if code.into_inner() == u64::from(RESET_IO) => {
            PayloadError::Other("the node failed to read the chunk from its disk part-way".into())
        }
        quinn::ReadError::Reset(code) if code.into_inner() == u64::from(RESET_TIMEOUT) => {
            PayloadError::Other("the node cut the stream at its deadline (the transfer stalled)".into())
        }
        e => PayloadError::Other(format!("reading chunk payload: {e}")),
    }
}

/// [`read_payload`], telling a stream the node reset because its copy is corrupt apart.
async fn read_payload_whole(recv: &mut quinn::RecvStream, size: u64) -> Result<Bytes, PayloadError> {
    if size > MAX_CHUNK_BYTES {
        return Err(PayloadError::Other(format!(
            "chunk of {size} bytes exceeds the {MAX_CHUNK_BYTES}-byte limit"
        )));
    }
    let size = size as usize;
    // Reserved in full up front, so the buffer never moves while it fills.
    let mut buf = collective_core::buffers::take(size);
    while buf.len() < size {
        match recv.read_chunk(size - buf.len(), true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(PayloadError::Other(format!(
                    "stream ended after {} of {size} payload bytes",
                    buf.len()
                )));
            }
            Err(e) => return Err(payload_error(e)),
        }
    }
    Ok(collective_core::buffers::into_bytes(buf))
}

/// Where to reach a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeTarget {
    /// Principal, e.g. `node-01@alice.collective.local`.
    pub node: String,
    pub addr: SocketAddr,
}

/// One node's pooled connection; its lock is held while connecting, so concurrent calls
/// to that node wait for one handshake while calls to other nodes go on.
type Slot = Arc<Mutex<Option<quinn::Connection>>>;

/// A pooled QUIC client for chunk operations: one connection per node, many streams, and a
/// circuit breaker per node so a dead node costs one timeout, not one per chunk.
pub struct ChunkClient {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    /// For nodes on this machine.
    local_config: quinn::ClientConfig,
    conns: std::sync::Mutex<HashMap<String, Slot>>,
    pub breakers: collective_core::Breakers,
    /// Nodes a handshake is under way with, and since when.
    connecting: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    /// Set by `close`: failures from then on are ours, not the nodes'.
    closing: std::sync::atomic::AtomicBool,
}

/// A handshake under way, recorded in [`ChunkClient::connecting`] until dropped (also
/// when the caller gives up on it).
struct Connecting<'a> {
    map: &'a std::sync::Mutex<HashMap<String, std::time::Instant>>,
    node: String,
}

impl<'a> Connecting<'a> {
    fn start(map: &'a std::sync::Mutex<HashMap<String, std::time::Instant>>, node: &str) -> Connecting<'a> {
        map.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string(), std::time::Instant::now());
        Connecting {
            map,
            node: node.to_string(),
        }
    }
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.node);
    }
}

/// Whether a node can take a request now, as far as this client knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reach {
    /// A live pooled connection.
    Connected,
    /// Nothing known against it (no connection yet, or a handshake just started).
    Unknown,
    /// Its breaker is open, or a handshake has been pending for longer than HEDGE_AFTER.
    Doubtful,
}

fn server_name(node: &str) -> Result<String, DataError> {
    let p: collective_core::Principal = node.parse().map_err(|e| DataError::Protocol(format!("bad node principal: {e}")))?;
    Ok(p.dns_name())
}

impl ChunkClient {
    pub fn new(identity: &TlsIdentity) -> Result<ChunkClient, DataError> {
        let tls = identity.client_config(ALPN_QUIC).map_err(|e| DataError::Setup(e.to_string()))?;
        let crypto = QuicClientConfig::try_from((*tls).clone()).map_err(|e| DataError::Setup(e.to_string()))?;
        let crypto = Arc::new(crypto);
        let config = |loopback| {
            let mut config = quinn::ClientConfig::new(crypto.clone());
            config.transport_config(Arc::new(transport_config(CLIENT_RECEIVE_WINDOW, loopback)));
            config
        };
        let bind: SocketAddr = ([0, 0, 0, 0], 0).into();
        let endpoint = endpoint(bind, None)?;
        Ok(ChunkClient {
            endpoint,
            config: config(false),
            local_config: config(true),
            conns: std::sync::Mutex::new(HashMap::new()),
            breakers: collective_core::Breakers::default(),
            connecting: std::sync::Mutex::new(HashMap::new()),
            closing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn reach(&self, node: &str, now: std::time::Instant) -> Reach {
        if self.breakers.state(node, now) == collective_core::BreakerState::Open {
            return Reach::Doubtful;
        }
        if let Some(since) = self.connecting.lock().unwrap_or_else(|p| p.into_inner()).get(node)
            && now.duration_since(*since) >= HEDGE_AFTER
        {
            return Reach::Doubtful;
        }
        match self.slot(node).try_lock() {
            Ok(c) if c.as_ref().is_some_and(|c| c.close_reason().is_none()) => Reach::Connected,
            _ => Reach::Unknown,
        }
    }

    /// Connects to `target` in the background (so a dead node's failure opens its breaker
    /// even when nobody waits for it any more); resolves to whether it connected.
    fn connect_detached(self: &Arc<Self>, target: &NodeTarget) -> tokio::task::JoinHandle<bool> {
        let me = self.clone();
        let target = target.clone();
        tokio::spawn(async move {
            me.guarded(&target, async { me.connection(&target).await.map(|_| ()) })
                .await
                .is_ok()
        })
    }

    /// The order to try a chunk's replicas in: those this client doubts (breaker open, a
    /// handshake pending longer than [`HEDGE_AFTER`]) last; and when the first one is not
    /// connected yet, the first two connect at once and the second goes first if it is
    /// ready while the first has not connected within `FIRST_PREFERENCE` (or failed).
    /// Returns indexes into `targets`.
    pub async fn hedged_order(self: &Arc<Self>, targets: &[NodeTarget]) -> Vec<usize> {
        let now = std::time::Instant::now();
        let mut order: Vec<usize> = (0..targets.len()).collect();
        let reach: Vec<Reach> = targets.iter().map(|t| self.reach(&t.node, now)).collect();
        // Stable: the coordinator's order stays within each kind.
        order.sort_by_key(|&i| (reach[i] == Reach::Doubtful) as u8);
        if order.len() < 2 || reach[order[0]] != Reach::Unknown {
            return order;
        }
        // Both handshakes start now (connections are pooled, so the second is rarely
        // wasted); the first copy is preferred unless it is slow while the second is ready.
        let started = tokio::time::Instant::now();
        let first = self.connect_detached(&targets[order[0]]);
        let second = self.connect_detached(&targets[order[1]]);
        tokio::pin!(first);
        tokio::pin!(second);
        let (mut first_ok, mut second_ok): (Option<bool>, Option<bool>) = (None, None);
        loop {
            match (first_ok, second_ok) {
                (Some(true), _) => return order,
                (Some(false), Some(true)) => {
                    order.swap(0, 1);
                    return order;
                }
                (Some(false), Some(false)) => {
                    // Neither answers: the others first, these two last.
                    order.rotate_left(2);
                    return order;
                }
                (None, Some(true)) if started.elapsed() >= FIRST_PREFERENCE => {
                    order.swap(0, 1);
                    return order;
                }
                _ => {}
            }
            let wake = if second_ok == Some(true) {
                started + FIRST_PREFERENCE
            } else {
                started + CONNECT_TIMEOUT
            };
            tokio::select! {
                r = &mut first, if first_ok.is_none() => first_ok = Some(matches!(r, Ok(true))),
                r = &mut second, if second_ok.is_none() => second_ok = Some(matches!(r, Ok(true))),
                _ = tokio::time::sleep_until(wake) => {
                    if second_ok != Some(true) {
                        return order;
                    }
                }
            }
        }
    }

    fn slot(&self, node: &str) -> Slot {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.entry(node.to_string()).or_default().clone()
    }

    /// Whether the pooled connection to `node` is gone or closed.
    async fn connection_lost(&self, node: &str) -> bool {
        let slot = self.slot(node);
        let conn = slot.lock().await;
        conn.as_ref().is_none_or(|c| c.close_reason().is_some())
    }

    /// Drops a node's pooled connection (it failed; the next call connects afresh).
    async fn forget(&self, node: &str) {
        let slot = self.slot(node);
        if let Some(c) = slot.lock().await.take() {
            c.close(0u32.into(), b"failed");
        }
    }

    async fn connection(&self, target: &NodeTarget) -> Result<quinn::Connection, DataError> {
        let slot = self.slot(&target.node);
        let mut conn_slot = slot.lock().await;
        if let Some(c) = conn_slot.as_ref()
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let cerr = |detail: String| DataError::Connect {
            node: target.node.clone(),
            addr: target.addr.to_string(),
            detail,
        };
        if let Err(retry_in) = self.breakers.check(&target.node, std::time::Instant::now()) {
            return Err(DataError::Skipped {
                node: target.node.clone(),
                retry_in,
            });
        }
        let connecting = self
            .endpoint
            .connect_with(
                if is_loopback(target.addr) {
                    self.local_config.clone()
                } else {
                    self.config.clone()
                },
                target.addr,
                &server_name(&target.node)?,
            )
            .map_err(|e| cerr(e.to_string()))?;
        let outcome = {
            let _pending = Connecting::start(&self.connecting, &target.node);
            tokio::time::timeout(CONNECT_TIMEOUT, connecting).await
        };
        let conn = match outcome {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(cerr(explain_connection_error(&e.to_string()))),
            Err(_) => {
                return Err(cerr(format!(
                    "no answer within {} s (is the node running?)",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        };
        *conn_slot = Some(conn.clone());
        Ok(conn)
    }

    async fn open(&self, target: &NodeTarget) -> Result<(quinn::SendStream, quinn::RecvStream), DataError> {
        let conn = self.connection(target).await?;
        match conn.open_bi().await {
            Ok(s) => Ok(s),
            Err(_) => {
                // A stale pooled connection: drop it and try once more on a fresh one.
                self.slot(&target.node).lock().await.take();
                let conn = self.connection(target).await?;
                conn.open_bi().await.map_err(|e| DataError::Transfer {
                    node: target.node.clone(),
                    detail: explain_connection_error(&e.to_string()),
                })
            }
        }
    }

    /// Closes every connection cleanly so nodes free their state at once, and waits
    /// (briefly) for the close to be delivered.
    pub async fn close(&self) {
        self.closing.store(true, std::sync::atomic::Ordering::Relaxed);
        let slots: Vec<(String, Slot)> = self.conns.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        let mut handshaking = false;
        for (node, slot) in slots {
            // A slot held by a handshake still under way (a dead node, say) is not waited
            // for: closing the endpoint below ends that handshake.
            let Ok(mut guard) = slot.try_lock() else {
                handshaking = true;
                continue;
            };
            let Some(c) = guard.take() else { continue };
            let s = c.stats();
            tracing::debug!(%node, mtu = s.path.current_mtu, sent = s.udp_tx.datagrams, sent_bytes = s.udp_tx.bytes, lost = s.path.lost_packets, cwnd = s.path.cwnd, "closing QUIC connection");
            c.close(0u32.into(), b"done");
        }
        self.endpoint.close(0u32.into(), b"done");
        // A handshake with a node that does not answer never drains: then only give the
        // close frames to live nodes a moment to leave.
        let linger = if handshaking {
            Duration::from_millis(20)
        } else {
            Duration::from_millis(200)
        };
        let _ = tokio::time::timeout(linger, self.endpoint.wait_idle()).await;
    }

    /// Runs one chunk operation with a stall timeout, and keeps the node's breaker: a node
    /// that cannot be reached, or stops answering, is skipped for a while.
    async fn guarded<T>(&self, target: &NodeTarget, op: impl std::future::Future<Output = Result<T, DataError>>) -> Result<T, DataError> {
        let (r, stalled) = match tokio::time::timeout(OP_TIMEOUT, op).await {
            Ok(r) => (r, false),
            Err(_) => (
                Err(DataError::Transfer {
                    node: target.node.clone(),
                    detail: format!("no answer within {} s", OP_TIMEOUT.as_secs()),
                }),
                true,
            ),
        };
        // Only a node that cannot be reached (no connection, a dead one, or no progress)
        // opens the breaker; one failed stream on a live connection does not.
        let unreachable = match &r {
            Err(DataError::Connect { .. }) => true,
            Err(DataError::Transfer { .. }) => stalled || self.connection_lost(&target.node).await,
            _ => false,
        };
        if self.closing.load(std::sync::atomic::Ordering::Relaxed) {
            // Ended by our own close: says nothing about the node.
            return r;
        }
        if unreachable {
            let wait = self.breakers.failure(&target.node, std::time::Instant::now());
            if let Err(e) = &r {
                tracing::warn!(node = %target.node, "{e}; skipping it for {:.1} s (circuit breaker open)", wait.as_secs_f64());
            }
            self.forget(&target.node).await;
        } else if !matches!(r, Err(DataError::Skipped { .. } | DataError::Transfer { .. })) {
            // It answered (even with an error of its own): it is reachable.
            self.breakers.success(&target.node);
        }
        r
    }

    /// One raw chunk stream to `target`, for tools that speak the chunk protocol frame by
    /// frame ([`write_frame`], [`read_frame`]) rather than through [`ChunkClient::put`] and
    /// [`ChunkClient::get`].
    pub async fn open_stream(&self, target: &NodeTarget) -> Result<(quinn::SendStream, quinn::RecvStream), DataError> {
        let conn = self.connection(target).await?;
        conn.open_bi().await.map_err(|e| DataError::Transfer {
            node: target.node.clone(),
            detail: format!("opening a stream: {e}"),
        })
    }

    /// Sends one chunk to one node; returns once the node has stored it durably. The chunk
    /// is the bytes of `data` one after another (the pieces it was read into, sent as they
    /// are).
    pub async fn put(&self, target: &NodeTarget, id: &ChunkId, data: &[Bytes], token: &[u8]) -> Result<(), DataError> {
        self.guarded(target, self.put_once(target, id, data, token)).await
    }

    /// Fetches one chunk from one node and verifies it hashes to `id`.
    pub async fn get(&self, target: &NodeTarget, id: &ChunkId, token: &[u8]) -> Result<Bytes, DataError> {
        self.guarded(target, self.get_once(target, id, token)).await
    }

    /// Starts fetching one chunk from one node: returns once the node has answered that it
    /// has the chunk, with its payload still to come piece by piece (see [`ChunkStream`]),
    /// so the caller can pass the pieces on without holding the whole chunk in memory.
    pub async fn get_stream(&self, target: &NodeTarget, id: &ChunkId, token: &[u8]) -> Result<ChunkStream, DataError> {
        let recv = self
            .guarded(target, async {
                let (mut send, mut recv) = self.open(target).await?;
                let req = request(ChunkOp::Get, id, 0, token)?;
                write_frame(&mut send, &req)
                    .await
                    .map_err(|e| transfer_error(target, e.to_string()))?;
                let _ = send.finish();
                let resp = read_response(&mut recv).await.map_err(|e| match e {
                    PayloadError::Corrupt => corrupt_while_sent(&target.node, id),
                    PayloadError::Other(detail) => transfer_error(target, detail),
                })?;
                check_status(&target.node, id, &resp)?;
                if resp.size > MAX_CHUNK_BYTES {
                    return Err(DataError::Protocol(format!(
                        "{} announced a chunk of {} bytes, over the {MAX_CHUNK_BYTES}-byte limit",
                        target.node, resp.size
                    )));
                }
                Ok((recv, resp.size))
            })
            .await?;
        Ok(ChunkStream {
            node: target.node.clone(),
            id: *id,
            size: recv.1,
            received: 0,
            recv: recv.0,
            hasher: blake3::Hasher::new(),
            verified: false,
        })
    }

    /// Asks a node to start reading a stored chunk from disk, ahead of a `get` of it with
    /// the same token. Returns once the node has answered; the node keeps no memory for it.
    pub async fn prefetch(&self, target: &NodeTarget, id: &ChunkId, token: &[u8]) -> Result<(), DataError> {
        self.guarded(target, async {
            let terr = |detail: String| DataError::Transfer {
                node: target.node.clone(),
                detail: explain_connection_error(&detail),
            };
            let (mut send, mut recv) = self.open(target).await?;
            write_frame(&mut send, &request(ChunkOp::Prefetch, id, 0, token)?)
                .await
                .map_err(|e| terr(e.to_string()))?;
            let _ = send.finish();
            let resp: ChunkResponse = read_frame(&mut recv).await.map_err(|e| terr(e.to_string()))?;
            check_status(&target.node, id, &resp)
        })
        .await
    }

    async fn put_once(&self, target: &NodeTarget, id: &ChunkId, data: &[Bytes], token: &[u8]) -> Result<(), DataError> {
        let terr = |detail: String| DataError::Transfer {
            node: target.node.clone(),
            detail: explain_connection_error(&detail),
        };
        let (mut send, mut recv) = self.open(target).await?;
        let len = data.iter().map(|b| b.len() as u64).sum();
        let req = request(ChunkOp::Put, id, len, token)?;
        write_frame(&mut send, &req).await.map_err(|e| terr(e.to_string()))?;
        for piece in data {
            send.write_chunk(piece.clone()).await.map_err(|e| terr(e.to_string()))?;
        }
        let _ = send.finish();
        let resp: ChunkResponse = read_frame(&mut recv).await.map_err(|e| terr(e.to_string()))?;
        check_status(&target.node, id, &resp)
    }

    async fn get_once(&self, target: &NodeTarget, id: &ChunkId, token: &[u8]) -> Result<Bytes, DataError> {
        let terr = |detail: String| DataError::Transfer {
            node: target.node.clone(),
            detail: explain_connection_error(&detail),
        };
        let (mut send, mut recv) = self.open(target).await?;
        let req = request(ChunkOp::Get, id, 0, token)?;
        write_frame(&mut send, &req).await.map_err(|e| terr(e.to_string()))?;
        let _ = send.finish();
        let unsent = |e| match e {
            PayloadError::Corrupt => corrupt_while_sent(&target.node, id),
            PayloadError::Other(detail) => terr(detail),
        };
        let resp = read_response(&mut recv).await.map_err(unsent)?;
        check_status(&target.node, id, &resp)?;
        let data = read_payload_whole(&mut recv, resp.size).await.map_err(unsent)?;
        if ChunkId::of(&data) != *id {
            return Err(DataError::Mismatch {
                node: target.node.clone(),
                chunk: id.short(),
            });
        }
        Ok(data)
    }
}

/// A node's copy found corrupt as it was being sent ([`RESET_CORRUPT`]).
fn corrupt_while_sent(node: &str, id: &ChunkId) -> DataError {
    DataError::Corrupt {
        node: node.to_string(),
        chunk: id.short(),
        detail: "found corrupt on the node's disk while being sent; the node quarantined it".into(),
    }
}

fn transfer_error(target: &NodeTarget, detail: String) -> DataError {
    DataError::Transfer {
        node: target.node.clone(),
        detail: explain_connection_error(&detail),
    }
}

/// One chunk's payload arriving from a node ([`ChunkClient::get_stream`]). Every piece is
/// hashed as it passes; only the call that returns `Ok(None)` vouches for the bytes, so a
/// caller must treat what it passed on as unverified until then (and write it over if the
/// chunk turns out wrong and is fetched again elsewhere).
pub struct ChunkStream {
    node: String,
    id: ChunkId,
    size: u64,
    received: u64,
    recv: quinn::RecvStream,
    hasher: blake3::Hasher,
    verified: bool,
}

impl ChunkStream {
    /// The chunk's size as the node announced it.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The next piece, at most `max` bytes; `Ok(None)` once the whole chunk has come and
    /// hashes to its id. A node that sends nothing for the operation timeout fails it.
    pub async fn next(&mut self, max: usize) -> Result<Option<Bytes>, DataError> {
        if self.received == self.size {
            if !self.verified {
                if ChunkId(*self.hasher.finalize().as_bytes()) != self.id {
                    return Err(DataError::Mismatch {
                        node: self.node.clone(),
                        chunk: self.id.short(),
                    });
                }
                self.verified = true;
            }
            return Ok(None);
        }
        let want = (self.size - self.received).min(max.max(1) as u64) as usize;
        let terr = |detail: String| DataError::Transfer {
            node: self.node.clone(),
            detail,
        };
        match tokio::time::timeout(OP_TIMEOUT, self.recv.read_chunk(want, true)).await {
            Err(_) => Err(terr(format!(
                "sent nothing for {} s ({} of {} bytes received)",
                OP_TIMEOUT.as_secs(),
                self.received,
                self.size
            ))),
            Ok(Ok(Some(piece))) => {
                self.received += piece.bytes.len() as u64;
                self.hasher.update(&piece.bytes);
                Ok(Some(piece.bytes))
            }
            Ok(Ok(None)) => Err(terr(format!("stream ended after {} of {} payload bytes", self.received, self.size))),
            Ok(Err(e)) => match payload_error(e) {
                PayloadError::Corrupt => Err(corrupt_while_sent(&self.node, &self.id)),
                PayloadError::Other(detail) => Err(terr(explain_connection_error(&detail))),
            },
        }
    }
}

fn request(op: ChunkOp, id: &ChunkId, size: u64, token: &[u8]) -> Result<ChunkRequest, DataError> {
    let token =
        collective_proto::v1::SignedToken::decode(token).map_err(|e| DataError::Protocol(format!("bad token from coordinator: {e}")))?;
    Ok(ChunkRequest {
        version: PROTOCOL_VERSION,
        op: op as i32,
        chunk_id: id.0.to_vec().into(),
        size,
        token: Some(token),
    })
}

fn check_status(node: &str, id: &ChunkId, resp: &ChunkResponse) -> Result<(), DataError> {
    let node = node.to_string();
    let detail = resp.message.clone();
    match ChunkStatus::try_from(resp.status).unwrap_or(ChunkStatus::Unspecified) {
        ChunkStatus::Ok => Ok(()),
        ChunkStatus::NotFound => Err(DataError::NotFound { node, chunk: id.short() }),
        ChunkStatus::Corrupt => Err(DataError::Corrupt {
            node,
            chunk: id.short(),
            detail,
        }),
        ChunkStatus::HashMismatch => Err(DataError::Mismatch { node, chunk: id.short() }),
        ChunkStatus::NoSpace => Err(DataError::NoSpace { node, detail }),
        ChunkStatus::Denied => Err(DataError::Denied { node, detail }),
        _ => Err(DataError::Remote { node, detail }),
    }
}

/// Turns rustls/quinn alert text into advice; a refused client certificate only shows up
/// as an alert at the first stream.
pub fn explain_connection_error(e: &str) -> String {
    let hint = if e.contains("UnknownIssuer") || e.contains("unknown issuer") || e.contains("UnknownCA") || e.contains("unknown ca") {
        " (the certificates are from different CAs: check the --ca/--cert files)"
    } else if e.contains("Expired") || e.contains("expired") {
        " (a certificate has expired: issue a new one with `collective ca issue`)"
    } else if e.contains("certificate required") || e.contains("CertificateRequired") {
        " (a client certificate is required)"
    } else if e.contains("bad certificate") || e.contains("BadCertificate") {
        " (the peer refused our certificate)"
    } else if e.contains("NotValidForName") {
        " (the server's certificate is not for the expected name)"
    } else {
        ""
    };
    format!("{e}{hint}")
}
