//! The status bean: the status of every bean as JSON, a readiness probe, the beans' metrics
//! with the dashboard page, and the control API over HTTP (hyper; see the `control` module
//! for the routes), on loopback by default. A bind to another address needs a control token.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use engine_core::StageError;
use serde::Deserialize;
use tokio::sync::watch;

use crate::bean::{Bean, BeanFuture};
use crate::context::BeanContext;
use crate::token::ControlToken;

/// Parameters of the status bean.
///
/// ```toml
/// [[beans]]
/// core = "status"
/// host = "127.0.0.1"   # the default; another address needs a token
/// port = 9100          # default 0: any free port, logged and shown in the status
/// token = "s3cret"     # default: the pod's control_token, if any
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct StatusParams {
    /// The address to listen on (default `127.0.0.1`: the status is not for the world).
    pub host: String,
    /// The port (default 0: any free port, logged at start).
    pub port: u16,
    /// The token every request but `GET /ready` must carry (`Authorization: Bearer TOKEN`);
    /// default the pod's [`control_token`](crate::PodConfig::control_token). With a token,
    /// requests without it are refused with 401, even on loopback.
    pub token: Option<ControlToken>,
}

impl Default for StatusParams {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 0,
            token: None,
        }
    }
}

impl StatusParams {
    /// Checks, before anything starts, that these parameters can be served with the pod's
    /// `control_token`: an address beyond loopback needs a token. A host name that does not
    /// resolve now is left to the bean's start, which says so.
    ///
    /// ```
    /// use engine::pod::{ControlToken, StatusParams};
    ///
    /// let mut params = StatusParams::default();
    /// assert!(params.check_bind(None).is_ok());
    /// params.host = "0.0.0.0".into();
    /// assert!(params.check_bind(None).unwrap_err().to_string().contains("control_token"));
    /// assert!(params.check_bind(ControlToken::new("s3cret").as_ref()).is_ok());
    /// ```
    ///
    /// # Errors
    ///
    /// [`StatusError::NoToken`] for an address beyond loopback with no token, neither the
    /// bean's nor `pod_token`.
    pub fn check_bind(&self, pod_token: Option<&ControlToken>) -> Result<(), StatusError> {
        use std::net::ToSocketAddrs;
        if self.token.is_some() || pod_token.is_some() {
            return Ok(());
        }
        let addrs = (self.host.as_str(), self.port).to_socket_addrs();
        match addrs.into_iter().flatten().find(|a| !a.ip().is_loopback()) {
            Some(addr) => Err(StatusError::NoToken(addr)),
            None => Ok(()),
        }
    }
}

/// Why the status bean did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// It was asked to listen on an address other than loopback, without a token.
    #[error(
        "the status server would listen on {0}, beyond loopback, without a control token; set control_token in the config (or ENGINE_POD_CONTROL_TOKEN, or --token), or `token` on the bean, or listen on 127.0.0.1"
    )]
    NoToken(SocketAddr),
}

/// The status bean; registered as `status`.
///
/// ```
/// use engine::pod::{BeanSpec, Pod, PodConfig, StatusServer};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let server = StatusServer::new();
/// let addr = server.local_addr();
/// let mut pod = Pod::new(PodConfig::default());
/// pod.add(BeanSpec::new("status", server));
/// let handle = pod.start();
/// let addr = addr.get().await.expect("listening");
/// assert!(addr.ip().is_loopback());
/// assert_eq!(handle.status()[0].address, Some(addr));
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
    /// the [`StatusServer`] is gone). The bean is marked ready before its address is given
    /// out, so a `GET /ready` sent once this returns does not get 503 on its account. It
    /// waits for ever if the bean never listens (a bind error is in the bean's status); use
    /// a timeout where that matters.
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
            let token = params
                .token
                .or_else(|| ctx.pod_config().control_token.clone());
            let wanted = format!("{}:{}", params.host, params.port);
            let resolved = tokio::net::lookup_host(&wanted)
                .await
                .map_err(|err| StageError::msg(format!("cannot resolve {wanted}: {err}")))?
                .next()
                .ok_or_else(|| StageError::msg(format!("{wanted} has no address")))?;
            // Checked before binding: nothing listens beyond loopback without a token.
            if token.is_none() && !resolved.ip().is_loopback() {
                return Err(StageError::new(StatusError::NoToken(resolved)));
            }
            let listener = tokio::net::TcpListener::bind(resolved)
                .await
                .map_err(|err| StageError::msg(format!("cannot listen on {resolved}: {err}")))?;
            let addr = listener.local_addr().map_err(StageError::new)?;
            // Ready first, then the address: whoever has read the address gets 200 from
            // `/ready` (as far as this bean goes).
            ctx.mark_listening(addr);
            bound.send_replace(Some(addr));
            tracing::info!(bean = %ctx.id(), %addr, token = token.is_some(), "status server listening (GET /status, /ready, /metrics, / (dashboard); control API)");
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register_collector(Box::new(crate::metrics::PodMetrics::new(Arc::clone(
                &ctx.pod,
            ))));
            let access = Arc::new(crate::access::Access::new(token, addr.port()));
            serve(listener, ctx, access, Arc::new(registry)).await;
            Ok(())
        })
    }

    fn declares_readiness(&self) -> bool {
        true
    }
}

/// Serves connections until the bean is asked to stop.
async fn serve(
    listener: tokio::net::TcpListener,
    ctx: BeanContext,
    access: Arc<crate::access::Access>,
    registry: Arc<prometheus_client::registry::Registry>,
) {
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
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (ctx, access, registry) = (ctx.clone(), Arc::clone(&access), Arc::clone(&registry));
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (ctx, access, registry) =
                    (ctx.clone(), Arc::clone(&access), Arc::clone(&registry));
                async move {
                    Ok::<_, Infallible>(
                        crate::control::answer(&ctx, &access, &registry, request).await,
                    )
                }
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
}
