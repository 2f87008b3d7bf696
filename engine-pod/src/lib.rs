//! The bean pod: long-running components ("beans") on tokio, with ids and labels, a context
//! to find each other, named signals, SIGINT/SIGTERM handling with a stop wait time, restart
//! policies, a status view, a TOML config file, and a registry behind the `run` command line.
//!
//! This is the Rust form of os-aio-pod. A bean is an async function of its [`BeanContext`]
//! ([`bean_fn`]), a blocking function on its own thread ([`blocking`]), or any type
//! implementing [`Bean`].
//!
//! ```
//! use engine_pod::{BeanContext, BeanSpec, Pod, PodConfig, Target, bean_fn};
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

mod bean;
mod builtin;
mod builtins;
pub mod cli;
mod config;
mod context;
mod control;
mod ctl;
mod driver;
mod engine_bean;
mod pod;
mod registry;
mod shared;
mod state;
mod status;
mod stop;
mod supervise;
mod token;

pub use bean::{
    Bean, BeanFuture, BeanResult, BlockingBean, FnBean, IntoBeanResult, Restart, RestartPolicy,
    bean_fn, blocking,
};
pub use builtin::{
    BoundAddr, ConnectionFuture, ConnectionHandler, Echo, Flow, FlowSendError, FlowStats, PcFlow,
    PcFlowParams, Producer, Simple, SimpleServer, StdinError, StdinParams, StdinReader, TcpServer,
    TcpServerError, TcpServerParams,
};
pub use config::{BeanConfig, ConfigError, ENV_PREFIX, PodConfig, PodFile, parse_bean_arg};
pub use context::BeanContext;
pub use ctl::{ControlClient, CtlError};
pub use engine_bean::{EngineBean, LastReport, engine_bean};
pub use pod::{BeanSpec, Pod, PodHandle, PodReport};
pub use registry::{BeanFactory, Registry};
pub use state::{BeanId, BeanState, BeanStatus, ControlError, ReadyError, SignalEvent, Target};
pub use status::{StatusAddr, StatusError, StatusParams, StatusServer};
pub use token::ControlToken;
