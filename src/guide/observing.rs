//! Chapter 7, seeing it run: metrics, the dashboard, `engine top`, the progress line, the
//! stall report, and waiting for input.
#![doc = include_str!("observing.md")]
