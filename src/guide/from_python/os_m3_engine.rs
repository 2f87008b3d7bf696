//! os-m3-engine: its multi-thread 3-stage engine, API by API, in Rust.
#![doc = include_str!("os_m3_engine.md")]
