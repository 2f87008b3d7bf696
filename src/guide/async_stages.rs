//! Chapter 3, async stages: futures as transports and backends, many items in flight per stage
//! on a tokio runtime.
#![doc = include_str!("async_stages.md")]
