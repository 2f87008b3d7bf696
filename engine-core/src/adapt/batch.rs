//! The batch-native closure form: `map_batch`, a transport that maps a whole batch at once.

use std::marker::PhantomData;

use crate::batch_out::BatchOut;
use crate::context::StageContext;
use crate::error::StageError;
use crate::stage::Transport;

closure_stage!(
    /// A batch-native transport from a closure `FnMut(Vec<A>) -> Vec<B>`. Made by
    /// [`map_batch`].
    MapBatchFn
);

/// A batch-native transport: the closure maps a whole batch, as the engine moves it, and
/// returns one output per input, in order. A light stage (`x + 1`, a lookup under one lock,
/// vectorised code) then pays per batch what it would pay per item.
///
/// Counts stay per item: a batch of `n` counts `n` inputs and `n` outputs. A closure that
/// returns a different number of outputs than it got inputs fails every item of that batch,
/// with an error that says so; a panic fails every item of the batch. To filter or fail single
/// items, implement [`Transport::transport_batch`] and report each item on a [`BatchOut`].
///
/// # Examples
///
/// ```
/// use engine::core::{BatchOut, StageContext, StageKind, Transport, map_batch};
///
/// let ctx = StageContext::standalone("add-one", StageKind::Transport);
/// let mut add_one = map_batch(|mut xs: Vec<u64>| {
///     xs.iter_mut().for_each(|x| *x += 1);
///     xs
/// });
/// assert!(add_one.takes_batches());
/// let mut out = BatchOut::new();
/// add_one.transport_batch(vec![1, 2], &mut out, &ctx).unwrap();
/// assert_eq!(out.take_outputs(), Some(vec![2, 3]));
/// assert_eq!(add_one.transport(9, &ctx).unwrap(), Some(10));
/// ```
pub fn map_batch<A, B, F: FnMut(Vec<A>) -> Vec<B>>(f: F) -> MapBatchFn<F, A> {
    MapBatchFn(f, PhantomData)
}

impl<A, B, F: FnMut(Vec<A>) -> Vec<B>> Transport for MapBatchFn<F, A> {
    type Input = A;
    type Output = B;

    /// One item is a batch of one.
    fn transport(&mut self, item: A, _ctx: &StageContext) -> Result<Option<B>, StageError> {
        let mut outputs = (self.0)(vec![item]);
        match (outputs.pop(), outputs.is_empty()) {
            (Some(output), true) => Ok(Some(output)),
            (output, _) => Err(mismatch(outputs.len() + usize::from(output.is_some()), 1)),
        }
    }

    fn takes_batches(&self) -> bool {
        true
    }

    #[inline]
    fn transport_batch(
        &mut self,
        items: Vec<A>,
        out: &mut BatchOut<B>,
        _ctx: &StageContext,
    ) -> Result<(), StageError> {
        let n = items.len();
        let outputs = (self.0)(items);
        if outputs.len() != n {
            return Err(mismatch(outputs.len(), n));
        }
        out.push_all(outputs);
        Ok(())
    }
}

fn mismatch(outputs: usize, inputs: usize) -> StageError {
    StageError::msg(format!(
        "a map_batch closure gave {outputs} outputs for {inputs} inputs; it must give one \
         output per input, in order"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::StageKind;

    #[test]
    fn a_batch_of_the_wrong_length_fails_whole() {
        let ctx = StageContext::standalone("t", StageKind::Transport);
        let mut halve = map_batch(|xs: Vec<u8>| xs.into_iter().step_by(2).collect::<Vec<_>>());
        let mut out = BatchOut::new();
        let error = halve
            .transport_batch(vec![1, 2, 3, 4], &mut out, &ctx)
            .unwrap_err();
        assert!(
            error.to_string().contains("2 outputs for 4 inputs"),
            "{error}"
        );
        assert!(out.is_empty());
        assert_eq!(halve.transport(1, &ctx).unwrap(), Some(1));
        let mut drop_all = map_batch(|_: Vec<u8>| Vec::<u8>::new());
        assert!(drop_all.transport(1, &ctx).is_err());
    }
}
