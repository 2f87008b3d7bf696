//! Out-of-the-box stages built only on [`engine_core`]'s stage traits.
//!
//! **Status: not yet built.** This crate is a placeholder in the workspace so that the facade's
//! `ootb` feature and the crate map are stable. It will hold:
//!
//! - `StdinFrontend`: lines from standard input or any `BufRead`;
//! - `LogTransport` and `LogBackend`: log each item through `tracing` and pass it on;
//! - the helpers users reach for: iterator frontends, collecting and counting backends.
//!
//! Together they make the default engine: stdin -> log transport -> log backend.
