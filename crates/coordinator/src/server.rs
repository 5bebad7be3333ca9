//! Wiring: open metadata, load identity, serve gRPC and HTTP until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use collective_core::{Role, parse_duration};
use collective_meta::MetaStore;
use collective_pki::TokenSigner;
use collective_proto::v1::metadata_server::MetadataServer;
use collective_proto::v1::registry_server::RegistryServer;
use collective_telemetry::{Component, HealthReport};
use tokio::sync::watch;

use crate::config::CoordinatorConfig;
use crate::metadata::{MetadataService, status_report};
use crate::metrics::CoordinatorMetrics;
use crate::registry::RegistryService;
use crate::state::State;

const MAX_MESSAGE_BYTES: usize = 64 << 20;
const GAUGE_REFRESH: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Pki(#[from] collective_pki::PkiError),
    #[error(transparent)]
    Meta(#[from] collective_meta::MetaError),
    #[error(transparent)]
    Rpc(#[from] collective_rpc::RpcError),
    #[error("{0}")]
    Io(String),
}

/// Runs a coordinator until `shutdown` completes.
pub async fn run(cfg: CoordinatorConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), CoordinatorError> {
    let identity = cfg.tls.load()?;
    if identity.role != Role::Coordinator {
        return Err(CoordinatorError::Config(format!(
            "{} holds a {} certificate; a coordinator needs one issued with `collective ca issue --role coordinator`",
            identity.cert_path.display(),
            identity.role
        )));
    }
    if cfg.replication == 0 {
        return Err(CoordinatorError::Config("replication must be at least 1".into()));
    }
    let node_timeout = parse_duration(&cfg.node_timeout).map_err(|e| CoordinatorError::Config(format!("node_timeout: {e}")))?;
    let token_ttl = parse_duration(&cfg.token_ttl).map_err(|e| CoordinatorError::Config(format!("token_ttl: {e}")))?;
    let data_dir = cfg.data_dir.clone();
    let meta = tokio::task::spawn_blocking(move || MetaStore::open(&data_dir))
        .await
        .map_err(|e| CoordinatorError::Io(e.to_string()))??;
    let signer = TokenSigner::from_pkcs8(identity.pkcs8_der(), identity.principal.to_string())?;
    let metrics = CoordinatorMetrics::new().map_err(|e| CoordinatorError::Io(e.to_string()))?;
    let state = Arc::new(State::new(
        identity.clone(),
        Arc::new(meta),
        signer,
        cfg.replication as usize,
        node_timeout,
        token_ttl,
        metrics,
    )?);

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    let grpc_listen = collective_rpc::resolve(&cfg.grpc_listen).map_err(|e| CoordinatorError::Config(format!("grpc_listen: {e}")))?;
    let (grpc_addr, incoming) = collective_rpc::tls_incoming(&identity, grpc_listen).await?;
    let metadata = MetadataServer::new(MetadataService { state: state.clone() })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let registry = RegistryServer::new(RegistryService { state: state.clone() });
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(metadata)
            .add_service(registry)
            .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())),
    );

    let health_state = state.clone();
    let health = Arc::new(move || {
        let nodes = health_state.lock_nodes();
        let up = nodes.values().filter(|e| health_state.is_up(e)).count();
        let total = nodes.len();
        drop(nodes);
        let mut comps = vec![Component {
            name: "metadata".into(),
            state: "ok".into(),
            message: "open".into(),
        }];
        comps.push(match up {
            0 => Component {
                name: "nodes".into(),
                state: "failed".into(),
                message: format!("no healthy node ({total} registered)"),
            },
            n if n < health_state.replication => Component {
                name: "nodes".into(),
                state: "degraded".into(),
                message: format!("{n} of {total} nodes up; replication {} needs more", health_state.replication),
            },
            n if n < total => Component {
                name: "nodes".into(),
                state: "degraded".into(),
                message: format!("{n} of {total} nodes up"),
            },
            n => Component {
                name: "nodes".into(),
                state: "ok".into(),
                message: format!("{n} of {total} nodes up"),
            },
        });
        let days = (health_state.identity.info().not_after - time::OffsetDateTime::now_utc()).whole_days();
        comps.push(Component {
            name: "certificates".into(),
            state: if days < 14 { "degraded".into() } else { "ok".into() },
            message: format!("coordinator certificate expires in {days} days"),
        });
        HealthReport::from_components(up > 0, comps)
    });
    let http_listen = collective_rpc::resolve(&cfg.http_listen).map_err(|e| CoordinatorError::Config(format!("http_listen: {e}")))?;
    let (http_addr, http) = collective_telemetry::serve(http_listen, state.metrics.registry.clone(), health, stopped(stop_rx.clone()))
        .await
        .map_err(|e| CoordinatorError::Io(format!("cannot listen on {}: {e}", cfg.http_listen)))?;
    let http = tokio::spawn(http);

    let gauge_state = state.clone();
    let gauges = tokio::spawn(async move {
        loop {
            let s = gauge_state.clone();
            let _ = tokio::task::spawn_blocking(move || status_report(&s)).await;
            tokio::time::sleep(GAUGE_REFRESH).await;
        }
    });
    tracing::info!(coordinator = %identity.principal, %grpc_addr, %http_addr, replication = cfg.replication, "coordinator started");

    let _ = grpc.await;
    let _ = http.await;
    gauges.abort();
    state.meta.flush().await?;
    tracing::info!("coordinator stopped");
    Ok(())
}
