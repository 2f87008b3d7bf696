//! The threaded 3-stage engine: frontend threads -> bounded queue -> transport threads ->
//! bounded queue -> backend threads.
//!
//! **Status: not yet built.** This crate is a placeholder in the workspace so that the facade's
//! `threads` feature and the crate map are stable. It will hold:
//!
//! - a builder taking a frontend (required), a transport and/or a backend, threads per stage,
//!   queue capacities and a shared application config, with one stage instance per thread;
//! - `run()`, which blocks and returns an [`engine_core::RunReport`], and `spawn()`, which
//!   returns a handle with `stop()`, `stop_now()` and `join()`, both driven by
//!   [`engine_core::StopHandle`];
//! - the promises of the design: no item lost silently, graceful stop drains, the end of the
//!   frontend ends the run, stage panics and errors are caught and counted, memory bounded by
//!   the queues, and throughput close to the channels' own limit.
