//! Behaviour tests of the out-of-the-box stages, driven by hand as an engine drives them.

use std::io::{self, BufRead, Cursor, Read};
use std::sync::{Arc, Mutex};

use engine_core::{Backend, Frontend, StageContext, StageKind, Transport};
use engine_ootb::{
    CollectBackend, CountBackend, InvalidUtf8, LogBackend, LogTransport, StdinFrontend,
};

fn frontend_ctx() -> StageContext {
    StageContext::standalone("lines", StageKind::Frontend)
}

/// Every line `frontend` yields until the end of its input; panics on an error.
fn all_lines(frontend: &mut StdinFrontend) -> Vec<String> {
    let ctx = frontend_ctx();
    let mut lines = Vec::new();
    while let Some(line) = frontend.produce(&ctx).expect("no error") {
        lines.push(line);
    }
    lines
}

#[test]
fn lf_and_crlf_endings_are_removed() {
    let mut lines = StdinFrontend::from_reader(&b"unix\nwindows\r\nmixed\r\n"[..]);
    assert_eq!(all_lines(&mut lines), ["unix", "windows", "mixed"]);
    assert_eq!(lines.lines_read(), 3);
}

#[test]
fn empty_lines_are_yielded_as_empty_strings() {
    let mut lines = StdinFrontend::from_reader(&b"\n\r\na\n\n"[..]);
    assert_eq!(all_lines(&mut lines), ["", "", "a", ""]);
}

#[test]
fn a_last_line_without_newline_is_yielded() {
    let mut lines = StdinFrontend::from_reader(&b"a\nlast"[..]);
    assert_eq!(all_lines(&mut lines), ["a", "last"]);
    let mut lines = StdinFrontend::from_reader(&b"only\r"[..]);
    assert_eq!(all_lines(&mut lines), ["only\r"]);
}

#[test]
fn the_end_of_input_is_ok_none_and_stays_so() {
    let ctx = frontend_ctx();
    let mut lines = StdinFrontend::from_reader(Cursor::new(Vec::new()));
    assert_eq!(lines.produce(&ctx).unwrap(), None);
    assert_eq!(lines.produce(&ctx).unwrap(), None);
    assert_eq!(lines.lines_read(), 0);

    let mut lines = StdinFrontend::from_reader(&b"x\n"[..]);
    assert_eq!(lines.produce(&ctx).unwrap().as_deref(), Some("x"));
    assert_eq!(lines.produce(&ctx).unwrap(), None);
    assert_eq!(lines.produce(&ctx).unwrap(), None);
}

#[test]
fn the_end_of_input_is_not_read_again() {
    /// Ends the input once, then has another line, as a terminal does after Ctrl-D.
    struct EndsThenResumes {
        ended: bool,
        rest: Cursor<&'static [u8]>,
    }
    impl Read for EndsThenResumes {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if !self.ended {
                self.ended = true;
                return Ok(0);
            }
            self.rest.read(buf)
        }
    }
    let reader = io::BufReader::new(EndsThenResumes {
        ended: false,
        rest: Cursor::new(b"late\n"),
    });
    let ctx = frontend_ctx();
    let mut lines = StdinFrontend::from_reader(reader);
    assert_eq!(lines.produce(&ctx).unwrap(), None);
    assert_eq!(lines.produce(&ctx).unwrap(), None);
}

#[test]
fn invalid_utf8_is_replaced_by_default_and_logged_with_the_line_number() {
    let logs = Logs::default();
    let lines = tracing::subscriber::with_default(logs.subscriber(), || {
        let mut lines = StdinFrontend::from_reader(&b"ok\nbad \xff\xfe end\nnext\n"[..]);
        all_lines(&mut lines)
    });
    assert_eq!(lines, ["ok", "bad \u{fffd}\u{fffd} end", "next"]);
    let logs = logs.text();
    assert!(logs.contains("WARN"), "{logs}");
    assert!(
        logs.contains("line 2 of the input is not valid UTF-8"),
        "{logs}"
    );
    assert!(logs.contains("line=2"), "{logs}");
    assert_eq!(logs.lines().count(), 1, "{logs}");
}

#[test]
fn strict_mode_fails_the_bad_line_and_goes_on_with_the_next() {
    let ctx = frontend_ctx();
    let mut lines = StdinFrontend::from_reader(&b"ok\nbad \xc3\x28\r\nnext\n"[..]).strict(true);
    assert_eq!(lines.produce(&ctx).unwrap().as_deref(), Some("ok"));

    let err = lines.produce(&ctx).unwrap_err();
    assert!(!err.is_fatal(), "a bad line must not end the frontend");
    let invalid = err.downcast_ref::<InvalidUtf8>().expect("an InvalidUtf8");
    assert_eq!(invalid.line(), 2);
    assert_eq!(invalid.as_bytes(), b"bad \xc3\x28");
    assert_eq!(invalid.utf8_error().valid_up_to(), 4);
    assert_eq!(err.to_string(), "line 2 of the input is not valid UTF-8");

    assert_eq!(lines.produce(&ctx).unwrap().as_deref(), Some("next"));
    assert_eq!(lines.produce(&ctx).unwrap(), None);
    assert_eq!(lines.lines_read(), 3);
}

/// Yields `data`, then fails with `kind` on every read.
struct FailingReader {
    data: Cursor<&'static [u8]>,
    kind: io::ErrorKind,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.data.read(buf)? {
            0 => Err(io::Error::new(self.kind, "the pipe broke")),
            n => Ok(n),
        }
    }
}

#[test]
fn an_io_error_is_fatal() {
    let ctx = frontend_ctx();
    let reader = io::BufReader::new(FailingReader {
        data: Cursor::new(b"first\nhalf a li"),
        kind: io::ErrorKind::BrokenPipe,
    });
    let mut lines = StdinFrontend::from_reader(reader);
    assert_eq!(lines.produce(&ctx).unwrap().as_deref(), Some("first"));
    let err = lines.produce(&ctx).unwrap_err();
    assert!(err.is_fatal());
    let io_err = err.downcast_ref::<io::Error>().expect("an io::Error");
    assert_eq!(io_err.kind(), io::ErrorKind::BrokenPipe);
    assert_eq!(err.to_string(), "the pipe broke");
    assert_eq!(lines.lines_read(), 1);
}

/// A reader whose own `read_until` is interrupted after part of each line, the way a
/// signal can interrupt a read, keeping what it appended so far.
struct InterruptingReader {
    chunks: Vec<&'static [u8]>,
    interruptions: usize,
}

impl Read for InterruptingReader {
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        unreachable!("the frontend reads through read_until")
    }
}

impl BufRead for InterruptingReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        unreachable!("the frontend reads through read_until")
    }

    fn consume(&mut self, _amount: usize) {}

    fn read_until(&mut self, _delimiter: u8, buf: &mut Vec<u8>) -> io::Result<usize> {
        if self.chunks.is_empty() {
            return Ok(0);
        }
        let chunk = self.chunks.remove(0);
        buf.extend_from_slice(chunk);
        if chunk.ends_with(b"\n") {
            Ok(chunk.len())
        } else {
            self.interruptions += 1;
            Err(io::ErrorKind::Interrupted.into())
        }
    }
}

#[test]
fn an_interrupted_read_is_retried_without_losing_bytes() {
    let ctx = frontend_ctx();
    let mut lines = StdinFrontend::from_reader(InterruptingReader {
        chunks: vec![b"hel", b"lo\n", b"wor", b"ld"],
        interruptions: 0,
    });
    assert_eq!(lines.produce(&ctx).unwrap().as_deref(), Some("hello"));
    assert_eq!(lines.produce(&ctx).unwrap().as_deref(), Some("world"));
    assert_eq!(lines.produce(&ctx).unwrap(), None);
}

/// A reader that is interrupted on every other read.
struct FlakyRead {
    data: Cursor<&'static [u8]>,
    interrupt_next: bool,
}

impl Read for FlakyRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.interrupt_next = !self.interrupt_next;
        if !self.interrupt_next {
            return Err(io::ErrorKind::Interrupted.into());
        }
        // One byte at a time, so that every line is interrupted several times.
        let end = buf.len().min(1);
        self.data.read(&mut buf[..end])
    }
}

#[test]
fn an_interrupted_buffered_read_is_retried() {
    let reader = io::BufReader::new(FlakyRead {
        data: Cursor::new(b"ab\r\ncd"),
        interrupt_next: false,
    });
    let mut lines = StdinFrontend::from_reader(reader);
    assert_eq!(all_lines(&mut lines), ["ab", "cd"]);
}

#[test]
fn log_transport_passes_items_on_unchanged_and_logs_them() {
    let logs = Logs::default();
    let ctx = StageContext::new(
        "echo",
        StageKind::Transport,
        3,
        4,
        engine_core::StopHandle::new(),
    );
    let out = tracing::subscriber::with_default(logs.subscriber(), || {
        let mut info = LogTransport::new();
        let mut debug = LogTransport::new().with_level(tracing::Level::DEBUG);
        let first = info.transport(vec![String::from("a b")], &ctx).unwrap();
        let second = debug.transport(vec![String::from("c")], &ctx).unwrap();
        (first, second)
    });
    assert_eq!(out.0, Some(vec![String::from("a b")]));
    assert_eq!(out.1, Some(vec![String::from("c")]));
    let logs = logs.text();
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines.len(), 2, "{logs}");
    assert!(lines[0].contains("INFO"), "{logs}");
    assert!(
        lines[0].contains(r#"stage="echo" thread=3 item=["a b"]"#),
        "{logs}"
    );
    assert!(lines[1].contains("DEBUG"), "{logs}");
    assert!(lines[1].contains(r#"item=["c"]"#), "{logs}");
}

#[test]
fn log_backend_logs_each_item_at_its_level() {
    let logs = Logs::default();
    let ctx = StageContext::standalone("sink", StageKind::Backend);
    tracing::subscriber::with_default(logs.subscriber(), || {
        let mut log = LogBackend::new().with_level(tracing::Level::WARN);
        log.process(("id", 7), &ctx).unwrap();
        log.clone().process(("id", 8), &ctx).unwrap();
    });
    let logs = logs.text();
    assert_eq!(logs.lines().count(), 2, "{logs}");
    assert!(logs.lines().all(|line| line.contains("WARN")), "{logs}");
    assert!(
        logs.contains(r#"stage="sink" thread=0 item=("id", 7)"#),
        "{logs}"
    );
    assert!(logs.contains(r#"item=("id", 8)"#), "{logs}");
}

#[test]
fn collect_backend_clones_collect_into_one_vector() {
    let backend = CollectBackend::new();
    let collected = backend.collected();
    let threads: Vec<_> = (0..4_u64)
        .map(|index| {
            let mut backend = backend.clone();
            std::thread::spawn(move || {
                let ctx = StageContext::new(
                    "collect",
                    StageKind::Backend,
                    usize::try_from(index).unwrap(),
                    4,
                    engine_core::StopHandle::new(),
                );
                for n in 0..100 {
                    backend.process(index * 100 + n, &ctx).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(collected.len(), 400);
    assert!(!collected.is_empty());
    let mut snapshot = collected.snapshot();
    assert_eq!(collected.len(), 400, "a snapshot leaves the items in place");
    snapshot.sort_unstable();
    assert_eq!(snapshot, (0..400).collect::<Vec<_>>());
    assert_eq!(collected.take().len(), 400);
    assert!(collected.is_empty());
    assert!(backend.collected().is_empty());
}

#[test]
fn collect_backend_needs_no_clone_items() {
    /// Not `Clone`.
    #[derive(Debug, PartialEq)]
    struct Token(u8);

    let ctx = StageContext::standalone("collect", StageKind::Backend);
    let mut backend = CollectBackend::new();
    backend.process(Token(1), &ctx).unwrap();
    backend.clone().process(Token(2), &ctx).unwrap();
    assert_eq!(backend.collected().take(), [Token(1), Token(2)]);
}

#[test]
fn count_backend_clones_count_into_one_counter() {
    let counter = CountBackend::<String>::new();
    let threads: Vec<_> = (0..4)
        .map(|index| {
            let mut counter = counter.clone();
            std::thread::spawn(move || {
                let ctx = StageContext::new(
                    "count",
                    StageKind::Backend,
                    index,
                    4,
                    engine_core::StopHandle::new(),
                );
                for n in 0..250 {
                    counter.process(n.to_string(), &ctx).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(counter.count(), 1000);
    assert_eq!(CountBackend::<String>::new().count(), 0);
}

#[test]
fn stages_move_to_engine_threads() {
    fn assert_send<T: Send + 'static>() {}
    fn assert_clone_send<T: Clone + Send + 'static>() {}
    assert_send::<StdinFrontend>();
    assert_clone_send::<LogTransport<String>>();
    assert_clone_send::<LogBackend<String>>();
    assert_clone_send::<CollectBackend<String>>();
    assert_clone_send::<CountBackend<String>>();
}

/// Log output captured from a `tracing` subscriber, as text without colours or times.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + 'static {
        let logs = self.clone();
        tracing_subscriber::fmt()
            .with_writer(move || logs.clone())
            .with_ansi(false)
            .without_time()
            .with_max_level(tracing::Level::TRACE)
            .finish()
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
