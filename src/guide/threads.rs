//! Chapter 2, threads: the threaded engine, its threads and queues, stopping, ordered mode and
//! live statistics.
#![doc = include_str!("threads.md")]
