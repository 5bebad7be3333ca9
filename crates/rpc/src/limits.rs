//! What one peer may take of a server before any handler runs: connections per principal
//! (per address for a peer without a certificate), TLS handshakes in flight, and a gate
//! that answers a call without a client certificate before its body is read.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use collective_pki::peer_from_der;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::Status;
use tonic::codegen::http;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use crate::ServerStream;

/// Connections one principal of the server's own member may hold open at once.
pub const MAX_CONNECTIONS_PER_PRINCIPAL: usize = 32;
/// Connections the principals of one other member may hold open together (its CA can make
/// any number of principals).
pub const MAX_CONNECTIONS_PER_MEMBER: usize = 64;
/// Connections one address may hold open without a client certificate (invite redemption
/// and first contact only).
pub const MAX_ANONYMOUS_CONNECTIONS_PER_ADDRESS: usize = 4;
/// TLS handshakes a server runs at once, and from one address; a connection over either
/// is closed at once.
pub const MAX_HANDSHAKES: usize = 1024;
/// Generous: a household behind one address (NAT), or every process of a member on one
/// machine, opens many connections at once, and a loaded machine handshakes slowly.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 64;
/// Concurrent calls (HTTP/2 streams) on one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// Largest request header block a server accepts.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 << 10;

/// Who a connection counts against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Holder {
    Principal(String),
    /// Every principal of another member together.
    Member(String),
    Anonymous(IpAddr),
}

/// TLS handshakes under way, in all and by address.
#[derive(Clone, Default)]
pub(crate) struct Handshakes {
    inner: Arc<Mutex<(usize, HashMap<IpAddr, usize>)>>,
}

/// One handshake counted until dropped.
pub(crate) struct HandshakeSlot {
    of: Handshakes,
    addr: IpAddr,
}

impl Handshakes {
    /// Counts a handshake from `addr`, or None when over a limit.
    pub(crate) fn begin(&self, addr: IpAddr) -> Option<HandshakeSlot> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let from = g.1.get(&addr).copied().unwrap_or(0);
        if g.0 >= MAX_HANDSHAKES || from >= MAX_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        g.0 += 1;
        *g.1.entry(addr).or_default() += 1;
        Some(HandshakeSlot { of: self.clone(), addr })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut g = self.of.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.1.remove(&self.addr);
            }
        }
    }
}

/// Open connections by holder.
#[derive(Clone, Default)]
pub struct ConnectionCounts {
    inner: Arc<Mutex<HashMap<Holder, usize>>>,
    /// The server's own member domain: other members' principals count together.
    own_domain: Option<String>,
}

impl ConnectionCounts {
    pub(crate) fn for_domain(domain: Option<String>) -> ConnectionCounts {
        ConnectionCounts {
            inner: Arc::default(),
            own_domain: domain,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Holder, usize>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `tls` against its principal (a principal of another member: against that
    /// member; without a certificate: against its address); when that holder is at its
    /// limit, the connection is dropped (closed) and the reason given.
    pub(crate) fn admit(&self, tls: ServerStream, addr: IpAddr) -> Result<Counted, String> {
        let principal = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| peer_from_der(leaf).ok())
            .map(|(p, _)| p);
        let (holder, limit) = match principal {
            Some(p) if self.own_domain.as_deref().is_some_and(|d| d != p.domain) => (Holder::Member(p.domain), MAX_CONNECTIONS_PER_MEMBER),
            Some(p) => (Holder::Principal(p.to_string()), MAX_CONNECTIONS_PER_PRINCIPAL),
            None => (Holder::Anonymous(addr), MAX_ANONYMOUS_CONNECTIONS_PER_ADDRESS),
        };
        let mut m = self.lock();
        let n = m.entry(holder.clone()).or_default();
        if *n >= limit {
            let who = match &holder {
                Holder::Principal(p) => p.clone(),
                Holder::Member(m) => format!("member {m}"),
                Holder::Anonymous(a) => format!("{a} (no certificate)"),
            };
            return Err(format!("{who} already holds {limit} connections"));
        }
        *n += 1;
        drop(m);
        Ok(Counted {
            inner: tls,
            counts: self.clone(),
            holder,
        })
    }

    fn release(&self, holder: &Holder) {
        let mut m = self.lock();
        if let Some(n) = m.get_mut(holder) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(holder);
            }
        }
    }

    /// Connections open now, over every holder.
    pub fn open(&self) -> usize {
        self.lock().values().sum()
    }
}

/// A TLS connection counted against its holder until it is dropped.
pub struct Counted {
    inner: ServerStream,
    counts: ConnectionCounts,
    holder: Holder,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.counts.release(&self.holder);
    }
}

impl Connected for Counted {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A layer that answers UNAUTHENTICATED, without reading the body, every call made over a
/// connection that presented no client certificate, except calls to the services named
/// in `open` (path prefixes such as `/collective.v1.Bootstrap/`). A stranger can then make
/// the server hold no more of a request than HTTP/2's flow-control window.
#[derive(Clone)]
pub struct RequireCertificate {
    open: &'static [&'static str],
}

impl RequireCertificate {
    pub fn except(open: &'static [&'static str]) -> RequireCertificate {
        RequireCertificate { open }
    }
}

impl<S> tower::Layer<S> for RequireCertificate {
    type Service = RequireCertificateService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireCertificateService { inner, open: self.open }
    }
}

#[derive(Clone)]
pub struct RequireCertificateService<S> {
    inner: S,
    open: &'static [&'static str],
}

impl<S, B> tower::Service<http::Request<B>> for RequireCertificateService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let certified = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .is_some_and(|c| !c.is_empty());
        if !certified && !self.open.iter().any(|p| req.uri().path().starts_with(p)) {
            let refusal = Status::unauthenticated(
                "this call needs a client certificate of the federation; configure the client with one (`collective invite redeem` makes one)",
            );
            return Box::pin(std::future::ready(Ok(refusal.into_http())));
        }
        Box::pin(self.inner.call(req))
    }
}
