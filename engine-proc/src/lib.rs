//! Worker processes over `ipc-channel`: bootstrap, pool, router, process-backed stages and
//! supervision.
//!
//! **Status: not yet built.** This crate is a placeholder in the workspace so that the facade's
//! `proc` feature and the crate map are stable. It will hold:
//!
//! - a bootstrap call at the top of `main` that turns the same binary into a worker, with a
//!   handshake checking [`engine_core::protocol::PROTOCOL_VERSION`];
//! - a pool of identical, pre-initialised workers (tasks in, `(task id, result)` out);
//! - a router between a main process and named workers of different kinds, speaking the
//!   [`engine_core::protocol::Envelope`] protocol;
//! - transport and backend stages of the threaded engine running in worker processes;
//! - supervision (crash detection, retries, respawn, parent-death detection) and shutdown on
//!   SIGINT/SIGTERM through [`engine_core::StopHandle`].
