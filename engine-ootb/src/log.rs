//! A transport and a backend that log each item through `tracing`.

use std::fmt;
use std::marker::PhantomData;

use engine_core::{Backend, StageContext, StageError, Transport};
use tracing::Level;

/// Logs one item at `level`, with the stage's name and instance index.
fn log_item<T: fmt::Debug>(level: Level, ctx: &StageContext, item: &T) {
    // `tracing` fixes an event's level when the call site is compiled, so each level needs
    // its own call site.
    macro_rules! event {
        ($level:expr) => {
            tracing::event!(
                $level,
                stage = ctx.stage(),
                thread = ctx.index(),
                item = ?item,
                "item"
            )
        };
    }
    match level {
        Level::ERROR => event!(Level::ERROR),
        Level::WARN => event!(Level::WARN),
        Level::INFO => event!(Level::INFO),
        Level::DEBUG => event!(Level::DEBUG),
        _ => event!(Level::TRACE),
    }
}

/// Declares a logging stage: the struct with its level, `new`, `with_level`, `level`, and
/// `Clone`, `Default` and `Debug` whatever the item type.
macro_rules! log_stage {
    ($(#[$doc:meta])* $name:ident, $items:ty, $level_doc:literal) => {
        $(#[$doc])*
        pub struct $name<T> {
            level: Level,
            // A function pointer type, so that the stage is `Send` and `Sync` whatever `T` is.
            items: PhantomData<$items>,
        }

        impl<T> $name<T> {
            #[doc = concat!("A ", $level_doc, " logging at INFO.")]
            ///
            /// ```
            #[doc = concat!("# use engine::ootb::", stringify!($name), ";")]
            #[doc = concat!("assert_eq!(", stringify!($name), "::<u32>::new().level(), tracing::Level::INFO);")]
            /// ```
            pub fn new() -> Self {
                Self {
                    level: Level::INFO,
                    items: PhantomData,
                }
            }

            /// Sets the level the items are logged at.
            ///
            /// ```
            #[doc = concat!("# use engine::ootb::", stringify!($name), ";")]
            #[doc = concat!("let log = ", stringify!($name), "::<u32>::new().with_level(tracing::Level::TRACE);")]
            /// assert_eq!(log.level(), tracing::Level::TRACE);
            /// ```
            #[must_use]
            pub fn with_level(mut self, level: Level) -> Self {
                self.level = level;
                self
            }

            /// The level the items are logged at.
            pub fn level(&self) -> Level {
                self.level
            }
        }

        impl<T> Clone for $name<T> {
            fn clone(&self) -> Self {
                Self {
                    level: self.level,
                    items: PhantomData,
                }
            }
        }

        impl<T> Default for $name<T> {
            #[doc = concat!("The same as [`", stringify!($name), "::new`].")]
            fn default() -> Self {
                Self::new()
            }
        }

        impl<T> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("level", &self.level)
                    .finish()
            }
        }
    };
}

log_stage!(
    /// A transport that logs each item through `tracing` and passes it on unchanged.
    ///
    /// Each item is logged as an event at the chosen level (INFO unless set with
    /// [`with_level`](Self::with_level)) with the fields `stage` (the stage's name), `thread` (the
    /// instance index) and `item` (the item's `Debug` form). The item is formatted only if a
    /// subscriber wants the event.
    ///
    /// Cloning copies the level; engines clone a transport once per thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use engine::core::{StageContext, StageKind, Transport};
    /// use engine::ootb::LogTransport;
    ///
    /// let ctx = StageContext::standalone("log", StageKind::Transport);
    /// let mut log = LogTransport::new().with_level(tracing::Level::DEBUG);
    /// assert_eq!(log.transport(vec![1, 2], &ctx)?, Some(vec![1, 2]));
    /// # Ok::<(), engine::core::StageError>(())
    /// ```
    LogTransport,
    fn(T) -> T,
    "transport"
);

impl<T: fmt::Debug> Transport for LogTransport<T> {
    type Input = T;
    type Output = T;

    fn transport(&mut self, item: T, ctx: &StageContext) -> Result<Option<T>, StageError> {
        log_item(self.level, ctx, &item);
        Ok(Some(item))
    }
}

log_stage!(
    /// A backend that logs each item through `tracing`.
    ///
    /// Items are logged as by [`LogTransport`]: at the chosen level (INFO unless set with
    /// [`with_level`](Self::with_level)), with the fields `stage`, `thread` and `item`.
    ///
    /// Cloning copies the level; engines clone a backend once per thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use engine::core::{Backend, StageContext, StageKind};
    /// use engine::ootb::LogBackend;
    ///
    /// let ctx = StageContext::standalone("log", StageKind::Backend);
    /// let mut log = LogBackend::new().with_level(tracing::Level::WARN);
    /// log.process("a line", &ctx)?;
    /// # Ok::<(), engine::core::StageError>(())
    /// ```
    LogBackend,
    fn(T),
    "backend"
);

impl<T: fmt::Debug> Backend for LogBackend<T> {
    type Input = T;

    fn process(&mut self, item: T, ctx: &StageContext) -> Result<(), StageError> {
        log_item(self.level, ctx, &item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not `Clone`, not `Send`: the stages must not need either.
    #[derive(Debug, PartialEq)]
    struct Item(std::rc::Rc<u8>);

    #[test]
    fn stages_are_clone_send_and_sync_whatever_the_item() {
        fn assert_traits<S: Clone + Send + Sync + Default + fmt::Debug>() {}
        assert_traits::<LogTransport<Item>>();
        assert_traits::<LogBackend<Item>>();
    }

    #[test]
    fn clones_keep_the_level() {
        let log = LogTransport::<Item>::new().with_level(Level::WARN);
        assert_eq!(log.clone().level(), Level::WARN);
        assert_eq!(format!("{log:?}"), "LogTransport { level: Level(Warn) }");
        let log = LogBackend::<Item>::default().with_level(Level::DEBUG);
        assert_eq!(log.clone().level(), Level::DEBUG);
        assert_eq!(format!("{log:?}"), "LogBackend { level: Level(Debug) }");
    }
}
