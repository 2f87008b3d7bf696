//! The callbacks registered with a stop handle: a small vector for the usual few, a map by id
//! past that.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::StopLevel;

pub(super) type Listener = Arc<dyn Fn(StopLevel) + Send + Sync>;

/// The registered callbacks, in registration order (ids only grow, and are taken under the
/// lock). A few (a child handle's usual one or two) sit in a small vector; past
/// [`FEW`](Listeners::FEW) they move to a map by id, so that dropping one subscription costs a
/// lookup, not a scan of the list: a handle with 10,000 children (a pod of 10,000 beans)
/// would make a scan quadratic.
pub(super) enum Listeners {
    Few(Vec<(u64, Listener)>),
    Many(BTreeMap<u64, Listener>),
}

impl Listeners {
    const FEW: usize = 8;

    pub(super) fn insert(&mut self, id: u64, listener: Listener) {
        match self {
            Self::Few(few) if few.len() < Self::FEW => few.push((id, listener)),
            Self::Few(few) => {
                let mut many: BTreeMap<u64, Listener> = few.drain(..).collect();
                many.insert(id, listener);
                *self = Self::Many(many);
            }
            Self::Many(many) => {
                many.insert(id, listener);
            }
        }
    }

    pub(super) fn remove(&mut self, id: u64) -> Option<Listener> {
        match self {
            Self::Few(few) => {
                let at = few.iter().position(|(i, _)| *i == id)?;
                Some(few.remove(at).1)
            }
            Self::Many(many) => many.remove(&id),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Self::Few(few) => few.len(),
            Self::Many(many) => many.len(),
        }
    }

    /// The listeners to call, in registration order.
    pub(super) fn due(&self) -> Due {
        match self {
            Self::Few(few) if few.len() == 1 => Due::One(Arc::clone(&few[0].1)),
            Self::Few(few) => Due::Many(few.iter().map(|(_, f)| Arc::clone(f)).collect()),
            Self::Many(many) => Due::Many(many.values().map(Arc::clone).collect()),
        }
    }
}

/// The listeners to call after a level change, taken out of the lock: a lone one (a child
/// handle's usual case) without a heap allocation.
pub(super) enum Due {
    One(Listener),
    Many(Vec<Listener>),
}
