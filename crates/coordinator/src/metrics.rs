//! Prometheus metrics of a coordinator.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub struct CoordinatorMetrics {
    pub registry: Registry,
    pub rpcs: IntCounterVec,
    pub rpc_errors: IntCounterVec,
    pub rpc_seconds: HistogramVec,
    pub denials: IntCounter,
    pub files: IntGauge,
    pub dirs: IntGauge,
    pub logical_bytes: IntGauge,
    pub physical_bytes: IntGauge,
    pub unique_bytes: IntGauge,
    pub nodes: IntGaugeVec,
    pub corrupt_reports: IntCounter,
    pub invites_issued: IntCounter,
    pub invites_redeemed: IntCounter,
    pub members: IntGaugeVec,
    pub member_downs: IntCounter,
    pub gossip_messages: IntCounterVec,
    pub events: IntCounterVec,
    pub dedup_ratio: prometheus::Gauge,
    pub manifests: IntGauge,
    pub under_replicated: IntGauge,
    pub unreadable: IntGauge,
    pub bytes_at_risk: IntGauge,
    pub reclaimable_bytes: IntGauge,
    pub hot_chunks: IntGauge,
    pub extra_replicas: IntGauge,
    pub repaired_bytes: IntCounter,
    pub collected_bytes: IntCounter,
    pub scrub_corrupt: IntCounter,
    pub peer_breakers: IntGaugeVec,
    pub peer_breaker_trips: IntGauge,
    pub peer_breaker_rejections: IntGauge,
    /// Seconds since the last metadata backup reached the federation (since start when
    /// none has yet).
    pub metadata_backup_age: IntGauge,
    pub metadata_backup_pending: IntGauge,
}

impl CoordinatorMetrics {
    pub fn new() -> prometheus::Result<CoordinatorMetrics> {
        let registry = Registry::new();
        collective_telemetry::register_process_metrics(&registry, "coordinator")?;
        let rpcs = IntCounterVec::new(
            Opts::new("collective_coordinator_rpcs_total", "gRPC calls handled, by method"),
            &["method"],
        )?;
        let rpc_errors = IntCounterVec::new(
            Opts::new("collective_coordinator_rpc_errors_total", "gRPC calls that failed, by method"),
            &["method"],
        )?;
        let rpc_seconds = HistogramVec::new(
            HistogramOpts::new("collective_coordinator_rpc_seconds", "gRPC call latency, by method")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
            &["method"],
        )?;
        let denials = IntCounter::new(
            "collective_coordinator_permission_denials_total",
            "Calls refused because the caller's role or member does not allow them",
        )?;
        let files = IntGauge::new("collective_coordinator_files", "Files in the namespace")?;
        let dirs = IntGauge::new("collective_coordinator_directories", "Directories in the namespace")?;
        let logical_bytes = IntGauge::new("collective_coordinator_logical_bytes", "Sum of file sizes")?;
        let physical_bytes = IntGauge::new("collective_coordinator_physical_bytes", "Chunk bytes stored, counting every copy")?;
        let unique_bytes = IntGauge::new(
            "collective_coordinator_unique_chunk_bytes",
            "Chunk bytes stored, counting each chunk once",
        )?;
        let nodes = IntGaugeVec::new(Opts::new("collective_coordinator_nodes", "Registered nodes by state"), &["state"])?;
        let corrupt_reports = IntCounter::new(
            "collective_coordinator_bad_replica_reports_total",
            "Replicas reported missing or corrupt by clients",
        )?;
        registry.register(Box::new(rpcs.clone()))?;
        registry.register(Box::new(rpc_errors.clone()))?;
        registry.register(Box::new(rpc_seconds.clone()))?;
        registry.register(Box::new(denials.clone()))?;
        for g in [&files, &dirs, &logical_bytes, &physical_bytes, &unique_bytes] {
            registry.register(Box::new(g.clone()))?;
        }
        registry.register(Box::new(nodes.clone()))?;
        registry.register(Box::new(corrupt_reports.clone()))?;
        let invites_issued = IntCounter::new("collective_coordinator_invites_issued_total", "Invite codes generated")?;
        let invites_redeemed = IntCounter::new(
            "collective_coordinator_invites_redeemed_total",
            "Invites redeemed (members joined, users added)",
        )?;
        let members = IntGaugeVec::new(
            Opts::new(
                "collective_coordinator_federation_members",
                "Other federation members by gossip state",
            ),
            &["state"],
        )?;
        let gossip_messages = IntCounterVec::new(
            Opts::new(
                "collective_coordinator_gossip_messages_total",
                "Gossip datagrams by direction: sent, received, dropped (failed authentication)",
            ),
            &["direction"],
        )?;
        let events = IntCounterVec::new(
            Opts::new("collective_coordinator_events_total", "Cluster events emitted, by kind"),
            &["kind"],
        )?;
        let dedup_ratio = prometheus::Gauge::new(
            "collective_coordinator_dedup_ratio",
            "Logical bytes divided by unique chunk bytes (1 when nothing is shared)",
        )?;
        registry.register(Box::new(dedup_ratio.clone()))?;
        registry.register(Box::new(invites_issued.clone()))?;
        registry.register(Box::new(invites_redeemed.clone()))?;
        registry.register(Box::new(members.clone()))?;
        // Every state exists from the start (0 when unfederated), so dashboards and alerts
        // never see a missing series.
        for st in ["alive", "suspect", "down", "removed"] {
            members.with_label_values(&[st]).set(0);
        }
        let member_downs = IntCounter::new(
            "collective_coordinator_federation_member_down_total",
            "Times gossip declared another member down since start (a member that is up again and keeps adding here is flapping)",
        )?;
        registry.register(Box::new(member_downs.clone()))?;
        for st in ["up", "down"] {
            nodes.with_label_values(&[st]).set(0);
        }
        for dir in ["sent", "received", "dropped"] {
            gossip_messages.with_label_values(&[dir]);
        }
        registry.register(Box::new(gossip_messages.clone()))?;
        registry.register(Box::new(events.clone()))?;
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let under_replicated = gauge(
            "collective_coordinator_under_replicated_chunks",
            "Chunks with fewer live copies than their datastore asks for",
        )?;
        let manifests = gauge("collective_coordinator_manifests", "File manifests stored")?;
        let metadata_backup_age = gauge(
            "collective_metadata_backup_age_seconds",
            "Seconds since this member's metadata was last backed up into the federation",
        )?;
        let metadata_backup_pending = gauge(
            "collective_metadata_backup_pending_changes",
            "Committed metadata changes not yet backed up into the federation",
        )?;
        let unreadable = gauge("collective_coordinator_unreadable_chunks", "Chunks with no live copy")?;
        let bytes_at_risk = gauge(
            "collective_coordinator_bytes_at_risk",
            "Bytes of chunks with fewer live copies than wanted",
        )?;
        let reclaimable_bytes = gauge(
            "collective_coordinator_reclaimable_bytes",
            "Bytes of unreferenced chunks (all copies) waiting for garbage collection",
        )?;
        let hot_chunks = gauge("collective_coordinator_hot_chunks", "Chunks read often enough to hold extra copies")?;
        let extra_replicas = gauge("collective_coordinator_hot_extra_replicas", "Extra copies granted to hot chunks")?;
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let repaired_bytes = counter(
            "collective_coordinator_repaired_bytes_total",
            "Bytes copied between nodes to restore replication (repair, drain, hot copies)",
        )?;
        let collected_bytes = counter(
            "collective_coordinator_collected_bytes_total",
            "Bytes of unreferenced chunk copies deleted by garbage collection",
        )?;
        let scrub_corrupt = counter(
            "collective_coordinator_scrub_corrupt_total",
            "Corrupt copies reported by node scrubs",
        )?;
        let peer_breakers = IntGaugeVec::new(
            Opts::new(
                "collective_coordinator_peer_breakers",
                "Circuit breakers towards other members' coordinators, by state (open: calls skip it)",
            ),
            &["state"],
        )?;
        registry.register(Box::new(peer_breakers.clone()))?;
        let peer_breaker_trips = gauge(
            "collective_coordinator_peer_breaker_trips",
            "Failed calls to other members that opened (or re-opened) a circuit breaker, since start",
        )?;
        let peer_breaker_rejections = gauge(
            "collective_coordinator_peer_breaker_rejections",
            "Calls to other members skipped because their breaker was open, since start",
        )?;
        Ok(CoordinatorMetrics {
            registry,
            rpcs,
            rpc_errors,
            rpc_seconds,
            denials,
            files,
            dirs,
            logical_bytes,
            physical_bytes,
            unique_bytes,
            nodes,
            corrupt_reports,
            invites_issued,
            invites_redeemed,
            members,
            gossip_messages,
            member_downs,
            events,
            dedup_ratio,
            manifests,
            under_replicated,
            unreadable,
            bytes_at_risk,
            reclaimable_bytes,
            hot_chunks,
            metadata_backup_age,
            metadata_backup_pending,
            extra_replicas,
            repaired_bytes,
            collected_bytes,
            scrub_corrupt,
            peer_breakers,
            peer_breaker_trips,
            peer_breaker_rejections,
        })
    }
}
