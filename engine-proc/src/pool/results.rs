//! A pool's results as iterators: in completion order ([`Pool::run`]) or in task order
//! ([`Pool::map`]), both submitting tasks as the pool has room.

use std::collections::BTreeMap;
use std::fmt;

use engine_core::protocol::TaskId;

use super::Pool;
use crate::error::TaskResult;
use crate::remote::RemoteTransport;

/// Results in completion order, from [`Pool::run`].
pub struct Completed<'p, S: RemoteTransport, I> {
    pool: &'p mut Pool<S>,
    tasks: I,
    window: u64,
}

impl<'p, S: RemoteTransport, I> Completed<'p, S, I> {
    pub(crate) fn new(pool: &'p mut Pool<S>, tasks: I) -> Self {
        Self {
            window: pool.window(),
            pool,
            tasks,
        }
    }
}

impl<S: RemoteTransport, I> fmt::Debug for Completed<'_, S, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completed")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl<S: RemoteTransport, I: Iterator<Item = S::Input>> Iterator for Completed<'_, S, I> {
    type Item = (TaskId, TaskResult<S::Output>);

    fn next(&mut self) -> Option<Self::Item> {
        self.pool.top_up(&mut self.tasks, self.window);
        self.pool.recv()
    }
}

/// Results in submission order, from [`Pool::map`].
pub struct Ordered<'p, S: RemoteTransport, I> {
    pool: &'p mut Pool<S>,
    tasks: I,
    window: u64,
    first: u64,
    pending: BTreeMap<u64, TaskResult<S::Output>>,
}

impl<'p, S: RemoteTransport, I> Ordered<'p, S, I> {
    pub(crate) fn new(pool: &'p mut Pool<S>, tasks: I) -> Self {
        Self {
            window: pool.window(),
            first: pool.next_id().0,
            pending: BTreeMap::new(),
            pool,
            tasks,
        }
    }
}

impl<S: RemoteTransport, I> fmt::Debug for Ordered<'_, S, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ordered")
            .field("pool", &self.pool)
            .field("next", &self.first)
            .field("held", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<S: RemoteTransport, I: Iterator<Item = S::Input>> Iterator for Ordered<'_, S, I> {
    type Item = TaskResult<S::Output>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(result) = self.pending.remove(&self.first) {
                self.first += 1;
                return Some(result);
            }
            self.pool.top_up(&mut self.tasks, self.window);
            let (id, result) = self.pool.recv()?;
            self.pending.insert(id.0, result);
        }
    }
}
