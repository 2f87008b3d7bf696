//! The bean pod: many long-running components ("beans") hosted on tokio, with ids, labels, a
//! context, named signals, a TOML config file and a `run` command line.
//!
//! **Status: not yet built.** This crate is a placeholder in the workspace so that the facade's
//! `pod` feature and the crate map are stable. It will hold:
//!
//! - async beans (tokio tasks) and blocking beans (own thread), with ids and labels;
//! - a context to find and wait for other beans, send named signals and read configuration;
//! - SIGINT/SIGTERM handling with a stop wait time, driven by [`engine_core::StopHandle`];
//! - a registry of named bean factories, the `run` command line, restart policies and a status
//!   view;
//! - built-in beans: a simple server scaffold, a TCP server, a producer/consumer flow, a stdin
//!   reader, and a threaded engine or a process pool as a bean.
