//! The bean pod: long-running components ("beans") on tokio, with ids and labels, a context
//! to find each other, named signals, SIGINT/SIGTERM handling with a stop wait time, restart
//! policies, readiness, a status and control API (`engine pod ctl`), an HTTP app adapter, a
//! TOML config file, and a registry behind the `run` command line.
//!
//! This is the Rust form of os-aio-pod. A bean is an async function of its [`BeanContext`]
//! ([`bean_fn`]), a blocking function on its own thread ([`blocking`]), a threaded engine
//! ([`engine_bean`]), or any type implementing [`Bean`].
//!
//! - **One stop tree.** The pod's [`StopHandle`](engine_core::StopHandle) is the root; each
//!   bean's handle is a child of it, and each run's a child of the bean's
//!   ([`BeanContext::stop_handle`]; made when first asked for, so that a bean that only
//!   awaits [`BeanContext::stopping`] costs no handle). A pod stop first sends the `"stop"`
//!   signal to the handlers, then reaches every bean; at the stop wait time what is left is
//!   cancelled.
//! - **Readiness.** A bean that [declares readiness](Bean::declares_readiness) shows as
//!   `starting` until it calls [`BeanContext::mark_ready`]; others
//!   [`wait_ready`](BeanContext::wait_ready) for it. The built-in servers ([`TcpServer`],
//!   [`StatusServer`], `HttpServer`) are ready once bound, with their address in the status.
//! - **Status and control.** The [`StatusServer`] bean serves `GET /status`, `GET /ready`
//!   (200 or 503, for probes) and a control API (stop or restart one bean, signal a label,
//!   stop the pod), on loopback unless a [`ControlToken`] is set; [`ControlClient`] and
//!   `engine pod ctl` drive it. It also serves the beans' metrics at `GET /metrics`
//!   ([`PodMetrics`]: state, restarts, uptime per bean; `engine top` reads them) and the
//!   dashboard page at `GET /`; [`PodHandle::metrics`] registers the same into a program's
//!   own registry.
//! - **Async code and engines.** [`feed`] gives a frontend fed from async code, [`deliver`]
//!   a backend that hands items to async code, over bounded `flume` channels: backpressure
//!   reaches the async sender, and dropping it ends the run. [`Call`] carries a reply with an
//!   item ([`Feed::call`]), so an HTTP handler awaits its item's result.
//! - **HTTP apps** (feature `http`, on by default). `HttpServer` hosts an axum `Router` or any
//!   tower service, with the context in every request's extensions and a graceful shutdown
//!   with the pod. The feature is on by default because hosting an HTTP API next to one's
//!   beans is what the pod is for (the origin's own motivating case) and the facade's `pod`
//!   feature then needs no second switch; `default-features = false` leaves axum out.
//!
//! ```
//! use engine::pod::{BeanContext, BeanSpec, Pod, PodConfig, Target, bean_fn};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let mut pod = Pod::new(PodConfig::default());
//! pod.add(BeanSpec::new("waiter", bean_fn(|ctx: BeanContext| async move {
//!     let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//!     ctx.on_signal("hello", move |event| { let _ = tx.send(event.payload.clone()); });
//!     let got = rx.recv().await;
//!     assert_eq!(got, Some(serde_json::json!(42)));
//! }))
//! .label("waiters"));
//! pod.add(BeanSpec::new("greeter", bean_fn(|ctx: BeanContext| async move {
//!     // Beans start in order: the waiter has registered its handler by now, or will soon.
//!     while ctx.send_signal("hello", Target::Label("waiters".into()), 42.into()) == 0 {
//!         tokio::task::yield_now().await;
//!     }
//! })));
//! let report = pod.start().wait().await;
//! assert!(report.is_success());
//! # });
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod access;
mod bean;
mod bridge;
mod builtin;
mod builtins;
pub mod cli;
mod config;
mod context;
mod control;
mod ctl;
mod driver;
mod engine_bean;
mod guard;
mod metrics;
mod pod;
mod registry;
mod run;
mod shared;
mod spec;
mod state;
mod status;
mod stop;
mod supervise;
mod token;

/// The axum that [`HttpServer`] serves, re-exported so that an app's `Router` is of the same
/// version.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use axum;
pub use bean::{
    Bean, BeanFuture, BeanResult, BlockingBean, FnBean, IntoBeanResult, bean_fn, blocking,
};
pub use bridge::{
    Call, CallError, DeliverBackend, DeliverError, Deliveries, Feed, FeedClosed, FeedError,
    FeedFrontend, deliver, feed,
};
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use builtin::HttpServer;
pub use builtin::{
    BoundAddr, ConnectionFuture, ConnectionHandler, Echo, Flow, FlowSendError, FlowStats, PcFlow,
    PcFlowParams, Producer, Simple, SimpleServer, StdinError, StdinParams, StdinReader, TcpServer,
    TcpServerError, TcpServerParams,
};
pub use config::{BeanConfig, ConfigError, ENV_PREFIX, PodConfig, PodFile, parse_bean_arg};
pub use context::BeanContext;
pub use ctl::{ControlClient, CtlError};
pub use engine_bean::{EngineBean, LastReport, engine_bean};
/// Restart policies, shared with the engines' pools and routers.
pub use engine_core::{Restart, RestartPolicy};
pub use metrics::PodMetrics;
pub use pod::{Pod, PodHandle};
pub use registry::{BeanFactory, Registry};
pub use spec::BeanSpec;
pub use state::{
    BeanId, BeanState, BeanStatus, ControlError, PodReport, ReadyError, SignalEvent, Target,
};
pub use status::{StatusAddr, StatusError, StatusParams, StatusServer};
pub use token::ControlToken;
