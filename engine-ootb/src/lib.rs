//! Out-of-the-box stages for the engine, built only on [`engine_core`]'s stage traits.
//!
//! Together they make the default engine, standard input -> log transport -> log backend,
//! and give tests and small programs the sinks they reach for:
//!
//! - [`StdinFrontend`]: the lines of standard input, or of any `BufRead`, as `String`s, with
//!   lossy or [strict](StdinFrontend::strict) handling of invalid UTF-8 ([`InvalidUtf8`]).
//! - [`LogTransport`]: logs each item through `tracing` and passes it on unchanged.
//! - [`LogBackend`]: logs each item through `tracing`.
//! - [`CollectBackend`]: pushes every item into one vector shared by its clones, read
//!   through [`Collected`].
//! - [`CountBackend`]: counts the items into one counter shared by its clones.
//!
//! The stages are plain values: an engine clones the transport and the backends once per
//! thread, and the shared backends collect or count across every thread.
//!
//! # Example
//!
//! This crate does not depend on an engine, so the example drives the stages by hand, the
//! way an engine drives them on one thread:
//!
//! ```
//! use engine::core::{Backend, Frontend, StageContext, StageKind, Transport};
//! use engine::ootb::{CollectBackend, CountBackend, LogTransport, StdinFrontend};
//!
//! let f_ctx = StageContext::standalone("lines", StageKind::Frontend);
//! let t_ctx = StageContext::standalone("log", StageKind::Transport);
//! let b_ctx = StageContext::standalone("collect", StageKind::Backend);
//!
//! // `StdinFrontend::new()` reads standard input; any `BufRead` works the same way.
//! let mut frontend = StdinFrontend::from_reader(&b"first\r\nsecond\n\nlast"[..]);
//! let mut transport = LogTransport::new();
//! let mut collect = CollectBackend::new();
//! let collected = collect.collected();
//! // Clones share one counter, as the engine's backend threads would.
//! let count = CountBackend::new();
//! let mut counter = count.clone();
//!
//! while let Some(line) = frontend.produce(&f_ctx)? {
//!     if let Some(line) = transport.transport(line, &t_ctx)? {
//!         counter.process(line.clone(), &b_ctx)?;
//!         collect.process(line, &b_ctx)?;
//!     }
//! }
//! assert_eq!(collected.take(), ["first", "second", "", "last"]);
//! assert_eq!(count.count(), 4);
//! assert_eq!(frontend.lines_read(), 4);
//! # Ok::<(), engine::core::StageError>(())
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod collect;
mod count;
mod log;
mod stdin;

pub use collect::{CollectBackend, Collected};
pub use count::CountBackend;
pub use log::{LogBackend, LogTransport};
pub use stdin::{InvalidUtf8, StdinFrontend};
