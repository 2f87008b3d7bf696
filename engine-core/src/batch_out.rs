//! Where a batch-native transport reports what became of each item of its batch.

use std::fmt;

use crate::error::StageError;

/// What became of an item that gave no output.
#[derive(Debug)]
enum Miss {
    Filtered,
    Failed(StageError),
}

/// Where a batch-native transport ([`Transport::transport_batch`](crate::Transport::transport_batch))
/// reports what became of each item of its batch, in input order: an output
/// ([`push`](Self::push), [`push_all`](Self::push_all)), filtered ([`filter`](Self::filter)) or
/// failed ([`fail`](Self::fail)).
///
/// An engine pairs the n-th report with the n-th item of the batch, so counts and completion
/// tickets stay exact per item: an item reported filtered or failed is counted so, alone.
/// Items left without a report when `transport_batch` returns (with an error, a panic, or
/// `Ok` too early) fail with that error (they were moved into the call, so they cannot be run
/// again); reports beyond the batch's length are a bug in the stage, dropped and logged.
///
/// A batch where every item passes costs one `Vec` of outputs: the engine takes it whole.
///
/// # Examples
///
/// ```
/// use engine::core::{BatchOut, StageError};
///
/// let mut out = BatchOut::new();
/// out.push(10_u32);
/// out.filter();
/// out.fail(StageError::msg("bad item"));
/// assert_eq!(out.len(), 3);
/// let outcomes: Vec<_> = out.drain().map(|o| o.map_err(|e| e.to_string())).collect();
/// assert_eq!(outcomes, [Ok(Some(10)), Ok(None), Err("bad item".to_owned())]);
/// assert!(out.is_empty());
/// ```
pub struct BatchOut<B> {
    /// The outputs of the items that passed, in order.
    outputs: Vec<B>,
    /// The items that gave no output: their place in the batch and why.
    misses: Vec<(usize, Miss)>,
    /// Items reported so far.
    reported: usize,
}

impl<B> Default for BatchOut<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B> fmt::Debug for BatchOut<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchOut")
            .field("reported", &self.reported)
            .field("outputs", &self.outputs.len())
            .field("misses", &self.misses)
            .finish()
    }
}

impl<B> BatchOut<B> {
    /// An empty report.
    pub fn new() -> Self {
        Self {
            outputs: Vec::new(),
            misses: Vec::new(),
            reported: 0,
        }
    }

    /// The next item passes `output` on.
    #[inline]
    pub fn push(&mut self, output: B) {
        self.outputs.push(output);
        self.reported += 1;
    }

    /// The next `outputs.len()` items pass these outputs on, one each. Into an empty report
    /// the `Vec` moves whole, without a copy.
    ///
    /// ```
    /// use engine::core::BatchOut;
    ///
    /// let mut out = BatchOut::new();
    /// out.push_all(vec![1, 2, 3]);
    /// assert_eq!(out.len(), 3);
    /// ```
    pub fn push_all(&mut self, mut outputs: Vec<B>) {
        self.reported += outputs.len();
        if self.outputs.is_empty() {
            self.outputs = outputs;
        } else {
            self.outputs.append(&mut outputs);
        }
    }

    /// The next item is filtered out.
    pub fn filter(&mut self) {
        self.misses.push((self.reported, Miss::Filtered));
        self.reported += 1;
    }

    /// The next item fails with `error`; the engine counts it and applies its error policy,
    /// as for an error from [`Transport::transport`](crate::Transport::transport).
    pub fn fail(&mut self, error: impl Into<StageError>) {
        self.misses
            .push((self.reported, Miss::Failed(error.into())));
        self.reported += 1;
    }

    /// How many items have been reported.
    pub fn len(&self) -> usize {
        self.reported
    }

    /// Whether no item has been reported.
    pub fn is_empty(&self) -> bool {
        self.reported == 0
    }

    /// Engine side: takes the outputs whole if every item reported so far passed (the common
    /// case, with no per-item work), leaving the report empty; `None` otherwise.
    ///
    /// ```
    /// use engine::core::BatchOut;
    ///
    /// let mut out = BatchOut::new();
    /// out.push_all(vec![1, 2]);
    /// assert_eq!(out.take_outputs(), Some(vec![1, 2]));
    /// out.push(3);
    /// out.filter();
    /// assert_eq!(out.take_outputs(), None);
    /// ```
    pub fn take_outputs(&mut self) -> Option<Vec<B>> {
        if !self.misses.is_empty() {
            return None;
        }
        self.reported = 0;
        Some(std::mem::take(&mut self.outputs))
    }

    /// Engine side: every report in order, as [`Transport::transport`](crate::Transport::transport)
    /// would have returned it (`Ok(Some(output))`, `Ok(None)` for filtered, `Err` for failed),
    /// leaving the report empty.
    pub fn drain(&mut self) -> impl Iterator<Item = Result<Option<B>, StageError>> + '_ {
        let reported = std::mem::take(&mut self.reported);
        let mut outputs = self.outputs.drain(..);
        let mut misses = self.misses.drain(..).peekable();
        (0..reported).map(move |i| match misses.next_if(|(at, _)| *at == i) {
            Some((_, Miss::Filtered)) => Ok(None),
            Some((_, Miss::Failed(error))) => Err(error),
            None => {
                Ok(Some(outputs.next().expect(
                    "every reported item without a miss has an output",
                )))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_come_back_in_input_order() {
        let mut out = BatchOut::new();
        out.filter();
        out.push_all(vec![1, 2]);
        out.fail(StageError::msg("x"));
        out.push(3);
        let got: Vec<_> = out.drain().map(|r| r.map_err(|_| ())).collect();
        assert_eq!(
            got,
            [Ok(None), Ok(Some(1)), Ok(Some(2)), Err(()), Ok(Some(3))]
        );
        assert!(out.is_empty());
        assert_eq!(out.take_outputs(), Some(vec![]));
    }
}
