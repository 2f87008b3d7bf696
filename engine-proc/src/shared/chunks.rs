//! The queue of tasks, kept in the chunks they were submitted in.

use std::collections::VecDeque;
use std::sync::Arc;
use std::vec;

use engine_core::protocol::TaskId;
use engine_core::trace::TraceParent;

use crate::batch::{Batch, Chunk, Job, id_after};

/// A queued chunk: the tasks not taken yet, kept as an iterator so that taking part of them
/// (a pool with a task timeout takes one at a time) moves only what is taken.
struct Queued<T> {
    first: TaskId,
    tasks: vec::IntoIter<T>,
    attempts: u32,
    lane: u32,
    trace: Option<Arc<TraceParent>>,
}

impl<T> From<Chunk<T>> for Queued<T> {
    fn from(chunk: Chunk<T>) -> Self {
        Self {
            first: chunk.first,
            tasks: chunk.tasks.into_iter(),
            attempts: chunk.attempts,
            lane: chunk.lane,
            trace: chunk.trace,
        }
    }
}

impl<T> Queued<T> {
    /// Takes the first `n` tasks, as a chunk of their own.
    fn split(&mut self, n: usize) -> Chunk<T> {
        let first = self.first;
        self.first = id_after(first, n);
        Chunk {
            first,
            tasks: self.tasks.by_ref().take(n).collect(),
            attempts: self.attempts,
            lane: self.lane,
            trace: self.trace.clone(),
        }
    }

    /// What is left, as a chunk: its buffer is reused.
    fn into_chunk(self) -> Chunk<T> {
        Chunk {
            first: self.first,
            tasks: self.tasks.collect(),
            attempts: self.attempts,
            lane: self.lane,
            trace: self.trace,
        }
    }
}

/// Queued tasks, in the order they go out, in chunks of at most a batch as they were
/// submitted: a driver takes a whole batch by moving one `Vec`, where taking it task by task
/// out of one ring buffer was a twentieth of the pool's CPU (with the queue's lock held).
/// No chunk is empty.
pub(crate) struct Chunks<T> {
    chunks: VecDeque<Queued<T>>,
    len: usize,
}

impl<T> Chunks<T> {
    /// No tasks.
    pub(crate) fn new() -> Self {
        Self {
            chunks: VecDeque::new(),
            len: 0,
        }
    }

    /// How many tasks are queued.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How often the workers of the task that goes out next died under it.
    pub(crate) fn front_attempts(&self) -> Option<u32> {
        self.chunks.front().map(|chunk| chunk.attempts)
    }

    /// The tasks in the order they go out.
    pub(crate) fn tasks(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flat_map(|chunk| chunk.tasks.as_slice())
    }

    /// Queues `chunk` after the others.
    pub(crate) fn push_back(&mut self, chunk: Chunk<T>) {
        if !chunk.tasks.is_empty() {
            self.len += chunk.tasks.len();
            self.chunks.push_back(chunk.into());
        }
    }

    /// Queues `job` before the others.
    pub(crate) fn push_front(&mut self, job: Job<T>) {
        self.len += 1;
        self.chunks.push_front(Chunk::single(job).into());
    }

    /// Takes the first `n` tasks (all of them, if fewer are queued), or fewer so as not to
    /// split a chunk after taking the rest of another: a batch then ends where a chunk does,
    /// and the next takes a whole chunk by moving its buffer.
    pub(crate) fn take(&mut self, n: usize) -> Batch<T> {
        let mut batch = Batch::default();
        let mut taken = 0;
        while taken < n {
            let want = n - taken;
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.tasks.len() > want {
                if taken > 0 {
                    break;
                }
                batch.push(front.split(want));
                taken += want;
            } else if let Some(whole) = self.chunks.pop_front() {
                taken += whole.tasks.len();
                batch.push(whole.into_chunk());
            }
        }
        self.len -= taken;
        batch
    }

    /// Takes every task, each as a job.
    pub(crate) fn take_all(&mut self) -> impl Iterator<Item = Job<T>> + use<T> {
        self.len = 0;
        std::mem::take(&mut self.chunks)
            .into_iter()
            .flat_map(|queued| queued.into_chunk().into_jobs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(ids: std::ops::Range<u64>) -> Chunk<u64> {
        Chunk {
            first: TaskId(ids.start),
            tasks: ids.collect(),
            attempts: 0,
            lane: 0,
            trace: None,
        }
    }

    /// The ids of `batch`, each checked against its task (which is its id).
    fn ids(batch: &Batch<u64>) -> Vec<u64> {
        let ids: Vec<u64> = batch.routes().map(|(_, id)| id.0).collect();
        assert_eq!(batch.tasks().copied().collect::<Vec<_>>(), ids);
        assert_eq!(batch.len(), ids.len());
        ids
    }

    #[test]
    fn tasks_go_out_in_order_across_chunks() {
        let mut queue = Chunks::new();
        queue.push_back(chunk(0..4));
        queue.push_back(chunk(4..4));
        queue.push_back(chunk(4..6));
        queue.push_back(chunk(6..9));
        assert_eq!(queue.len(), 9);
        // Part of a chunk; the rest of it, and not part of the next; part of a chunk.
        assert_eq!(ids(&queue.take(3)), [0, 1, 2]);
        assert_eq!(ids(&queue.take(2)), [3]);
        assert_eq!(ids(&queue.take(1)), [4]);
        let put_back = Job {
            id: TaskId(9),
            task: 9,
            attempts: 1,
            lane: 0,
            trace: None,
        };
        queue.push_front(put_back);
        assert_eq!(queue.front_attempts(), Some(1));
        assert_eq!(queue.tasks().copied().collect::<Vec<_>>(), [9, 5, 6, 7, 8]);
        // Whole chunks: the job put back, the rest of one, and a whole one.
        let batch = queue.take(5);
        assert_eq!(ids(&batch), [9, 5, 6, 7, 8]);
        assert_eq!(batch.chunks().len(), 3);
        assert!(queue.is_empty() && queue.front_attempts().is_none());
        queue.push_back(chunk(6..8));
        queue.push_back(chunk(8..9));
        assert_eq!(ids(&queue.take(1)), [6]);
        // More than are queued: what is.
        assert_eq!(ids(&queue.take(5)), [7, 8]);
        queue.push_back(chunk(10..12));
        queue.push_back(chunk(12..13));
        assert_eq!(
            queue.take_all().map(|job| job.id.0).collect::<Vec<_>>(),
            [10, 11, 12]
        );
        assert!(queue.is_empty() && queue.take(1).is_empty());
    }
}
