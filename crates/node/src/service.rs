//! The QUIC chunk service: one stream, one verified chunk operation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use collective_chunkstore::{ChunkReader, ChunkStore, KEEP_CACHED_BELOW, StoreError};
use collective_core::ChunkId;
use collective_dataplane::{MAX_CHUNK_BYTES, PROTOCOL_VERSION, RESET_CORRUPT, RESET_IO, RESET_TIMEOUT, peer_of, read_frame, write_frame};
use collective_pki::{TlsIdentity, TokenVerifier};
use collective_proto::v1::{ChunkOp, ChunkRequest, ChunkResponse, ChunkStatus, NodeUsage, TokenOp};
use tokio::sync::{RwLock, Semaphore};

use crate::metrics::NodeMetrics;

/// Bytes of chunk data a node holds in memory at once across all transfers.
const BUFFER_BUDGET_KIB: u32 = 8 * 1024;
/// A stream must say what it wants within this long.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// An upload that sends nothing for this long is stalled: it is cut and its disk
/// reservation released (a slow link still sends something every few seconds).
pub const UPLOAD_IDLE: Duration = Duration::from_secs(30);
/// Whatever it does, a stream ends within this long (a download to a reader that stopped
/// reading, for one): a backstop far above any honest transfer of one chunk.
const STREAM_LIFETIME: Duration = Duration::from_secs(1800);
/// Connections one principal of our own member may hold to this node at once, and all
/// the principals of another member together (its CA can make any number of them).
pub const MAX_CONNECTIONS_PER_PEER: usize = 16;
pub const MAX_CONNECTIONS_PER_MEMBER: usize = 64;
/// Chunk streams in flight at once, likewise per principal of ours and per other member;
/// further streams wait.
pub const MAX_STREAMS_PER_PEER: usize = 256;
pub const MAX_STREAMS_PER_MEMBER: usize = 1024;

/// What one holder (a principal of ours, or another member) has on this node: its
/// connections and a budget of streams.
struct PeerUse {
    connections: usize,
    streams: Arc<Semaphore>,
}

pub struct NodeState {
    pub principal: String,
    pub domain: String,
    pub store: Arc<ChunkStore>,
    pub metrics: NodeMetrics,
    /// Set once the coordinator has accepted our registration.
    pub verifier: RwLock<Option<TokenVerifier>>,
    pub coordinator: String,
    pub scrub: Arc<crate::scrub::Scrubber>,
    /// Our own QUIC client, for copying chunks to and from other nodes.
    pub peers: collective_dataplane::ChunkClient,
    buffers: Semaphore,
    /// Our certificate (its expiry is reported in heartbeats; it may be renewed while we
    /// run) and the revocations we enforce.
    pub identity: TlsIdentity,
    /// Turns true when the node is asked to stop: no new chunk streams are taken.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Chunk transfers and control calls in flight, for the shutdown log.
    pub busy: collective_rpc::Busy,
    /// Connections and streams in use, by principal.
    peer_use: Mutex<HashMap<String, PeerUse>>,
}

impl NodeState {
    pub fn new(
        identity: TlsIdentity,
        store: Arc<ChunkStore>,
        metrics: NodeMetrics,
        coordinator: String,
        scrub: Arc<crate::scrub::Scrubber>,
        peers: collective_dataplane::ChunkClient,
    ) -> NodeState {
        NodeState {
            principal: identity.principal.to_string(),
            domain: identity.principal.domain.clone(),
            store,
            metrics,
            verifier: RwLock::new(None),
            coordinator,
            scrub,
            peers,
            buffers: Semaphore::new(BUFFER_BUDGET_KIB as usize),
            identity,
            stopping: tokio::sync::watch::channel(false).0,
            busy: collective_rpc::Busy::default(),
            peer_use: Mutex::new(HashMap::new()),
        }
    }

    fn lock_peer_use(&self) -> std::sync::MutexGuard<'_, HashMap<String, PeerUse>> {
        self.peer_use.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Who a connection of `peer` counts against: itself when it is of our member, its
    /// member otherwise; and that holder's limits (connections, streams).
    fn holder(&self, peer: &collective_core::Principal) -> (String, usize, usize) {
        if peer.domain == self.domain {
            (peer.to_string(), MAX_CONNECTIONS_PER_PEER, MAX_STREAMS_PER_PEER)
        } else {
            (peer.domain.clone(), MAX_CONNECTIONS_PER_MEMBER, MAX_STREAMS_PER_MEMBER)
        }
    }

    /// Counts a connection against `holder`; returns its stream budget, or None when it
    /// already holds `max` connections.
    fn open_connection(&self, holder: &str, max: usize, streams: usize) -> Option<Arc<Semaphore>> {
        let mut m = self.lock_peer_use();
        let u = m.entry(holder.to_string()).or_insert_with(|| PeerUse {
            connections: 0,
            streams: Arc::new(Semaphore::new(streams)),
        });
        if u.connections >= max {
            return None;
        }
        u.connections += 1;
        Some(u.streams.clone())
    }

    fn close_connection(&self, holder: &str) {
        let mut m = self.lock_peer_use();
        if let Some(u) = m.get_mut(holder) {
            u.connections = u.connections.saturating_sub(1);
            if u.connections == 0 {
                m.remove(holder);
            }
        }
    }

    pub fn usage(&self) -> NodeUsage {
        let (capacity, used, free) = (self.store.capacity(), self.store.used(), self.store.free());
        self.metrics.stored_bytes.set(used as i64);
        self.metrics.stored_chunks.set(self.store.chunk_count() as i64);
        self.metrics.capacity_bytes.set(capacity as i64);
        self.metrics.free_bytes.set(free as i64);
        let breakers = self.peers.breakers.snapshot(std::time::Instant::now());
        let open = breakers.iter().filter(|(_, s)| *s == collective_core::BreakerState::Open).count();
        self.metrics.peer_breakers_open.set(open as i64);
        self.metrics
            .peer_breaker_trips
            .set(self.peers.breakers.opened.load(std::sync::atomic::Ordering::Relaxed) as i64);
        let scrub = self.scrub.status();
        self.metrics.scrub_progress.set(if scrub.running && scrub.pass_chunks_total > 0 {
            scrub.pass_chunks_done as f64 / scrub.pass_chunks_total as f64
        } else {
            1.0
        });
        self.metrics.scrub_last_pass.set(scrub.last_pass_ms / 1000);
        let (healthy, health_message) = if free < 64 << 20 {
            (true, "less than 64 MiB free".to_string())
        } else {
            (true, String::new())
        };
        NodeUsage {
            capacity_bytes: capacity,
            used_bytes: used,
            free_bytes: free,
            chunks: self.store.chunk_count(),
            healthy,
            health_message,
            scrub: Some(scrub),
            cert_not_after_ms: (self.identity.info().not_after.unix_timestamp_nanos() / 1_000_000) as i64,
        }
    }

    /// Reserves memory for a chunk of `size` bytes.
    async fn reserve(&self, size: u64) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let kib = (size.div_ceil(1024) as u32).clamp(1, BUFFER_BUDGET_KIB);
        self.buffers.acquire_many(kib).await.ok()
    }
}

/// Runs a closure when dropped.
struct Defer<F: FnMut()>(F);

impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Bytes gathered from the stream before they are hashed and written: large enough for
/// BLAKE3's SIMD and few write calls, small enough that many concurrent uploads stay cheap.
const STAGE_BYTES: usize = 256 * 1024;

enum Received {
    Stream(String),
    Store(StoreError),
    /// Nothing arrived for [`UPLOAD_IDLE`] after this many bytes.
    Stalled(u64),
}

/// What a large chunk is read from disk and sent in.
const READ_PIECE: usize = 1 << 20;

/// How [`send_streamed`] ended.
enum Streamed {
    /// The chunk went out, or the stream was reset once something went wrong mid-way.
    Sent,
    /// Nothing was sent: answer with this status, metric reason and message.
    Refused(ChunkStatus, &'static str, String),
}

/// Why serving one chunk stream stopped (logged; the client sees the stream end).
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Frame(#[from] collective_dataplane::FrameError),
    /// Reading the request or the chunk failed.
    #[error("{0}")]
    Read(String),
    /// Sending to the client failed.
    #[error("sending: {0}")]
    Write(String),
}

impl StreamError {
    fn write(e: impl std::fmt::Display) -> StreamError {
        StreamError::Write(e.to_string())
    }
}

/// Serves a get of a large chunk while reading it: each piece read from disk (on a
/// blocking thread, with direct I/O) goes to QUIC while the next one is read, so reading
/// and sending overlap and the chunk is never whole in memory. Its hash is known only at
/// the end: a chunk found corrupt then is quarantined and the stream reset with
/// [`RESET_CORRUPT`] (the client checks every byte it gets as well).
async fn send_streamed(
    state: &NodeState,
    id: ChunkId,
    size: u64,
    send: &mut quinn::SendStream,
    started: Instant,
) -> Result<Streamed, StreamError> {
    let _permit = state.reserve(size.min(2 * READ_PIECE as u64)).await;
    let reader = match state.store.reader(&id) {
        Ok(r) => r,
        Err(e @ StoreError::NotFound(_)) => return Ok(Streamed::Refused(ChunkStatus::NotFound, "not_found", e.to_string())),
        Err(e) => return Ok(Streamed::Refused(ChunkStatus::IoError, "io", e.to_string())),
    };
    let size = reader.len();
    write_frame(send, &response(ChunkStatus::Ok, String::new(), size))
        .await
        .map_err(StreamError::write)?;
    let read = |mut r: ChunkReader| {
        tokio::task::spawn_blocking(move || {
            let piece = r.next_piece(READ_PIECE);
            (r, piece)
        })
    };
    let (mut reading, mut finished) = if reader.is_done() {
        (None, Some(reader))
    } else {
        (Some(read(reader)), None)
    };
    while let Some(pending) = reading.take() {
        let (reader, piece) = pending
            .await
            .map_err(|e| StreamError::Read(format!("the read was interrupted: {e}")))?;
        let piece = match piece {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(chunk = %id, "reading a chunk being sent failed: {e}");
                state.metrics.op_errors.with_label_values(&["get", "io"]).inc();
                let _ = send.reset(RESET_IO.into());
                return Ok(Streamed::Sent);
            }
        };
        if reader.is_done() {
            finished = Some(reader);
        } else {
            reading = Some(read(reader));
        }
        send.write_chunk(piece).await.map_err(StreamError::write)?;
    }
    let Some(reader) = finished else {
        return Err(StreamError::Read("the chunk reader was lost".into()));
    };
    match state.store.finish_read(reader) {
        Ok(()) => {
            let _ = send.finish();
            state.metrics.bytes_out.inc_by(size);
            state.metrics.ops.with_label_values(&["get"]).inc();
            state.metrics.get_seconds.observe(started.elapsed().as_secs_f64());
            // Memory stays reserved until the peer has the bytes: QUIC keeps what it sent
            // until then.
            let _ = send.stopped().await;
        }
        Err(e) => {
            let corrupt = matches!(e, StoreError::Corrupt { .. });
            if corrupt {
                state.metrics.verification_failures.inc();
                state.scrub.report(id);
                tracing::error!(chunk = %id, "a chunk being sent turned out corrupt; quarantined it");
            } else {
                tracing::error!(chunk = %id, "reading a chunk being sent failed: {e}");
            }
            state
                .metrics
                .op_errors
                .with_label_values(&["get", if corrupt { "corrupt" } else { "io" }])
                .inc();
            let _ = send.reset(if corrupt { RESET_CORRUPT } else { RESET_IO }.into());
        }
    }
    Ok(Streamed::Sent)
}

/// Streams a chunk's payload to disk through the verifying writer. Memory per upload is one
/// stage buffer, whatever the chunk size, so no upload waits for another's memory.
async fn receive_chunk(
    mut writer: collective_chunkstore::ChunkWriter<'_>,
    recv: &mut quinn::RecvStream,
    size: u64,
) -> Result<(), Received> {
    // The pieces as they came off the network (no copy), written together once a stage's
    // worth has arrived.
    let mut staged: Vec<bytes::Bytes> = Vec::new();
    let mut staged_bytes = 0usize;
    let mut received = 0u64;
    let write = |writer: &mut collective_chunkstore::ChunkWriter<'_>, staged: &mut Vec<bytes::Bytes>| {
        let pieces: Vec<&[u8]> = staged.iter().map(|b| b.as_ref()).collect();
        let r = writer.write_pieces(&pieces);
        staged.clear();
        r
    };
    // One timer for the whole upload, armed for UPLOAD_IDLE after the last progress: a
    // timer per piece (thousands per chunk) costs the node more than the copy itself.
    let mut last = Instant::now();
    let idle = tokio::time::sleep(UPLOAD_IDLE);
    tokio::pin!(idle);
    while received < size {
        let next = tokio::select! {
            biased;
            r = recv.read_chunk((size - received) as usize, true) => r,
            _ = &mut idle => {
                let quiet = last.elapsed();
                // Dropping the writer (with this function's frame) releases its reservation.
                if quiet >= UPLOAD_IDLE {
                    return Err(Received::Stalled(received));
                }
                idle.as_mut().reset(tokio::time::Instant::now() + (UPLOAD_IDLE - quiet));
                continue;
            }
        };
        last = Instant::now();
        match next {
            Ok(Some(chunk)) => {
                received += chunk.bytes.len() as u64;
                if writer.is_direct() {
                    // The writer gathers the pieces itself, in its aligned stage.
                    writer.write(&chunk.bytes).map_err(Received::Store)?;
                    continue;
                }
                staged_bytes += chunk.bytes.len();
                staged.push(chunk.bytes);
                if staged_bytes >= STAGE_BYTES {
                    // A page-cache write of one stage takes tens of microseconds: cheaper inline
                    // than handing the worker thread off; the fsync below is not.
                    write(&mut writer, &mut staged).map_err(Received::Store)?;
                    staged_bytes = 0;
                }
            }
            Ok(None) => return Err(Received::Stream(format!("stream ended after {received} of {size} payload bytes"))),
            Err(e) => return Err(Received::Stream(format!("reading chunk payload: {e}"))),
        }
    }
    tokio::task::block_in_place(|| {
        write(&mut writer, &mut staged)?;
        writer.finish()
    })
    .map(|_| ())
    .map_err(Received::Store)
}

fn response(status: ChunkStatus, message: String, size: u64) -> ChunkResponse {
    ChunkResponse {
        status: status as i32,
        message,
        size,
    }
}

/// Serves every stream of one QUIC connection.
pub async fn serve_connection(state: Arc<NodeState>, incoming: quinn::Connecting) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("QUIC handshake failed: {e}");
            return;
        }
    };
    let Some((peer, _role)) = peer_of(&conn) else {
        conn.close(1u32.into(), b"no usable client certificate");
        return;
    };
    // Any principal chained to what we trust may connect (in a federation, other members'
    // users read chunks they were granted); every operation still needs a token from our
    // coordinator that names this caller.
    let caller = peer.to_string();
    let (holder, max_connections, max_streams) = state.holder(&peer);
    let Some(streams) = state.open_connection(&holder, max_connections, max_streams) else {
        tracing::warn!(%caller, "refused a connection: {holder} already holds {max_connections}");
        state.metrics.denied.inc();
        conn.close(2u32.into(), b"too many connections");
        return;
    };
    let closer = (state.clone(), holder);
    let _counted = Defer(move || closer.0.close_connection(&closer.1));
    let stats_conn = conn.clone();
    let _stats = Defer(move || {
        let s = stats_conn.stats();
        tracing::debug!(
            mtu = s.path.current_mtu,
            lost = s.path.lost_packets,
            sent = s.udp_tx.datagrams,
            rtt_us = s.path.rtt.as_micros() as u64,
            "QUIC connection closed"
        );
    });
    let mut stop = state.stopping.subscribe();
    loop {
        // A node that is stopping takes no new chunk streams; the connection is closed
        // with "node shutting down" once the transfers in flight are done.
        let (send, recv) = tokio::select! {
            r = conn.accept_bi() => match r {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = stop.wait_for(|v| *v) => break,
        };
        // Over its budget, the principal's next stream waits (and, behind it, QUIC's flow
        // control makes its sender wait).
        let permit = tokio::select! {
            p = streams.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.wait_for(|v| *v) => break,
        };
        let state = state.clone();
        let caller = caller.clone();
        let guard = state.busy.enter("chunk transfer");
        tokio::spawn(async move {
            match tokio::time::timeout(STREAM_LIFETIME, handle_stream(&state, &caller, send, recv)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%caller, "chunk stream ended early: {e}"),
                Err(_) => tracing::warn!(%caller, "cut a chunk stream still open after {STREAM_LIFETIME:?}"),
            }
            drop(permit);
            drop(guard);
        });
    }
}

async fn handle_stream(
    state: &NodeState,
    caller: &str,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), StreamError> {
    let req: ChunkRequest = match tokio::time::timeout(REQUEST_DEADLINE, read_frame(&mut recv)).await {
        Ok(r) => r?,
        Err(_) => {
            let _ = send.reset(RESET_TIMEOUT.into());
            return Err(StreamError::Read(format!(
                "no request within {REQUEST_DEADLINE:?} of opening the stream"
            )));
        }
    };
    let started = Instant::now();
    let op = ChunkOp::try_from(req.op).unwrap_or(ChunkOp::Unspecified);
    let op_name = match op {
        ChunkOp::Put => "put",
        ChunkOp::Get => "get",
        ChunkOp::Prefetch => "prefetch",
        ChunkOp::Unspecified => "unknown",
    };
    let fail = |status: ChunkStatus, reason: &str, msg: String| {
        state.metrics.op_errors.with_label_values(&[op_name, reason]).inc();
        response(status, format!("{}: {msg}", state.principal), 0)
    };
    let resp = 'resp: {
        if req.version != PROTOCOL_VERSION {
            break 'resp fail(
                ChunkStatus::BadRequest,
                "version",
                format!(
                    "chunk protocol version {} is not supported (this node speaks {PROTOCOL_VERSION})",
                    req.version
                ),
            );
        }
        let Some(id) = ChunkId::from_slice(&req.chunk_id) else {
            break 'resp fail(ChunkStatus::BadRequest, "bad_request", "malformed chunk id".into());
        };
        let token_op = match op {
            ChunkOp::Put => TokenOp::Put,
            ChunkOp::Get | ChunkOp::Prefetch => TokenOp::Get,
            ChunkOp::Unspecified => break 'resp fail(ChunkStatus::BadRequest, "bad_request", "unknown operation".into()),
        };
        let verified = {
            let guard = state.verifier.read().await;
            match guard.as_ref() {
                None => Err("this node has not registered with its coordinator yet; retry shortly".to_string()),
                Some(v) => match &req.token {
                    None => Err("no token was presented".into()),
                    Some(t) => v.verify(t, token_op, &id, &state.principal, caller).map_err(|e| e.to_string()),
                },
            }
        };
        let claims = match verified {
            Ok(c) => c,
            Err(msg) => {
                state.metrics.denied.inc();
                break 'resp fail(ChunkStatus::Denied, "denied", msg);
            }
        };
        // The coordinator reserved room for the size it signed; an upload of any other size
        // would store what nobody accounted for.
        if op == ChunkOp::Put && claims.size != req.size {
            state.metrics.denied.inc();
            break 'resp fail(
                ChunkStatus::Denied,
                "denied",
                format!(
                    "the upload says {} bytes but its token allows exactly {}; ask the coordinator for a new plan",
                    req.size, claims.size
                ),
            );
        }
        match op {
            ChunkOp::Put => {
                if req.size > MAX_CHUNK_BYTES {
                    break 'resp fail(
                        ChunkStatus::BadRequest,
                        "too_large",
                        format!("chunk of {} bytes exceeds the {MAX_CHUNK_BYTES}-byte limit", req.size),
                    );
                }
                let writer = match state.store.writer(id, req.size) {
                    Ok(w) => w,
                    Err(e @ StoreError::NoSpace { .. }) => break 'resp fail(ChunkStatus::NoSpace, "no_space", e.to_string()),
                    Err(e) => break 'resp fail(ChunkStatus::IoError, "io", e.to_string()),
                };
                match receive_chunk(writer, &mut recv, req.size).await {
                    Err(Received::Stalled(got)) => {
                        state.metrics.op_errors.with_label_values(&["put", "timeout"]).inc();
                        let _ = send.reset(RESET_TIMEOUT.into());
                        let _ = recv.stop(RESET_TIMEOUT.into());
                        return Err(StreamError::Read(format!(
                            "upload stalled: nothing for {UPLOAD_IDLE:?} after {got} of {} bytes; its reservation is released",
                            req.size
                        )));
                    }
                    Ok(()) => {
                        state.metrics.bytes_in.inc_by(req.size);
                        state.metrics.ops.with_label_values(&["put"]).inc();
                        state.metrics.put_seconds.observe(started.elapsed().as_secs_f64());
                        response(ChunkStatus::Ok, String::new(), 0)
                    }
                    Err(Received::Stream(e)) => return Err(StreamError::Read(e)),
                    Err(Received::Store(e @ StoreError::HashMismatch(_))) => {
                        fail(ChunkStatus::HashMismatch, "hash_mismatch", e.to_string())
                    }
                    Err(Received::Store(e @ StoreError::NoSpace { .. })) => fail(ChunkStatus::NoSpace, "no_space", e.to_string()),
                    Err(Received::Store(e)) => fail(ChunkStatus::IoError, "io", e.to_string()),
                }
            }
            ChunkOp::Prefetch => match state.store.prefetch(&id) {
                // Only the kernel's read-ahead is started: no memory of ours is taken, and
                // the get that follows finds the chunk in the page cache.
                Some(_) => {
                    state.metrics.ops.with_label_values(&["prefetch"]).inc();
                    response(ChunkStatus::Ok, String::new(), 0)
                }
                None => fail(
                    ChunkStatus::NotFound,
                    "not_found",
                    format!("chunk {} is not stored here", id.short()),
                ),
            },
            _ => {
                let size = state.store.prefetch(&id).unwrap_or(0);
                if size >= KEEP_CACHED_BELOW {
                    match send_streamed(state, id, size, &mut send, started).await? {
                        Streamed::Sent => return Ok(()),
                        Streamed::Refused(status, reason, msg) => break 'resp fail(status, reason, msg),
                    }
                }
                let _permit = state.reserve(size).await;
                // Small chunks stay cached, and reading one inline is cheaper than a hand-off
                // to another thread.
                match state.store.get(&id) {
                    Ok(data) => {
                        let size = data.len() as u64;
                        write_frame(&mut send, &response(ChunkStatus::Ok, String::new(), size))
                            .await
                            .map_err(StreamError::write)?;
                        send.write_chunk(data).await.map_err(StreamError::write)?;
                        let _ = send.finish();
                        state.metrics.bytes_out.inc_by(size);
                        state.metrics.ops.with_label_values(&["get"]).inc();
                        state.metrics.get_seconds.observe(started.elapsed().as_secs_f64());
                        // The stream holds on to the chunk until the peer has acknowledged
                        // all of it; so does the reservation, or the budget would bound only
                        // the chunks still being read from disk.
                        let _ = send.stopped().await;
                        return Ok(());
                    }
                    Err(e @ StoreError::NotFound(_)) => fail(ChunkStatus::NotFound, "not_found", e.to_string()),
                    Err(e @ StoreError::Corrupt { .. }) => {
                        state.metrics.verification_failures.inc();
                        state.scrub.report(id);
                        tracing::error!(chunk = %id, "served a read request for a corrupt chunk; quarantined it");
                        fail(ChunkStatus::Corrupt, "corrupt", e.to_string())
                    }
                    Err(e) => fail(ChunkStatus::IoError, "io", e.to_string()),
                }
            }
        }
    };
    write_frame(&mut send, &resp).await.map_err(StreamError::write)?;
    let _ = send.finish();
    // Let the peer read the answer before the stream is dropped.
    let _ = send.stopped().await;
    Ok(())
}
