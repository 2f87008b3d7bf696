//! Chapter 9, guarantees and their costs: what every engine promises, how each promise is
//! checked, and what it costs next to hand-written code.
#![doc = include_str!("guarantees.md")]
