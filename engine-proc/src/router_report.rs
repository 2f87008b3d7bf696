//! What a router run did: the main process's counters and how each worker ended.

use crate::error::ExitHow;
use crate::node::NodeStats;

/// How one worker of a router ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Its name.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// How it ended.
    pub exit: ExitHow,
    /// Whether it ended before the router told it to (a crash, a kill, its own `exit`).
    pub ended_early: bool,
    /// How many times it was started again after a crash (see
    /// [`RouterBuilder::restart`](crate::RouterBuilder::restart)); `pid`, `exit` and `stats`
    /// are those of its last process.
    pub restarts: u32,
    /// Its counters, if it sent them before it ended.
    pub stats: Option<NodeStats>,
}

/// What a router run did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouterReport {
    /// The main process's counters.
    pub main: NodeStats,
    /// Every worker, in the order they were added.
    pub workers: Vec<WorkerReport>,
}

impl RouterReport {
    /// The report of the worker called `name`.
    pub fn worker(&self, name: &str) -> Option<&WorkerReport> {
        self.workers.iter().find(|w| w.name == name)
    }
}
