//! Chapter 10, coming from Python: every API the READMEs of os-m3-engine, os-aio-pod,
//! multipro_lab, pymulproc and DumbPipelineBox document, beside its Rust form.
#![doc = include_str!("from_python/intro.md")]

pub mod dumb_pipeline_box;
pub mod multipro_lab;
pub mod os_aio_pod;
pub mod os_m3_engine;
pub mod pymulproc;
