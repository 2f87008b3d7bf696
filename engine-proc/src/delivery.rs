//! A batch of results on its way to a lane: a worker's answers stay as they were decoded
//! until the lane's owner takes them, one by one, as [`Completion`]s.

use std::vec;

use engine_core::StageError;
use engine_core::protocol::TaskId;

use crate::error::{Completion, TaskError};

/// A batch of results for one lane.
pub(crate) enum Delivery<O> {
    /// A worker's answers to a batch of tasks `ids`: the failed ones' errors by their place
    /// in the batch, in order, and the others' outputs, in order. Turning them into
    /// completions is left to the receiver, so the driver does not copy them once more.
    Answered {
        ids: Ids,
        failures: Vec<(u64, StageError)>,
        outputs: Vec<O>,
    },
    /// Results made on this side: cancellations, failures after deaths, timeouts.
    Made(Vec<Completion<O>>),
}

impl<O> IntoIterator for Delivery<O> {
    type Item = Completion<O>;
    type IntoIter = IntoIter<O>;

    fn into_iter(self) -> IntoIter<O> {
        match self {
            Self::Answered {
                ids,
                failures,
                outputs,
            } => {
                let mut failures = failures.into_iter();
                IntoIter::Answered {
                    ids,
                    at: 0,
                    next_failure: failures.next(),
                    failures,
                    outputs: outputs.into_iter(),
                }
            }
            Self::Made(completions) => IntoIter::Made(completions.into_iter()),
        }
    }
}

/// The ids of a batch's tasks, in its order: most often a run of consecutive ids, which
/// travels as its ends.
pub(crate) enum Ids {
    /// The ids from `next` up to `end` (excluded).
    Run { next: u64, end: u64 },
    /// Any ids.
    List(vec::IntoIter<TaskId>),
}

impl Ids {
    /// The ids of `ids`, kept as a run when they are one.
    pub(crate) fn of(ids: impl ExactSizeIterator<Item = TaskId> + Clone) -> Self {
        let mut all = ids.clone();
        let Some(TaskId(first)) = all.next() else {
            return Self::List(Vec::new().into_iter());
        };
        let mut last = first;
        let run = all.all(|TaskId(id)| {
            let next = last.checked_add(1) == Some(id);
            last = id;
            next
        });
        match first.checked_add(ids.len() as u64) {
            Some(end) if run => Self::Run { next: first, end },
            _ => Self::List(ids.collect::<Vec<_>>().into_iter()),
        }
    }
}

impl Iterator for Ids {
    type Item = TaskId;

    #[inline]
    fn next(&mut self) -> Option<TaskId> {
        match self {
            Self::Run { next, end } => (*next < *end).then(|| {
                *next += 1;
                TaskId(*next - 1)
            }),
            Self::List(ids) => ids.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = match self {
            Self::Run { next, end } => usize::try_from(end - next).unwrap_or(usize::MAX),
            Self::List(ids) => ids.len(),
        };
        (n, Some(n))
    }
}

impl ExactSizeIterator for Ids {}

/// The completions of a [`Delivery`], in its order.
pub(crate) enum IntoIter<O> {
    Answered {
        ids: Ids,
        /// The place in the batch of the next id.
        at: u64,
        /// The next failure, taken out of `failures`: most batches have none, and then
        /// each result costs one comparison here.
        next_failure: Option<(u64, StageError)>,
        failures: vec::IntoIter<(u64, StageError)>,
        outputs: vec::IntoIter<O>,
    },
    Made(vec::IntoIter<Completion<O>>),
}

impl<O> Default for IntoIter<O> {
    fn default() -> Self {
        Self::Made(Vec::new().into_iter())
    }
}

impl<O> Iterator for IntoIter<O> {
    type Item = Completion<O>;

    #[inline]
    fn next(&mut self) -> Option<Completion<O>> {
        match self {
            Self::Answered {
                ids,
                at,
                next_failure,
                failures,
                outputs,
            } => {
                let id = ids.next()?;
                let here = *at;
                *at += 1;
                let result = match next_failure {
                    Some((place, _)) if *place == here => {
                        let (_, error) = std::mem::replace(next_failure, failures.next())?;
                        Err(TaskError::Failed(error))
                    }
                    // The driver checked that the outputs and failures add up to the ids.
                    _ => Ok(outputs.next()?),
                };
                Some((id, result))
            }
            Self::Made(completions) => completions.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Self::Answered { ids, .. } => ids.size_hint(),
            Self::Made(completions) => completions.size_hint(),
        }
    }
}

impl<O> ExactSizeIterator for IntoIter<O> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ids: &[u64]) -> Ids {
        Ids::of(ids.iter().map(|&id| TaskId(id)))
    }

    #[test]
    fn consecutive_ids_are_a_run_and_others_a_list() {
        assert!(matches!(ids(&[4, 5, 6]), Ids::Run { next: 4, end: 7 }));
        assert!(matches!(ids(&[9]), Ids::Run { next: 9, end: 10 }));
        assert!(matches!(ids(&[4, 6, 7]), Ids::List(_)));
        assert!(matches!(ids(&[u64::MAX]), Ids::List(_)));
        assert!(matches!(ids(&[u64::MAX - 1, u64::MAX]), Ids::List(_)));
        for case in [&[4, 5, 6][..], &[4, 6, 5], &[u64::MAX, u64::MAX - 1], &[]] {
            let got: Vec<u64> = ids(case).map(|id| id.0).collect();
            assert_eq!(got, case);
            assert_eq!(ids(case).len(), case.len());
        }
    }

    #[test]
    fn answers_put_the_failures_back_in_their_places() {
        let delivery = Delivery::Answered {
            ids: ids(&[10, 11, 12, 13, 14]),
            failures: vec![
                (0, StageError::msg("first")),
                (3, StageError::msg("fourth")),
            ],
            outputs: vec!["b", "c", "e"],
        };
        let mut answers = delivery.into_iter();
        assert_eq!(answers.len(), 5);
        let got: Vec<(u64, Result<&str, String>)> = answers
            .by_ref()
            .map(|(id, r)| (id.0, r.map_err(|e| e.to_string())))
            .collect();
        assert_eq!(
            got,
            [
                (10, Err("the task failed: first".to_owned())),
                (11, Ok("b")),
                (12, Ok("c")),
                (13, Err("the task failed: fourth".to_owned())),
                (14, Ok("e")),
            ]
        );
        assert!(answers.next().is_none());
    }
}
