//! The error a stage returns for one item, and the errors of the shared application config.

use std::any::Any;
use std::error::Error as StdError;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The error type of stage code: what a `setup`, `produce`, `transport` or `process` call
/// returns when it fails.
///
/// Any error type converts into it with `?`, and [`StageError::msg`] makes one from a message.
/// Like `anyhow::Error`, it deliberately does not implement [`std::error::Error`] itself (that
/// would conflict with the blanket conversion); use [`StageError::as_error`] or convert it into
/// a `Box<dyn Error + Send + Sync>` when an error trait object is needed.
///
/// Its `Display` shows the error and, in the alternate form (`{:#}`), its chain of sources.
/// It serialises as that full message, so an error crosses a process boundary as text and
/// comes back as [`StageError::msg`] (panics stay recognisable with [`is_panic`]).
///
/// [`is_panic`]: StageError::is_panic
///
/// # Examples
///
/// ```
/// use engine::core::StageError;
///
/// fn parse(line: &str) -> Result<u64, StageError> {
///     let n: u64 = line.trim().parse()?;
///     if n == 0 {
///         return Err(StageError::msg("zero is not a valid id"));
///     }
///     Ok(n)
/// }
///
/// assert_eq!(parse(" 7 ").unwrap(), 7);
/// assert_eq!(parse("0").unwrap_err().to_string(), "zero is not a valid id");
/// assert_eq!(parse("x").unwrap_err().to_string(), "invalid digit found in string");
/// ```
pub struct StageError {
    inner: BoxError,
}

/// A boxed error trait object, the form every error converts into.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

impl StageError {
    /// Makes an error from a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            inner: Box::new(Message(message.to_string())),
        }
    }

    /// Wraps any error value.
    pub fn new<E: StdError + Send + Sync + 'static>(error: E) -> Self {
        Self {
            inner: Box::new(error),
        }
    }

    /// Wraps an already boxed error, or anything that converts into one: `anyhow::Error`,
    /// `String`, `&str`, or another `StageError` (which keeps its panic and fatal marks).
    ///
    /// ```
    /// # use engine::core::StageError;
    /// assert_eq!(StageError::from_boxed("no such user").to_string(), "no such user");
    /// ```
    pub fn from_boxed(error: impl Into<BoxError>) -> Self {
        Self {
            inner: error.into(),
        }
    }

    /// Marks the error as fatal: the stage cannot go on at all, whatever the error policy.
    ///
    /// Under [`ErrorPolicy::Skip`](crate::ErrorPolicy::Skip) an engine counts an ordinary
    /// error as one failed item and calls the stage again; a fatal error ends the stage
    /// instance instead (a frontend whose source is gone, a backend whose database connection
    /// is lost for good), and the run ends as failed.
    ///
    /// ```
    /// # use engine::core::StageError;
    /// let err = StageError::msg("socket closed").fatal();
    /// assert!(err.is_fatal());
    /// assert_eq!(err.to_string(), "socket closed");
    /// ```
    #[must_use]
    pub fn fatal(self) -> Self {
        if self.is_fatal() {
            return self;
        }
        Self {
            inner: Box::new(Fatal(self.inner)),
        }
    }

    /// Whether the error was marked [`fatal`](Self::fatal).
    pub fn is_fatal(&self) -> bool {
        self.inner.is::<Fatal>()
    }

    /// Turns a panic payload (from [`std::panic::catch_unwind`]) into an error that keeps the
    /// panic's message.
    ///
    /// ```
    /// # use engine::core::StageError;
    /// let payload = std::panic::catch_unwind(|| panic!("bad item {}", 7)).unwrap_err();
    /// let err = StageError::from_panic(payload);
    /// assert!(err.is_panic());
    /// assert_eq!(err.to_string(), "panicked: bad item 7");
    /// ```
    pub fn from_panic(payload: Box<dyn Any + Send>) -> Self {
        let message = if let Some(text) = payload.downcast_ref::<&'static str>() {
            (*text).to_owned()
        } else if let Some(text) = payload.downcast_ref::<String>() {
            text.clone()
        } else {
            "a panic with a non-string payload".to_owned()
        };
        Self {
            inner: Box::new(Panicked(message)),
        }
    }

    /// Whether this error stands for a panic in stage code.
    pub fn is_panic(&self) -> bool {
        self.downcast_ref::<Panicked>().is_some()
    }

    /// The wrapped error as a trait object, for `source()` chains.
    pub fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        match self.inner.downcast_ref::<Fatal>() {
            Some(fatal) => &*fatal.0,
            None => &*self.inner,
        }
    }

    /// Returns the wrapped error if it is of type `E`.
    ///
    /// ```
    /// # use engine::core::StageError;
    /// let err = StageError::new(std::io::Error::other("disk full"));
    /// assert!(err.downcast_ref::<std::io::Error>().is_some());
    /// assert!(err.fatal().downcast_ref::<std::io::Error>().is_some());
    /// ```
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        self.as_error().downcast_ref::<E>()
    }

    /// The message and every source, joined by `": "`.
    ///
    /// This is the form to log or send to another process.
    pub fn chain_message(&self) -> String {
        let error = self.as_error();
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

impl<E: StdError + Send + Sync + 'static> From<E> for StageError {
    fn from(error: E) -> Self {
        Self::new(error)
    }
}

impl From<StageError> for BoxError {
    fn from(error: StageError) -> Self {
        error.inner
    }
}

impl From<StageError> for Box<dyn StdError + 'static> {
    fn from(error: StageError) -> Self {
        error.inner
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            f.write_str(&self.chain_message())
        } else {
            fmt::Display::fmt(self.as_error(), f)
        }
    }
}

impl fmt::Debug for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

/// The form of a [`StageError`] on the wire.
#[derive(Serialize, Deserialize)]
struct WireError {
    message: String,
    panic: bool,
    fatal: bool,
}

impl Serialize for StageError {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let message = match self.downcast_ref::<Panicked>() {
            Some(panic) => panic.0.clone(),
            None => self.chain_message(),
        };
        WireError {
            message,
            panic: self.is_panic(),
            fatal: self.is_fatal(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for StageError {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireError::deserialize(deserializer)?;
        let error = if wire.panic {
            Self {
                inner: Box::new(Panicked(wire.message)),
            }
        } else {
            Self::msg(wire.message)
        };
        Ok(if wire.fatal { error.fatal() } else { error })
    }
}

/// Runs stage code, turning a panic into a [`StageError`] (see [`StageError::from_panic`]).
///
/// Engines wrap every stage call in this, so that a panic on one item is counted as a failure
/// of that item instead of killing the thread. The default panic hook still prints the panic.
///
/// # Errors
///
/// The error `f` returned, or the panic as an error.
///
/// ```
/// use engine::core::StageError;
/// use engine::core::plumbing::catch_panic;
///
/// assert_eq!(catch_panic(|| Ok::<_, StageError>(1)).unwrap(), 1);
/// let err = catch_panic(|| -> Result<(), StageError> { panic!("boom") }).unwrap_err();
/// assert!(err.is_panic());
/// ```
pub fn catch_panic<T>(f: impl FnOnce() -> Result<T, StageError>) -> Result<T, StageError> {
    // The stage's state may be inconsistent after a panic; engines either drop the instance or
    // keep going under the skip policy, as the user chose, so unwind safety is the user's
    // contract, as with `std::thread::spawn`.
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| Err(StageError::from_panic(payload)))
}

/// A panic in stage code, kept as an error.
#[derive(Debug)]
struct Panicked(String);

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "panicked: {}", self.0)
    }
}

impl StdError for Panicked {}

/// An error marked fatal; displays as the error it wraps.
#[derive(Debug)]
struct Fatal(BoxError);

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for Fatal {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

/// A plain message used as an error.
#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Message {}

/// The shared application config a stage asked for is not there, or is of another type.
///
/// Returned by [`AppConfig::get`](crate::AppConfig::get) and
/// [`StageContext::config`](crate::StageContext::config). It converts into a [`StageError`], so
/// `ctx.config::<MyConfig>()?` works inside `setup`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The engine was built without an application config.
    #[error("no application config was given to the engine, but a stage asked for `{expected}`")]
    Missing {
        /// The type the stage asked for.
        expected: &'static str,
    },
    /// The engine's application config has another type.
    #[error("the application config is a `{found}`, but a stage asked for `{expected}`")]
    WrongType {
        /// The type the stage asked for.
        expected: &'static str,
        /// The type the engine was given.
        found: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn alternate_display_shows_the_source_chain() {
        let err = StageError::from(Outer(std::io::Error::other("inner")));
        assert_eq!(err.to_string(), "outer");
        assert_eq!(format!("{err:#}"), "outer: inner");
        assert_eq!(err.chain_message(), "outer: inner");
    }

    #[test]
    fn converts_into_a_boxed_error() {
        let boxed: Box<dyn StdError + Send + Sync> = StageError::msg("boom").into();
        assert_eq!(boxed.to_string(), "boom");
    }

    #[test]
    fn errors_round_trip_through_serde_as_messages() {
        let err = StageError::from(Outer(std::io::Error::other("inner")));
        let back: StageError = postcard::from_bytes(&postcard::to_stdvec(&err).unwrap()).unwrap();
        assert_eq!(back.to_string(), "outer: inner");
        assert!(!back.is_panic());

        let panic = catch_panic(|| -> Result<(), StageError> { panic!("at item 3") }).unwrap_err();
        let back: StageError = postcard::from_bytes(&postcard::to_stdvec(&panic).unwrap()).unwrap();
        assert!(back.is_panic());
        assert_eq!(back.to_string(), "panicked: at item 3");
    }

    #[test]
    fn fatal_marks_survive_serde_boxing_and_keep_the_chain() {
        let err = StageError::from(Outer(std::io::Error::other("inner"))).fatal();
        assert!(err.is_fatal() && !err.is_panic());
        assert_eq!(format!("{err:#}"), "outer: inner");
        let back: StageError = postcard::from_bytes(&postcard::to_stdvec(&err).unwrap()).unwrap();
        assert!(back.is_fatal());
        assert_eq!(back.to_string(), "outer: inner");
        let boxed: BoxError = err.into();
        let again = StageError::from_boxed(boxed);
        assert!(again.is_fatal());
        assert!(again.downcast_ref::<Outer>().is_some());
        let panic = StageError::from_panic(Box::new("oops")).fatal();
        assert!(panic.is_panic() && panic.is_fatal());
        assert!(
            !StageError::msg("x")
                .fatal()
                .fatal()
                .as_error()
                .is::<Fatal>()
        );
    }

    #[test]
    fn non_string_panic_payloads_are_described() {
        let payload = std::panic::catch_unwind(|| std::panic::panic_any(42_u8)).unwrap_err();
        let err = StageError::from_panic(payload);
        assert_eq!(
            err.to_string(),
            "panicked: a panic with a non-string payload"
        );
    }

    #[test]
    fn config_error_converts_with_question_mark() {
        fn f() -> Result<(), StageError> {
            Err(ConfigError::Missing { expected: "u32" })?
        }
        assert!(f().unwrap_err().to_string().contains("`u32`"));
    }
}
