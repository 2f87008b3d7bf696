//! multipro_lab: its main process, named workers, messages and task queue, API by API, in
//! Rust.
#![doc = include_str!("multipro_lab.md")]
