//! Stages whose items run somewhere else (worker processes): whole batches go out, one
//! outcome per item comes back later.
//!
//! Stage authors never need this module. A stage that hands its work to other processes
//! (engine-proc's `ProcTransport` and `ProcBackend`) returns itself from
//! [`Transport::offload`](crate::Transport::offload) or
//! [`Backend::offload`](crate::Backend::offload); an engine that moves items in batches then
//! gives it each batch as it stands, keeps several in flight, and settles every item from its
//! [`ItemOutcome`] when the batch comes back. An engine that knows nothing of offloading
//! calls the stage per item, as for any other stage.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Select;
use serde::de::{self, EnumAccess, VariantAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::StageError;

/// What became of one item of an offloaded batch.
#[derive(Debug, Serialize)]
pub enum ItemOutcome<O> {
    /// The item was handled: a transport's output, or `()` for a backend whose flush covering
    /// the item has succeeded.
    Done(O),
    /// A transport that [emits many](crate::Transport::emits_many) gave these outputs for
    /// the item (none counts it as filtered).
    Many(Vec<O>),
    /// A transport filtered the item out.
    Filtered,
    /// The stage failed on the item (an error or a panic), or could not run it at all (its
    /// worker died every time it was tried): the error says which.
    Failed(StageError),
    /// The item was abandoned because the run was stopped at once before it ran.
    Dropped,
}

/// The variants of [`ItemOutcome`], by name, in order.
const VARIANTS: &[&str] = &["Done", "Many", "Filtered", "Failed", "Dropped"];

/// Which variant of [`ItemOutcome`] follows: by its index (binary formats) or its name.
enum Variant {
    Done,
    Many,
    Filtered,
    Failed,
    Dropped,
}

impl<'de> Deserialize<'de> for Variant {
    #[inline]
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(VariantVisitor)
    }
}

struct VariantVisitor;

impl Visitor<'_> for VariantVisitor {
    type Value = Variant;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an item outcome's variant")
    }

    #[inline]
    fn visit_u64<E: de::Error>(self, index: u64) -> Result<Variant, E> {
        Ok(match index {
            0 => Variant::Done,
            1 => Variant::Many,
            2 => Variant::Filtered,
            3 => Variant::Failed,
            4 => Variant::Dropped,
            _ => return Err(unknown_index(index)),
        })
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Variant, E> {
        match VARIANTS.iter().position(|&v| v == name) {
            Some(index) => self.visit_u64(index as u64),
            None => Err(E::unknown_variant(name, VARIANTS)),
        }
    }

    fn visit_bytes<E: de::Error>(self, name: &[u8]) -> Result<Variant, E> {
        match VARIANTS.iter().position(|&v| v.as_bytes() == name) {
            Some(index) => self.visit_u64(index as u64),
            None => Err(E::unknown_variant(&String::from_utf8_lossy(name), VARIANTS)),
        }
    }
}

#[cold]
fn unknown_index<E: de::Error>(index: u64) -> E {
    E::invalid_value(
        de::Unexpected::Unsigned(index),
        &"a variant index 0 <= i < 5",
    )
}

// Written out rather than derived (reading what the derived `Serialize` writes) so that
// decoding a batch's outcomes inlines into the loop over them: the derived code was a call
// per outcome, and a placed stage's drivers spent a sixth of its CPU decoding them.
impl<'de, O: Deserialize<'de>> Deserialize<'de> for ItemOutcome<O> {
    #[inline]
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_enum("ItemOutcome", VARIANTS, OutcomeVisitor(PhantomData))
    }
}

struct OutcomeVisitor<O>(PhantomData<fn() -> O>);

impl<'de, O: Deserialize<'de>> Visitor<'de> for OutcomeVisitor<O> {
    type Value = ItemOutcome<O>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an item outcome")
    }

    #[inline]
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let (variant, access) = data.variant::<Variant>()?;
        match variant {
            Variant::Done => access.newtype_variant().map(ItemOutcome::Done),
            Variant::Many => access.newtype_variant().map(ItemOutcome::Many),
            Variant::Filtered => access.unit_variant().map(|()| ItemOutcome::Filtered),
            Variant::Failed => access.newtype_variant().map(ItemOutcome::Failed),
            Variant::Dropped => access.unit_variant().map(|()| ItemOutcome::Dropped),
        }
    }
}

impl<O> ItemOutcome<O> {
    /// The outcome of one call of stage code: `Ok(Some(out))` is done, `Ok(None)` filtered.
    pub fn of(result: Result<Option<O>, StageError>) -> Self {
        match result {
            Ok(Some(output)) => Self::Done(output),
            Ok(None) => Self::Filtered,
            Err(error) => Self::Failed(error),
        }
    }
}

impl<O> ItemOutcome<O> {
    /// The outcome of one call of [`Transport::transport_each`](crate::Transport::transport_each):
    /// the outputs it pushed, or its error.
    pub fn of_many(result: Result<Vec<O>, StageError>) -> Self {
        match result {
            Ok(outputs) => Self::Many(outputs),
            Err(error) => Self::Failed(error),
        }
    }
}

/// What a stage runs at once, read live by the engine's statistics (see
/// [`Offload::in_flight`]).
pub trait InFlight: fmt::Debug + Send + Sync {
    /// Items running now.
    fn running(&self) -> usize;
    /// The most items allowed to run at once now.
    fn limit(&self) -> usize;
}

/// A batch that came back: the tag it was submitted under, and one outcome per item in the
/// order the items were submitted.
pub type Finished<O> = (u64, Vec<ItemOutcome<O>>);

/// A stage instance that runs whole batches somewhere else and reports each item later.
///
/// An engine [`submit`](Self::submit)s batches under tags of its choosing, at most
/// [`capacity`](Self::capacity) at a time, and collects them with
/// [`finished`](Self::finished). Every submitted item comes back exactly once, whatever
/// happens to the place it ran in: a worker that died is a [`ItemOutcome::Failed`] item after
/// its retries, a forced stop makes the rest [`ItemOutcome::Dropped`].
pub trait Offload {
    /// The items handed over.
    type Input;
    /// What each item gives back: a transport's output type, or `()` for a backend.
    type Output;

    /// How many batches the engine keeps in flight through this instance at most.
    fn capacity(&self) -> usize;

    /// Whether another batch may be submitted now, below [`capacity`](Self::capacity): a
    /// stage whose bound is in items rather than batches (an async stage's concurrency) says
    /// no while it holds as many items as it allows. The default is yes.
    fn has_room(&self) -> bool {
        true
    }

    /// A live view of the items this stage runs at once and its limit (an async stage's), for
    /// the engine's statistics; read whenever they are, from any thread. The default is none.
    fn in_flight(&self) -> Option<Arc<dyn InFlight>> {
        None
    }

    /// Hands a batch over under `tag`. Returns at once: the outcome comes from
    /// [`finished`](Self::finished).
    fn submit(&mut self, tag: u64, items: Vec<Self::Input>);

    /// The next batch that came back. With `wait`, blocks until one does; an engine only
    /// waits while a batch is in flight, and a forced stop of the run ends the wait (the
    /// batch comes back with its items dropped). Without `wait`, `None` if none is back yet.
    fn finished(&mut self, wait: bool) -> Option<Finished<Self::Output>>;

    /// Adds the return of a batch to `select` and gives the operation's index, so that an
    /// engine with batches in flight can sleep until a batch comes back or new input
    /// arrives, whichever is first; it then takes the batch with
    /// [`finished(false)`](Self::finished), so the operation is only watched
    /// ([`Select::ready`]), never performed. Readiness may be spurious.
    ///
    /// The default watches nothing: an engine then waits for a batch to come back before it
    /// takes input that arrived meanwhile, which holds fewer items in flight than it could
    /// when input trickles in.
    fn watch_finished<'a>(&'a self, select: &mut Select<'a>) -> Option<usize> {
        let _ = select;
        None
    }

    /// Whether another thread may submit a lone batch through this instance and wait for it
    /// with [`finished_within`](Self::finished_within) while the engine thread that owns it
    /// sleeps (engine-threads' `inline_when_idle`). The default is no: batches are submitted
    /// and awaited by the owning thread only.
    fn lends_itself(&self) -> bool {
        false
    }

    /// The next batch that came back, waiting for one up to `patience` (then `None`): how a
    /// thread that submitted a lone batch through a [lent](Self::lends_itself) instance waits
    /// before it leaves the batch to the owning thread. The default does not wait.
    fn finished_within(&mut self, patience: Duration) -> Option<Finished<Self::Output>> {
        let _ = patience;
        self.finished(false)
    }
}

impl<T: Offload + ?Sized> Offload for &mut T {
    type Input = T::Input;
    type Output = T::Output;

    fn capacity(&self) -> usize {
        (**self).capacity()
    }

    fn has_room(&self) -> bool {
        (**self).has_room()
    }

    fn in_flight(&self) -> Option<Arc<dyn InFlight>> {
        (**self).in_flight()
    }

    fn submit(&mut self, tag: u64, items: Vec<T::Input>) {
        (**self).submit(tag, items);
    }

    fn finished(&mut self, wait: bool) -> Option<Finished<T::Output>> {
        (**self).finished(wait)
    }

    fn watch_finished<'a>(&'a self, select: &mut Select<'a>) -> Option<usize> {
        (**self).watch_finished(select)
    }

    fn lends_itself(&self) -> bool {
        (**self).lends_itself()
    }

    fn finished_within(&mut self, patience: Duration) -> Option<Finished<T::Output>> {
        (**self).finished_within(patience)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_result_maps_to_its_outcome() {
        assert!(matches!(ItemOutcome::of(Ok(Some(3))), ItemOutcome::Done(3)));
        assert!(matches!(
            ItemOutcome::<u8>::of(Ok(None)),
            ItemOutcome::Filtered
        ));
        let failed = ItemOutcome::<u8>::of(Err(StageError::msg("no")));
        assert!(matches!(failed, ItemOutcome::Failed(e) if e.to_string() == "no"));
    }

    #[test]
    fn outcomes_cross_the_wire() {
        let outcomes = vec![
            ItemOutcome::Done(7_u64),
            ItemOutcome::Many(vec![1, 2]),
            ItemOutcome::Filtered,
            ItemOutcome::Failed(StageError::msg("bad")),
            ItemOutcome::Dropped,
        ];
        let bytes = crate::protocol::to_bytes(&outcomes).unwrap();
        let back: Vec<ItemOutcome<u64>> = crate::protocol::from_bytes(&bytes).unwrap();
        assert!(matches!(back[0], ItemOutcome::Done(7)));
        assert!(matches!(&back[1], ItemOutcome::Many(many) if many == &[1, 2]));
        assert!(matches!(back[2], ItemOutcome::Filtered));
        assert!(matches!(&back[3], ItemOutcome::Failed(e) if e.to_string() == "bad"));
        assert!(matches!(back[4], ItemOutcome::Dropped));
        // The variants in order: a count of one, then each one's index (a varint).
        let indices: Vec<u8> = (0..5)
            .map(|i| crate::protocol::to_bytes(&outcomes[i..=i]).unwrap()[1])
            .collect();
        assert_eq!(indices, [0, 1, 2, 3, 4]);
        // An index past the last variant is an error, not a panic.
        assert!(crate::protocol::from_bytes::<Vec<ItemOutcome<u64>>>(&[1, 5]).is_err());
        assert!(crate::protocol::from_bytes::<Vec<ItemOutcome<u64>>>(&[1, 4]).is_ok());
    }

    #[test]
    fn variants_are_read_by_name_too() {
        use serde::de::IntoDeserializer;
        use serde::de::value::{Error, StrDeserializer};

        let by_name = |name: &'static str| {
            let deserializer: StrDeserializer<'_, Error> = name.into_deserializer();
            Variant::deserialize(deserializer).map(|v| v as u8)
        };
        for (i, name) in VARIANTS.iter().enumerate() {
            assert_eq!(by_name(name).unwrap(), i as u8);
        }
        let error = by_name("Finished").unwrap_err();
        assert!(error.to_string().contains("unknown variant"), "{error}");
    }
}
