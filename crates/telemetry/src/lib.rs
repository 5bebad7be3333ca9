//! The plain-HTTP side of every server: Prometheus `/metrics` and the health endpoints
//! (`/health`, `/health/live`, `/health/ready`). Read-only; reveals no file names or data.
//! Each server supplies its own registry and a function that reports its health.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, Registry, TextEncoder};
use serde::Serialize;

/// One component's state in `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct Component {
    pub name: String,
    /// `ok`, `degraded` or `failed`.
    pub state: String,
    pub message: String,
    /// For `certificates`: days until the first certificate expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days_to_expiry: Option<i64>,
    /// For `disk`: the fraction of the file system in use, 0 to 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_ratio: Option<f64>,
}

impl Component {
    pub fn new(name: &str, state: &str, message: String) -> Component {
        Component {
            name: name.into(),
            state: state.into(),
            message,
            days_to_expiry: None,
            used_ratio: None,
        }
    }
}

/// Certificates expiring within this many days make the component degraded.
pub const CERT_WARN_DAYS: i64 = 14;
/// A file system fuller than this is degraded; fuller than `DISK_FAIL_RATIO`, failed.
pub const DISK_WARN_RATIO: f64 = 0.85;
pub const DISK_FAIL_RATIO: f64 = 0.95;

/// The `certificates` component: `what` expires at `not_after`.
pub fn certificate_component(what: &str, not_after: time::OffsetDateTime) -> Component {
    let days = (not_after - time::OffsetDateTime::now_utc()).whole_days();
    let (state, message) = if days < 0 {
        (
            "failed",
            format!("the {what} certificate expired {} days ago; issue a new one", -days),
        )
    } else if days < CERT_WARN_DAYS {
        ("degraded", format!("the {what} certificate expires in {days} days; renew it soon"))
    } else {
        ("ok", format!("the {what} certificate expires in {days} days"))
    };
    let mut c = Component::new("certificates", state, message);
    c.days_to_expiry = Some(days);
    c
}

/// Size and available bytes of the file system holding `path`.
pub fn fs_space(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| (st.f_blocks as u64 * st.f_frsize as u64, st.f_bavail as u64 * st.f_frsize as u64))
}

/// The `disk` component for the file system holding `path` (the process's data).
pub fn disk_component(path: &std::path::Path) -> Component {
    let Some((total, avail)) = fs_space(path) else {
        return Component::new("disk", "failed", format!("cannot read the file system of {}", path.display()));
    };
    let used = if total == 0 { 0.0 } else { 1.0 - avail as f64 / total as f64 };
    let pct = (used * 100.0).round();
    let (state, message) = if used > DISK_FAIL_RATIO {
        ("failed", format!("the disk of {} is {pct}% full; free space now", path.display()))
    } else if used > DISK_WARN_RATIO {
        ("degraded", format!("the disk of {} is {pct}% full", path.display()))
    } else {
        ("ok", format!("the disk of {} is {pct}% full", path.display()))
    };
    let mut c = Component::new("disk", state, message);
    c.used_ratio = Some((used * 1000.0).round() / 1000.0);
    c
}

/// The body of `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// `ok`, `degraded` or `failed`.
    pub status: String,
    /// 0-100: 100 minus 25 per degraded and 50 per failed component, floored at 0.
    pub score: u32,
    pub ready: bool,
    pub components: Vec<Component>,
}

impl HealthReport {
    pub fn from_components(ready: bool, components: Vec<Component>) -> HealthReport {
        let penalty: u32 = components
            .iter()
            .map(|c| match c.state.as_str() {
                "ok" => 0,
                "degraded" => 25,
                _ => 50,
            })
            .sum();
        let score = 100u32.saturating_sub(penalty);
        let status = if components.iter().any(|c| c.state == "failed") {
            "failed"
        } else if penalty > 0 {
            "degraded"
        } else {
            "ok"
        };
        HealthReport {
            status: status.into(),
            score,
            ready,
            components,
        }
    }
}

pub type HealthFn = Arc<dyn Fn() -> HealthReport + Send + Sync>;

#[derive(Clone)]
struct AppState {
    registry: Registry,
    health: HealthFn,
    score: prometheus::IntGauge,
    ready: prometheus::IntGauge,
}

async fn metrics(State(s): State<AppState>) -> Response {
    let h = (s.health)();
    s.score.set(h.score as i64);
    s.ready.set(h.ready as i64);
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&s.registry.gather(), &mut buf) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response()
}

async fn health_handler(State(s): State<AppState>) -> Response {
    Json((s.health)()).into_response()
}

async fn live() -> &'static str {
    "live\n"
}

async fn ready(State(s): State<AppState>) -> Response {
    let r = (s.health)();
    if r.ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// Binds the HTTP endpoint; returns the bound address and the serving future.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    health: HealthFn,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = std::io::Result<()>>)> {
    let score = prometheus::IntGauge::new(
        "collective_health_score",
        "Health score 0-100 as in /health: 100 minus 25 per degraded and 50 per failed component",
    )
    .map_err(std::io::Error::other)?;
    let ready_gauge =
        prometheus::IntGauge::new("collective_ready", "1 when /health/ready answers 200, else 0").map_err(std::io::Error::other)?;
    for g in [&score, &ready_gauge] {
        registry.register(Box::new(g.clone())).map_err(std::io::Error::other)?;
    }
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health_handler))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(AppState {
            registry,
            health,
            score,
            ready: ready_gauge,
        });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((
        bound,
        async move { axum::serve(listener, app).with_graceful_shutdown(shutdown).await },
    ))
}

/// Registers the metrics every process exports: build info and start time.
pub fn register_process_metrics(registry: &Registry, role: &str) -> prometheus::Result<()> {
    let info = prometheus::IntGaugeVec::new(
        prometheus::Opts::new("collective_build_info", "Build information; always 1"),
        &["version", "commit", "role"],
    )?;
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("COLLECTIVE_COMMIT"), role])
        .set(1);
    registry.register(Box::new(info))?;
    let start = prometheus::Gauge::new(
        "collective_process_start_time_seconds",
        "Start time of the process since the Unix epoch, in seconds",
    )?;
    start.set(collective_now_secs());
    registry.register(Box::new(start))?;
    Ok(())
}

/// Registers `collective_certificate_expiry_timestamp_seconds`: when this process's own
/// certificate stops being valid (alert when it comes within 14 days). Returns the gauge, to
/// be set again when the certificate is renewed.
pub fn register_certificate_metric(registry: &Registry, not_after: time::OffsetDateTime) -> prometheus::Result<prometheus::IntGauge> {
    let g = prometheus::IntGauge::new(
        "collective_certificate_expiry_timestamp_seconds",
        "When this process's TLS certificate expires, seconds since the Unix epoch",
    )?;
    g.set(not_after.unix_timestamp());
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn collective_now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
