//! gRPC over mutual TLS 1.3: the accept loop that serves tonic services behind our own
//! rustls configuration, the connector clients use, and the per-call check of who is
//! calling (principal, member, role). Servers and clients of every role share it.

mod advertise;
mod limits;
mod shutdown;

pub use advertise::{AddressError, Advertised, advertised, advertised_bound, machine_addresses, suggest_addresses};
pub use limits::{
    ConnectionCounts, Counted, MAX_ANONYMOUS_CONNECTIONS_PER_ADDRESS, MAX_CONNECTIONS_PER_MEMBER, MAX_CONNECTIONS_PER_PRINCIPAL,
    MAX_HANDSHAKES, MAX_HANDSHAKES_PER_ADDRESS, MAX_HEADER_LIST_BYTES, MAX_STREAMS_PER_CONNECTION, RequireCertificate,
};
pub use shutdown::{Busy, BusyGuard, BusyService, SHUTDOWN_LOG_EVERY, finish_within, until_shutdown};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use collective_core::{Principal, Role};
use collective_pki::{ALPN_GRPC, Revocations, TlsIdentity, peer_from_der};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-call deadline for unary calls.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("'{0}' is not a valid address: {1}")]
    Address(String, String),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// The TLS stream tonic serves; `peer_certs()` works on requests over it.
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Authenticated connections, each counted against its peer while open, ready for
/// `Server::serve_with_incoming_shutdown`.
pub type Incoming = tokio_stream::wrappers::ReceiverStream<Result<Counted, std::io::Error>>;

/// A tonic server with the limits every Collective server keeps: calls per connection,
/// header size, keep-alive (a dead peer's connection is closed), and a deadline on the
/// handshake of each HTTP/2 connection.
pub fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
}

/// Binds `addr` and returns the bound address and a stream of authenticated TLS
/// connections (failed handshakes are logged and dropped) ready for
/// `Server::serve_with_incoming_shutdown`.
pub async fn tls_incoming(identity: &TlsIdentity, addr: SocketAddr) -> Result<(SocketAddr, Incoming), RpcError> {
    let config = identity.server_config(ALPN_GRPC).map_err(|e| RpcError::Tls(e.to_string()))?;
    tls_incoming_with(config, addr, Some(&identity.principal.domain)).await
}

/// Like [`tls_incoming`] with a caller-supplied server configuration. At most
/// [`MAX_HANDSHAKES`] handshakes run at once ([`MAX_HANDSHAKES_PER_ADDRESS`] from one
/// address; more are closed at once), and a peer above its connection limit
/// ([`MAX_CONNECTIONS_PER_PRINCIPAL`], [`MAX_ANONYMOUS_CONNECTIONS_PER_ADDRESS`]) is
/// refused after its handshake.
/// `own_domain` is the server's member: principals of other members count together.
pub async fn tls_incoming_with(
    config: Arc<rustls::ServerConfig>,
    addr: SocketAddr,
    own_domain: Option<&str>,
) -> Result<(SocketAddr, Incoming), RpcError> {
    let acceptor = TlsAcceptor::from(config);
    let listener = TcpListener::bind(addr).await.map_err(|e| RpcError::Bind(addr, e))?;
    let bound = listener.local_addr().map_err(|e| RpcError::Bind(addr, e))?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let counts = ConnectionCounts::for_domain(own_domain.map(str::to_string));
    let handshakes = limits::Handshakes::default();
    tokio::spawn(async move {
        let mut refused = 0u64;
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                break;
            }
            // Accepting never waits: a connection over the handshake limits is closed at
            // once, so idle sockets from one address cannot stop everyone else.
            let Some(slot) = handshakes.begin(peer.ip()) else {
                refused += 1;
                // Logged sparingly: a flood must not fill the log too.
                if refused <= 10 || refused.is_power_of_two() {
                    tracing::warn!(%peer, refused_total = refused, "too many TLS handshakes at once (from this address, or in all); connection closed");
                }
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let counts = counts.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(slot);
                match handshake {
                    Ok(Ok(tls)) => match counts.admit(tls, peer.ip()) {
                        Ok(counted) => {
                            let _ = tx.send(Ok(counted)).await;
                        }
                        Err(why) => tracing::warn!(%peer, "connection refused: {why}"),
                    },
                    Ok(Err(e)) => tracing::warn!(%peer, "TLS handshake refused: {e}"),
                    Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    Ok((bound, tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// A lazily connecting gRPC channel to `addr` that expects the server to hold a
/// certificate for `server_principal` (its DNS name `name.domain`).
pub fn channel(identity: &TlsIdentity, addr: &str, server_principal: &Principal) -> Result<Channel, RpcError> {
    let config = identity.client_config(ALPN_GRPC).map_err(|e| RpcError::Tls(e.to_string()))?;
    channel_with_config(config, addr, server_principal)
}

/// Like [`channel`], with a caller-supplied rustls configuration (ALPN must include `h2`).
pub fn channel_with_config(config: Arc<rustls::ClientConfig>, addr: &str, server_principal: &Principal) -> Result<Channel, RpcError> {
    let connector = TlsConnector::from(config);
    let server_name = rustls::pki_types::ServerName::try_from(server_principal.dns_name()).map_err(|e| RpcError::Tls(e.to_string()))?;
    let sock: SocketAddr = resolve(addr)?;
    let endpoint = Endpoint::from_shared(format!("http://{sock}"))
        .map_err(|e| RpcError::Address(addr.to_string(), e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20));
    let svc = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        async move {
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(sock))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer from {sock}")))??;
            let _ = tcp.set_nodelay(true);
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(svc))
}

/// How often a running process looks for a renewed certificate and a changed revocation list.
pub const TLS_RELOAD_PERIOD: Duration = Duration::from_secs(5);

/// Every [`TLS_RELOAD_PERIOD`] until `stop` turns true: takes up a renewed certificate
/// (see [`TlsIdentity::reload`]; `on_renewed` hears what it says) and a changed revocation
/// list. Problems are logged once each, and the certificate in use stays.
pub fn watch_tls_files(
    identity: TlsIdentity,
    mut stop: tokio::sync::watch::Receiver<bool>,
    on_renewed: impl Fn(&collective_pki::CertInfo) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_problem = String::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TLS_RELOAD_PERIOD) => {}
                _ = stop.wait_for(|v| *v) => return,
            }
            let id = identity.clone();
            let checked = tokio::task::spawn_blocking(move || (id.reload(), id.revocations().refresh())).await;
            let Ok((renewed, revoked)) = checked else { continue };
            let mut problems = Vec::new();
            match renewed {
                Ok(Some(info)) => {
                    tracing::info!(
                        principal = %identity.principal,
                        fingerprint = %info.fingerprint,
                        not_after = %info.not_after,
                        "certificate renewed: new connections use it"
                    );
                    on_renewed(&info);
                }
                Ok(None) => {}
                Err(e) => problems.push(format!("keeping the certificate in use: {e}")),
            }
            match revoked {
                Ok(true) => tracing::info!(revoked = identity.revocations().len(), "revocation list changed"),
                Ok(false) => {}
                Err(e) => problems.push(format!("keeping the previous revocation list: {e}")),
            }
            let problem = problems.join("; ");
            if !problem.is_empty() && problem != last_problem {
                tracing::warn!("{problem}");
            }
            last_problem = problem;
        }
    })
}

/// Resolves `host:port` (first address).
pub fn resolve(addr: &str) -> Result<SocketAddr, RpcError> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map_err(|e| RpcError::Address(addr.to_string(), e.to_string()))?
        .next()
        .ok_or_else(|| RpcError::Address(addr.to_string(), "resolves to no address".into()))
}

/// Who is calling: read from the verified client certificate.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub role: Role,
}

/// Metadata header naming the end user a coordinator of another member calls for.
pub const ON_BEHALF_OF: &str = "x-collective-user";

/// Who presented the (already verified) client certificate of this call. A certificate
/// revoked since the connection was made is refused here (TLS checks it only at the
/// handshake, and resumed sessions skip even that).
pub fn peer<T>(req: &Request<T>, revocations: &Revocations) -> Result<Caller, Status> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let certs = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.peer_certs())
        .ok_or_else(|| Status::unauthenticated("no client certificate was presented"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate was presented"))?;
    let (principal, role) = peer_from_der(leaf).map_err(|e| Status::unauthenticated(format!("client certificate refused: {e}")))?;
    if let Some(why) = revocations.principal_refusal(&principal) {
        return Err(Status::permission_denied(why));
    }
    if revocations.is_certificate_revoked(leaf) {
        return Err(Status::unauthenticated(format!(
            "the certificate of {principal} has been revoked by its member CA; ask its administrator for a new one"
        )));
    }
    Ok(Caller { principal, role })
}

/// Who presented the client certificate of this call, for logs and the audit trail
/// (revoked or not), or `(unknown)`.
pub fn peer_name<T>(req: &Request<T>) -> String {
    peer(req, &Revocations::default())
        .map(|p| p.principal.to_string())
        .unwrap_or_else(|_| "(unknown)".into())
}

/// The end user named by a forwarding coordinator (see [`ON_BEHALF_OF`]). A coordinator may
/// only speak for principals of its own member.
pub fn on_behalf_of<T>(req: &Request<T>, forwarder: &Principal) -> Result<Principal, Status> {
    let user: Principal = req
        .metadata()
        .get(ON_BEHALF_OF)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Status::permission_denied(format!("{forwarder} forwarded a call without naming its user")))?
        .parse()
        .map_err(|e| Status::invalid_argument(format!("forwarded user: {e}")))?;
    if user.domain != forwarder.domain {
        return Err(Status::permission_denied(format!(
            "{forwarder} may only act for principals of {}, not for {user}",
            forwarder.domain
        )));
    }
    Ok(user)
}

/// Wraps `msg` in a request that names `user` as the end user (for forwarding).
pub fn forwarded<T>(msg: T, user: &Principal) -> Request<T> {
    let mut req = Request::new(msg);
    if let Ok(v) = user.to_string().parse() {
        req.metadata_mut().insert(ON_BEHALF_OF, v);
    }
    req
}

/// Checks the caller belongs to `domain` and holds one of `roles`; returns who it is.
pub fn authorize<T>(req: &Request<T>, revocations: &Revocations, domain: &str, roles: &[Role]) -> Result<Caller, Status> {
    let Caller { principal, role } = peer(req, revocations)?;
    if principal.domain != domain {
        return Err(Status::permission_denied(format!("{principal} is not a principal of {domain}")));
    }
    if !roles.contains(&role) {
        let wanted: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        return Err(Status::permission_denied(format!(
            "{principal} holds a {role} certificate; this call needs a {} certificate",
            wanted.join(" or ")
        )));
    }
    Ok(Caller { principal, role })
}

/// Response metadata naming which namespace error a failed call hit, so a client can map
/// it to an errno without parsing the message (see [`ErrorKind`]).
pub const ERROR_KIND: &str = "x-collective-error";

/// Which namespace error a failed call hit; travels as [`ERROR_KIND`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    NotFound,
    Exists,
    NotADirectory,
    IsADirectory,
    NotEmpty,
    /// The path is a symbolic link where a file or directory was needed.
    Symlink,
    /// Placement found nodes up but full, or a member's contribution is used up.
    NoSpace,
    /// A move between datastores (the mount answers EXDEV, so `mv` copies instead).
    CrossDatastore,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::NotFound,
        ErrorKind::Exists,
        ErrorKind::NotADirectory,
        ErrorKind::IsADirectory,
        ErrorKind::NotEmpty,
        ErrorKind::Symlink,
        ErrorKind::NoSpace,
        ErrorKind::CrossDatastore,
    ];

    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not-found",
            ErrorKind::Exists => "exists",
            ErrorKind::NotADirectory => "not-dir",
            ErrorKind::IsADirectory => "is-dir",
            ErrorKind::NotEmpty => "not-empty",
            ErrorKind::Symlink => "symlink",
            ErrorKind::NoSpace => "no-space",
            ErrorKind::CrossDatastore => "cross-datastore",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A status with its error kind attached (see [`ERROR_KIND`]).
pub fn status_with_kind(code: tonic::Code, message: String, kind: ErrorKind) -> Status {
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert(ERROR_KIND, tonic::metadata::MetadataValue::from_static(kind.as_str()));
    Status::with_metadata(code, message, md)
}

/// The error kind a failed call carries, if any.
pub fn error_kind(s: &Status) -> Option<ErrorKind> {
    s.metadata()
        .get(ERROR_KIND)
        .and_then(|v| v.to_str().ok())
        .and_then(ErrorKind::parse)
}

/// What a TLS alert from the server (found in the error's causes) says about our
/// certificate, in words a user can act on.
fn certificate_alert(s: &Status) -> Option<&'static str> {
    let mut causes = String::new();
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        causes.push_str(&e.to_string());
        causes.push(' ');
        src = e.source();
    }
    let says = |alert: &str| causes.contains(alert);
    if says("CertificateRevoked") {
        Some(
            "our certificate has been revoked: by its member CA (ask the member's administrator for a new one), or because our member was removed from the federation",
        )
    } else if says("CertificateExpired") {
        Some("our certificate has expired or is not valid yet; renew it with `collective ca rotate` (or ask for a new one)")
    } else if says("UnknownCA") || says("BadCertificate") || says("CertificateRequired") {
        Some("it does not accept our certificate: check that --ca/--cert/--key come from this member's CA (`collective ca inspect FILE`)")
    } else {
        None
    }
}

pub fn explain_status(target: &str, s: &Status) -> String {
    use tonic::Code;
    let msg = s.message();
    if let Some(why) = certificate_alert(s) {
        return format!("{target} refused the connection: {why}");
    }
    match s.code() {
        Code::Unavailable => {
            let lower = msg.to_lowercase();
            if lower.contains("certificate") || lower.contains("alert") || lower.contains("tls") || lower.contains("handshake") {
                format!(
                    "{target} refused the TLS connection ({msg}); check that --ca/--cert/--key are from this member's CA and not expired"
                )
            } else {
                format!(
                    "cannot reach {target}: {msg}; is it running, and reachable at the address configured for it? Check that address (`collective context list` shows a client's) and the server's log"
                )
            }
        }
        Code::Unknown | Code::Cancelled => format!(
            "{target} closed the connection ({msg}); it most likely refused our certificate: check that --ca/--cert/--key come from this member's CA and are not expired or revoked (`collective ca inspect FILE`)"
        ),
        Code::DeadlineExceeded => format!("{target} did not answer in time: {msg}"),
        _ => msg.to_string(),
    }
}

/// Shared, cheaply clonable identity.
pub type SharedIdentity = Arc<TlsIdentity>;

#[cfg(test)]
mod explain_tests {
    use super::*;

    #[test]
    fn unreachable_names_the_next_step_for_any_cluster() {
        let m = explain_status("the coordinator", &Status::unavailable("tcp connect error: Connection refused"));
        assert!(m.starts_with("cannot reach the coordinator: tcp connect error"), "{m}");
        assert!(m.contains("`collective context list`"), "{m}");
        // Hand-built clusters have no `dev up` files.
        assert!(!m.contains("cluster.json") && !m.contains("dev up"), "{m}");
    }
}
