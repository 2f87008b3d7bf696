//! Seeing the engine run: Prometheus metrics served over HTTP with a live dashboard page,
//! `engine top`, and a progress line.
//!
//! - **[`MetricsServer`]** serves a `prometheus_client` registry at `GET /metrics` and the
//!   dashboard at `GET /`, on loopback unless [`allow_public`](MetricsServerBuilder::allow_public)
//!   says otherwise. Engines put their metrics in the registry (engine-threads'
//!   `EngineHandle::metrics`), so does a pod; a pod's status server answers the same paths
//!   through [`respond`].
//! - **The dashboard** ([`DASHBOARD`]) is one HTML page served from the binary, no build step
//!   and no CDN: the stages as a row of boxes with their rates, queue fill, the split of
//!   their time (working, waiting for input, waiting for room downstream) and an async
//!   stage's futures in flight against its limit, the bottleneck and backpressured stages
//!   marked, or "waiting for input" when the source is the limit; per stage, charts of the
//!   last 5 minutes (rate in and out, queue fill, working share); the worker processes of pools and placed
//!   stages, the Redis streams' groups (lag, pending, dead letters) and the pod's beans with
//!   their state changes, when the metrics have them; and a list of events (deaths,
//!   respawns, new dead letters, bean state changes). It comes with the metrics of the moment
//!   in it, so its first paint shows the pipeline, then reads `/metrics` once a second.
//! - **[`top`]** reads a metrics endpoint and shows a table that refreshes in place: per stage
//!   the rates in and out with a sparkline of the rate out, queue fill, the split of its
//!   time, an async stage's futures in flight and limit, bottleneck and backpressure; per
//!   bean its state and restarts. It sends a pod's token ([`Scraper::with_token`]).
//! - **[`Progress`]** draws one live line on standard error: items done, each stage's rate,
//!   the bottleneck (or "waiting for input"), and with a known total the share done and the
//!   time left.
//!
//! Every view names the bottleneck by one rule ([`verdict`]): the stage that works most,
//! if it works most of the time ([`BOTTLENECK_SHARE`]), or half of it while the stage
//! before waits for room ([`HOLDING_BACK_SHARE`]); time spent waiting for input or for
//! room downstream is not work. A pipeline whose frontend mostly waits for its source, with
//! no stage that busy, is shown as "waiting for input".
//!
//! - **[`otel`]** (feature `otel`) exports traces through `tracing-opentelemetry` to any
//!   OTLP endpoint: one trace per item, across threads, worker processes and machines.
//!
//! Features: `top` and `progress` (both default) add `engine top` (crossterm, an HTTP client)
//! and the progress line (indicatif), with the scrape reader they share (`snapshot`);
//! without them the crate is the metrics server and the dashboard alone (prometheus-client
//! and hyper), which is what a pod's status bean needs.
//!
//! Every view reads the counters the engine keeps anyway, at its own pace: nothing is added
//! to the path of an item.
//!
//! ```
//! use std::sync::Arc;
//! use engine::observe::MetricsServer;
//! use prometheus_client::registry::Registry;
//!
//! let server = MetricsServer::builder(Arc::new(Registry::default())).start()?;
//! let page = engine::observe::respond(&hyper::Method::GET, "/", &Registry::default());
//! assert_eq!(page.status(), 200);
//! println!("dashboard on http://{}/", server.local_addr());
//! # Ok::<(), engine::observe::ServeError>(())
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "otel")]
#[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
pub mod otel;
#[cfg(feature = "progress")]
mod progress;
mod server;
#[cfg(feature = "snapshot")]
mod snapshot;
#[cfg(feature = "top")]
#[cfg_attr(docsrs, doc(cfg(feature = "top")))]
pub mod top;
#[cfg(feature = "snapshot")]
mod verdict;

#[cfg(feature = "progress")]
#[cfg_attr(docsrs, doc(cfg(feature = "progress")))]
pub use progress::{Position, Progress, describe};
pub use server::{
    DASHBOARD, METRICS_CONTENT_TYPE, MetricsServer, MetricsServerBuilder, ServeError, respond,
};
#[cfg(feature = "snapshot")]
#[cfg_attr(docsrs, doc(cfg(feature = "snapshot")))]
pub use snapshot::{BeanSample, ParseError, Snapshot, StageSample};
#[cfg(feature = "top")]
#[cfg_attr(docsrs, doc(cfg(feature = "top")))]
pub use top::{Scraper, TopError};
#[cfg(feature = "snapshot")]
#[cfg_attr(docsrs, doc(cfg(feature = "snapshot")))]
pub use verdict::{
    BOTTLENECK_SHARE, HOLDING_BACK_SHARE, SOURCE_BOUND_SHARE, StageRates, Verdict, bottleneck,
    rates, verdict,
};
