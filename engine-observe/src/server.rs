//! The metrics server: `GET /metrics` (OpenMetrics text of a `prometheus_client` registry) and
//! `GET /` (the dashboard page), on loopback unless told otherwise, on a thread of its own.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

/// The dashboard page: no build step, no CDN; it reads `/metrics` once a second and draws the
/// last 5 minutes. Served as is, it shows the pipeline after its first read; [`respond`]
/// serves it with the metrics of the moment in it, so that the first paint shows them.
pub const DASHBOARD: &str = include_str!("dashboard.html");

/// Where [`respond`] puts the metrics of the moment into the page: a JavaScript string.
const FIRST_SCRAPE: &str = "\"__ENGINE_FIRST_SCRAPE__\"";

/// `text` as a JavaScript string literal that is safe inside a `<script>` element: no `<`,
/// `>` or `&` (so no `</script>`), no line breaks.
fn js_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The content type of `/metrics`.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why the metrics server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The address is not a loopback address, and serving beyond this machine was not
    /// asked for ([`MetricsServerBuilder::allow_public`]).
    #[error(
        "{addr} is not a loopback address: metrics are served on loopback unless public serving is asked for (`--metrics-public`, `allow_public(true)`)"
    )]
    NotLoopback {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The server's thread or runtime could not start.
    #[error("cannot start the metrics server: {0}")]
    Start(#[source] io::Error),
}

/// Answers one request of the metrics server: `/metrics`, `/` (the dashboard), or 404. A pod's
/// status server answers the same paths with it. `HEAD` answers as `GET` does: the HTTP
/// server (hyper) leaves the body out.
pub fn respond(method: &Method, path: &str, registry: &Registry) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("cache-control", "no-store")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    };
    if method != Method::GET && method != Method::HEAD {
        let mut response = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET and HEAD\n".into(),
        );
        response.headers_mut().insert(
            "allow",
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return response;
    }
    match path {
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => reply(StatusCode::OK, METRICS_CONTENT_TYPE, text),
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "the metrics could not be encoded\n".into(),
                ),
            }
        }
        "/" | "/index.html" => {
            // The first paint shows the metrics of this moment; without them, the first read.
            let mut text = String::new();
            let page = match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => DASHBOARD.replacen(FIRST_SCRAPE, &js_string(&text), 1),
                Err(_) => DASHBOARD.to_owned(),
            };
            reply(StatusCode::OK, "text/html; charset=utf-8", page)
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Builds a [`MetricsServer`].
#[derive(Debug)]
pub struct MetricsServerBuilder {
    registry: Arc<Registry>,
    addr: SocketAddr,
    public: bool,
}

impl MetricsServerBuilder {
    /// Where to listen (default `127.0.0.1:0`: loopback, any free port).
    #[must_use]
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Allows an address beyond loopback (default: refused, since metrics name the pipeline's
    /// stages and its load).
    #[must_use]
    pub fn allow_public(mut self, public: bool) -> Self {
        self.public = public;
        self
    }

    /// Binds the address and serves on a thread of its own until the server is dropped.
    ///
    /// # Errors
    ///
    /// [`ServeError::NotLoopback`] for an address beyond loopback without
    /// [`allow_public`](Self::allow_public), [`ServeError::Bind`] if it cannot be bound.
    pub fn start(self) -> Result<MetricsServer, ServeError> {
        if !self.public && !self.addr.ip().is_loopback() {
            return Err(ServeError::NotLoopback { addr: self.addr });
        }
        let listener = TcpListener::bind(self.addr).map_err(|source| ServeError::Bind {
            addr: self.addr,
            source,
        })?;
        let addr = listener.local_addr().map_err(ServeError::Start)?;
        listener.set_nonblocking(true).map_err(ServeError::Start)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(ServeError::Start)?;
        let (stop, stopped) = oneshot::channel();
        let registry = self.registry;
        let thread = std::thread::Builder::new()
            .name("engine-metrics".into())
            .spawn(move || runtime.block_on(serve(listener, registry, stopped)))
            .map_err(ServeError::Start)?;
        tracing::info!(%addr, "serving metrics on http://{addr}/metrics and the dashboard on http://{addr}/");
        Ok(MetricsServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// Serves a registry's metrics and the dashboard page over HTTP, until dropped.
///
/// ```
/// use std::sync::Arc;
/// use engine::observe::MetricsServer;
/// use prometheus_client::metrics::counter::Counter;
/// use prometheus_client::registry::Registry;
///
/// let mut registry = Registry::default();
/// let served: Counter = Counter::default();
/// registry.register("requests", "Requests served", served.clone());
/// served.inc();
/// let server = MetricsServer::builder(Arc::new(registry)).start()?;
/// assert!(server.local_addr().ip().is_loopback());
/// # Ok::<(), engine::observe::ServeError>(())
/// ```
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// A server of `registry`'s metrics, on loopback by default.
    pub fn builder(registry: Arc<Registry>) -> MetricsServerBuilder {
        MetricsServerBuilder {
            registry,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            public: false,
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(listener: TcpListener, registry: Arc<Registry>, mut stopped: oneshot::Receiver<()>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!("the metrics server cannot listen: {error}");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stopped => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!("the metrics server could not accept a connection: {error}");
                continue;
            }
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = respond(request.method(), request.uri().path(), &registry);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("a metrics connection ended: {error}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use prometheus_client::metrics::counter::Counter;

    fn body(response: Response<Full<Bytes>>) -> String {
        let bytes = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(response.into_body().collect())
            .expect("a full body")
            .to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn the_page_carries_the_metrics_of_the_moment_safely() {
        let mut registry = Registry::default();
        let counter: Counter = Counter::default();
        registry.register("items", "Items </script><b>", counter.clone());
        counter.inc_by(7);
        let page = body(respond(&Method::GET, "/", &registry));
        assert!(!page.contains(FIRST_SCRAPE), "the placeholder is filled");
        assert!(page.contains("items_total 7"), "{page}");
        assert_eq!(page.matches("</script>").count(), 1, "only the page's own");
        assert!(page.len() < 60 * 1024);
        assert_eq!(js_string("a\"b\\c\n<"), r#""a\"b\\c\n\u003c""#);
    }

    #[test]
    fn head_is_get_and_other_methods_are_refused() {
        let registry = Registry::default();
        for path in ["/", "/metrics"] {
            assert_eq!(respond(&Method::HEAD, path, &registry).status(), 200);
        }
        let post = respond(&Method::POST, "/metrics", &registry);
        assert_eq!(post.status(), 405);
        assert_eq!(post.headers()["allow"], "GET, HEAD");
    }
}
