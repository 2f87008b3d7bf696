//! Trace export through `tracing-opentelemetry`: with a share of items sampled, whole
//! batches leaving the frontend are sampled, each leaving its own trace, whose batch spans in
//! every stage are children of, or linked to, the trace's root span; batches not sampled
//! leave none.

use std::collections::HashSet;

use engine_observe::otel::Otel;
use engine_threads::Engine;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// Whether `span` is the child of, or linked to, the span `id` of trace `trace`.
fn follows(span: &SpanData, trace: TraceId, id: SpanId) -> bool {
    (span.span_context.trace_id() == trace && span.parent_span_id == id)
        || span
            .links
            .iter()
            .any(|l| l.span_context.trace_id() == trace && l.span_context.span_id() == id)
}

#[test]
fn one_batch_in_a_hundred_leaves_a_trace_through_every_stage() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let otel = Otel::with_provider(provider).sample(0.01);
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(otel.layer()))
        .expect("the only subscriber of this test binary");
    otel.install().expect("the only hook of this test binary");

    // Queues of 4 items with one consumer each hold batches of one item: 1000 batches leave
    // the frontend, and one in a hundred is sampled, the 50th first (see
    // `engine_core::trace::BatchSampler`), whoever takes it.
    let report = Engine::builder(0..1000_u64)
        .transport(|x: u64| x + 1)
        .transport_threads(1)
        .backend(|_: u64| {})
        .queue_capacity(4)
        .run()
        .expect("the engine runs");
    assert_eq!(report.processed(), 1000);
    otel.provider()
        .force_flush()
        .expect("the spans are exported");
    let spans = exporter.get_finished_spans().expect("the exported spans");

    let items: Vec<&SpanData> = spans.iter().filter(|s| s.name == "engine.item").collect();
    assert_eq!(
        items.len(),
        10,
        "one batch of one item in a hundred, one frontend thread"
    );
    let traces: HashSet<TraceId> = items.iter().map(|s| s.span_context.trace_id()).collect();
    assert_eq!(traces.len(), 10, "a trace per sampled batch");

    let batches: Vec<&SpanData> = spans.iter().filter(|s| s.name == "engine.batch").collect();
    // One span per sampled batch in each stage, and none for the others.
    for kind in ["transport", "backend"] {
        let spans: Vec<&&SpanData> = batches
            .iter()
            .filter(|b| attribute(b, "kind").as_deref() == Some(kind))
            .collect();
        assert_eq!(spans.len(), 10, "{kind} batch spans");
        assert!(
            spans
                .iter()
                .all(|b| attribute(b, "items").as_deref() == Some("1")),
            "{kind} batches of one item"
        );
    }
    for item in &items {
        let (trace, id) = (item.span_context.trace_id(), item.span_context.span_id());
        // The transport's batch that held the item follows the item's span...
        let transport = batches
            .iter()
            .find(|b| attribute(b, "kind").as_deref() == Some("transport") && follows(b, trace, id))
            .unwrap_or_else(|| panic!("no transport batch follows trace root {trace}"));
        // ... and the backend's batch that held its output follows the transport's.
        let (t_trace, t_id) = (
            transport.span_context.trace_id(),
            transport.span_context.span_id(),
        );
        assert!(
            batches.iter().any(|b| {
                attribute(b, "kind").as_deref() == Some("backend") && follows(b, t_trace, t_id)
            }),
            "no backend batch follows the transport batch of trace {trace}"
        );
    }
    // Only sampled batches have spans, each in the trace of one of them.
    for batch in &batches {
        let trace = batch.span_context.trace_id();
        assert!(
            traces.contains(&trace),
            "a batch span outside the items' traces"
        );
    }
    otel.shutdown();
}
