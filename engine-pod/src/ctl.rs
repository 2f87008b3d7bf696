//! The control API's client: [`ControlClient`] in code, and `engine pod ctl` on the command
//! line (`status`, `ready`, `stop ID`, `restart ID`, `signal NAME [--label L | --id N]`,
//! `shutdown`), over hyper-util's HTTP client.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use crate::control::SignalRequest;
use crate::state::{BeanId, BeanStatus, Target};
use crate::token::ControlToken;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CtlError {
    /// The request could not be sent or its answer read (no server at the address...).
    #[error("cannot reach the pod at {addr}: {message}")]
    Unreachable {
        /// The address.
        addr: SocketAddr,
        /// Why.
        message: String,
    },
    /// The server refused the request: no token, or a wrong one.
    #[error(
        "unauthorized: pass --token or ENGINE_POD_CONTROL_TOKEN (the pod asks for its control token)"
    )]
    Unauthorized,
    /// The server answered with an error.
    #[error("{status}: {message}")]
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// The server's message.
        message: String,
    },
    /// The answer is not what the control API sends.
    #[error("unexpected answer: {0}")]
    BadAnswer(String),
}

/// A client of a pod's control API (the status bean).
///
/// ```no_run
/// use engine::pod::{BeanId, ControlClient, Target};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let client = ControlClient::new("127.0.0.1:9100".parse()?, None);
/// for bean in client.status().await? {
///     println!("{} {}", bean.id, bean.state);
/// }
/// client.restart(BeanId(2)).await?;
/// client.signal("rotate", Target::Label("logs".into()), serde_json::Value::Null).await?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ControlClient {
    addr: SocketAddr,
    token: Option<ControlToken>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl ControlClient {
    /// A client of the status bean at `addr`, sending `token` if given.
    pub fn new(addr: SocketAddr, token: Option<ControlToken>) -> Self {
        Self {
            addr,
            token,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Every bean's status.
    ///
    /// # Errors
    ///
    /// A [`CtlError`] saying why.
    pub async fn status(&self) -> Result<Vec<BeanStatus>, CtlError> {
        self.call(Method::GET, "/status", None).await
    }

    /// Whether every bean that declares readiness is ready (`GET /ready`).
    ///
    /// # Errors
    ///
    /// A [`CtlError`] when the pod cannot be asked.
    pub async fn ready(&self) -> Result<bool, CtlError> {
        match self
            .call::<serde_json::Value>(Method::GET, "/ready", None)
            .await
        {
            Ok(_) => Ok(true),
            Err(CtlError::Refused { status, .. }) if status == StatusCode::SERVICE_UNAVAILABLE => {
                Ok(false)
            }
            Err(err) => Err(err),
        }
    }

    /// Stops bean `id` for good.
    ///
    /// # Errors
    ///
    /// [`CtlError::Refused`] with 404 for no such bean, 409 for a bean that ended; others.
    pub async fn stop(&self, id: BeanId) -> Result<(), CtlError> {
        let path = format!("/beans/{id}/stop");
        self.call::<serde_json::Value>(Method::POST, &path, None)
            .await
            .map(drop)
    }

    /// Restarts bean `id`.
    ///
    /// # Errors
    ///
    /// As [`stop`](Self::stop).
    pub async fn restart(&self, id: BeanId) -> Result<(), CtlError> {
        let path = format!("/beans/{id}/restart");
        self.call::<serde_json::Value>(Method::POST, &path, None)
            .await
            .map(drop)
    }

    /// Sends the named signal to `target`; returns how many handlers ran.
    ///
    /// # Errors
    ///
    /// A [`CtlError`] saying why.
    pub async fn signal(
        &self,
        name: &str,
        target: Target,
        payload: serde_json::Value,
    ) -> Result<usize, CtlError> {
        let (label, id) = match target {
            Target::Label(label) => (Some(label), None),
            Target::Id(id) => (None, Some(id)),
            _ => (None, None),
        };
        let body = SignalRequest {
            name: name.to_owned(),
            label,
            id,
            payload,
        };
        let body = serde_json::to_vec(&body).map_err(|e| CtlError::BadAnswer(e.to_string()))?;
        let answer: serde_json::Value = self.call(Method::POST, "/signal", Some(body)).await?;
        answer["handlers"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| CtlError::BadAnswer(answer.to_string()))
    }

    /// Stops the whole pod gracefully.
    ///
    /// # Errors
    ///
    /// A [`CtlError`] saying why.
    pub async fn shutdown(&self) -> Result<(), CtlError> {
        self.call::<serde_json::Value>(Method::POST, "/stop", None)
            .await
            .map(drop)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, CtlError> {
        let unreachable = |message: String| CtlError::Unreachable {
            addr: self.addr,
            message,
        };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| unreachable("the token is not a valid header value".to_owned()))?;
            request = request.header(AUTHORIZATION, value);
        }
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| unreachable(e.to_string()))?;
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {REQUEST_TIMEOUT:?}")))?
            .map_err(|e| unreachable(error_chain(e.as_ref())))?;
        if status == StatusCode::UNAUTHORIZED {
            return Err(CtlError::Unauthorized);
        }
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
            return Err(CtlError::Refused { status, message });
        }
        serde_json::from_slice(&body).map_err(|e| CtlError::BadAnswer(e.to_string()))
    }
}

/// An error and its sources, as one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

/// Options of `ctl`.
#[derive(Debug, Clone, Args)]
#[non_exhaustive]
pub struct CtlArgs {
    /// The status bean's address (`HOST:PORT`, as its log line shows).
    #[arg(long, value_name = "ADDR", env = "ENGINE_POD_CONTROL_ADDR")]
    pub addr: String,
    /// The control token, if the pod asks for one (`--control-token` is another name for it).
    #[arg(
        long,
        visible_alias = "control-token",
        value_name = "TOKEN",
        env = "ENGINE_POD_CONTROL_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// What `ctl` does.
#[derive(Debug, Clone, Subcommand)]
#[non_exhaustive]
pub enum CtlCommand {
    /// List the beans: id, label, core, state, restarts, uptime, address.
    Status,
    /// Say whether every bean that declares readiness is ready (exit 1 if not).
    Ready,
    /// Stop one bean for good; the others go on.
    Stop {
        /// The bean's id.
        id: u64,
    },
    /// End one bean's run and start it again.
    Restart {
        /// The bean's id.
        id: u64,
    },
    /// Send a named signal to every bean, a label or one bean.
    Signal {
        /// The signal's name.
        name: String,
        /// Only to the beans with this label.
        #[arg(long, conflicts_with = "id")]
        label: Option<String>,
        /// Only to this bean.
        #[arg(long)]
        id: Option<u64>,
        /// A JSON payload (default null).
        #[arg(long, value_name = "JSON")]
        payload: Option<String>,
    },
    /// Stop the whole pod gracefully.
    Shutdown,
}

/// Runs `ctl`: 0 when the pod did what was asked, 1 when it refused or could not be
/// reached, 2 for a bad address or payload. Prints the answer on standard output and errors
/// on standard error.
pub fn ctl(args: &CtlArgs) -> ExitCode {
    let Some(addr) = parse_addr(&args.addr) else {
        report(&format!(
            "--addr {:?} is not an address such as 127.0.0.1:9100",
            args.addr
        ));
        return ExitCode::from(2);
    };
    let token = match args.token.as_deref().map(ControlToken::new) {
        Some(None) => {
            report("--token is empty");
            return ExitCode::from(2);
        }
        Some(token) => token,
        None => None,
    };
    let payload = match &args.command {
        CtlCommand::Signal {
            payload: Some(text),
            ..
        } => match serde_json::from_str(text) {
            Ok(value) => value,
            Err(err) => {
                report(&format!("--payload is not JSON: {err}"));
                return ExitCode::from(2);
            }
        },
        _ => serde_json::Value::Null,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            report(&format!("cannot start the tokio runtime: {err}"));
            return ExitCode::FAILURE;
        }
    };
    let client = ControlClient::new(addr, token);
    match runtime.block_on(run_command(&client, &args.command, payload)) {
        Ok(answer) => {
            #[allow(clippy::print_stdout, reason = "the command's answer")]
            {
                print!("{answer}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            report(&format!("error: {err}"));
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stderr, reason = "the command's error")]
fn report(message: &str) {
    eprintln!("{message}");
}

/// `HOST:PORT`, with or without `http://`; a host name is resolved.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    let text = text
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    text.to_socket_addrs().ok()?.next()
}

async fn run_command(
    client: &ControlClient,
    command: &CtlCommand,
    payload: serde_json::Value,
) -> Result<String, CtlError> {
    Ok(match command {
        CtlCommand::Status => status_table(&client.status().await?),
        CtlCommand::Ready => {
            if client.ready().await? {
                "ready\n".to_owned()
            } else {
                return Err(CtlError::Refused {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: "not ready".to_owned(),
                });
            }
        }
        CtlCommand::Stop { id } => {
            client.stop(BeanId(*id)).await?;
            format!("stopping bean {id}\n")
        }
        CtlCommand::Restart { id } => {
            client.restart(BeanId(*id)).await?;
            format!("restarting bean {id}\n")
        }
        CtlCommand::Signal {
            name, label, id, ..
        } => {
            let target = match (label, id) {
                (Some(label), _) => Target::Label(label.clone()),
                (None, Some(id)) => Target::Id(BeanId(*id)),
                (None, None) => Target::All,
            };
            let handlers = client.signal(name, target.clone(), payload).await?;
            format!("signal {name:?} sent to {target}: {handlers} handler(s) ran\n")
        }
        CtlCommand::Shutdown => {
            client.shutdown().await?;
            "stopping the pod\n".to_owned()
        }
    })
}

/// The status as a table, one bean a line; `-` for what is missing.
pub(crate) fn status_table(beans: &[BeanStatus]) -> String {
    let mut out = format!(
        "{:<4} {:<12} {:<12} {:<10} {:>8} {:>10}  {}\n",
        "ID", "LABEL", "CORE", "STATE", "RESTARTS", "UPTIME_S", "ADDRESS"
    );
    for bean in beans {
        out += &format!(
            "{:<4} {:<12} {:<12} {:<10} {:>8} {:>10.3}  {}\n",
            bean.id,
            bean.label.as_deref().unwrap_or("-"),
            bean.core,
            bean.state,
            bean.restarts,
            bean.uptime_secs,
            bean.address
                .map_or_else(|| "-".to_owned(), |a| a.to_string()),
        );
    }
    out
}
