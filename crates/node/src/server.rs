//! Wiring: load identity and store, start the endpoints, register, send heartbeats.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use collective_chunkstore::ChunkStore;
use collective_core::{Principal, Role, parse_duration, parse_size};
use collective_pki::TokenVerifier;
use collective_proto::v1::node_control_server::NodeControlServer;
use collective_proto::v1::registry_client::RegistryClient;
use collective_proto::v1::{HeartbeatRequest, RegisterNodeRequest};
use collective_telemetry::{Component, HealthReport};
use tokio::sync::watch;

use crate::config::NodeConfig;
use crate::control::Control;
use crate::metrics::NodeMetrics;
use crate::scrub::Scrubber;
use crate::service::{NodeState, serve_connection};

/// How often the heartbeat loop looks for changes in the store worth reporting early.
const USAGE_POLL: Duration = Duration::from_millis(250);
/// After SIGTERM: how long chunk transfers in flight may take, then how long control calls
/// may; with the rest a node stops within 10 s whatever is attached.
const TRANSFER_GRACE: Duration = Duration::from_secs(4);
const CONTROL_GRACE: Duration = Duration::from_secs(3);
/// QUIC application close code of a node that is stopping.
const SHUTTING_DOWN: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Pki(#[from] collective_pki::PkiError),
    #[error("cannot open the chunk store: {0}")]
    Store(#[from] collective_chunkstore::StoreError),
    #[error(transparent)]
    Rpc(#[from] collective_rpc::RpcError),
    #[error(transparent)]
    Data(#[from] collective_dataplane::DataError),
    #[error("{0}")]
    Io(String),
}

fn addr(what: &str, s: &str) -> Result<SocketAddr, NodeError> {
    collective_rpc::resolve(s).map_err(|e| NodeError::Config(format!("{what}: {e}")))
}

/// The address other machines reach a bound endpoint at: `advertise_host` with the bound
/// port, or the bound address itself; never an unspecified one.
fn advertised(host: &Option<String>, listen_key: &str, bound: SocketAddr) -> Result<String, NodeError> {
    let host = host.as_deref().unwrap_or_default();
    let bracketed_with_port = host.starts_with('[') && !host.ends_with(']');
    if bracketed_with_port || (host.contains(':') && !host.starts_with('[') && host.parse::<std::net::Ipv6Addr>().is_err()) {
        return Err(NodeError::Config(format!(
            "advertise_host '{host}' must be a host name or IP address without a port (each endpoint keeps its own port)"
        )));
    }
    if host.is_empty() && bound.ip().is_unspecified() {
        return Err(NodeError::Config(format!(
            "{listen_key} is {bound} (every interface), which is not an address other machines can reach, and advertise_host is not set; set advertise_host = \"HOST\" to this machine's name or address ({})",
            collective_rpc::suggest_addresses()
        )));
    }
    let a = collective_rpc::advertised_bound("advertise_host", host, listen_key, bound).map_err(|e| NodeError::Config(e.0))?;
    Ok(collective_rpc::Advertised { port: bound.port(), ..a }.to_string())
}

/// Runs a storage node until `shutdown` completes.
pub async fn run(cfg: NodeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), NodeError> {
    let identity = cfg.tls.load()?;
    if identity.role != Role::Node {
        return Err(NodeError::Config(format!(
            "{} holds a {} certificate; a node needs one issued with `collective ca issue --role node`",
            identity.cert_path.display(),
            identity.role
        )));
    }
    let capacity = parse_size(&cfg.capacity).map_err(|e| NodeError::Config(format!("capacity: {e}")))?;
    let heartbeat = parse_duration(&cfg.heartbeat_interval).map_err(|e| NodeError::Config(format!("heartbeat_interval: {e}")))?;
    let coordinator = Principal::new(&cfg.coordinator_name, &identity.principal.domain)
        .map_err(|e| NodeError::Config(format!("coordinator_name: {e}")))?;
    let data_dir = cfg.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || ChunkStore::open(&data_dir, capacity))
        .await
        .map_err(|e| NodeError::Io(e.to_string()))??;
    let scrub_rate = parse_size(&cfg.scrub_rate).map_err(|e| NodeError::Config(format!("scrub_rate: {e}")))?;
    let scrub_interval = parse_duration(&cfg.scrub_interval).map_err(|e| NodeError::Config(format!("scrub_interval: {e}")))?;
    let metrics = NodeMetrics::new().map_err(|e| NodeError::Io(e.to_string()))?;
    let cert_expiry = collective_telemetry::register_certificate_metric(&metrics.registry, identity.info().not_after)
        .map_err(|e| NodeError::Io(e.to_string()))?;
    let store = Arc::new(store);
    let scrub = Arc::new(Scrubber::new(store.clone(), metrics.clone(), scrub_rate));
    let state = NodeState::new(
        identity.clone(),
        store,
        metrics,
        coordinator.to_string(),
        scrub.clone(),
        collective_dataplane::ChunkClient::new(&identity)?,
    );
    let state = Arc::new(state);
    state.usage();
    let scrubbing = tokio::spawn(scrub.run(scrub_interval));

    let stop_rx = state.stopping.subscribe();
    let stopper = state.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: finishing chunk transfers and calls in flight");
        stopper.stopping.send_replace(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let reloader = collective_rpc::watch_tls_files(identity.clone(), stop_rx.clone(), move |info| {
        cert_expiry.set(info.not_after.unix_timestamp())
    });

    // QUIC chunk endpoint.
    let server = collective_dataplane::ChunkServer::bind(&identity, addr("quic_listen", &cfg.quic_listen)?)?;
    let quic = server.endpoint.clone();
    let quic_addr = quic.local_addr().map_err(|e| NodeError::Io(e.to_string()))?;
    {
        let state = state.clone();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                tokio::spawn(serve_connection(state.clone(), incoming));
            }
        });
    }

    // gRPC control endpoint.
    // Without a client certificate only the recovery record may be fetched (by the holder
    // of the member's recovery kit); every other call is answered before it is read.
    let grpc_tls = identity.server_config_optional_client(collective_pki::ALPN_GRPC)?;
    let (grpc_addr, incoming) =
        collective_rpc::tls_incoming_with(grpc_tls, addr("grpc_listen", &cfg.grpc_listen)?, Some(&identity.principal.domain)).await?;
    let advertised_grpc = advertised(&cfg.advertise_host, "grpc_listen", grpc_addr)?;
    let advertised_quic = advertised(&cfg.advertise_host, "quic_listen", quic_addr)?;
    let record = crate::recovery::RecordFile {
        path: cfg.data_dir.join(crate::recovery::RECORD_FILE),
    };
    let control = NodeControlServer::new(Control {
        state: state.clone(),
        record: record.clone(),
    });
    let recovery = collective_proto::v1::node_recovery_server::NodeRecoveryServer::new(crate::recovery::RecoveryService {
        state: state.clone(),
        file: record,
    })
    .max_decoding_message_size(64 << 10);
    let grpc = tokio::spawn(
        collective_rpc::server_builder()
            .layer(collective_rpc::RequireCertificate::except(&["/collective.v1.NodeRecovery/"]))
            .layer(state.busy.clone())
            .add_service(control)
            .add_service(recovery)
            .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())),
    );

    // HTTP metrics and health.
    let (registered_tx, registered_rx) = watch::channel(false);
    let health_state = state.clone();
    let data_dir = cfg.data_dir.clone();
    let own = identity.clone();
    let health = Arc::new(move || {
        let registered = *registered_rx.borrow();
        let usage = health_state.usage();
        let mut comps = vec![Component::new(
            "store",
            "ok",
            format!("{} chunks, {} free", usage.chunks, collective_core::format_bytes(usage.free_bytes)),
        )];
        comps.push(if registered {
            Component::new("coordinator", "ok", format!("registered with {}", health_state.coordinator))
        } else {
            Component::new(
                "coordinator",
                "failed",
                format!("not registered with {} yet", health_state.coordinator),
            )
        });
        let mut disk = collective_telemetry::disk_component(&data_dir);
        if usage.free_bytes < 64 << 20 && disk.state == "ok" {
            disk.state = "degraded".into();
            disk.message = format!("less than 64 MiB of the configured capacity is free; {}", disk.message);
        }
        comps.push(disk);
        comps.push(collective_telemetry::certificate_component("node", own.info().not_after));
        HealthReport::from_components(registered, comps)
    });
    let (http_addr, http) = collective_telemetry::serve(
        addr("http_listen", &cfg.http_listen)?,
        state.metrics.registry.clone(),
        health,
        stopped(stop_rx.clone()),
    )
    .await
    .map_err(|e| NodeError::Io(format!("cannot listen on {}: {e}", cfg.http_listen)))?;
    let http = tokio::spawn(http);
    tracing::info!(node = %identity.principal, %grpc_addr, %quic_addr, %http_addr, "node started");

    // Registration and heartbeats.
    let channel = collective_rpc::channel(&identity, &cfg.coordinator, &coordinator)?;
    let mut client = RegistryClient::new(channel);
    let reg = RegisterNodeRequest {
        grpc_addr: advertised_grpc,
        quic_addr: advertised_quic,
        usage: None,
    };
    let hb_state = state.clone();
    let mut hb_stop = stop_rx.clone();
    let heartbeats = tokio::spawn(async move {
        let mut registered = false;
        let mut warned = false;
        // Failed registrations in a row: retries back off (300 ms doubling to 5 s, jittered).
        let mut attempts = 0u32;
        loop {
            if !registered {
                let mut req = reg.clone();
                req.usage = Some(hb_state.usage());
                match client.register_node(req).await {
                    Ok(resp) => match TokenVerifier::new(&resp.get_ref().token_public_key) {
                        Ok(v) => {
                            take_revocations(&hb_state, &resp.get_ref().revoked, &resp.get_ref().removed_members);
                            *hb_state.verifier.write().await = Some(v);
                            registered = true;
                            warned = false;
                            let _ = registered_tx.send(true);
                            tracing::info!(coordinator = %resp.get_ref().coordinator, "registered");
                        }
                        Err(e) => tracing::error!("coordinator sent an unusable token key: {e}"),
                    },
                    Err(s) => {
                        if !warned {
                            tracing::warn!("cannot register yet: {}", collective_rpc::explain_status("the coordinator", &s));
                            warned = true;
                        }
                    }
                }
            } else {
                let corrupt = hb_state.scrub.unreported();
                match client
                    .heartbeat(HeartbeatRequest {
                        usage: Some(hb_state.usage()),
                        corrupt: corrupt.iter().map(|id| id.0.to_vec().into()).collect(),
                    })
                    .await
                {
                    Ok(r) if !r.get_ref().known => registered = false,
                    Ok(r) => {
                        hb_state.scrub.reported(&corrupt);
                        take_revocations(&hb_state, &r.get_ref().revoked, &r.get_ref().removed_members);
                    }
                    Err(s) => {
                        tracing::warn!("heartbeat failed: {}", collective_rpc::explain_status("the coordinator", &s));
                        registered = false;
                        let _ = registered_tx.send(false);
                    }
                }
            }
            // Report again after the interval, or sooner when the store changed, so the
            // coordinator's view of free space follows uploads closely.
            let wait = if registered {
                attempts = 0;
                heartbeat
            } else {
                attempts += 1;
                let base = Duration::from_millis(300) * 2u32.pow(attempts.saturating_sub(1).min(5));
                collective_core::jittered(base.min(Duration::from_secs(5)), &hb_state.principal)
            };
            let deadline = tokio::time::Instant::now() + wait;
            let snapshot = |s: &NodeState| (s.store.used(), s.store.chunk_count(), s.scrub.status().passes);
            let reported = snapshot(&hb_state);
            loop {
                let now = tokio::time::Instant::now();
                if now >= deadline || (registered && snapshot(&hb_state) != reported) {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(USAGE_POLL.min(deadline - now)) => {}
                    _ = hb_stop.wait_for(|v| *v) => return,
                }
            }
        }
    });

    let _ = stopped(stop_rx.clone()).await;
    let who = format!("node {}", identity.principal);
    // New QUIC connections are refused; streams on open ones stop being taken (see
    // serve_connection). Transfers in flight get a few seconds, then every connection
    // closes with "node shutting down" and clients go to another copy.
    quic.set_server_config(None);
    let busy = state.busy.clone();
    let idle = tokio::spawn(async move { busy.idle().await });
    collective_rpc::finish_within(idle, TRANSFER_GRACE, &state.busy, &who).await;
    quic.close(SHUTTING_DOWN.into(), b"node shutting down");
    collective_rpc::finish_within(grpc, CONTROL_GRACE, &state.busy, &who).await;
    collective_rpc::finish_within(http, Duration::from_secs(1), &collective_rpc::Busy::default(), &who).await;
    reloader.abort();
    heartbeats.abort();
    scrubbing.abort();
    tracing::info!("node stopped");
    Ok(())
}

/// Enforces the coordinator's current revocation list, and the members removed from the
/// federation, on our own TLS endpoints.
fn take_revocations(state: &NodeState, revoked: &[bytes::Bytes], removed_members: &[String]) {
    if state.identity.revocations().replace(revoked) {
        tracing::info!(revoked = revoked.len(), "revocation list from the coordinator updated");
    }
    if state.identity.revocations().set_removed_members(removed_members) {
        tracing::warn!(removed = ?removed_members, "members removed from the federation are refused from now on");
    }
}
