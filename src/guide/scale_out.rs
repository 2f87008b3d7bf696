//! Chapter 6, scale-out: stages on several machines, connected through Redis Streams, with
//! at-least-once delivery, order per key and effects at most once.
#![doc = include_str!("scale_out.md")]
