//! The HTTP server, with the limits a public endpoint needs, so a slow or greedy client costs
//! almost nothing: hyper's header-read timeout (a client that trickles its headers is cut
//! off), a bound on open connections (the next ones wait in the kernel's backlog), and in
//! front of the routes, tower's request timeout and a bound on requests in progress, beyond
//! which a request is answered 503 at once rather than queued.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::Router;
use docfleet_shared::settings::HttpSettings;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{BoxError, ServiceBuilder};

use crate::error::ApiError;

/// The layers that bound each request: at most `timeout`, and a share of `permits`.
pub fn limited<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    timeout: Duration,
    permits: &Arc<Semaphore>,
) -> Router<S> {
    routes.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(move |e: BoxError| async move {
                if e.is::<tower::timeout::error::Elapsed>() {
                    ApiError::Timeout(format!(
                        "the request took longer than {}s",
                        timeout.as_secs()
                    ))
                } else if e.is::<tower::load_shed::error::Overloaded>() {
                    ApiError::Unavailable("the server is busy; retry in a moment".into())
                } else {
                    tracing::warn!(error = %e, "Request failed in the server's layers.");
                    ApiError::Unavailable("request failed; retry in a moment".into())
                }
            }))
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(permits.clone()))
            .timeout(timeout),
    )
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open connections finish
/// their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &HttpSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms));
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, mostly: wait rather than spin.
                    tracing::warn!(error = %e, "Could not accept a connection.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "Connection ended with an error.");
            }
            drop(permit);
        });
    }
    graceful.shutdown().await;
    Ok(())
}
