//! Chapter 1, stages and closures: the three stage traits, closures and iterators as stages,
//! and the run report.
#![doc = include_str!("stages.md")]
