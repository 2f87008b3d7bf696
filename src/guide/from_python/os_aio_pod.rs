//! os-aio-pod: its pod of asyncio components ("beans"), API by API, in Rust.
#![doc = include_str!("os_aio_pod.md")]
