//! Prometheus metrics of a node.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The `reason` label values of `collective_node_chunk_errors_total`.
pub const ERROR_REASONS: [&str; 7] = ["bad_request", "corrupt", "denied", "hash_mismatch", "io", "no_space", "not_found"];

#[derive(Clone)]
pub struct NodeMetrics {
    pub registry: Registry,
    pub ops: IntCounterVec,
    pub op_errors: IntCounterVec,
    pub put_seconds: Histogram,
    pub get_seconds: Histogram,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub verification_failures: IntCounter,
    pub denied: IntCounter,
    pub stored_bytes: IntGauge,
    pub stored_chunks: IntGauge,
    pub capacity_bytes: IntGauge,
    pub free_bytes: IntGauge,
    pub scrubbed_bytes: IntCounter,
    pub scrub_progress: prometheus::Gauge,
    pub scrub_last_pass: IntGauge,
    pub copies: IntCounterVec,
    pub peer_breakers_open: IntGauge,
    pub peer_breaker_trips: IntGauge,
}

impl NodeMetrics {
    pub fn new() -> prometheus::Result<NodeMetrics> {
        let registry = Registry::new();
        collective_telemetry::register_process_metrics(&registry, "node")?;
        let ops = IntCounterVec::new(
            Opts::new("collective_node_chunk_operations_total", "Chunk operations served, by operation"),
            &["op"],
        )?;
        let op_errors = IntCounterVec::new(
            Opts::new(
                "collective_node_chunk_errors_total",
                "Chunk operations that failed, by operation and reason",
            ),
            &["op", "reason"],
        )?;
        let buckets = vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
        let put_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "collective_node_chunk_put_seconds",
                "Time to receive, verify and durably store a chunk",
            )
            .buckets(buckets.clone()),
        )?;
        let get_seconds = Histogram::with_opts(
            HistogramOpts::new("collective_node_chunk_get_seconds", "Time to read, verify and send a chunk").buckets(buckets),
        )?;
        let bytes_in = IntCounter::new("collective_node_received_bytes_total", "Chunk payload bytes received")?;
        let bytes_out = IntCounter::new("collective_node_sent_bytes_total", "Chunk payload bytes sent")?;
        let verification_failures = IntCounter::new(
            "collective_node_verification_failures_total",
            "Stored chunks found corrupt on read or verify",
        )?;
        let denied = IntCounter::new(
            "collective_node_denied_requests_total",
            "Chunk requests refused for a bad or missing token",
        )?;
        let stored_bytes = IntGauge::new("collective_node_stored_bytes", "Bytes of chunk data stored")?;
        let stored_chunks = IntGauge::new("collective_node_stored_chunks", "Chunks stored")?;
        let capacity_bytes = IntGauge::new("collective_node_capacity_bytes", "Configured capacity in bytes")?;
        let free_bytes = IntGauge::new("collective_node_free_bytes", "Bytes still free for chunks")?;
        let scrubbed_bytes = IntCounter::new("collective_node_scrubbed_bytes_total", "Bytes re-hashed by background scrubs")?;
        let scrub_progress = prometheus::Gauge::new(
            "collective_node_scrub_progress_ratio",
            "Progress of the running scrub pass, 0 to 1 (1 when no pass is running)",
        )?;
        let scrub_last_pass = IntGauge::new(
            "collective_node_scrub_last_pass_timestamp_seconds",
            "When the last complete scrub pass ended, seconds since the epoch (0: never)",
        )?;
        registry.register(Box::new(scrub_progress.clone()))?;
        registry.register(Box::new(scrub_last_pass.clone()))?;
        let copies = IntCounterVec::new(
            Opts::new(
                "collective_node_copies_total",
                "Chunk copies made for the coordinator (repair, drain), by direction and result",
            ),
            &["direction", "result"],
        )?;
        registry.register(Box::new(copies.clone()))?;
        // Every operation and failure reason exists from the start at 0, so rates and
        // alerts see a series before the first error.
        for op in ["put", "get"] {
            ops.with_label_values(&[op]);
            for reason in ERROR_REASONS {
                op_errors.with_label_values(&[op, reason]);
            }
        }
        let peer_breakers_open = IntGauge::new(
            "collective_node_peer_breakers_open",
            "Other nodes this node currently skips when copying chunks (circuit breaker open)",
        )?;
        let peer_breaker_trips = IntGauge::new(
            "collective_node_peer_breaker_trips",
            "Failed copies to or from other nodes that opened a circuit breaker, since start",
        )?;
        registry.register(Box::new(peer_breakers_open.clone()))?;
        registry.register(Box::new(peer_breaker_trips.clone()))?;
        for c in [&bytes_in, &bytes_out, &verification_failures, &denied, &scrubbed_bytes] {
            registry.register(Box::new(c.clone()))?;
        }
        for g in [&stored_bytes, &stored_chunks, &capacity_bytes, &free_bytes] {
            registry.register(Box::new(g.clone()))?;
        }
        registry.register(Box::new(ops.clone()))?;
        registry.register(Box::new(op_errors.clone()))?;
        registry.register(Box::new(put_seconds.clone()))?;
        registry.register(Box::new(get_seconds.clone()))?;
        Ok(NodeMetrics {
            registry,
            ops,
            op_errors,
            put_seconds,
            get_seconds,
            bytes_in,
            bytes_out,
            verification_failures,
            denied,
            stored_bytes,
            stored_chunks,
            capacity_bytes,
            free_bytes,
            scrubbed_bytes,
            scrub_progress,
            scrub_last_pass,
            copies,
            peer_breakers_open,
            peer_breaker_trips,
        })
    }
}
