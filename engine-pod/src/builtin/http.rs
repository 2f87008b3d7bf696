//! The HTTP app adapter (the origin's uvicorn and aiohttp adapters): a bean that serves a
//! user's axum [`Router`], or any tower service, on a configured address, with the bean's
//! context reachable from every handler, and a graceful shutdown with the pod.
//!
//! Connections are served by hyper (as `axum::serve` does), but in a `JoinSet` the bean's
//! future owns: `axum::serve` spawns detached connection tasks, which would outlive a bean
//! cancelled at the stop deadline.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::IntoResponse;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::bean::{Bean, BeanFuture};
use crate::builtin::tcp::{Bound, BoundAddr, MarkDown, TcpServerParams, listen};
use crate::context::BeanContext;

/// How long the accept loop waits after an error that is not about one connection.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

type MakeApp = dyn Fn(&BeanContext) -> Router + Send + Sync;

/// A bean serving an HTTP app, with [`TcpServerParams`] (`host`, `port`, `backlog`) as
/// parameters.
///
/// At each start it binds its address, marks itself ready with it (see
/// [`BeanContext::wait_ready`]; the address shows in the status and in
/// [`local_addr`](Self::local_addr)), and serves HTTP/1.1 with axum. Every request carries
/// the bean's [`BeanContext`] as an [`axum::Extension`], so handlers look up beans, send
/// signals and read the pod config. When the bean is asked to stop it stops accepting and
/// lets the requests in flight finish (hyper's graceful shutdown, as `axum::serve` does); a
/// request still running at the pod's `stop_wait_time` is cancelled with the bean, and its
/// connection closed.
///
/// ```
/// use axum::{Extension, Router, routing::get};
/// use engine::pod::{BeanContext, BeanSpec, HttpServer, Pod, PodConfig};
///
/// async fn beans(Extension(ctx): Extension<BeanContext>) -> String {
///     format!("{} beans", ctx.beans().len())
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let server = HttpServer::new(Router::new().route("/beans", get(beans)));
/// let addr = server.local_addr();
/// let mut pod = Pod::new(PodConfig::default());
/// pod.add(BeanSpec::new("api", server));
/// let handle = pod.start();
/// let addr = addr.get().await.expect("the server listens");
/// assert!(addr.ip().is_loopback());
/// handle.stop();
/// assert!(handle.wait().await.is_success());
/// # });
/// ```
pub struct HttpServer {
    make: Arc<MakeApp>,
    bound: Arc<watch::Sender<Bound>>,
}

impl fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpServer")
            .field("bound", &*self.bound.borrow())
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// Serves `router`; its handlers take the context with `Extension<BeanContext>`.
    pub fn new(router: Router) -> Self {
        Self::with_app(move |_ctx| router.clone())
    }

    /// Serves the router `make` builds at each start from the bean's context: for a router
    /// with a state of its own that holds the context (`Router::with_state`).
    ///
    /// ```
    /// use axum::{Router, extract::State, routing::get};
    /// use engine::pod::{BeanContext, HttpServer};
    ///
    /// async fn me(State(ctx): State<BeanContext>) -> String {
    ///     format!("bean {}", ctx.id())
    /// }
    ///
    /// let _server = HttpServer::with_app(|ctx: &BeanContext| {
    ///     Router::new().route("/me", get(me)).with_state(ctx.clone())
    /// });
    /// ```
    pub fn with_app(make: impl Fn(&BeanContext) -> Router + Send + Sync + 'static) -> Self {
        Self {
            make: Arc::new(make),
            bound: Arc::new(watch::Sender::new(Bound::Pending)),
        }
    }

    /// Serves any tower service of HTTP requests (it gets the context as an extension of
    /// each request, too).
    pub fn from_service<S>(service: S) -> Self
    where
        S: tower_service::Service<Request, Error = Infallible> + Clone + Send + Sync + 'static,
        S::Response: IntoResponse,
        S::Future: Send + 'static,
    {
        Self::with_app(move |_ctx| Router::new().fallback_service(service.clone()))
    }

    /// A handle on the address the server listens on.
    pub fn local_addr(&self) -> BoundAddr {
        BoundAddr::new(&self.bound)
    }
}

impl Bean for HttpServer {
    fn start(&self, ctx: BeanContext) -> BeanFuture {
        let make = Arc::clone(&self.make);
        let bound = Arc::clone(&self.bound);
        Box::pin(async move {
            bound.send_replace(Bound::Pending);
            let _down = MarkDown(Arc::clone(&bound));
            let params: TcpServerParams = ctx.params()?;
            let app = make(&ctx);
            let listener = listen(&params).await?;
            let addr = listener.local_addr()?;
            bound.send_replace(Bound::Listening(addr));
            ctx.mark_listening(addr);
            tracing::info!(bean = %ctx.id(), %addr, "http server listening");
            serve(listener, app, &ctx).await;
            tracing::info!(bean = %ctx.id(), %addr, "http server stopped");
            Ok(())
        })
    }

    fn declares_readiness(&self) -> bool {
        true
    }
}

/// Serves one request: the context goes into its extensions (what `Extension<BeanContext>`
/// reads), and the app answers. Inserted here rather than by an axum `Extension` layer, which
/// wraps every route in one more boxed service: that cost a tenth of the requests per second
/// of a small app.
async fn answer(
    mut app: Router,
    ctx: BeanContext,
    mut request: hyper::Request<hyper::body::Incoming>,
) -> Result<axum::response::Response, Infallible> {
    use tower_service::Service as _;
    request.extensions_mut().insert(ctx);
    std::future::poll_fn(|cx| tower_service::Service::<Request>::poll_ready(&mut app, cx)).await?;
    app.call(request.map(axum::body::Body::new)).await
}

/// Accepts connections until the bean is asked to stop; then lets every connection finish
/// its requests in flight (idle keep-alive connections close at once).
async fn serve(listener: TcpListener, app: Router, ctx: &BeanContext) {
    let id = ctx.id();
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = ctx.stopping() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let (app, ctx) = (app.clone(), ctx.clone());
                    let service = hyper::service::service_fn(move |request| {
                        answer(app.clone(), ctx.clone(), request)
                    });
                    let connection = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    let connection = graceful.watch(connection);
                    connections.spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(bean = %id, %error, "http connection ended");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(bean = %id, %error, "cannot accept connections; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        () = ctx.stopping() => break,
                    }
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    tracing::info!(bean = %id, open = connections.len(), "http server stops accepting");
    // Asks every connection to finish what it serves, then close.
    graceful.shutdown().await;
    while connections.join_next().await.is_some() {}
}
