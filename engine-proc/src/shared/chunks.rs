//! The queue of jobs, kept in the chunks they were submitted in.

use std::collections::VecDeque;
use std::vec;

use super::Job;

/// Queued jobs, in the order they go out, in chunks of at most a batch as they were
/// submitted: a driver takes a whole batch by moving one `Vec`, where taking it job by job
/// out of one ring buffer was a twentieth of the pool's CPU (with the queue's lock held).
/// No chunk is empty. A chunk is kept as an iterator, so that a driver taking part of one
/// (a placed stage's fair share, a pool with a task timeout taking one job at a time) moves
/// only the jobs it takes.
pub(crate) struct Chunks<T> {
    chunks: VecDeque<vec::IntoIter<Job<T>>>,
    len: usize,
}

impl<T> Chunks<T> {
    /// No jobs.
    pub(crate) fn new() -> Self {
        Self {
            chunks: VecDeque::new(),
            len: 0,
        }
    }

    /// How many jobs are queued.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The job that goes out next.
    pub(crate) fn front(&self) -> Option<&Job<T>> {
        self.chunks
            .front()
            .and_then(|chunk| chunk.as_slice().first())
    }

    /// The jobs in the order they go out.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Job<T>> {
        self.chunks.iter().flat_map(|chunk| chunk.as_slice())
    }

    /// Queues `jobs` after the others.
    pub(crate) fn push_back(&mut self, jobs: Vec<Job<T>>) {
        if !jobs.is_empty() {
            self.len += jobs.len();
            self.chunks.push_back(jobs.into_iter());
        }
    }

    /// Queues `job` before the others.
    pub(crate) fn push_front(&mut self, job: Job<T>) {
        self.len += 1;
        self.chunks.push_front(vec![job].into_iter());
    }

    /// Takes the first `n` jobs (all of them, if fewer are queued).
    pub(crate) fn take(&mut self, n: usize) -> Vec<Job<T>> {
        let mut taken: Vec<Job<T>> = Vec::new();
        while taken.len() < n {
            let want = n - taken.len();
            let Some(chunk) = self.chunks.front_mut() else {
                break;
            };
            if chunk.len() > want {
                taken.extend(chunk.by_ref().take(want));
            } else if taken.is_empty() {
                // The whole chunk: its buffer is reused.
                taken = self
                    .chunks
                    .pop_front()
                    .map(Iterator::collect)
                    .unwrap_or_default();
            } else {
                taken.extend(chunk.by_ref());
                self.chunks.pop_front();
            }
        }
        self.len -= taken.len();
        taken
    }

    /// Takes every job.
    pub(crate) fn take_all(&mut self) -> impl Iterator<Item = Job<T>> + use<T> {
        self.len = 0;
        std::mem::take(&mut self.chunks).into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use engine_core::protocol::TaskId;

    use super::*;

    fn jobs(ids: std::ops::Range<u64>) -> Vec<Job<u64>> {
        ids.map(|id| Job {
            id: TaskId(id),
            task: id,
            attempts: 0,
            lane: 0,
            trace: None,
        })
        .collect()
    }

    fn ids(jobs: &[Job<u64>]) -> Vec<u64> {
        jobs.iter().map(|job| job.id.0).collect()
    }

    #[test]
    fn jobs_go_out_in_order_across_chunks() {
        let mut queue = Chunks::new();
        queue.push_back(jobs(0..4));
        queue.push_back(Vec::new());
        queue.push_back(jobs(4..6));
        queue.push_back(jobs(6..9));
        assert_eq!(queue.len(), 9);
        // Part of a chunk, the rest of it and part of the next, a whole chunk.
        assert_eq!(ids(&queue.take(3)), [0, 1, 2]);
        assert_eq!(ids(&queue.take(2)), [3, 4]);
        assert_eq!(ids(&queue.take(1)), [5]);
        queue.push_front(jobs(9..10).remove(0));
        assert_eq!(queue.front().map(|job| job.id.0), Some(9));
        assert_eq!(
            queue.iter().map(|job| job.id.0).collect::<Vec<_>>(),
            [9, 6, 7, 8]
        );
        assert_eq!(ids(&queue.take(3)), [9, 6, 7]);
        assert_eq!(queue.len(), 1);
        // More than are queued: what is.
        assert_eq!(ids(&queue.take(5)), [8]);
        assert!(queue.is_empty() && queue.front().is_none());
        queue.push_back(jobs(10..12));
        queue.push_back(jobs(12..13));
        assert_eq!(
            queue.take_all().map(|job| job.id.0).collect::<Vec<_>>(),
            [10, 11, 12]
        );
        assert!(queue.is_empty() && queue.take(1).is_empty());
    }
}
