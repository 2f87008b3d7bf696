//! One trace per item: the trace context of the span that produced an item travels with it
//! through the engines, across a process boundary (the wire frame of a placed stage) and a
//! machine boundary (a Redis entry's `traceparent` field), so that the spans of every stage
//! that handled it, wherever they ran, belong to one trace.
//!
//! This module only carries contexts; it exports nothing. An exporter (engine-observe's
//! feature `otel`, or a test's own) [`install`]s a [`TraceHook`], once per process (in a
//! program with worker processes, before `engine::proc::init()`, so that every worker
//! installs it too). The engines then ask the hook:
//!
//! - how many produced items start one trace ([`TraceHook::items_per_trace`], say 100 for
//!   1%), and a context for each such item ([`TraceHook::produced`]); an item a source read
//!   with a context of its own (a Redis entry's `traceparent`) carries that one instead;
//! - to open one span per batch that holds items with contexts ([`TraceHook::enter_batch`]):
//!   the child of the first context and linked to the others, so a batch costs one span, not
//!   one per item. What the stage outputs carries that span's context onward.
//!
//! Install the hook before running engines: a frontend thread looks for it once, when it
//! starts. With no hook installed, an engine carries nothing: no span, no allocation, no
//! `traceparent` field, and its frontends' loops are the ones they were before contexts
//! existed. With one, an item that starts no trace costs a thread-local read and a
//! countdown ([`ItemSampler`]), and a batch with no traced item a branch.
//!
//! [`TraceParent`] is the context on the wire, as W3C Trace Context's `traceparent` header
//! (version `00`).

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

/// A trace context as W3C Trace Context's `traceparent` (version `00`): the trace id, the id
/// of the parent span, and the trace flags (bit 0: sampled).
///
/// ```
/// use engine::core::trace::TraceParent;
///
/// let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// let parent: TraceParent = header.parse()?;
/// assert_eq!(parent.trace_id(), 0x4bf92f3577b34da6a3ce929d0e0e4736);
/// assert_eq!(parent.span_id(), 0x00f067aa0ba902b7);
/// assert!(parent.is_sampled());
/// assert_eq!(parent.to_string(), header);
/// # Ok::<(), engine::core::trace::ParseTraceParentError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TraceParent {
    // The trace id in two halves (high, low): 8-byte alignment keeps the context small
    // where batches carry it.
    trace_hi: u64,
    trace_lo: u64,
    span_id: u64,
    flags: u8,
}

impl TraceParent {
    /// The sampled flag (bit 0 of the flags).
    pub const SAMPLED: u8 = 0x01;

    /// A context of trace `trace_id` whose parent span is `span_id`, with `flags`. Returns
    /// `None` if either id is zero, which W3C Trace Context forbids.
    pub fn new(trace_id: u128, span_id: u64, flags: u8) -> Option<Self> {
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_hi: (trace_id >> 64) as u64,
            trace_lo: trace_id as u64,
            span_id,
            flags,
        })
    }

    /// The trace id.
    pub fn trace_id(&self) -> u128 {
        (u128::from(self.trace_hi) << 64) | u128::from(self.trace_lo)
    }

    /// The id of the parent span.
    pub fn span_id(&self) -> u64 {
        self.span_id
    }

    /// The trace flags.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the sampled flag is set.
    pub fn is_sampled(&self) -> bool {
        self.flags & Self::SAMPLED != 0
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:016x}{:016x}-{:016x}-{:02x}",
            self.trace_hi, self.trace_lo, self.span_id, self.flags
        )
    }
}

/// Why a `traceparent` value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseTraceParentError {
    /// The value is not four `-`-separated fields of 2, 32, 16 and 2 hex digits.
    #[error("a traceparent is 00-<32 hex digits>-<16 hex digits>-<2 hex digits>")]
    Malformed,
    /// The version is not `00` (or is the forbidden `ff`).
    #[error("traceparent version {0} is not supported (only 00)")]
    Version(String),
    /// The trace id or the parent id is all zeros.
    #[error("a traceparent's trace id and parent id cannot be all zeros")]
    ZeroId,
}

impl FromStr for TraceParent {
    type Err = ParseTraceParentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split('-');
        let (Some(version), Some(trace), Some(span), Some(flags), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(ParseTraceParentError::Malformed);
        };
        let hex = |part: &str, len: usize| {
            (part.len() == len && part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
                .then_some(())
                .ok_or(ParseTraceParentError::Malformed)
        };
        hex(version, 2)?;
        if version != "00" {
            return Err(ParseTraceParentError::Version(version.to_owned()));
        }
        hex(trace, 32)?;
        hex(span, 16)?;
        hex(flags, 2)?;
        let malformed = |_| ParseTraceParentError::Malformed;
        let trace_id = u128::from_str_radix(trace, 16).map_err(malformed)?;
        let span_id = u64::from_str_radix(span, 16).map_err(malformed)?;
        let flags = u8::from_str_radix(flags, 16).map_err(malformed)?;
        Self::new(trace_id, span_id, flags).ok_or(ParseTraceParentError::ZeroId)
    }
}

/// A batch an engine is about to run, for [`TraceHook::enter_batch`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct BatchInfo<'a> {
    /// The stage's name.
    pub stage: &'a str,
    /// The stage's kind (`"transport"`, `"backend"`, ...).
    pub kind: &'a str,
    /// The stage thread's (or worker's) index.
    pub index: usize,
    /// How many items the batch holds.
    pub items: usize,
    /// The contexts of the batch's items, without repeats (never empty): the span is the
    /// child of the first and linked to the others.
    pub parents: &'a [TraceParent],
}

impl<'a> BatchInfo<'a> {
    /// A batch of `items` items of the stage `stage` of `kind`, thread `index`, whose items
    /// carry `parents`.
    pub fn new(
        stage: &'a str,
        kind: &'a str,
        index: usize,
        items: usize,
        parents: &'a [TraceParent],
    ) -> Self {
        Self {
            stage,
            kind,
            index,
            items,
            parents,
        }
    }
}

/// A span a [`TraceHook`] opened and entered for a batch: its context, and a guard that
/// exits and ends it when dropped (on the thread that entered it).
pub struct HookSpan {
    /// The span's own context: what the batch's outputs carry onward.
    pub context: TraceParent,
    /// Exits and ends the span when dropped.
    pub guard: Box<dyn Any>,
}

impl fmt::Debug for HookSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookSpan")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

/// What an exporter gives the engines: contexts for new items, and a span per batch. See the
/// [module docs](self).
pub trait TraceHook: Send + Sync + 'static {
    /// The context of the span current on this thread, if it is recorded: what an item
    /// made here should carry (a `feed` call from an HTTP handler carries the handler's span).
    fn current(&self) -> Option<TraceParent>;

    /// One item in this many that frontends produce starts a trace (counted per frontend
    /// thread); 0 for none. Asked once per trace started, not per item.
    fn items_per_trace(&self) -> u64;

    /// A frontend of `stage` produced an item chosen to start a trace: the context of a span
    /// for it, the root of a new trace (`None` if the hook records nothing for it).
    fn produced(&self, stage: &str) -> Option<TraceParent>;

    /// Opens a span for a batch, the child of `batch.parents[0]` and linked to the other
    /// parents, and enters it on this thread; `None` if the hook records nothing for it.
    fn enter_batch(&self, batch: BatchInfo<'_>) -> Option<HookSpan>;
}

static HOOK: OnceLock<Box<dyn TraceHook>> = OnceLock::new();
static ENABLED: AtomicBool = AtomicBool::new(false);

/// A hook was installed already in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a trace hook is installed already in this process")]
pub struct AlreadyInstalled;

/// Installs the process's trace hook. Once installed, it stays.
///
/// # Errors
///
/// [`AlreadyInstalled`] if a hook was installed before (it is kept).
pub fn install(hook: impl TraceHook) -> Result<(), AlreadyInstalled> {
    HOOK.set(Box::new(hook)).map_err(|_| AlreadyInstalled)?;
    ENABLED.store(true, Ordering::Release);
    Ok(())
}

/// Whether a hook is installed: one relaxed load.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

#[inline]
fn hook() -> Option<&'static dyn TraceHook> {
    if enabled() {
        HOOK.get().map(|hook| &**hook)
    } else {
        None
    }
}

thread_local! {
    /// The context of the batch span this thread is in, set by [`enter_batch`].
    static BATCH: Cell<Option<TraceParent>> = const { Cell::new(None) };
    /// The context a source gave the item it is about to hand out.
    static ITEM: Cell<Option<TraceParent>> = const { Cell::new(None) };
}

/// The context an item made on this thread should carry: the batch span an engine runs here
/// (inside a stage), else the hook's current span (a request handler calling a feed). `None`
/// without a hook.
pub fn current() -> Option<TraceParent> {
    let hook = hook()?;
    BATCH.get().or_else(|| hook.current())
}

/// The context of the batch span an engine runs on this thread, if any: what a stage that
/// passes items on beyond the engine (a stream sink) writes beside them. `None` without a
/// hook, or outside a batch with traced items.
#[inline]
pub fn current_batch() -> Option<TraceParent> {
    if enabled() { BATCH.get() } else { None }
}

/// A source about to hand out an item says which context the item carries (read from its
/// broker entry): the engine's frontend thread takes it right after `produce` returns, if
/// the source says it gives them
/// ([`TrackedFrontend::gives_trace_parents`](crate::plumbing::TrackedFrontend::gives_trace_parents)).
/// Only worth calling when [`enabled`].
pub fn set_item_parent(parent: Option<TraceParent>) {
    ITEM.set(parent);
}

/// Chooses, on one frontend thread, the items that carry a trace context: those whose
/// source gave one ([`set_item_parent`]), and one in [`TraceHook::items_per_trace`] of the
/// others, which start a trace ([`TraceHook::produced`]).
///
/// An engine keeps one per frontend thread while a hook is installed and asks it once per
/// produced item: an item that starts nothing costs a countdown (and, from a source that
/// gives contexts, a thread-local read).
#[derive(Debug, Default)]
pub struct ItemSampler {
    /// Items until the next one that starts a trace; 0 before the first.
    left: u64,
    /// Whether the source gives its items' contexts ([`set_item_parent`]).
    parents: bool,
}

impl ItemSampler {
    /// A sampler that has counted nothing yet, for a source that gives its items' contexts
    /// (`parents`) or not.
    pub fn new(parents: bool) -> Self {
        Self { left: 0, parents }
    }

    /// The context the item a frontend of `stage` just produced carries, if any.
    #[inline]
    pub fn produced(&mut self, stage: &str) -> Option<TraceParent> {
        if self.parents
            && let Some(parent) = ITEM.take()
        {
            return Some(parent);
        }
        if self.left > 1 {
            self.left -= 1;
            return None;
        }
        self.start(stage)
    }

    /// The count ran out (or has not begun): the hook says how far the next trace is, and
    /// starts one for this item unless the count only begins now.
    #[cold]
    fn start(&mut self, stage: &str) -> Option<TraceParent> {
        let hook = hook()?;
        let every = hook.items_per_trace();
        if every == 0 {
            // Asked again after 2^64 items, should the hook change its mind.
            self.left = u64::MAX;
            return None;
        }
        if self.left == 0 && every > 1 {
            self.left = every - 1;
            return None;
        }
        self.left = every;
        hook.produced(stage)
    }
}

/// The span of a batch an engine runs, entered on this thread until dropped: while it is,
/// [`current_batch`] gives its context.
#[derive(Debug)]
pub struct BatchScope {
    span: Option<HookSpan>,
    previous: Option<TraceParent>,
}

impl BatchScope {
    /// The batch span's context: what the batch's outputs carry.
    pub fn context(&self) -> Option<TraceParent> {
        self.span.as_ref().map(|span| span.context)
    }
}

impl Drop for BatchScope {
    fn drop(&mut self) {
        BATCH.set(self.previous);
        // Exits and ends the span after the context is restored.
        drop(self.span.take());
    }
}

/// Opens and enters the span of a batch whose items carry `batch.parents`; `None` without a
/// hook, with no parents, or if the hook records nothing for it.
pub fn enter_batch(batch: BatchInfo<'_>) -> Option<BatchScope> {
    if batch.parents.is_empty() {
        return None;
    }
    let span = hook()?.enter_batch(batch)?;
    let previous = BATCH.replace(Some(span.context));
    Some(BatchScope {
        span: Some(span),
        previous,
    })
}

/// The most contexts a batch keeps: a batch span links to at most this many item contexts
/// (OpenTelemetry keeps 128 links per span by default).
pub const MAX_LINKS: usize = 64;

/// Adds `parent` to a deduplicated list of contexts, up to [`MAX_LINKS`].
pub fn add_parent(parents: &mut Vec<TraceParent>, parent: TraceParent) {
    if parents.len() < MAX_LINKS && !parents.contains(&parent) {
        parents.push(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_reads_back_what_it_writes() {
        let parent = TraceParent::new(0xabc, 0xdef, 1).unwrap();
        assert_eq!(
            parent.to_string(),
            "00-00000000000000000000000000000abc-0000000000000def-01"
        );
        assert_eq!(parent.to_string().parse::<TraceParent>(), Ok(parent));
        let bytes = crate::protocol::to_bytes(&parent).unwrap();
        assert_eq!(
            crate::protocol::from_bytes::<TraceParent>(&bytes).unwrap(),
            parent
        );
    }

    #[test]
    fn bad_traceparents_are_typed_errors() {
        use ParseTraceParentError::*;
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(ok.parse::<TraceParent>().is_ok());
        for (bad, error) in [
            ("", Malformed),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                Malformed,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                Malformed,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                Malformed,
            ),
            (
                "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Malformed,
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Version("01".into()),
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                ZeroId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                ZeroId,
            ),
        ] {
            assert_eq!(bad.parse::<TraceParent>(), Err(error), "{bad}");
        }
    }

    #[test]
    fn without_a_hook_nothing_is_carried() {
        assert!(!enabled());
        let mut sampler = ItemSampler::new(false);
        assert_eq!(sampler.produced("numbers"), None);
        assert_eq!(current(), None);
        let parents = [TraceParent::new(1, 2, 1).unwrap()];
        assert!(enter_batch(BatchInfo::new("t", "transport", 0, 1, &parents)).is_none());
        assert_eq!(current_batch(), None);
    }

    #[test]
    fn parents_are_kept_once_and_bounded() {
        let mut parents = Vec::new();
        let a = TraceParent::new(1, 1, 1).unwrap();
        add_parent(&mut parents, a);
        add_parent(&mut parents, a);
        assert_eq!(parents, [a]);
        for i in 2..200 {
            add_parent(&mut parents, TraceParent::new(i, 1, 1).unwrap());
        }
        assert_eq!(parents.len(), MAX_LINKS);
    }
}
