//! An async stage runs a traced batch's futures inside the batch span: spans its futures open
//! after they first wait (on the runtime's threads, not the engine's) are children of the
//! batch span, the trace context current there is the batch's, and its outputs carry the
//! batch's context to the next stage. This binary installs a trace hook (once: a hook is per
//! process) whose spans are `tracing` spans, as engine-observe's `otel` hook's are.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use engine_core::trace::{self, BatchInfo, HookSpan, TraceHook, TraceParent};
use engine_threads::{Async, Engine};
use tracing_subscriber::registry::LookupSpan;

/// The one trace id this test's contexts have.
const TRACE: u128 = 0xa5;

/// The context a hook gives a `tracing` span: its id as the span id.
fn context_of(id: &tracing::Id) -> Option<TraceParent> {
    TraceParent::new(TRACE, id.into_u64(), TraceParent::SAMPLED)
}

/// A batch span the hook opened: its stage kind, its parents and its own context.
#[derive(Debug, Clone)]
struct Opened {
    kind: String,
    parents: Vec<TraceParent>,
    context: TraceParent,
}

/// A span an item's future opened: the context of its parent span, and the trace context
/// current in the future.
#[derive(Debug, Clone)]
struct Opening {
    parent: Option<TraceParent>,
    current: Option<TraceParent>,
}

static OPENED: Mutex<Vec<Opened>> = Mutex::new(Vec::new());
static OPENINGS: Mutex<Vec<Opening>> = Mutex::new(Vec::new());

/// A hook that starts a trace with every item and opens each batch span as a `tracing` span,
/// recording it.
struct Recorder;

impl TraceHook for Recorder {
    fn current(&self) -> Option<TraceParent> {
        context_of(&tracing::Span::current().id()?)
    }

    fn items_per_trace(&self) -> u64 {
        1
    }

    fn produced(&self, _stage: &str) -> Option<TraceParent> {
        // Item roots far from tracing's span ids, which count up from 1.
        static NEXT: AtomicU64 = AtomicU64::new(1 << 40);
        TraceParent::new(
            TRACE,
            NEXT.fetch_add(1, Ordering::Relaxed),
            TraceParent::SAMPLED,
        )
    }

    fn enter_batch(&self, batch: BatchInfo<'_>) -> Option<HookSpan> {
        let span = tracing::info_span!("batch", kind = batch.kind);
        let context = context_of(&span.id()?)?;
        OPENED.lock().unwrap().push(Opened {
            kind: batch.kind.to_owned(),
            parents: batch.parents.to_vec(),
            context,
        });
        Some(HookSpan {
            context,
            guard: Box::new(span.entered()),
        })
    }
}

/// The context of the parent of span `id`, as the subscriber (a registry) knows it.
fn parent_of(id: &tracing::Id) -> Option<TraceParent> {
    tracing::dispatcher::get_default(|dispatch| {
        let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
        context_of(&registry.span(id)?.parent()?.id())
    })
}

#[test]
fn an_async_stages_futures_run_inside_their_batch_span() {
    const N: u64 = 200;
    // Spans get ids and parents from a subscriber; the registry keeps them.
    tracing::subscriber::set_global_default(tracing_subscriber::registry())
        .expect("the only subscriber of this test binary");
    trace::install(Recorder).expect("the only hook of this test binary");

    let stage = Async::map(|x: u64| async move {
        // Waits once, so that the rest runs on the runtime's threads, not the engine's.
        tokio::task::yield_now().await;
        let span = tracing::info_span!("user");
        let id = span.id().expect("a span with an id");
        OPENINGS.lock().unwrap().push(Opening {
            parent: parent_of(&id),
            current: trace::current(),
        });
        x * 2
    });
    let report = Engine::builder(0..N)
        .transport(stage)
        .backend(|_: u64| {})
        .run()
        .expect("the run");
    assert_eq!(report.processed(), N);

    let opened = OPENED.lock().unwrap().clone();
    let transport: Vec<_> = opened.iter().filter(|o| o.kind == "transport").collect();
    let backend: Vec<_> = opened.iter().filter(|o| o.kind == "backend").collect();
    assert!(!transport.is_empty(), "{opened:?}");
    let batch_spans: Vec<TraceParent> = transport.iter().map(|o| o.context).collect();

    // Every future's span is the child of a batch span of the stage, and the context
    // current in the future is that batch's.
    let openings = OPENINGS.lock().unwrap().clone();
    assert_eq!(openings.len() as u64, N);
    for opening in &openings {
        let parent = opening
            .parent
            .expect("a span opened in a batch has a parent");
        assert!(batch_spans.contains(&parent), "{opening:?} {batch_spans:?}");
        assert_eq!(opening.current, Some(parent), "{opening:?}");
    }
    // What the stage outputs carries its batch span's context to the backend.
    assert!(!backend.is_empty(), "{opened:?}");
    for batch in &backend {
        assert!(
            batch.parents.iter().all(|p| batch_spans.contains(p)),
            "{batch:?} {batch_spans:?}"
        );
    }
}
