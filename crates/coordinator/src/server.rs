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

use collective_core::{Subject, parse_size};
use collective_gossip::{Gossip, GossipSettings};
use collective_pki::{FederationRoot, MemberCa, TlsIdentity};
use collective_proto::v1::admin_server::AdminServer;
use collective_proto::v1::bootstrap_server::BootstrapServer;
use collective_proto::v1::federation_server::FederationServer;

use crate::admin::AdminService;
use crate::bootstrap::BootstrapService;
use crate::config::{CoordinatorConfig, FederationConfig};
use crate::federation::FederationService;
use crate::links::Federated;
use crate::metadata::MetadataService;
use crate::metrics::CoordinatorMetrics;
use crate::registry::RegistryService;
use crate::state::State;
use crate::status::status_report;
use crate::upkeep_service::UpkeepService;
use collective_proto::v1::upkeep_server::UpkeepServer;

const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Invite redemption, the one service strangers reach: a code and a certificate request.
const BOOTSTRAP_MESSAGE_BYTES: usize = 64 << 10;
/// How often audit entries past their retention are deleted.
const AUDIT_PRUNE_EVERY: Duration = Duration::from_secs(3600);
const GAUGE_REFRESH: Duration = Duration::from_secs(5);
/// How long calls in flight may take to finish after SIGTERM before their connections are
/// closed; with the flush, a coordinator stops within 10 s whatever is attached.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(7);

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
    #[error("recovery stopped: {0}")]
    Recover(String),
}

/// Joins the federation: loads the root (when we hold it), starts gossip. Returns the
/// anti-entropy period.
async fn start_federation(
    cfg: &FederationConfig,
    state: &Arc<State>,
    identity: &TlsIdentity,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Duration, CoordinatorError> {
    let dur = |what: &str, v: &str| parse_duration(v).map_err(|e| CoordinatorError::Config(format!("federation.{what}: {e}")));
    let domain = state
        .domain
        .split_once('.')
        .map(|(_, f)| f.to_string())
        .ok_or_else(|| CoordinatorError::Config(format!("member domain {} has no federation part", state.domain)))?;
    let root = if cfg.root_dir.as_os_str().is_empty() {
        None
    } else {
        let root = FederationRoot::load(&cfg.root_dir)?;
        if root.domain != domain {
            return Err(CoordinatorError::Config(format!(
                "federation.root_dir holds the root of {}, but this member belongs to {domain}",
                root.domain
            )));
        }
        Some(root)
    };
    let contribution = parse_size(&cfg.contribution).map_err(|e| CoordinatorError::Config(format!("federation.contribution: {e}")))?;
    let listen =
        collective_rpc::resolve(&cfg.gossip_listen).map_err(|e| CoordinatorError::Config(format!("federation.gossip_listen: {e}")))?;
    let advertise = collective_rpc::advertised(
        "federation.gossip_advertise",
        &cfg.gossip_advertise,
        "federation.gossip_listen",
        &cfg.gossip_listen,
        None,
    )
    .map_err(|e| CoordinatorError::Config(e.0))?;
    let advertise = collective_rpc::resolve(&advertise.to_string())
        .map_err(|e| CoordinatorError::Config(format!("federation.gossip_advertise: {e}")))?;
    let bootstrap = cfg
        .bootstrap
        .iter()
        .map(|b| collective_rpc::resolve(b).map_err(|e| CoordinatorError::Config(format!("federation.bootstrap: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let settings = GossipSettings {
        listen,
        advertise,
        bootstrap,
        probe_period: dur("probe_period", &cfg.probe_period)?,
        probe_rtt: dur("probe_rtt", &cfg.probe_rtt)?,
        suspect_timeout: dur("suspect_timeout", &cfg.suspect_timeout)?,
        peers_file: Some(state.meta_dir.join("gossip-peers")),
        clock: state.clock.clone(),
    };
    let signer = Arc::new(TokenSigner::from_pkcs8(&identity.pkcs8_der(), identity.principal.to_string())?);
    let (gossip, bound) = Gossip::start(settings, identity.clone(), signer, state.local_member_state(), shutdown)
        .await
        .map_err(|e| CoordinatorError::Config(e.to_string()))?;
    let fed = Federated {
        domain,
        gossip,
        // What others send to: the advertised address, with the bound port if it was 0.
        gossip_addr: std::net::SocketAddr::new(advertise.ip(), if advertise.port() == 0 { bound.port() } else { advertise.port() })
            .to_string(),
        root,
        contribution,
    };
    state.links.join(fed).map_err(|e| CoordinatorError::Config(e.to_string()))?;
    state.load_removals().map_err(|e| CoordinatorError::Config(e.to_string()))?;
    if let Some(f) = state.links.fed() {
        f.gossip.publish(state.local_member_state());
        tracing::info!(federation = %f.domain, gossip = %bound, holds_root = f.root.is_some(), "federation gossip started");
    }
    dur("anti_entropy", &cfg.anti_entropy)
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
    let audit_retention = parse_duration(&cfg.audit_retention).map_err(|e| CoordinatorError::Config(format!("audit_retention: {e}")))?;
    let node_timeout = parse_duration(&cfg.node_timeout).map_err(|e| CoordinatorError::Config(format!("node_timeout: {e}")))?;
    let token_ttl = parse_duration(&cfg.token_ttl).map_err(|e| CoordinatorError::Config(format!("token_ttl: {e}")))?;
    let data_dir = cfg.data_dir.clone();
    let meta = tokio::task::spawn_blocking(move || MetaStore::open(&data_dir))
        .await
        .map_err(|e| CoordinatorError::Io(e.to_string()))??;
    let signer = TokenSigner::from_pkcs8(&identity.pkcs8_der(), identity.principal.to_string())?;
    let metrics = CoordinatorMetrics::new().map_err(|e| CoordinatorError::Io(e.to_string()))?;
    let cert_expiry = collective_telemetry::register_certificate_metric(&metrics.registry, identity.info().not_after)
        .map_err(|e| CoordinatorError::Io(e.to_string()))?;
    let domain = identity.principal.domain.clone();
    let member = domain.split('.').next().unwrap_or_default().to_string();
    let admin_names = if cfg.admins.is_empty() {
        vec![format!("admin@{domain}"), format!("{member}@{domain}")]
    } else {
        cfg.admins.clone()
    };
    let admins = admin_names
        .iter()
        .map(|a| a.parse::<Subject>().map_err(|e| CoordinatorError::Config(format!("admins: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let ca = if cfg.ca_dir.as_os_str().is_empty() {
        None
    } else {
        let ca = MemberCa::load(&cfg.ca_dir)?;
        if ca.domain != domain {
            return Err(CoordinatorError::Config(format!(
                "ca_dir {} is the CA of {}, but this coordinator belongs to {domain}",
                cfg.ca_dir.display(),
                ca.domain
            )));
        }
        let list = cfg.ca_dir.join(collective_pki::REVOCATION_FILE);
        let revoked = identity.revocations().watch(&list)?;
        tracing::info!(list = %list.display(), revoked, "enforcing the member CA's revocation list");
        Some(ca)
    };

    let grpc_listen = collective_rpc::resolve(&cfg.grpc_listen).map_err(|e| CoordinatorError::Config(format!("grpc_listen: {e}")))?;
    let server_tls = identity.server_config_optional_client(collective_pki::ALPN_GRPC)?;
    let (grpc_addr, incoming) = collective_rpc::tls_incoming_with(server_tls, grpc_listen, Some(&identity.principal.domain)).await?;
    let advertise_grpc = collective_rpc::advertised_bound("advertise_grpc", &cfg.advertise_grpc, "grpc_listen", grpc_addr)
        .map_err(|e| CoordinatorError::Config(e.0))?
        .to_string();
    let upkeep = crate::upkeep::UpkeepSettings::from_config(&cfg.upkeep)?;
    let backup = crate::metabackup::MetaBackup::new(
        crate::metabackup::BackupSettings::from_config(&cfg)?,
        crate::metabackup::IdentitySources {
            ca_dir: cfg.ca_dir.clone(),
            root_dir: cfg.federation.root_dir.clone(),
            tls: cfg.tls.clone(),
            config_toml: toml::to_string(&cfg).map_err(|e| CoordinatorError::Config(format!("cannot write the settings down: {e}")))?,
        },
    );
    let mut state = State::new(
        identity.clone(),
        admins,
        ca,
        advertise_grpc,
        cfg.data_dir.clone(),
        Arc::new(meta),
        signer,
        cfg.replication as usize,
        node_timeout,
        token_ttl,
        metrics,
        upkeep,
    )?;
    state.upkeep.workers.add(backup.worker.clone());
    // The change log is on before the first call is served, so no committed change misses
    // the next backup; if it was ever off since the last one, that backup is a snapshot.
    let continuous = state.meta.keep_change_log(backup.off_reason().is_empty())?;
    backup.log_broken.store(!continuous, std::sync::atomic::Ordering::SeqCst);
    state.backup = backup;
    let state = Arc::new(state);

    let stop_rx = state.stopping.subscribe();
    let stopper = state.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: ending streams, finishing calls in flight, then flushing the metadata");
        stopper.stopping.send_replace(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    let reloader = collective_rpc::watch_tls_files(identity.clone(), stop_rx.clone(), move |info| {
        cert_expiry.set(info.not_after.unix_timestamp())
    });

    let maintain = if cfg.federation.gossip_listen.is_empty() {
        None
    } else {
        let anti_entropy = start_federation(&cfg.federation, &state, &identity, stopped(stop_rx.clone())).await?;
        Some(tokio::spawn(crate::federation::maintain(state.clone(), anti_entropy)))
    };

    let metadata = MetadataServer::new(MetadataService { state: state.clone() })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let registry = RegistryServer::new(RegistryService { state: state.clone() });
    let grpc = tokio::spawn(
        collective_rpc::server_builder()
            // Only invite redemption is for strangers; every other call without a client
            // certificate is answered before its body is read.
            .layer(collective_rpc::RequireCertificate::except(&["/collective.v1.Bootstrap/"]))
            .layer(state.busy.clone())
            .add_service(metadata)
            .add_service(registry)
            .add_service(AdminServer::new(AdminService { state: state.clone() }))
            .add_service(BootstrapServer::new(BootstrapService::new(state.clone())).max_decoding_message_size(BOOTSTRAP_MESSAGE_BYTES))
            .add_service(FederationServer::new(FederationService { state: state.clone() }))
            .add_service(UpkeepServer::new(UpkeepService { state: state.clone() }))
            .add_service(collective_proto::v1::observe_server::ObserveServer::new(
                crate::observe::ObserveService { state: state.clone() },
            ))
            .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())),
    );

    let health_state = state.clone();
    let health = Arc::new(move || {
        let nodes = health_state.nodes.lock();
        let up = nodes.values().filter(|e| health_state.nodes.is_up(e)).count();
        let total = nodes.len();
        drop(nodes);
        let mut comps = vec![match health_state.meta.totals() {
            Ok(t) => Component::new("metadata", "ok", format!("open: {} files, {} directories", t.files, t.dirs)),
            Err(e) => Component::new("metadata", "failed", format!("cannot read the metadata: {e}")),
        }];
        let replication = health_state.replication;
        comps.push(match up {
            0 => Component::new("nodes", "failed", format!("no healthy node ({total} registered); start a node")),
            n if n < replication => Component::new(
                "nodes",
                "degraded",
                format!("{n} of {total} nodes up, fewer than the {replication} copies each chunk needs"),
            ),
            n if n < total => Component::new("nodes", "degraded", format!("{n} of {total} nodes up")),
            n => Component::new("nodes", "ok", format!("{n} of {total} nodes up")),
        });
        if let Some(fed) = health_state.links.fed() {
            let peers = fed.gossip.peers();
            let alive = peers.iter().filter(|p| p.state == collective_gossip::PeerState::Alive).count();
            let away: Vec<String> = peers
                .iter()
                .filter(|p| p.state != collective_gossip::PeerState::Alive)
                .map(|p| format!("{} {}", p.member, p.label()))
                .collect();
            comps.push(if away.is_empty() {
                Component::new("gossip", "ok", format!("{alive} other member(s) alive"))
            } else {
                Component::new("gossip", "degraded", format!("{alive} other member(s) alive; {}", away.join(", ")))
            });
        }
        comps.push(collective_telemetry::disk_component(&health_state.meta_dir));
        comps.push(collective_telemetry::certificate_component(
            "coordinator",
            health_state.identity.info().not_after,
        ));
        HealthReport::from_components(up > 0, comps)
    });
    let http_listen = collective_rpc::resolve(&cfg.http_listen).map_err(|e| CoordinatorError::Config(format!("http_listen: {e}")))?;
    let (http_addr, http) = collective_telemetry::serve(http_listen, state.metrics.registry.clone(), health, stopped(stop_rx.clone()))
        .await
        .map_err(|e| CoordinatorError::Io(format!("cannot listen on {}: {e}", cfg.http_listen)))?;
    let http = tokio::spawn(http);

    let gauge_state = state.clone();
    let gauges = tokio::spawn(async move {
        let mut pruned: Option<std::time::Instant> = None;
        loop {
            let s = gauge_state.clone();
            let prune = pruned.is_none_or(|t| t.elapsed() >= AUDIT_PRUNE_EVERY);
            if prune {
                pruned = Some(std::time::Instant::now());
            }
            let _ = tokio::task::spawn_blocking(move || {
                let _ = status_report(&s);
                if prune {
                    let before = collective_core::unix_ms_now().saturating_sub(audit_retention.as_millis() as u64);
                    match s.meta.prune_audit(before) {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(entries = n, "pruned audit entries past audit_retention"),
                        Err(e) => tracing::warn!("cannot prune the audit log: {e}"),
                    }
                }
            })
            .await;
            tokio::time::sleep(GAUGE_REFRESH).await;
        }
    });
    let upkeep_loop = tokio::spawn(state.clone().upkeep_loop());
    let backup_loop = tokio::spawn(state.clone().metadata_backup_loop());
    let watcher = tokio::spawn(crate::observe::watch(state.clone()));
    tracing::info!(coordinator = %identity.principal, %grpc_addr, %http_addr, replication = cfg.replication, "coordinator started");

    let _ = stopped(stop_rx.clone()).await;
    // Background work stops first: no repair starts, no state is published after the
    // gossip agent has said we are leaving.
    if let Some(m) = maintain {
        m.abort();
    }
    upkeep_loop.abort();
    backup_loop.abort();
    gauges.abort();
    watcher.abort();
    let who = format!("coordinator {}", identity.principal);
    collective_rpc::finish_within(grpc, SHUTDOWN_GRACE, &state.busy, &who).await;
    collective_rpc::finish_within(http, Duration::from_secs(1), &collective_rpc::Busy::default(), &who).await;
    reloader.abort();
    state.meta.flush().await?;
    tracing::info!("coordinator stopped");
    Ok(())
}
