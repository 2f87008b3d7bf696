//! Chapter 4, worker processes: a stage placed in N processes, the pool, the router of named
//! workers, the parent/child pipe, supervision.
#![doc = include_str!("processes.md")]
