//! Closures and iterators as stages: the `Into*` conversions engines accept, and the wrappers
//! for the filtering and fallible forms.
//!
//! Engines take `impl IntoFrontend<M>`, `impl IntoTransport<M>` and `impl IntoBackend<M>`, so a
//! stage can be a type implementing the trait, an iterator, or a closure. The marker type `M`
//! only tells the conversions apart; callers never name it.
//!
//! A plain closure `FnMut(A) -> B` always maps, whatever `B` is: a closure returning an
//! `Option` or a `Result` passes the `Option` or `Result` on as an item. To filter or to fail,
//! wrap it in [`filter_map`], [`try_map`] or [`try_filter_map`], and to emit many outputs per
//! input in [`flat_map`]; a mismatch shows up as a type error at the next stage, never at run
//! time.
//!
//! The fallible forms accept any error that converts into a boxed error: every
//! `std::error::Error`, `anyhow::Error`, `String`, `&str` and [`StageError`] itself.

use std::marker::PhantomData;

use crate::completion::{TrackedFrontend, Untracked};
use crate::context::StageContext;
use crate::error::{BoxError, StageError};
use crate::stage::{Backend, Frontend, Transport};

/// Type-level markers that tell the `Into*` conversions apart. You never name them.
pub mod markers {
    /// The value already implements the stage trait.
    #[derive(Debug)]
    pub enum Stage {}
    /// The value is an iterator or a collection.
    #[derive(Debug)]
    pub enum Iter {}
    /// The value is a tracked frontend.
    #[derive(Debug)]
    pub enum Tracked {}
    /// The value is a closure of this signature.
    #[derive(Debug)]
    pub struct Closure<Signature>(std::marker::PhantomData<Signature>);
}

/// Anything that can be used as a frontend: a [`Frontend`], any [`IntoIterator`], or a
/// [`TrackedFrontend`] whose items carry completion tickets.
///
/// All three become a [`TrackedFrontend`] (plain frontends with the empty ticket `()`, through
/// [`Untracked`]), so engines have one code path for every source.
///
/// # Examples
///
/// ```
/// use engine::core::plumbing::TrackedFrontend;
/// use engine::core::{IntoFrontend, StageContext, StageKind};
///
/// let ctx = StageContext::standalone("numbers", StageKind::Frontend);
/// let mut frontend = vec![1, 2].into_frontend();
/// assert_eq!(frontend.produce(&ctx).unwrap(), Some(((), 1)));
/// assert_eq!(frontend.produce(&ctx).unwrap(), Some(((), 2)));
/// assert_eq!(frontend.produce(&ctx).unwrap(), None);
/// ```
pub trait IntoFrontend<Marker> {
    /// The frontend this turns into.
    type Frontend: TrackedFrontend;

    /// Converts into the frontend.
    fn into_frontend(self) -> Self::Frontend;
}

impl<F: Frontend> IntoFrontend<markers::Stage> for F {
    type Frontend = Untracked<F>;

    fn into_frontend(self) -> Untracked<F> {
        Untracked::new(self)
    }
}

impl<I: IntoIterator> IntoFrontend<markers::Iter> for I {
    type Frontend = Untracked<IterFrontend<I::IntoIter>>;

    fn into_frontend(self) -> Self::Frontend {
        Untracked::new(IterFrontend(self.into_iter()))
    }
}

impl<F: TrackedFrontend> IntoFrontend<markers::Tracked> for F {
    type Frontend = F;

    fn into_frontend(self) -> F {
        self
    }
}

/// A frontend that yields the items of an iterator. Made by [`IntoFrontend`].
///
/// Not `Clone`: an engine running several frontend threads builds one instance per thread,
/// and a cloned iterator would produce every item once per thread.
#[derive(Debug)]
pub struct IterFrontend<I>(I);

impl<I: Iterator> Frontend for IterFrontend<I> {
    type Item = I::Item;

    #[inline]
    fn produce(&mut self, _ctx: &StageContext) -> Result<Option<I::Item>, StageError> {
        Ok(self.0.next())
    }
}

/// A frontend from an iterator of `Result`s: `Ok` items are produced, `Err` items are counted
/// as failed.
///
/// # Examples
///
/// ```
/// use engine::core::{Frontend, StageContext, StageKind, try_iter};
///
/// let ctx = StageContext::standalone("lines", StageKind::Frontend);
/// let mut frontend = try_iter(["1", "x"].map(str::parse::<u8>));
/// assert_eq!(frontend.produce(&ctx).unwrap(), Some(1));
/// assert!(frontend.produce(&ctx).is_err());
/// assert_eq!(frontend.produce(&ctx).unwrap(), None);
/// ```
pub fn try_iter<I, T, E>(iter: I) -> TryIterFrontend<I::IntoIter>
where
    I: IntoIterator<Item = Result<T, E>>,
    E: Into<BoxError>,
{
    TryIterFrontend(iter.into_iter())
}

/// A frontend from an iterator of `Result`s. Made by [`try_iter`].
#[derive(Debug)]
pub struct TryIterFrontend<I>(I);

impl<I, T, E> Frontend for TryIterFrontend<I>
where
    I: Iterator<Item = Result<T, E>>,
    E: Into<BoxError>,
{
    type Item = T;

    #[inline]
    fn produce(&mut self, _ctx: &StageContext) -> Result<Option<T>, StageError> {
        self.0.next().transpose().map_err(StageError::from_boxed)
    }
}

/// Anything that can be used as a [`Transport`]: a transport itself, or a closure
/// `FnMut(A) -> B`.
///
/// # Examples
///
/// ```
/// use engine::core::{IntoTransport, StageContext, StageKind, Transport};
///
/// let ctx = StageContext::standalone("double", StageKind::Transport);
/// let mut transport = (|x: u32| x * 2).into_transport();
/// assert_eq!(transport.transport(21, &ctx).unwrap(), Some(42));
/// ```
pub trait IntoTransport<Marker> {
    /// The transport this turns into.
    type Transport: Transport;

    /// Converts into the transport.
    fn into_transport(self) -> Self::Transport;
}

impl<T: Transport> IntoTransport<markers::Stage> for T {
    type Transport = T;

    fn into_transport(self) -> T {
        self
    }
}

impl<A, B, F: FnMut(A) -> B> IntoTransport<markers::Closure<fn(A) -> B>> for F {
    type Transport = MapFn<F, A>;

    fn into_transport(self) -> Self::Transport {
        MapFn(self, PhantomData)
    }
}

/// Declares a closure wrapper stage: a tuple struct of the closure and a marker for its input
/// type, with `Clone` when the closure is `Clone` and a `Debug` that names the wrapper.
macro_rules! closure_stage {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name<F, A>(F, PhantomData<fn(A)>);

        impl<F: Clone, A> Clone for $name<F, A> {
            fn clone(&self) -> Self {
                Self(self.0.clone(), PhantomData)
            }
        }

        impl<F, A> std::fmt::Debug for $name<F, A> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($name))
            }
        }
    };
}

mod batch;
pub use batch::{MapBatchFn, map_batch};

closure_stage!(
    /// A transport from a closure `FnMut(A) -> B`. Made by [`IntoTransport`].
    MapFn
);

impl<A, B, F: FnMut(A) -> B> Transport for MapFn<F, A> {
    type Input = A;
    type Output = B;

    #[inline]
    fn transport(&mut self, item: A, _ctx: &StageContext) -> Result<Option<B>, StageError> {
        Ok(Some((self.0)(item)))
    }
}

closure_stage!(
    /// A transport from a closure `FnMut(A) -> Option<B>`. Made by [`filter_map`].
    FilterMapFn
);

/// A transport that passes `Some` results on and filters `None` out.
///
/// # Examples
///
/// ```
/// use engine::core::{StageContext, StageKind, Transport, filter_map};
///
/// let ctx = StageContext::standalone("even", StageKind::Transport);
/// let mut even = filter_map(|x: u32| x.is_multiple_of(2).then_some(x));
/// assert_eq!(even.transport(4, &ctx).unwrap(), Some(4));
/// assert_eq!(even.transport(5, &ctx).unwrap(), None);
/// ```
pub fn filter_map<A, B, F: FnMut(A) -> Option<B>>(f: F) -> FilterMapFn<F, A> {
    FilterMapFn(f, PhantomData)
}

impl<A, B, F: FnMut(A) -> Option<B>> Transport for FilterMapFn<F, A> {
    type Input = A;
    type Output = B;

    #[inline]
    fn transport(&mut self, item: A, _ctx: &StageContext) -> Result<Option<B>, StageError> {
        Ok((self.0)(item))
    }
}

closure_stage!(
    /// A transport from a closure `FnMut(A) -> Result<B, E>`. Made by [`try_map`].
    TryMapFn
);

/// A transport whose `Err` results count as failed items.
///
/// # Examples
///
/// ```
/// use engine::core::{StageContext, StageKind, Transport, try_map};
///
/// let ctx = StageContext::standalone("parse", StageKind::Transport);
/// let mut parse = try_map(|s: String| s.parse::<u8>());
/// assert_eq!(parse.transport("7".into(), &ctx).unwrap(), Some(7));
/// assert!(parse.transport("300".into(), &ctx).is_err());
/// ```
pub fn try_map<A, B, E, F>(f: F) -> TryMapFn<F, A>
where
    F: FnMut(A) -> Result<B, E>,
    E: Into<BoxError>,
{
    TryMapFn(f, PhantomData)
}

impl<A, B, E, F> Transport for TryMapFn<F, A>
where
    F: FnMut(A) -> Result<B, E>,
    E: Into<BoxError>,
{
    type Input = A;
    type Output = B;

    #[inline]
    fn transport(&mut self, item: A, _ctx: &StageContext) -> Result<Option<B>, StageError> {
        (self.0)(item).map(Some).map_err(StageError::from_boxed)
    }
}

closure_stage!(
    /// A transport from a closure `FnMut(A) -> Result<Option<B>, E>`. Made by
    /// [`try_filter_map`].
    TryFilterMapFn
);

/// A transport that can both filter (`Ok(None)`) and fail (`Err`).
///
/// # Examples
///
/// ```
/// use engine::core::{StageContext, StageKind, StageError, Transport, try_filter_map};
///
/// let ctx = StageContext::standalone("parse", StageKind::Transport);
/// let mut parse = try_filter_map(|s: &str| -> Result<Option<u8>, StageError> {
///     if s.starts_with('#') { Ok(None) } else { Ok(Some(s.parse()?)) }
/// });
/// assert_eq!(parse.transport("# comment", &ctx).unwrap(), None);
/// assert_eq!(parse.transport("9", &ctx).unwrap(), Some(9));
/// assert!(parse.transport("nine", &ctx).is_err());
/// ```
pub fn try_filter_map<A, B, E, F>(f: F) -> TryFilterMapFn<F, A>
where
    F: FnMut(A) -> Result<Option<B>, E>,
    E: Into<BoxError>,
{
    TryFilterMapFn(f, PhantomData)
}

impl<A, B, E, F> Transport for TryFilterMapFn<F, A>
where
    F: FnMut(A) -> Result<Option<B>, E>,
    E: Into<BoxError>,
{
    type Input = A;
    type Output = B;

    #[inline]
    fn transport(&mut self, item: A, _ctx: &StageContext) -> Result<Option<B>, StageError> {
        (self.0)(item).map_err(StageError::from_boxed)
    }
}

closure_stage!(
    /// A transport from a closure `FnMut(A) -> I` where `I: IntoIterator<Item = B>`. Made by
    /// [`flat_map`].
    FlatMapFn
);

/// A transport that passes on every item of what the closure returns: one input, any number
/// of outputs (none counts the input as filtered).
///
/// Engines call [`Transport::transport_each`] for it; [`Transport::transport`] serves only
/// the inputs that give at most one output and fails the others, since it can return only
/// one.
///
/// # Examples
///
/// ```
/// use engine::core::{StageContext, StageKind, Transport, flat_map};
///
/// let ctx = StageContext::standalone("words", StageKind::Transport);
/// let mut words = flat_map(|line: &str| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>());
/// let mut out = Vec::new();
/// words.transport_each("to be or", &ctx, &mut out).unwrap();
/// assert_eq!(out, ["to", "be", "or"]);
/// assert!(words.emits_many());
/// ```
pub fn flat_map<A, I: IntoIterator, F: FnMut(A) -> I>(f: F) -> FlatMapFn<F, A> {
    FlatMapFn(f, PhantomData)
}

impl<A, I: IntoIterator, F: FnMut(A) -> I> Transport for FlatMapFn<F, A> {
    type Input = A;
    type Output = I::Item;

    fn transport(&mut self, item: A, _ctx: &StageContext) -> Result<Option<I::Item>, StageError> {
        let mut outputs = (self.0)(item).into_iter();
        let first = outputs.next();
        match outputs.count() {
            0 => Ok(first),
            more => Err(StageError::msg(format!(
                "a flat_map transport gave {} outputs for one item through `transport`, which \
                 returns one; call `transport_each`",
                more + 1
            ))),
        }
    }

    fn emits_many(&self) -> bool {
        true
    }

    #[inline]
    fn transport_each(
        &mut self,
        item: A,
        _ctx: &StageContext,
        out: &mut Vec<I::Item>,
    ) -> Result<(), StageError> {
        out.extend((self.0)(item));
        Ok(())
    }
}

/// Anything that can be used as a [`Backend`]: a backend itself, a closure `FnMut(A)`, or a
/// fallible closure `FnMut(A) -> Result<(), E>` whose errors count as failed items.
///
/// # Examples
///
/// ```
/// use engine::core::{Backend, IntoBackend, StageContext, StageKind};
///
/// let ctx = StageContext::standalone("print", StageKind::Backend);
/// let mut seen = Vec::new();
/// let mut backend = (|x: u32| seen.push(x)).into_backend();
/// backend.process(1, &ctx).unwrap();
/// drop(backend);
/// assert_eq!(seen, [1]);
///
/// let mut checked = (|x: u32| if x > 9 { Err(std::fmt::Error) } else { Ok(()) }).into_backend();
/// assert!(checked.process(10, &ctx).is_err());
/// ```
pub trait IntoBackend<Marker> {
    /// The backend this turns into.
    type Backend: Backend;

    /// Converts into the backend.
    fn into_backend(self) -> Self::Backend;
}

impl<B: Backend> IntoBackend<markers::Stage> for B {
    type Backend = B;

    fn into_backend(self) -> B {
        self
    }
}

impl<A, F: FnMut(A)> IntoBackend<markers::Closure<fn(A)>> for F {
    type Backend = ForEachFn<F, A>;

    fn into_backend(self) -> Self::Backend {
        ForEachFn(self, PhantomData)
    }
}

impl<A, E, F> IntoBackend<markers::Closure<fn(A) -> Result<(), E>>> for F
where
    F: FnMut(A) -> Result<(), E>,
    E: Into<BoxError>,
{
    type Backend = TryForEachFn<F, A>;

    fn into_backend(self) -> Self::Backend {
        TryForEachFn(self, PhantomData)
    }
}

closure_stage!(
    /// A backend from a closure `FnMut(A)`. Made by [`IntoBackend`].
    ForEachFn
);

impl<A, F: FnMut(A)> Backend for ForEachFn<F, A> {
    type Input = A;

    #[inline]
    fn process(&mut self, item: A, _ctx: &StageContext) -> Result<(), StageError> {
        (self.0)(item);
        Ok(())
    }
}

closure_stage!(
    /// A backend from a closure `FnMut(A) -> Result<(), E>`. Made by [`IntoBackend`].
    TryForEachFn
);

impl<A, E, F> Backend for TryForEachFn<F, A>
where
    F: FnMut(A) -> Result<(), E>,
    E: Into<BoxError>,
{
    type Input = A;

    #[inline]
    fn process(&mut self, item: A, _ctx: &StageContext) -> Result<(), StageError> {
        (self.0)(item).map_err(StageError::from_boxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::StageKind;

    fn ctx(kind: StageKind) -> StageContext {
        StageContext::standalone("test", kind)
    }

    /// Runs a frontend, a transport and a backend by hand, the way an engine would on one
    /// thread, and returns the number of failed items.
    fn drive<FM, TM, BM>(
        frontend: impl IntoFrontend<FM, Frontend = impl TrackedFrontend<Item = u32>>,
        transport: impl IntoTransport<TM, Transport = impl Transport<Input = u32, Output = u32>>,
        backend: impl IntoBackend<BM, Backend = impl Backend<Input = u32>>,
    ) -> usize {
        let (mut f, mut t, mut b) = (
            frontend.into_frontend(),
            transport.into_transport(),
            backend.into_backend(),
        );
        let mut failed = 0;
        loop {
            match f.produce(&ctx(StageKind::Frontend)) {
                Ok(None) => return failed,
                Err(_) => failed += 1,
                Ok(Some((_ticket, item))) => match t.transport(item, &ctx(StageKind::Transport)) {
                    Err(_) => failed += 1,
                    Ok(None) => {}
                    Ok(Some(out)) => {
                        if b.process(out, &ctx(StageKind::Backend)).is_err() {
                            failed += 1;
                        }
                    }
                },
            }
        }
    }

    #[test]
    fn closures_and_iterators_compose_into_a_pipeline() {
        let mut seen = Vec::new();
        let failed = drive(1..=5, |x: u32| x * 10, |x: u32| seen.push(x));
        assert_eq!(failed, 0);
        assert_eq!(seen, [10, 20, 30, 40, 50]);
    }

    #[test]
    fn filtering_and_fallible_forms_count_the_right_items() {
        let mut seen = Vec::new();
        let failed = drive(
            try_iter([Ok(1), Err("bad read"), Ok(2), Ok(3), Ok(4)]),
            try_filter_map(|x: u32| match x {
                2 => Ok(None),
                3 => Err(StageError::msg("bad item")),
                x => Ok(Some(x)),
            }),
            |x: u32| -> Result<(), StageError> {
                if x == 4 {
                    return Err(StageError::msg("cannot store"));
                }
                seen.push(x);
                Ok(())
            },
        );
        assert_eq!(failed, 3);
        assert_eq!(seen, [1]);
    }

    #[test]
    fn filter_map_and_try_map_wrappers() {
        let mut seen = Vec::new();
        let failed = drive(
            vec![1_u32, 2, 3, 4],
            filter_map(|x: u32| x.is_multiple_of(2).then_some(x)),
            |x| seen.push(x),
        );
        assert_eq!((failed, seen.as_slice()), (0, &[2, 4][..]));
        let failed = drive(
            [1_u32, 2],
            try_map(|x: u32| x.checked_sub(2).ok_or_else(|| StageError::msg("negative"))),
            |_: u32| {},
        );
        assert_eq!(failed, 1);
    }

    #[test]
    fn wrappers_are_clone_when_the_closure_is() {
        let t = filter_map(|x: u8| Some(x));
        let mut copy = t.clone();
        assert_eq!(
            copy.transport(3, &ctx(StageKind::Transport)).unwrap(),
            Some(3)
        );
        assert_eq!(format!("{t:?}"), "FilterMapFn");
    }
}
