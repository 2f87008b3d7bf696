//! DumbPipelineBox: its master and pre-initialised workers, API by API, in Rust.
#![doc = include_str!("dumb_pipeline_box.md")]
