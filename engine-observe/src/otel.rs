//! Trace export through `tracing-opentelemetry` (feature `otel`): one trace per item across
//! threads, worker processes and machines, sent to any OTLP endpoint.
//!
//! [`Otel`] holds an OpenTelemetry tracer provider. It gives a `tracing_subscriber` layer
//! ([`Otel::layer`]) that turns `tracing` spans into OpenTelemetry spans, and installs the
//! engines' trace hook ([`Otel::install`], see `engine_core::trace`) that
//!
//! - samples per batch of items: a batch leaving a frontend is the unit of a trace, chosen
//!   so that a share `ratio` of the items is traced ([`Otel::sample`]; see
//!   `engine_core::trace::BatchSampler`), and starts one (an `engine.item` span, the root of
//!   its trace, that all the batch's items share); items that came with a context of their
//!   own (a Redis entry's `traceparent`) continue that trace instead;
//! - opens one `engine.batch` span per batch that holds traced items, the child of the first
//!   item's context and linked to the others', with the stage's name, kind, thread and item
//!   count; the stage's own spans and logs nest inside it, and its outputs carry its context
//!   on, into worker processes and Redis entries.
//!
//! So with `sample(0.01)` about 1% of every stage's batches have a span, whatever their
//! sizes: the spans, and their cost, are proportional to the ratio. Sampling costs nothing
//! per item, and batches with no traced item cost nothing more than before; with the layer
//! filtered out (an `EnvFilter` below `info` for this crate), no span is recorded and nothing
//! is carried.
//!
//! In a program with worker processes, install the layer and the hook before
//! `engine::proc::init()`: worker processes run `main` up to that call, so they install
//! them too, and export their own spans.
//!
//! ```no_run
//! use engine::observe::otel::Otel;
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::util::SubscriberInitExt;
//!
//! let otel = Otel::otlp("http://127.0.0.1:4318/v1/traces", "my-pipeline")?.sample(0.01);
//! tracing_subscriber::registry().with(otel.layer()).init();
//! otel.install()?;
//! // ... run engines ...
//! otel.shutdown(); // Sends what is left.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use engine_core::trace::{self, AlreadyInstalled, BatchInfo, HookSpan, TraceHook, TraceParent};
use opentelemetry::trace::{Span as _, Tracer as _};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanExporter};
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::registry::LookupSpan;

/// The exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the OTLP exporter: {0}")]
pub struct OtelError(String);

/// An OpenTelemetry tracer provider, the layer that feeds it and the engines' trace hook.
/// See the [module docs](self).
#[derive(Clone)]
pub struct Otel {
    provider: SdkTracerProvider,
    /// One item in `every` is traced (0: none).
    every: u64,
}

impl fmt::Debug for Otel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Otel")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl Otel {
    /// Exports to an OTLP/HTTP endpoint (protobuf; `http://host:4318/v1/traces` for a
    /// collector), in batches from a thread of its own, as the service `service`. Traces
    /// every item until [`sample`](Self::sample) says otherwise.
    ///
    /// # Errors
    ///
    /// [`OtelError`] if the exporter cannot be built (a malformed endpoint).
    pub fn otlp(endpoint: &str, service: &str) -> Result<Self, OtelError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| OtelError(e.to_string()))?;
        Ok(Self::with_exporter(exporter, service))
    }

    /// Exports through `exporter` (any OpenTelemetry span exporter), in batches from a
    /// thread of its own, as the service `service`.
    pub fn with_exporter(exporter: impl SpanExporter + 'static, service: &str) -> Self {
        let resource = Resource::builder()
            .with_service_name(service.to_owned())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        Self::with_provider(provider)
    }

    /// Uses a tracer provider built by the program (its own exporter, processor, resource).
    /// Its sampler should record what the hook samples (the SDK's default does).
    pub fn with_provider(provider: SdkTracerProvider) -> Self {
        Self { provider, every: 1 }
    }

    /// Traces this share of the items frontends produce: `1.0` every item, `0.01` one in a
    /// hundred, `0.0` none. Sampling is per batch: whole batches leaving a frontend are
    /// traced, chosen per frontend thread so that this share of the items is (with batches
    /// of one size, one batch in `1 / ratio`). Items that come with a context, from a Redis
    /// entry, are traced whatever the share.
    #[must_use]
    pub fn sample(mut self, ratio: f64) -> Self {
        self.every = if ratio.is_nan() || ratio <= 0.0 {
            0
        } else if ratio >= 1.0 {
            1
        } else {
            // A positive ratio below one: its inverse is above one, rounded to a count.
            (1.0 / ratio).round() as u64
        };
        self
    }

    /// The `tracing_subscriber` layer that records `tracing` spans as OpenTelemetry spans
    /// of this provider.
    pub fn layer<S>(&self) -> OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("engine"))
    }

    /// Installs the engines' trace hook in this process.
    ///
    /// # Errors
    ///
    /// [`AlreadyInstalled`] if a hook was installed before.
    pub fn install(&self) -> Result<(), AlreadyInstalled> {
        trace::install(Hook {
            every: self.every,
            tracer: self.provider.tracer("engine"),
        })
    }

    /// The tracer provider.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Sends the spans not sent yet and stops the exporter.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "the trace exporter did not shut down cleanly");
        }
    }
}

/// The trace hook: batch spans through `tracing` (the stage's own spans nest in them),
/// contexts through `tracing-opentelemetry`, and the roots of new traces straight from the
/// SDK's tracer (a span that ends at once needs none of `tracing`'s machinery).
struct Hook {
    every: u64,
    tracer: SdkTracer,
}

impl TraceHook for Hook {
    fn current(&self) -> Option<TraceParent> {
        parent_of(&tracing::Span::current().context())
    }

    fn items_per_trace(&self) -> u64 {
        self.every
    }

    fn produced(&self, stage: &str) -> Option<TraceParent> {
        // The root of the batch's trace, not a child of the frontend thread's span.
        let mut span = self
            .tracer
            .start_with_context("engine.item", &Context::new());
        span.set_attribute(KeyValue::new("stage", stage.to_owned()));
        let context = Context::new().with_span(span);
        let parent = parent_of(&context);
        context.span().end();
        parent
    }

    fn enter_batch(&self, batch: BatchInfo<'_>) -> Option<HookSpan> {
        let (first, rest) = batch.parents.split_first()?;
        let span = tracing::info_span!(
            "engine.batch",
            stage = batch.stage,
            kind = batch.kind,
            index = batch.index,
            items = batch.items,
        );
        if span.is_disabled() {
            return None;
        }
        let parent = Context::new().with_remote_span_context(span_context(first));
        span.set_parent(parent).ok()?;
        for link in rest {
            span.add_link(span_context(link));
        }
        let context = parent_of(&span.context())?;
        Some(HookSpan {
            context,
            guard: Box::new(span.entered()),
        })
    }
}

/// The W3C context of an OpenTelemetry context's span, if it is valid and sampled.
fn parent_of(cx: &Context) -> Option<TraceParent> {
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() || !sc.is_sampled() {
        return None;
    }
    TraceParent::new(
        u128::from_be_bytes(sc.trace_id().to_bytes()),
        u64::from_be_bytes(sc.span_id().to_bytes()),
        sc.trace_flags().to_u8(),
    )
}

/// A remote OpenTelemetry span context from a W3C one.
fn span_context(parent: &TraceParent) -> SpanContext {
    SpanContext::new(
        TraceId::from(parent.trace_id()),
        SpanId::from(parent.span_id()),
        TraceFlags::new(parent.flags()),
        true,
        TraceState::default(),
    )
}
