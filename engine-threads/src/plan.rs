//! What a built engine will run: the stage factories, their thread counts, and the options
//! every engine has; checked once, before anything starts.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_core::{AppConfig, ErrorPolicy, StopHandle};

use crate::error::EngineError;
use crate::factory::Factory;

/// The default capacity of each queue, in items.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;

/// The options every engine has, whatever its stages.
#[derive(Clone)]
pub(crate) struct Options {
    pub(crate) names: [Arc<str>; 3],
    pub(crate) transport_queue: usize,
    pub(crate) backend_queue: usize,
    pub(crate) config: AppConfig,
    pub(crate) policy: ErrorPolicy,
    pub(crate) ordered: bool,
    /// `inline_when_idle`: whether the transport and the backend (when present and `Send`)
    /// may run on another thread.
    pub(crate) inline: [bool; 2],
    pub(crate) stop: StopHandle,
    pub(crate) stop_timeout: Option<Duration>,
    pub(crate) stats_interval: Option<Duration>,
    /// After how long without progress a stall is reported (`None`: never).
    pub(crate) stall_after: Option<Duration>,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("names", &self.names)
            .field("transport_queue", &self.transport_queue)
            .field("backend_queue", &self.backend_queue)
            .field("policy", &self.policy)
            .field("ordered", &self.ordered)
            .field("inline", &self.inline)
            .field("stop_timeout", &self.stop_timeout)
            .field("stats_interval", &self.stats_interval)
            .field("stall_after", &self.stall_after)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// The defaults: see the builder's setters.
    pub(crate) fn new() -> Self {
        Self {
            names: ["frontend".into(), "transport".into(), "backend".into()],
            transport_queue: DEFAULT_QUEUE_CAPACITY,
            backend_queue: DEFAULT_QUEUE_CAPACITY,
            config: AppConfig::none(),
            policy: ErrorPolicy::default(),
            ordered: false,
            inline: [false; 2],
            stop: StopHandle::new(),
            stop_timeout: None,
            stats_interval: None,
            stall_after: Some(crate::stall_watch::DEFAULT_STALL_AFTER),
        }
    }
}

/// The frontend's factory and threads, the transport and the backend (each
/// [`Absent`](crate::Absent) or [`Present`](crate::Present)), and the options.
pub(crate) struct Plan<F, T, B> {
    pub(crate) frontend: Factory<F>,
    pub(crate) frontend_threads: usize,
    pub(crate) stages: (T, B),
    pub(crate) options: Options,
}

impl<F, T: fmt::Debug, B: fmt::Debug> fmt::Debug for Plan<F, T, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plan")
            .field("frontend_threads", &self.frontend_threads)
            .field("transport", &self.stages.0)
            .field("backend", &self.stages.1)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<F, T, B> Plan<F, T, B> {
    /// The same plan with other stages, made from these.
    pub(crate) fn map_stages<T2, B2>(self, f: impl FnOnce((T, B)) -> (T2, B2)) -> Plan<F, T2, B2> {
        Plan {
            frontend: self.frontend,
            frontend_threads: self.frontend_threads,
            stages: f(self.stages),
            options: self.options,
        }
    }

    /// Checks the thread counts (`transport` and `backend`: those of the stages present) and
    /// the options.
    pub(crate) fn check(
        &self,
        (transport, backend): (Option<usize>, Option<usize>),
    ) -> Result<(), EngineError> {
        let options = &self.options;
        let invalid = |option, reason: &str| Err(EngineError::invalid(option, reason));
        if self.frontend_threads == 0 {
            return invalid("builder_with", "a frontend needs at least one thread");
        }
        if transport == Some(0) {
            return invalid("transport_threads", "a transport needs at least one thread");
        }
        if backend == Some(0) {
            return invalid("backend_threads", "a backend needs at least one thread");
        }
        if options.transport_queue == 0 || options.backend_queue == 0 {
            return invalid("queue_capacity", "a queue needs room for at least one item");
        }
        if options.ordered && self.frontend_threads != 1 {
            return invalid("ordered", "ordered mode needs exactly one frontend thread");
        }
        if options.ordered && backend.or(transport) != Some(1) {
            return invalid(
                "ordered",
                "ordered mode needs exactly one thread in the last stage",
            );
        }
        for (option, interval) in [
            ("stats_interval", options.stats_interval),
            ("stall_report", options.stall_after),
        ] {
            if let Some(interval) = interval
                && (interval.is_zero() || Instant::now().checked_add(interval).is_none())
            {
                return Err(EngineError::invalid(
                    option,
                    format!("{interval:?} is not a usable interval"),
                ));
            }
        }
        Ok(())
    }
}
