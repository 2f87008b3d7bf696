//! The guide: how to write stages and run them on threads, in worker processes, in the pod and
//! on several machines, one chapter per module.
//!
//! Every example in these chapters is a doctest: `cargo test --doc -p engine guide` compiles
//! and runs them, so the guide says what the code does today. An example that needs a Redis
//! server or runs until it is stopped is compiled but not run (`no_run`), and names the
//! example in `examples/` that runs it for real.
//!
//! Read the chapters in order the first time:
//!
//! 1. [`stages`]: stages and closures, the three stage traits, what a run report says.
//! 2. [`threads`]: the threaded engine: threads per stage, queues, stopping, ordered mode.
//! 3. [`async_stages`]: futures as stages, many items in flight on a tokio runtime.
//! 4. [`processes`]: worker processes: a stage placed in N processes, the pool, the router,
//!    the parent/child pipe.
//! 5. [`pod`]: the bean pod: long-running components on tokio, their context and signals, the
//!    config file, the built-in servers, engines as beans.
//! 6. [`scale_out`]: stages on several machines through Redis Streams.
//! 7. [`observing`]: seeing it run: metrics, `engine top`, the dashboard, the progress line,
//!    the stall report.
//! 8. [`testing`]: testing pipelines, worker processes and Redis stages.
//! 9. [`guarantees`]: what every engine promises, and what each promise costs.
//! 10. [`from_python`]: coming from os-m3-engine, os-aio-pod, multipro_lab, pymulproc or
//!     DumbPipelineBox: every API of their READMEs beside its Rust form.
//!
//! The benchmark figures behind the costs are in `BENCHMARKS.md` at the root of the
//! repository, and every feature has a runnable program in `examples/`
//! (`cargo run --example NAME`).

pub mod async_stages;
pub mod from_python;
pub mod guarantees;
pub mod observing;
pub mod pod;
pub mod processes;
pub mod scale_out;
pub mod stages;
pub mod testing;
pub mod threads;
