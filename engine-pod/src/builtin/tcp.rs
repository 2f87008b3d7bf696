//! A TCP server bean: listens on a host and port, runs each connection in its own task
//! through a [`ConnectionHandler`] (an echo by default), and stops accepting on a stop.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};

use crate::bean::{Bean, BeanFuture};
use crate::context::BeanContext;
use crate::state::BeanId;

/// How long the accept loop waits after an error that is not about one connection (such as
/// running out of file descriptors), so that it does not spin while the cause lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The parameters of a [`TcpServer`], read from the bean's config at each start.
///
/// ```toml
/// [[beans]]
/// core = "tcp_server"
/// host = "0.0.0.0"   # default "127.0.0.1"
/// port = 9000        # default 0: any free port, logged at start
/// backlog = 128      # default 1024
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct TcpServerParams {
    /// The address or host name to listen on.
    pub host: String,
    /// The port; 0 picks any free port (see [`TcpServer::local_addr`]).
    pub port: u16,
    /// The length of the queue of connections not accepted yet.
    pub backlog: u32,
}

impl Default for TcpServerParams {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 0,
            backlog: 1024,
        }
    }
}

/// Why a [`TcpServer`] could not start listening.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TcpServerError {
    /// The host name did not resolve.
    #[error("cannot resolve host {host:?}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        source: io::Error,
    },
    /// The host name resolved to no address.
    #[error("host {host:?} has no address")]
    NoAddress {
        /// The host.
        host: String,
    },
    /// The socket could not be made, bound or put to listen (the port is taken, the address
    /// is not local, the port needs privileges).
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

/// The future of one connection.
pub type ConnectionFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'static>>;

/// What a [`TcpServer`] does with each connection.
///
/// Each connection runs in a task of its own; an error or a panic ends that connection only
/// and is logged (a reset or a broken pipe at debug level, other errors as warnings). When the
/// bean is asked to stop, the server stops accepting and waits for the open connections to
/// end: a handler should end when [`BeanContext::stopping`] resolves. One that does not is
/// cancelled with the bean at the pod's `stop_wait_time`.
///
/// Closures `Fn(TcpStream, SocketAddr, BeanContext) -> impl Future<Output = io::Result<()>>`
/// are handlers:
///
/// ```
/// use std::net::SocketAddr;
///
/// use engine::pod::{BeanContext, TcpServer};
/// use tokio::io::AsyncWriteExt;
/// use tokio::net::TcpStream;
///
/// let _server = TcpServer::with_handler(
///     |mut stream: TcpStream, peer: SocketAddr, _ctx: BeanContext| async move {
///         stream.write_all(format!("hello {peer}\n").as_bytes()).await
///     },
/// );
/// ```
pub trait ConnectionHandler: Send + Sync + 'static {
    /// Serves one connection from `peer`.
    fn handle(&self, stream: TcpStream, peer: SocketAddr, ctx: BeanContext) -> ConnectionFuture;
}

impl<F, Fut> ConnectionHandler for F
where
    F: Fn(TcpStream, SocketAddr, BeanContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    fn handle(&self, stream: TcpStream, peer: SocketAddr, ctx: BeanContext) -> ConnectionFuture {
        Box::pin(self(stream, peer, ctx))
    }
}

/// The default handler: sends every byte back as it comes, until the peer closes its side
/// (then closes the server's side) or the bean stops.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl ConnectionHandler for Echo {
    fn handle(
        &self,
        mut stream: TcpStream,
        _peer: SocketAddr,
        ctx: BeanContext,
    ) -> ConnectionFuture {
        Box::pin(async move {
            let (mut reader, mut writer) = stream.split();
            tokio::select! {
                copied = tokio::io::copy(&mut reader, &mut writer) => {
                    copied?;
                    writer.shutdown().await
                }
                () = ctx.stopping() => Ok(()),
            }
        })
    }
}

/// Where a server is in binding its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    /// Not bound yet (the bean has not started or is binding).
    Pending,
    /// Listening on this address.
    Listening(SocketAddr),
    /// Not listening: the bind failed or the run ended.
    Down,
}

/// The address a [`TcpServer`] (or an `HttpServer`) listens on, as a cloneable handle:
/// useful with port 0, where the system picks the port.
#[derive(Clone)]
pub struct BoundAddr {
    rx: watch::Receiver<Bound>,
}

impl fmt::Debug for BoundAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BoundAddr")
            .field(&*self.rx.borrow())
            .finish()
    }
}

impl BoundAddr {
    pub(crate) fn new(bound: &watch::Sender<Bound>) -> Self {
        Self {
            rx: bound.subscribe(),
        }
    }

    /// Waits until the server has bound its address and returns it; `None` if binding failed,
    /// the server's run has ended, or the server is gone. The wait lasts as long as the bean
    /// has not started: guard it with a timeout where the bean may never start.
    pub async fn get(&self) -> Option<SocketAddr> {
        let mut rx = self.rx.clone();
        let state = rx.wait_for(|b| *b != Bound::Pending).await.ok()?;
        match *state {
            Bound::Listening(addr) => Some(addr),
            Bound::Pending | Bound::Down => None,
        }
    }

    /// The address the server listens on now, without waiting.
    pub fn try_get(&self) -> Option<SocketAddr> {
        match *self.rx.borrow() {
            Bound::Listening(addr) => Some(addr),
            Bound::Pending | Bound::Down => None,
        }
    }
}

/// Marks the server down when its run ends, even when the run's future is dropped.
pub(crate) struct MarkDown(pub(crate) Arc<watch::Sender<Bound>>);

impl Drop for MarkDown {
    fn drop(&mut self) {
        self.0.send_replace(Bound::Down);
    }
}

/// A TCP server bean, with [`TcpServerParams`] as parameters.
///
/// It binds with `SO_REUSEADDR` at each start (a bind error fails the bean with the address
/// in the message), marks itself ready with its address (see
/// [`BeanContext::wait_ready`]), logs `listening` with the address, runs each connection through its
/// [`ConnectionHandler`] in a task of its own, and on a stop stops accepting and waits for
/// the open connections, which see the bean's stop.
///
/// ```
/// use engine::pod::{BeanSpec, Pod, PodConfig, TcpServer};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let server = TcpServer::echo();
/// let addr = server.local_addr();
/// let mut pod = Pod::new(PodConfig::default());
/// pod.add(BeanSpec::new("tcp_server", server));
/// let handle = pod.start();
///
/// let addr = addr.get().await.expect("the server listens");
/// let mut client = tokio::net::TcpStream::connect(addr).await?;
/// client.write_all(b"ping\n").await?;
/// client.shutdown().await?;
/// let mut back = String::new();
/// client.read_to_string(&mut back).await?;
/// assert_eq!(back, "ping\n");
///
/// handle.stop();
/// assert!(handle.wait().await.is_success());
/// # Ok::<(), std::io::Error>(())
/// # }).unwrap();
/// ```
pub struct TcpServer {
    handler: Arc<dyn ConnectionHandler>,
    bound: Arc<watch::Sender<Bound>>,
    on_start: Option<Arc<OnStart>>,
}

type OnStart = dyn Fn(&BeanContext) + Send + Sync;

impl fmt::Debug for TcpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpServer")
            .field("bound", &*self.bound.borrow())
            .finish_non_exhaustive()
    }
}

impl TcpServer {
    /// A server echoing what it receives (the [`Echo`] handler).
    pub fn echo() -> Self {
        Self::with_handler(Echo)
    }

    /// A server running `handler` for each connection.
    pub fn with_handler(handler: impl ConnectionHandler) -> Self {
        Self {
            handler: Arc::new(handler),
            bound: Arc::new(watch::Sender::new(Bound::Pending)),
            on_start: None,
        }
    }

    /// Calls `f` with the bean's context at each start, before the server binds: where the
    /// server registers its signal handlers ([`BeanContext::on_signal`]).
    ///
    /// ```
    /// use engine::pod::{BeanContext, TcpServer};
    ///
    /// let _server = TcpServer::echo().on_start(|ctx: &BeanContext| {
    ///     ctx.on_signal("hello", |event| tracing::info!(payload = %event.payload, "hello"));
    /// });
    /// ```
    #[must_use]
    pub fn on_start(mut self, f: impl Fn(&BeanContext) + Send + Sync + 'static) -> Self {
        self.on_start = Some(Arc::new(f));
        self
    }

    /// A handle on the address the server listens on.
    pub fn local_addr(&self) -> BoundAddr {
        BoundAddr::new(&self.bound)
    }
}

impl Bean for TcpServer {
    fn start(&self, ctx: BeanContext) -> BeanFuture {
        let handler = Arc::clone(&self.handler);
        let bound = Arc::clone(&self.bound);
        let on_start = self.on_start.clone();
        Box::pin(async move {
            bound.send_replace(Bound::Pending);
            if let Some(on_start) = on_start {
                on_start(&ctx);
            }
            let _down = MarkDown(Arc::clone(&bound));
            let params: TcpServerParams = ctx.params()?;
            let listener = listen(&params).await?;
            let addr = listener.local_addr()?;
            bound.send_replace(Bound::Listening(addr));
            ctx.mark_listening(addr);
            tracing::info!(bean = %ctx.id(), %addr, "listening");
            serve(listener, handler, ctx).await;
            Ok(())
        })
    }

    fn declares_readiness(&self) -> bool {
        true
    }
}

/// Resolves the host and binds a listening socket (with `SO_REUSEADDR`).
pub(crate) async fn listen(params: &TcpServerParams) -> Result<TcpListener, TcpServerError> {
    let addr = match params.host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, params.port),
        Err(_) => tokio::net::lookup_host((params.host.as_str(), params.port))
            .await
            .map_err(|source| TcpServerError::Resolve {
                host: params.host.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| TcpServerError::NoAddress {
                host: params.host.clone(),
            })?,
    };
    let bind = || -> io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(params.backlog)
    };
    bind().map_err(|source| TcpServerError::Listen { addr, source })
}

/// Accepts connections until the bean is asked to stop, then waits for the open ones.
async fn serve(listener: TcpListener, handler: Arc<dyn ConnectionHandler>, ctx: BeanContext) {
    let id = ctx.id();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = ctx.stopping() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracing::debug!(bean = %id, %peer, "connection opened");
                    // The handler is called in the connection's task, so that even a panic in
                    // the call itself only ends that connection.
                    let (handler, ctx) = (Arc::clone(&handler), ctx.clone());
                    connections.spawn(async move {
                        connection(id, peer, handler.handle(stream, peer, ctx)).await;
                    });
                }
                // The peer gave up before the accept: nothing to do for the others.
                Err(error) if is_peer_gone(&error) => {
                    tracing::debug!(bean = %id, %error, "a connection was lost before its accept");
                }
                Err(error) => {
                    tracing::warn!(bean = %id, %error, "cannot accept connections; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        () = ctx.stopping() => break,
                    }
                }
            },
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                report_join(id, joined);
            }
        }
    }
    drop(listener);
    tracing::info!(bean = %id, open = connections.len(), "stopped listening");
    while let Some(joined) = connections.join_next().await {
        report_join(id, joined);
    }
}

/// Runs one connection and logs how it ended.
async fn connection(id: BeanId, peer: SocketAddr, fut: ConnectionFuture) {
    match fut.await {
        Ok(()) => tracing::debug!(bean = %id, %peer, "connection closed"),
        Err(error) if is_peer_gone(&error) => {
            tracing::debug!(bean = %id, %peer, %error, "connection lost");
        }
        Err(error) => tracing::warn!(bean = %id, %peer, %error, "connection failed"),
    }
}

/// Logs a connection task that panicked (the others go on).
fn report_join(id: BeanId, joined: Result<(), JoinError>) {
    if let Err(error) = joined {
        tracing::warn!(bean = %id, %error, "a connection's task panicked or was cancelled");
    }
}

/// Whether an error only means the peer went away (or a call was interrupted).
fn is_peer_gone(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
            | io::ErrorKind::Interrupted
    )
}
