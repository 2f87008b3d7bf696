//! Staged, concurrent data processing on one machine: one set of stage traits that runs on
//! threads, in worker processes, or hosted in a long-running pod of components.
//!
//! This is the facade crate. It re-exports each engine crate behind a cargo feature, so one
//! dependency gives the whole toolkit, and each crate can still be used alone:
//!
//! | module | crate | feature | what it is |
//! |---|---|---|---|
//! | [`core`] | `engine-core` | always | stage traits, wire protocol, stop handle, run report |
//! | `threads` | `engine-threads` | `threads` (default) | the threaded 3-stage engine |
//! | `ootb` | `engine-ootb` | `ootb` (default) | stdin frontend, log transport, log backend |
//! | `proc` | `engine-proc` | `proc` (default) | worker processes over ipc-channel |
//! | `pod` | `engine-pod` | `pod` (default) | the bean pod on tokio |
//! | `redis` | `engine-redis` | `redis` (default) | stages on several machines through Redis Streams |
//!
//! The [`prelude`] holds what nearly every program needs to write stages.
//!
//! New here? The [`guide`] teaches the toolkit chapter by chapter, from a first closure to
//! worker processes, the pod and Redis, with every example a doctest.
//!
//! # Example
//!
//! ```
//! use engine::prelude::*;
//!
//! /// Upper-cases lines and drops empty ones.
//! struct Shout;
//!
//! impl Transport for Shout {
//!     type Input = String;
//!     type Output = String;
//!
//!     fn transport(&mut self, line: String, _ctx: &StageContext) -> Result<Option<String>, StageError> {
//!         Ok((!line.is_empty()).then(|| line.to_uppercase()))
//!     }
//! }
//!
//! let ctx = StageContext::standalone("shout", engine::core::StageKind::Transport);
//! assert_eq!(Shout.transport("hi".into(), &ctx)?, Some("HI".to_string()));
//! assert_eq!(Shout.transport(String::new(), &ctx)?, None);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

// The guide's examples use every default engine.
#[cfg(all(
    feature = "threads",
    feature = "async",
    feature = "ootb",
    feature = "proc",
    feature = "pod",
    feature = "redis",
    feature = "observe"
))]
pub mod guide;

#[doc(inline)]
pub use engine_core as core;

#[cfg(feature = "threads")]
#[cfg_attr(docsrs, doc(cfg(feature = "threads")))]
#[doc(inline)]
pub use engine_threads as threads;

#[cfg(feature = "ootb")]
#[cfg_attr(docsrs, doc(cfg(feature = "ootb")))]
#[doc(inline)]
pub use engine_ootb as ootb;

#[cfg(feature = "proc")]
#[cfg_attr(docsrs, doc(cfg(feature = "proc")))]
#[doc(inline)]
pub use engine_proc as proc;

#[cfg(feature = "pod")]
#[cfg_attr(docsrs, doc(cfg(feature = "pod")))]
#[doc(inline)]
pub use engine_pod as pod;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[doc(inline)]
pub use engine_redis as redis;

#[cfg(feature = "observe")]
#[cfg_attr(docsrs, doc(cfg(feature = "observe")))]
#[doc(inline)]
pub use engine_observe as observe;

/// A threaded engine's statistics as what `engine top` and the progress line read
/// ([`observe::Snapshot`]), for a view of one's own.
///
/// ```
/// let handle = engine::threads::Engine::builder(0..10_u64).backend(|_: u64| {}).spawn()?;
/// let reader = handle.stats_reader();
/// handle.join()?;
/// let snapshot = engine::snapshot_of(&reader.read());
/// assert_eq!(snapshot.stages.last().map(|s| s.items_out), Some(10.0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg(all(feature = "threads", feature = "observe"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "threads", feature = "observe"))))]
pub fn snapshot_of(stats: &threads::Stats) -> observe::Snapshot {
    let stages = stats
        .stages
        .iter()
        .map(|stage| {
            let mut s = observe::StageSample::new(stage.name.clone(), stage.kind.as_str());
            s.threads = stage.threads.len() as u64;
            s.items_in = stage.counts.input as f64;
            s.items_out = stage.counts.output as f64;
            s.filtered = stage.counts.filtered as f64;
            s.failed = stage.counts.failed as f64;
            s.dropped = stage.counts.dropped as f64;
            s.busy_seconds = stage.threads.iter().map(|t| t.busy.as_secs_f64()).sum();
            s.blocked_seconds = stage.threads.iter().map(|t| t.blocked.as_secs_f64()).sum();
            s.queue_depth = stage.queued as f64;
            s.queue_capacity = stage.capacity as f64;
            s
        })
        .collect();
    observe::Snapshot::new(
        std::time::Instant::now(),
        stats.elapsed,
        !stats.finished,
        stages,
    )
}

/// The default engine, like os-m3-engine's `create()`: lines from standard input, logged by a
/// [`LogTransport`](engine_ootb::LogTransport), then by a [`LogBackend`](engine_ootb::LogBackend).
///
/// It returns the builder, so thread counts, queue sizes and the rest can still be set; the
/// `engine` binary's `run` command is this engine.
///
/// ```no_run
/// let engine = engine::default_engine().transport_threads(2).build()?;
/// let _guard = engine::core::install_signal_handler(engine.stop_handle())?;
/// let report = engine.run()?;
/// eprintln!("{report}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg(all(feature = "threads", feature = "ootb"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "threads", feature = "ootb"))))]
pub fn default_engine() -> DefaultEngineBuilder {
    threads::Engine::builder(ootb::StdinFrontend::new())
        .transport(ootb::LogTransport::new())
        .backend(ootb::LogBackend::new())
}

/// What nearly every program needs to write stages and run them: `use engine::prelude::*;`.
///
/// ```
/// use engine::prelude::*;
///
/// let report = Engine::builder(1..=10_u64)
///     .filter_map(|n: u64| n.is_multiple_of(2).then_some(n))
///     .for_each(|_n: u64| {})
///     .run()?;
/// assert_eq!(report.processed(), 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub mod prelude {
    #[doc(no_inline)]
    pub use engine_core::{
        AppConfig, Backend, ErrorPolicy, Frontend, RunReport, StageContext, StageError, StopHandle,
        Transport,
    };
    #[cfg(feature = "threads")]
    #[doc(no_inline)]
    pub use engine_threads::{Engine, EngineError};
}

/// The builder [`default_engine`] returns, by name, to store or return it.
#[cfg(all(feature = "threads", feature = "ootb"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "threads", feature = "ootb"))))]
pub type DefaultEngineBuilder = threads::EngineBuilder<
    engine_core::plumbing::Untracked<ootb::StdinFrontend>,
    threads::Present<ootb::LogTransport<String>>,
    threads::Present<ootb::LogBackend<String>>,
>;

/// The cargo features this build of the crate was compiled with, among `threads`, `ootb`,
/// `proc`, `pod`, `redis`, `observe` and `otel`.
pub fn enabled_features() -> Vec<&'static str> {
    [
        ("threads", cfg!(feature = "threads")),
        ("ootb", cfg!(feature = "ootb")),
        ("proc", cfg!(feature = "proc")),
        ("pod", cfg!(feature = "pod")),
        ("redis", cfg!(feature = "redis")),
        ("observe", cfg!(feature = "observe")),
        ("otel", cfg!(feature = "otel")),
    ]
    .into_iter()
    .filter_map(|(name, enabled)| enabled.then_some(name))
    .collect()
}
