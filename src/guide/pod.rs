//! Chapter 5, the pod: long-running components ("beans") on tokio, their context and signals,
//! the config file, the built-in servers, and engines as beans.
#![doc = include_str!("pod.md")]
