//! The status bean: serves the status of every bean as JSON over HTTP (hyper), on loopback by
//! default. `GET /status` answers `[{"id":1,"label":...,"core":...,"state":"running",
//! "restarts":0,"uptime":"1m 3s","last_error":null}, ...]`.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use engine_core::StageError;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use tokio::sync::watch;

use crate::bean::{Bean, BeanFuture};
use crate::context::BeanContext;

/// Parameters of the status bean.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct StatusParams {
    /// The address to listen on (default `127.0.0.1`: the status is not for the world).
    pub host: String,
    /// The port (default 0: any free port, logged at start).
    pub port: u16,
}

impl Default for StatusParams {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 0,
        }
    }
}

/// The status bean; registered as `status`.
///
/// ```
/// use engine_pod::{BeanSpec, Pod, PodConfig, StatusServer};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let server = StatusServer::new();
/// let addr = server.local_addr();
/// let mut pod = Pod::new(PodConfig::default());
/// pod.add(BeanSpec::new("status", server));
/// let handle = pod.start();
/// let addr = addr.get().await.expect("listening");
/// assert!(addr.ip().is_loopback());
/// handle.stop();
/// handle.wait().await;
/// # });
/// ```
#[derive(Clone)]
pub struct StatusServer {
    bound: Arc<watch::Sender<Option<SocketAddr>>>,
}

impl fmt::Debug for StatusServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusServer")
            .field("bound", &*self.bound.borrow())
            .finish()
    }
}

impl Default for StatusServer {
    fn default() -> Self {
        Self::new()
    }
}

/// The address a server bean listens on, once it does.
#[derive(Debug, Clone)]
pub struct StatusAddr(watch::Receiver<Option<SocketAddr>>);

impl StatusAddr {
    /// Waits until the server listens and returns its address (`None` once every clone of
    /// the [`StatusServer`] is gone). It waits for ever if the bean never listens (a bind
    /// error is in the bean's status); use a timeout where that matters.
    pub async fn get(&self) -> Option<SocketAddr> {
        let mut rx = self.0.clone();
        rx.wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|addr| *addr)
    }
}

impl StatusServer {
    /// A status server; its address comes from the bean's parameters.
    pub fn new() -> Self {
        Self {
            bound: Arc::new(watch::channel(None).0),
        }
    }

    /// The address it listens on, once it does.
    pub fn local_addr(&self) -> StatusAddr {
        StatusAddr(self.bound.subscribe())
    }
}

impl Bean for StatusServer {
    fn start(&self, ctx: BeanContext) -> BeanFuture {
        let bound = Arc::clone(&self.bound);
        Box::pin(async move {
            // A restarted bean may listen elsewhere: forget the last address.
            bound.send_replace(None);
            let params: StatusParams = ctx.params()?;
            let wanted = format!("{}:{}", params.host, params.port);
            let listener = tokio::net::TcpListener::bind(&wanted)
                .await
                .map_err(|err| StageError::msg(format!("cannot listen on {wanted}: {err}")))?;
            let addr = listener.local_addr().map_err(StageError::new)?;
            bound.send_replace(Some(addr));
            tracing::info!(bean = %ctx.id(), %addr, "status server listening (GET /status)");
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let (stream, _peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(err) => {
                            tracing::warn!(bean = %ctx.id(), error = %err, "accept failed");
                            continue;
                        }
                    },
                    () = ctx.stopping() => break,
                };
                let ctx = ctx.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(answer(&ctx, &request)) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    if let Err(err) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                    {
                        tracing::debug!(error = %err, "status connection ended");
                    }
                });
            }
            connections.shutdown().await;
            Ok(())
        })
    }
}

fn answer(ctx: &BeanContext, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/status") => match serde_json::to_vec(&ctx.beans()) {
            Ok(json) => (StatusCode::OK, json),
            Err(err) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                err.to_string().into_bytes(),
            ),
        },
        (&Method::GET, _) => (StatusCode::NOT_FOUND, b"not found; try /status\n".to_vec()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, b"GET only\n".to_vec()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if status == StatusCode::OK {
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
    }
    response
}
