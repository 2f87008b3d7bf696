//! Every re-export of the facade is reachable under its feature, as crossbeam's
//! `tests/subcrates.rs` checks for its sub-crates.

#[test]
fn core_is_reachable() {
    use engine::core::protocol::{Address, Envelope, Frame, Kind, PROTOCOL_VERSION};

    let stop = engine::core::StopHandle::new();
    assert!(!stop.is_stopping());
    let frame = Frame::Message(Envelope::new(Address::Main, Address::Broadcast, Kind::Die));
    assert_eq!(Frame::decode(&frame.encode().unwrap()).unwrap(), frame);
    assert_eq!(PROTOCOL_VERSION, engine_core_version());
    let _ = engine::core::RunReport::new(
        Vec::new(),
        std::time::Duration::ZERO,
        engine::core::RunEnd::Completed,
    );
}

#[test]
fn prelude_has_the_stage_traits() {
    use engine::prelude::*;

    struct Numbers(u8);
    impl Frontend for Numbers {
        type Item = u8;
        fn produce(&mut self, _ctx: &StageContext) -> Result<Option<u8>, StageError> {
            // Counts down to zero, then ends; 13 is unlucky and fails.
            let Some(next) = self.0.checked_sub(1) else {
                return Ok(None);
            };
            self.0 = next;
            if next == 13 {
                return Err(StageError::msg("unlucky"));
            }
            Ok(Some(next))
        }
    }
    let ctx = StageContext::new(
        "n",
        engine::core::StageKind::Frontend,
        0,
        1,
        StopHandle::new(),
    )
    .with_config(AppConfig::none());
    let mut numbers = Numbers(14);
    assert!(numbers.produce(&ctx).is_err());
    assert_eq!(numbers.produce(&ctx).unwrap(), Some(12));
    let mut numbers = Numbers(1);
    assert_eq!(numbers.produce(&ctx).unwrap(), Some(0));
    assert_eq!(numbers.produce(&ctx).unwrap(), None);
    assert_eq!(ErrorPolicy::default(), ErrorPolicy::Skip);
    fn is_stage<T: Transport + ?Sized, B: Backend + ?Sized>() {}
    let _ = is_stage::<engine::core::MapFn<fn(u8) -> u8, u8>, engine::core::ForEachFn<fn(u8), u8>>;
    let _: Option<RunReport> = None;
}

#[cfg(feature = "threads")]
#[test]
fn threads_is_reachable() {
    use engine::threads::{Engine, EngineError, Stats};

    let report = Engine::builder(0..10_u8).backend(|_: u8| {}).run().unwrap();
    assert_eq!(report.processed(), 10);
    let _: Option<(EngineError, Stats)> = None;
    assert!(engine::enabled_features().contains(&"threads"));
}

#[cfg(feature = "ootb")]
#[test]
fn ootb_is_reachable() {
    use engine::core::{Backend, StageContext, StageKind};
    use engine::ootb::{CollectBackend, CountBackend, LogBackend, LogTransport, StdinFrontend};

    let ctx = StageContext::standalone("b", StageKind::Backend);
    let mut count = CountBackend::new();
    count.process(1_u8, &ctx).unwrap();
    assert_eq!(count.count(), 1);
    let _: Option<CollectBackend<u8>> = None;
    let _: Option<(LogBackend<u8>, LogTransport<u8>)> = None;
    let _: Option<StdinFrontend> = None;
    assert!(engine::enabled_features().contains(&"ootb"));
}

#[cfg(all(feature = "threads", feature = "ootb"))]
#[test]
fn the_default_engine_is_reachable() {
    let engine = engine::default_engine()
        .transport_threads(2)
        .build()
        .unwrap();
    assert!(!engine.stop_handle().is_stopping());
}

#[cfg(feature = "proc")]
#[test]
fn proc_is_reachable() {
    use engine::proc::{
        Child, Pool, ProcBackend, ProcTransport, Router, TaskError, Worker, WorkerStage,
    };
    fn named<T: ?Sized>() -> &'static str {
        std::any::type_name::<T>()
    }
    assert!(named::<Router>().ends_with("Router"));
    assert!(named::<Child>().ends_with("Child"));
    assert!(named::<TaskError>().ends_with("TaskError"));
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Stage;
    impl engine::core::Transport for Stage {
        type Input = u8;
        type Output = u8;
        fn transport(
            &mut self,
            x: u8,
            _: &engine::core::StageContext,
        ) -> Result<Option<u8>, engine::core::StageError> {
            Ok(Some(x))
        }
    }
    impl engine::core::Backend for Stage {
        type Input = u8;
        fn process(
            &mut self,
            _: u8,
            _: &engine::core::StageContext,
        ) -> Result<(), engine::core::StageError> {
            Ok(())
        }
    }
    struct Echo;
    impl Worker for Echo {
        type Init = ();
        type Task = u8;
        type Output = u8;
        fn init((): ()) -> Result<Self, engine::core::StageError> {
            Ok(Echo)
        }
        fn run(&mut self, task: u8) -> Result<u8, engine::core::StageError> {
            Ok(task)
        }
    }
    assert!(named::<Pool<WorkerStage<Echo>>>().contains("Pool"));
    assert!(named::<ProcTransport<Stage>>().contains("ProcTransport"));
    assert!(named::<ProcBackend<Stage>>().contains("ProcBackend"));
    assert!(engine::enabled_features().contains(&"proc"));
}

#[cfg(feature = "pod")]
#[test]
fn pod_is_reachable() {
    use engine::pod::{BeanSpec, Pod, PodConfig, Registry, TcpServer};

    let names = Registry::builtin_names();
    for name in ["engine", "hello", "sleep", "status", "stdin", "tcp_server"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("tcp_server", TcpServer::echo()));
    assert!(engine::enabled_features().contains(&"pod"));
}

#[test]
fn trace_contexts_are_reachable() {
    use engine::core::trace::TraceParent;

    let parent = TraceParent::new(1, 2, TraceParent::SAMPLED).unwrap();
    assert_eq!(parent.to_string().parse::<TraceParent>(), Ok(parent));
}

#[cfg(feature = "otel")]
#[test]
fn otel_is_reachable() {
    let otel = engine::observe::otel::Otel::otlp("http://127.0.0.1:4318/v1/traces", "test")
        .expect("a well-formed endpoint")
        .sample(0.01);
    let _layer = otel.layer::<tracing_subscriber::Registry>();
    otel.shutdown();
    assert!(engine::enabled_features().contains(&"otel"));
}

/// The protocol version as `engine-core` itself reports it in a handshake.
fn engine_core_version() -> u32 {
    engine::core::protocol::Hello::new("k", engine::core::protocol::Address::Main).version
}
