//! Stopping a server cleanly, whatever is attached: what it is still busy with (calls in
//! flight, open streams, by name), streams that end with a "shutting down" status when the
//! server stops, and a bounded wait that says every few seconds what it is waiting for.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tonic::Status;

/// How often a server that is stopping says what it still waits for.
pub const SHUTDOWN_LOG_EVERY: Duration = Duration::from_secs(2);

/// Calls in flight and streams open on a server, by name ("/collective.v1.Observe/Events").
#[derive(Clone, Default)]
pub struct Busy {
    inner: Arc<Mutex<BTreeMap<String, usize>>>,
}

/// One unit of work counted in a [`Busy`] until dropped.
pub struct BusyGuard {
    busy: Busy,
    what: String,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut m = self.busy.lock();
        if let Some(n) = m.get_mut(&self.what) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.what);
            }
        }
    }
}

impl Busy {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, usize>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `what` until the guard is dropped.
    pub fn enter(&self, what: impl Into<String>) -> BusyGuard {
        let what = what.into();
        *self.lock().entry(what.clone()).or_default() += 1;
        BusyGuard { busy: self.clone(), what }
    }

    /// Resolves once nothing is counted.
    pub async fn idle(&self) {
        while !self.lock().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// "2 × /collective.v1.Metadata/CommitFiles, 1 × events follower"; None when idle.
    pub fn describe(&self) -> Option<String> {
        let m = self.lock();
        if m.is_empty() {
            return None;
        }
        Some(m.iter().map(|(k, n)| format!("{n} × {k}")).collect::<Vec<_>>().join(", "))
    }
}

impl<S> tower::Layer<S> for Busy {
    type Service = BusyService<S>;
    fn layer(&self, inner: S) -> BusyService<S> {
        BusyService { inner, busy: self.clone() }
    }
}

/// Counts each call in [`Busy`] by its path until its response is ready.
#[derive(Clone)]
pub struct BusyService<S> {
    inner: S,
    busy: Busy,
}

impl<S, B> tower::Service<tonic::codegen::http::Request<B>> for BusyService<S>
where
    S: tower::Service<tonic::codegen::http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        let guard = self.busy.enter(req.uri().path().to_string());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            drop(guard);
            r
        })
    }
}

/// A server-streaming response that ends when `stop` turns true, its last item an
/// UNAVAILABLE status saying `server` is shutting down. Counted in `busy` as `what`
/// while open.
pub fn until_shutdown<T: Send + 'static>(
    stream: impl Stream<Item = Result<T, Status>> + Send + 'static,
    mut stop: watch::Receiver<bool>,
    busy: &Busy,
    what: &str,
    server: &str,
) -> impl Stream<Item = Result<T, Status>> + Send + 'static {
    let guard = busy.enter(what);
    let message = format!("{server} is shutting down; run the command again once it is back");
    let stopped = async move {
        let _ = stop.wait_for(|v| *v).await;
    };
    let stream = Box::pin(stream);
    let stopped = Box::pin(stopped);
    futures::stream::unfold(
        (Some(stream), stopped, Some(guard), message),
        |(stream, mut stopped, guard, message)| async move {
            let mut s = stream?;
            tokio::select! {
                item = s.next() => item.map(|item| (item, (Some(s), stopped, guard, message))),
                _ = &mut stopped => {
                    drop(guard);
                    Some((Err(Status::unavailable(message.clone())), (None, stopped, None, message)))
                }
            }
        },
    )
}

/// Waits for `task` (a server's graceful shutdown) at most `grace`, logging every
/// [`SHUTDOWN_LOG_EVERY`] what `busy` still holds; then aborts it. Returns whether it
/// finished by itself.
pub async fn finish_within<T>(mut task: tokio::task::JoinHandle<T>, grace: Duration, busy: &Busy, server: &str) -> bool {
    let deadline = tokio::time::Instant::now() + grace;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + SHUTDOWN_LOG_EVERY, SHUTDOWN_LOG_EVERY);
    loop {
        tokio::select! {
            _ = &mut task => return true,
            _ = tick.tick() => {
                let what = busy.describe().unwrap_or_else(|| "connections to close".into());
                tracing::info!("{server} shutting down: still waiting for {what}");
            }
            _ = tokio::time::sleep_until(deadline) => {
                let what = busy.describe().unwrap_or_else(|| "connections to close".into());
                tracing::warn!("{server} shutting down: gave up after {} s waiting for {what}; closing them", grace.as_secs());
                task.abort();
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_ends_with_shutting_down_when_the_server_stops() {
        let busy = Busy::default();
        let (tx, rx) = watch::channel(false);
        let forever = futures::stream::pending::<Result<u32, Status>>();
        let head = futures::stream::iter(vec![Ok(1u32), Ok(2)]);
        let mut s = Box::pin(until_shutdown(head.chain(forever), rx, &busy, "events follower", "coordinator@a.b"));
        assert_eq!(s.next().await.unwrap().unwrap(), 1);
        assert_eq!(s.next().await.unwrap().unwrap(), 2);
        assert_eq!(busy.describe().as_deref(), Some("1 × events follower"));
        tx.send(true).unwrap();
        let last = s.next().await.unwrap().unwrap_err();
        assert_eq!(last.code(), tonic::Code::Unavailable);
        assert!(last.message().contains("coordinator@a.b is shutting down"), "{}", last.message());
        assert!(s.next().await.is_none());
        assert!(busy.describe().is_none(), "the stream is no longer counted");
    }

    #[tokio::test]
    async fn finishing_gives_up_after_the_grace_and_reports_what_held_it() {
        let busy = Busy::default();
        let _held = busy.enter("a slow call");
        let task = tokio::spawn(futures::future::pending::<()>());
        let started = std::time::Instant::now();
        assert!(!finish_within(task, Duration::from_millis(50), &busy, "test").await);
        assert!(started.elapsed() < Duration::from_secs(5));
        let quick = tokio::spawn(async {});
        assert!(finish_within(quick, Duration::from_secs(5), &busy, "test").await);
    }
}
