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
}

async fn metrics(State(s): State<AppState>) -> Response {
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
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health_handler))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(AppState { registry, health });
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
        &["version", "role"],
    )?;
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), role]).set(1);
    registry.register(Box::new(info))?;
    let start = prometheus::Gauge::new(
        "collective_process_start_time_seconds",
        "Start time of the process since the Unix epoch, in seconds",
    )?;
    start.set(collective_now_secs());
    registry.register(Box::new(start))?;
    Ok(())
}

fn collective_now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
