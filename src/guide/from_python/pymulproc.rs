//! pymulproc: its 4-field protocol, pipes and queues between a parent and its children, API by
//! API, in Rust.
#![doc = include_str!("pymulproc.md")]
