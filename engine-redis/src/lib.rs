//! Stages on several machines, connected through Redis Streams.
//!
//! **Status: being built.**
