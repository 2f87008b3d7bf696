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
//! - how many produced items one traced item stands for ([`TraceHook::items_per_trace`], say
//!   100 for 1%), and a context for each batch chosen to start a trace
//!   ([`TraceHook::produced`]).
//!   Sampling is per batch: a batch that leaves a frontend is the unit of a trace, chosen so
//!   that one item in `items_per_trace` is traced ([`BatchSampler`]), and all its items share
//!   that trace. An item a source read with a context of its own (a Redis entry's
//!   `traceparent`) carries that one instead, and its batch starts no trace of its own;
//! - to open one span per batch that holds items with contexts ([`TraceHook::enter_batch`]):
//!   the child of the first context and linked to the others, so a batch costs one span, not
//!   one per item. What the stage outputs carries that span's context onward. Sampling 1%
//!   of items, about 1% of the batches of every stage have a span.
//!
//! Install the hook before running engines: a frontend thread looks for it once, when it
//! starts. With no hook installed, an engine carries nothing: no span, no allocation, no
//! `traceparent` field. With one, sampling costs nothing per item: a batch that starts no
//! trace costs a few additions when it leaves its frontend, and a branch in each stage.
//! Only a source that gives its items' contexts costs a thread-local read per item.
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

    /// One item in this many that frontends produce is traced; 0 for none. Sampling is per
    /// batch: a batch leaving a frontend starts a trace for all its items, and the batches
    /// are chosen so that this share of the items is traced ([`BatchSampler`]; 100 traces
    /// about one batch in a hundred). Asked once per batch that leaves a frontend.
    fn items_per_trace(&self) -> u64;

    /// A frontend of `stage` let a batch go that was chosen to start a trace: the context of
    /// a span for it, the root of a new trace that all the batch's items share (`None` if
    /// the hook records nothing for it). Called on whichever thread takes the batch (the
    /// frontend's, or a consumer's that found it waiting), so the span should not be the
    /// child of that thread's current span.
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

/// The context the source of this frontend thread gave the item it just handed out
/// ([`set_item_parent`]), taken: an engine asks once per item, and only for a source that
/// says it gives them.
#[inline]
pub fn take_item_parent() -> Option<TraceParent> {
    ITEM.take()
}

/// Chooses the batches leaving a frontend that start a trace: a batch is the unit of a
/// trace, so that sampling costs nothing per item and the number of spans is proportional
/// to the sampling ratio.
///
/// With one item in `every` to trace ([`TraceHook::items_per_trace`]), the sampler keeps
/// the items traced as close to `1 / every` of the items counted as whole batches allow:
/// it counts each batch's `n` items, and traces the batch if that brings the items traced
/// closer to `1 / every` of the items counted than leaving it does (if the items traced
/// fall short of that share by at least `n / 2`). So batches of a constant size `n` are
/// traced one in `every` (the `every / 2`-th first), and with batches of any sizes the
/// items traced never differ from `1 / every` of the items counted by more than half the
/// largest batch. `every` 0 traces nothing, 1 every batch.
///
/// An engine keeps one per frontend thread while a hook is installed, and asks it once per
/// batch that leaves the frontend (whoever takes it): a batch that starts nothing costs a
/// few additions.
///
/// ```
/// use engine::core::trace::BatchSampler;
///
/// let mut sampler = BatchSampler::new();
/// let traced: Vec<usize> = (0..1000).filter(|_| sampler.choose(256, 100)).collect();
/// assert_eq!(traced, [49, 149, 249, 349, 449, 549, 649, 749, 849, 949]);
/// ```
#[derive(Debug, Default, Clone)]
pub struct BatchSampler {
    /// The items counted, less `every` times the items traced: how far the items traced
    /// fall short of `1 / every` of the items counted, times `every`.
    owed: i128,
}

impl BatchSampler {
    /// A sampler that has counted nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a batch of `items` items and says whether it starts a trace, when one item in
    /// `every` should be traced (0: none); see the [type docs](Self).
    pub fn choose(&mut self, items: usize, every: u64) -> bool {
        if every == 0 || items == 0 {
            return false;
        }
        let items = i128::try_from(items).unwrap_or(i128::MAX);
        let cost = i128::from(every).saturating_mul(items);
        self.owed = self.owed.saturating_add(items);
        // Traced, the shortfall becomes `owed - cost`; left, `owed`: trace if that is
        // closer to none, that is if `owed >= cost / 2`.
        if self.owed.saturating_mul(2) >= cost {
            self.owed -= cost;
            true
        } else {
            false
        }
    }

    /// A batch of `items` items leaves a frontend of `stage`: the context of the trace it
    /// starts ([`TraceHook::produced`]), if the hook's ratio chooses it. `None` without a
    /// hook.
    pub fn sample(&mut self, stage: &str, items: usize) -> Option<TraceParent> {
        let hook = hook()?;
        if self.choose(items, hook.items_per_trace()) {
            hook.produced(stage)
        } else {
            None
        }
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
        let mut sampler = BatchSampler::new();
        assert_eq!(sampler.sample("numbers", 256), None);
        assert_eq!(take_item_parent(), None);
        assert_eq!(current(), None);
        let parents = [TraceParent::new(1, 2, 1).unwrap()];
        assert!(enter_batch(BatchInfo::new("t", "transport", 0, 1, &parents)).is_none());
        assert_eq!(current_batch(), None);
    }

    #[test]
    fn batches_of_any_size_trace_one_item_in_every() {
        // Sizes from 1 to 1024, pseudo-random (xorshift), as a frontend's batches vary
        // with the load.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut size = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 1024 + 1) as usize
        };
        for every in [1, 2, 3, 7, 100, 1000] {
            let mut sampler = BatchSampler::new();
            let (mut counted, mut traced, mut largest) = (0_u64, 0_u64, 0_u64);
            for _ in 0..100_000 {
                let n = size();
                counted += n as u64;
                largest = largest.max(n as u64);
                if sampler.choose(n, every) {
                    traced += n as u64;
                }
                // At every point, within half the largest batch of the share.
                let share = counted as f64 / every as f64;
                assert!(
                    (traced as f64 - share).abs() <= largest as f64 / 2.0,
                    "every {every}: {traced} traced of {counted}"
                );
            }
            let ratio = traced as f64 * every as f64 / counted as f64;
            assert!((ratio - 1.0).abs() < 0.01, "every {every}: ratio {ratio}");
        }
    }

    #[test]
    fn constant_batches_are_traced_one_in_every_and_zero_traces_nothing() {
        let mut sampler = BatchSampler::new();
        let traced: Vec<usize> = (0..1000).filter(|_| sampler.choose(1, 100)).collect();
        assert_eq!(traced, (0..10).map(|i| 49 + 100 * i).collect::<Vec<_>>());
        let mut every_batch = BatchSampler::new();
        assert!((0..100).all(|i| every_batch.choose(i % 7 + 1, 1)));
        let mut none = BatchSampler::new();
        assert!(!(0..10_000).any(|i| none.choose(i % 1024 + 1, 0)));
        assert!(!none.choose(0, 1), "an empty batch is never traced");
        assert!(
            !BatchSampler::new().choose(usize::MAX, u64::MAX),
            "no overflow"
        );
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
