//! Chapter 8, testing: stages by hand, pipelines with collecting backends, stops, worker
//! processes in test binaries, and Redis stages against a throwaway server.
#![doc = include_str!("testing.md")]
