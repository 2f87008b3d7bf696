//! A frontend that yields the lines of standard input, or of any buffered reader.

use std::error::Error as StdError;
use std::fmt;
use std::io::{self, BufRead, Stdin};
use std::string::FromUtf8Error;

use engine_core::{Frontend, StageContext, StageError};

/// A frontend that yields the lines of standard input, or of any [`BufRead`], as `String`s.
///
/// [`new`](Self::new) reads the process's standard input; [`from_reader`](Self::from_reader)
/// reads any `BufRead + Send + 'static` (a file, a socket, a byte slice in a test).
///
/// # Lines
///
/// Each line is yielded without its trailing `\n` or `\r\n`, as [`BufRead::lines`] does (a
/// lone `\r` at the end of the input is kept). Empty lines are yielded as empty strings, and
/// a last line with no newline after it is yielded too. At the end of the input `produce`
/// returns `Ok(None)`, and keeps returning it without reading again.
///
/// # Invalid UTF-8
///
/// Lines are read as bytes, so what happens to bytes that are not UTF-8 is up to this type:
///
/// - By default (lossy), each invalid sequence is replaced by U+FFFD (`�`), the line is
///   yielded, and a warning naming the line number is logged through `tracing`.
/// - With [`strict(true)`](Self::strict), such a line is returned as an error wrapping
///   [`InvalidUtf8`], which carries the line number and the line's bytes. The engine counts
///   the line as failed and, under the default skip policy, calls `produce` again, which
///   reads the next line.
///
/// # Errors
///
/// An I/O error from the reader is returned as a [fatal](StageError::fatal) error wrapping the
/// [`io::Error`]: a broken reader would fail again on every retry, so the frontend ends
/// instead. [`io::ErrorKind::Interrupted`] is not an error; the read is retried.
///
/// # Stopping
///
/// Reading blocks until a whole line or the end of the input arrives. Engines check for a
/// stop between lines, and do not wait for a frontend blocked in a read after a stop.
///
/// # Several instances
///
/// Instances made by `new` lock standard input for one line at a time, so several of them
/// (one per frontend thread) share the input: each line goes to exactly one of them.
///
/// # Examples
///
/// ```
/// use engine::core::{Frontend, StageContext, StageKind};
/// use engine::ootb::StdinFrontend;
///
/// let ctx = StageContext::standalone("lines", StageKind::Frontend);
/// let mut lines = StdinFrontend::from_reader(&b"one\r\n\ntwo"[..]);
/// assert_eq!(lines.produce(&ctx)?.as_deref(), Some("one"));
/// assert_eq!(lines.produce(&ctx)?.as_deref(), Some(""));
/// assert_eq!(lines.produce(&ctx)?.as_deref(), Some("two"));
/// assert_eq!(lines.produce(&ctx)?, None);
/// assert_eq!(lines.lines_read(), 3);
/// # Ok::<(), engine::core::StageError>(())
/// ```
///
/// Lossy and strict handling of invalid UTF-8:
///
/// ```
/// use engine::core::{Frontend, StageContext, StageKind};
/// use engine::ootb::{InvalidUtf8, StdinFrontend};
///
/// let ctx = StageContext::standalone("lines", StageKind::Frontend);
/// let input: &[u8] = b"a\xffb\nnext\n";
///
/// let mut lossy = StdinFrontend::from_reader(input);
/// assert_eq!(lossy.produce(&ctx)?.as_deref(), Some("a\u{fffd}b"));
/// assert_eq!(lossy.produce(&ctx)?.as_deref(), Some("next"));
///
/// let mut strict = StdinFrontend::from_reader(input).strict(true);
/// let err = strict.produce(&ctx).unwrap_err();
/// assert_eq!(err.downcast_ref::<InvalidUtf8>().map(InvalidUtf8::line), Some(1));
/// assert!(!err.is_fatal());
/// assert_eq!(strict.produce(&ctx)?.as_deref(), Some("next"));
/// # Ok::<(), engine::core::StageError>(())
/// ```
pub struct StdinFrontend {
    source: Source,
    strict: bool,
    lines_read: u64,
    finished: bool,
}

/// Where the lines come from.
enum Source {
    /// The process's standard input, locked for one line at a time. `StdinLock` is not `Send`,
    /// so holding the lock would keep the frontend from moving to its thread.
    Stdin(Stdin),
    /// Any buffered reader.
    Reader(Box<dyn BufRead + Send>),
}

impl Source {
    fn read_until(&mut self, delimiter: u8, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Self::Stdin(stdin) => stdin.lock().read_until(delimiter, buf),
            Self::Reader(reader) => reader.read_until(delimiter, buf),
        }
    }
}

impl StdinFrontend {
    /// A frontend reading the process's standard input, lossy about invalid UTF-8.
    ///
    /// ```
    /// use engine::ootb::StdinFrontend;
    ///
    /// let lines = StdinFrontend::new();
    /// assert_eq!(lines.lines_read(), 0);
    /// assert!(!lines.is_strict());
    /// ```
    pub fn new() -> Self {
        Self::with_source(Source::Stdin(io::stdin()))
    }

    /// A frontend reading `reader`, lossy about invalid UTF-8.
    ///
    /// ```
    /// use engine::core::{Frontend, StageContext, StageKind};
    /// use engine::ootb::StdinFrontend;
    ///
    /// let ctx = StageContext::standalone("lines", StageKind::Frontend);
    /// let mut lines = StdinFrontend::from_reader(std::io::Cursor::new("hello\n"));
    /// assert_eq!(lines.produce(&ctx)?.as_deref(), Some("hello"));
    /// # Ok::<(), engine::core::StageError>(())
    /// ```
    pub fn from_reader<R: BufRead + Send + 'static>(reader: R) -> Self {
        Self::with_source(Source::Reader(Box::new(reader)))
    }

    fn with_source(source: Source) -> Self {
        Self {
            source,
            strict: false,
            lines_read: 0,
            finished: false,
        }
    }

    /// Sets whether a line that is not valid UTF-8 is an error (`true`) or is yielded with
    /// U+FFFD in place of each invalid sequence (`false`, the default).
    ///
    /// ```
    /// use engine::core::{Frontend, StageContext, StageKind};
    /// use engine::ootb::StdinFrontend;
    ///
    /// let ctx = StageContext::standalone("lines", StageKind::Frontend);
    /// let mut lines = StdinFrontend::from_reader(&b"\xc3\x28\n"[..]).strict(true);
    /// assert!(lines.is_strict());
    /// assert!(lines.produce(&ctx).is_err());
    /// ```
    #[must_use]
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Whether invalid UTF-8 is an error; see [`strict`](Self::strict).
    ///
    /// ```
    /// # use engine::ootb::StdinFrontend;
    /// assert!(StdinFrontend::new().strict(true).is_strict());
    /// ```
    pub fn is_strict(&self) -> bool {
        self.strict
    }

    /// How many lines were read so far, including lines returned as errors for invalid UTF-8.
    ///
    /// ```
    /// use engine::core::{Frontend, StageContext, StageKind};
    /// use engine::ootb::StdinFrontend;
    ///
    /// let ctx = StageContext::standalone("lines", StageKind::Frontend);
    /// let mut lines = StdinFrontend::from_reader(&b"a\nb\n"[..]);
    /// while lines.produce(&ctx)?.is_some() {}
    /// assert_eq!(lines.lines_read(), 2);
    /// # Ok::<(), engine::core::StageError>(())
    /// ```
    pub fn lines_read(&self) -> u64 {
        self.lines_read
    }

    /// Reads the next line's bytes, newline included, or `None` at the end of the input.
    fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        loop {
            // After an interruption `line` keeps what was read so far, so reading again
            // appends the rest of the line.
            // A read that blocks waits for the source, which the engine counts as waiting
            // for input, not work.
            let read = engine_core::waiting_for_input(|| self.source.read_until(b'\n', &mut line));
            match read {
                Ok(_) => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok((!line.is_empty()).then_some(line))
    }
}

impl Default for StdinFrontend {
    /// The same as [`StdinFrontend::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl Frontend for StdinFrontend {
    type Item = String;

    fn produce(&mut self, ctx: &StageContext) -> Result<Option<String>, StageError> {
        if self.finished {
            return Ok(None);
        }
        let Some(mut bytes) = self
            .read_line()
            .map_err(|err| StageError::new(err).fatal())?
        else {
            self.finished = true;
            return Ok(None);
        };
        self.lines_read += 1;
        let line = self.lines_read;
        strip_newline(&mut bytes);
        match String::from_utf8(bytes) {
            Ok(text) => Ok(Some(text)),
            Err(error) if self.strict => Err(StageError::new(InvalidUtf8 { line, error })),
            Err(error) => {
                tracing::warn!(
                    stage = ctx.stage(),
                    thread = ctx.index(),
                    line,
                    "line {line} of the input is not valid UTF-8; invalid bytes were replaced by U+FFFD"
                );
                Ok(Some(String::from_utf8_lossy(error.as_bytes()).into_owned()))
            }
        }
    }
}

impl fmt::Debug for StdinFrontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match self.source {
            Source::Stdin(_) => "stdin",
            Source::Reader(_) => "reader",
        };
        f.debug_struct("StdinFrontend")
            .field("source", &source)
            .field("strict", &self.strict)
            .field("lines_read", &self.lines_read)
            .field("finished", &self.finished)
            .finish()
    }
}

/// Removes a trailing `\n` or `\r\n`, as [`BufRead::lines`] does.
fn strip_newline(bytes: &mut Vec<u8>) {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
}

/// A line of the input is not valid UTF-8; returned by a [strict](StdinFrontend::strict)
/// [`StdinFrontend`].
///
/// It keeps the line's bytes (without the newline), so nothing read is lost.
///
/// # Examples
///
/// ```
/// use engine::core::{Frontend, StageContext, StageKind};
/// use engine::ootb::{InvalidUtf8, StdinFrontend};
///
/// let ctx = StageContext::standalone("lines", StageKind::Frontend);
/// let mut lines = StdinFrontend::from_reader(&b"ok\nb\xffd\r\n"[..]).strict(true);
/// lines.produce(&ctx)?;
/// let err = lines.produce(&ctx).unwrap_err();
/// let invalid = err.downcast_ref::<InvalidUtf8>().expect("an InvalidUtf8 error");
/// assert_eq!(invalid.line(), 2);
/// assert_eq!(invalid.as_bytes(), b"b\xffd");
/// assert_eq!(invalid.utf8_error().valid_up_to(), 1);
/// assert_eq!(err.to_string(), "line 2 of the input is not valid UTF-8");
/// # Ok::<(), engine::core::StageError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidUtf8 {
    line: u64,
    error: FromUtf8Error,
}

impl InvalidUtf8 {
    /// The 1-based number of the line in the input.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// Where the first invalid sequence is, and how long it is.
    pub fn utf8_error(&self) -> std::str::Utf8Error {
        self.error.utf8_error()
    }

    /// The line's bytes, without the newline.
    pub fn as_bytes(&self) -> &[u8] {
        self.error.as_bytes()
    }

    /// Takes the line's bytes, without the newline.
    ///
    /// ```
    /// use engine::core::{Frontend, StageContext, StageKind};
    /// use engine::ootb::{InvalidUtf8, StdinFrontend};
    ///
    /// let ctx = StageContext::standalone("lines", StageKind::Frontend);
    /// let mut lines = StdinFrontend::from_reader(&b"\xff\n"[..]).strict(true);
    /// let err = lines.produce(&ctx).unwrap_err();
    /// let invalid = err.downcast_ref::<InvalidUtf8>().expect("an InvalidUtf8 error");
    /// assert_eq!(invalid.clone().into_bytes(), vec![0xff]);
    /// ```
    pub fn into_bytes(self) -> Vec<u8> {
        self.error.into_bytes()
    }
}

impl fmt::Display for InvalidUtf8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} of the input is not valid UTF-8", self.line)
    }
}

impl StdError for InvalidUtf8 {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_only_a_final_newline_and_the_carriage_return_before_it() {
        let cases: [(&[u8], &[u8]); 6] = [
            (b"a\n", b"a"),
            (b"a\r\n", b"a"),
            (b"a\r", b"a\r"),
            (b"a\n\n", b"a\n"),
            (b"\r\n", b""),
            (b"", b""),
        ];
        for (input, expected) in cases {
            let mut bytes = input.to_vec();
            strip_newline(&mut bytes);
            assert_eq!(bytes, expected, "input {input:?}");
        }
    }

    #[test]
    fn the_frontend_can_move_to_another_thread() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<StdinFrontend>();
        assert_send::<InvalidUtf8>();
    }

    #[test]
    fn debug_names_the_source_and_the_count() {
        let text = format!("{:?}", StdinFrontend::from_reader(&b""[..]).strict(true));
        assert!(
            text.contains("\"reader\"") && text.contains("strict: true"),
            "{text}"
        );
        assert!(format!("{:?}", StdinFrontend::new()).contains("\"stdin\""));
    }

    #[test]
    fn the_error_chain_names_the_bad_byte() {
        let ctx = StageContext::standalone("lines", engine_core::StageKind::Frontend);
        let mut lines = StdinFrontend::from_reader(&b"ab\xff\n"[..]).strict(true);
        let err = lines.produce(&ctx).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "line 1 of the input is not valid UTF-8: invalid utf-8 sequence of 1 bytes from index 2"
        );
    }
}
