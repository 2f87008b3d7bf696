//! The wire protocol for everything that crosses a process boundary: frames, envelopes,
//! addresses, control messages and task ids, encoded with postcard.
//!
//! It unites the two origin protocols: multipro_lab's message (receiver name, message type,
//! body) and pymulproc's 4-field datagram (request, sender, recipient, data) with its `DO`,
//! `FINISHED` and `DIE` requests. An [`Envelope`] carries a receiver and a sender
//! [`Address`], a [`Kind`] (a control message or a user-named kind), an optional [`TaskId`]
//! and a body of bytes; a [`Hello`] frame opens every worker connection and carries
//! [`PROTOCOL_VERSION`].
//!
//! Decoding never panics on arbitrary bytes: a truncated, corrupt or oversized frame gives a
//! [`ProtocolError`].
//!
//! # Examples
//!
//! ```
//! use engine_core::protocol::{Address, Envelope, Frame, Kind, TaskId};
//!
//! let request = Envelope::new(Address::Main, Address::named("resizer"), Kind::Do)
//!     .with_task(TaskId(7))
//!     .with_body(&(640_u32, 480_u32))?;
//! let bytes = Frame::Message(request.clone()).encode()?;
//!
//! let Frame::Message(received) = Frame::decode(&bytes)? else { unreachable!() };
//! assert_eq!(received, request);
//! assert_eq!(received.body::<(u32, u32)>()?, (640, 480));
//!
//! assert!(Frame::decode(&bytes[..bytes.len() - 1]).is_err());
//! # Ok::<(), engine_core::protocol::ProtocolError>(())
//! ```

use std::any::type_name;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The version of this protocol. A worker and its master must speak the same one; the
/// [`Hello`] handshake checks it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Where a message goes to or comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Address {
    /// The main (master) process.
    Main,
    /// A named process (a worker), as multipro_lab's receiver name.
    Named(String),
    /// Every process but the sender.
    Broadcast,
}

impl Address {
    /// A named address.
    pub fn named(name: impl Into<String>) -> Self {
        Self::Named(name.into())
    }

    /// Whether a message sent to this address is for the process at `me`.
    ///
    /// ```
    /// # use engine_core::protocol::Address;
    /// let me = Address::named("a");
    /// assert!(Address::Broadcast.is_for(&me));
    /// assert!(Address::named("a").is_for(&me));
    /// assert!(!Address::Main.is_for(&me));
    /// ```
    pub fn is_for(&self, me: &Address) -> bool {
        matches!(self, Self::Broadcast) || self == me
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Main => f.write_str("main"),
            Self::Named(name) => f.write_str(name),
            Self::Broadcast => f.write_str("*"),
        }
    }
}

/// What a message is about: one of the control messages, or a user-named kind that selects
/// the receiver's handler.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// Do a task (the body is its argument).
    Do,
    /// A task is done (the body is its result).
    Finished,
    /// A task failed (the body is the error).
    Failed,
    /// Stop and exit as soon as possible: the poison pill.
    Die,
    /// A user message kind, handled by the handler registered under this name.
    User(String),
}

impl Kind {
    /// A user message kind.
    pub fn user(name: impl Into<String>) -> Self {
        Self::User(name.into())
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Do => f.write_str("DO"),
            Self::Finished => f.write_str("FINISHED"),
            Self::Failed => f.write_str("FAILED"),
            Self::Die => f.write_str("DIE"),
            Self::User(name) => f.write_str(name),
        }
    }
}

/// Identifies a task across processes, so its result can be matched to it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct TaskId(pub u64);

impl TaskId {
    /// The id after this one.
    #[must_use]
    pub fn next(self) -> Self {
        Self(self.0.wrapping_add(1))
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task #{}", self.0)
    }
}

/// One message: who it is for, who sent it, what it is about, and its body.
///
/// The body is opaque bytes so that routers can forward messages without knowing their
/// types; [`with_body`](Self::with_body) and [`body`](Self::body) encode and decode it with
/// postcard.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Envelope {
    /// The receiving process.
    pub receiver: Address,
    /// The sending process.
    pub sender: Address,
    /// What the message is about.
    pub kind: Kind,
    /// The task the message belongs to, if any.
    pub task: Option<TaskId>,
    /// The encoded body.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

impl Envelope {
    /// An envelope with an empty body and no task.
    pub fn new(receiver: Address, sender: Address, kind: Kind) -> Self {
        Self {
            receiver,
            sender,
            kind,
            task: None,
            body: Vec::new(),
        }
    }

    /// Sets the task id.
    #[must_use]
    pub fn with_task(mut self, task: TaskId) -> Self {
        self.task = Some(task);
        self
    }

    /// Encodes `body` into the envelope.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::Encode`] if the value cannot be serialised.
    pub fn with_body<T: Serialize + ?Sized>(mut self, body: &T) -> Result<Self, ProtocolError> {
        self.body = to_bytes(body)?;
        Ok(self)
    }

    /// Sets already-encoded body bytes.
    #[must_use]
    pub fn with_raw_body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    /// Decodes the body as a `T`.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::Decode`] or [`ProtocolError::TrailingBytes`] if the body is not a
    /// valid `T`.
    pub fn body<T: DeserializeOwned>(&self) -> Result<T, ProtocolError> {
        from_bytes(&self.body)
    }

    /// A reply to this message: receiver and sender swapped, same task, empty body.
    #[must_use]
    pub fn reply(&self, kind: Kind) -> Self {
        Self {
            receiver: self.sender.clone(),
            sender: self.receiver.clone(),
            kind,
            task: self.task,
            body: Vec::new(),
        }
    }
}

/// The handshake a worker sends first, over the connection its master handed it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the worker speaks.
    pub version: u32,
    /// The kind of worker (which code it runs), as the master asked for it.
    pub worker_kind: String,
    /// The worker's name or address.
    pub name: Address,
    /// The worker's process id.
    pub pid: u32,
}

impl Hello {
    /// A handshake for this process, speaking [`PROTOCOL_VERSION`].
    pub fn new(worker_kind: impl Into<String>, name: Address) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            worker_kind: worker_kind.into(),
            name,
            pid: std::process::id(),
        }
    }

    /// Checks the handshake against what the master expects.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::VersionMismatch`] if the versions differ,
    /// [`ProtocolError::WrongWorkerKind`] if the worker runs other code than expected.
    ///
    /// ```
    /// # use engine_core::protocol::{Address, Hello, ProtocolError};
    /// let mut hello = Hello::new("resizer", Address::named("w1"));
    /// assert!(hello.check("resizer").is_ok());
    /// assert!(matches!(hello.check("mailer"), Err(ProtocolError::WrongWorkerKind { .. })));
    /// hello.version += 1;
    /// assert!(matches!(hello.check("resizer"), Err(ProtocolError::VersionMismatch { .. })));
    /// ```
    pub fn check(&self, expected_kind: &str) -> Result<(), ProtocolError> {
        if self.version != PROTOCOL_VERSION {
            return Err(ProtocolError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: self.version,
            });
        }
        if self.worker_kind != expected_kind {
            return Err(ProtocolError::WrongWorkerKind {
                expected: expected_kind.to_owned(),
                found: self.worker_kind.clone(),
            });
        }
        Ok(())
    }
}

/// Everything that travels between processes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Frame {
    /// The worker's handshake, always the first frame on a connection.
    Hello(Hello),
    /// A message.
    Message(Envelope),
}

impl Frame {
    /// Encodes the frame.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::Encode`] if serialisation fails (it does not for well-formed frames).
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        to_bytes(self)
    }

    /// Decodes a frame from untrusted bytes. Never panics.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::Decode`] for truncated or corrupt bytes,
    /// [`ProtocolError::TrailingBytes`] when bytes follow a complete frame.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        from_bytes(bytes)
    }

    /// A short description for logs: `hello` or the message kind.
    pub fn describe(&self) -> String {
        match self {
            Self::Hello(hello) => format!("hello from {} ({})", hello.name, hello.worker_kind),
            Self::Message(m) => format!("{} from {} to {}", m.kind, m.sender, m.receiver),
        }
    }
}

/// Encodes any value with the protocol's encoding (postcard).
///
/// # Errors
///
/// [`ProtocolError::Encode`] if the value cannot be serialised (for example a map with
/// non-serialisable keys, or a sequence of unknown length).
pub fn to_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, ProtocolError> {
    postcard::to_stdvec(value).map_err(|source| ProtocolError::Encode {
        what: type_name::<T>(),
        source: CodecError(source),
    })
}

/// Decodes a value encoded with [`to_bytes`] from untrusted bytes. Never panics, and rejects
/// bytes left over after a complete value.
///
/// # Errors
///
/// [`ProtocolError::Decode`] or [`ProtocolError::TrailingBytes`].
pub fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    let (value, rest) =
        postcard::take_from_bytes::<T>(bytes).map_err(|source| ProtocolError::Decode {
            what: type_name::<T>(),
            len: bytes.len(),
            source: CodecError(source),
        })?;
    if !rest.is_empty() {
        return Err(ProtocolError::TrailingBytes {
            what: type_name::<T>(),
            extra: rest.len(),
        });
    }
    Ok(value)
}

/// Errors of the wire protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A value could not be encoded.
    #[error("cannot encode a `{what}`")]
    Encode {
        /// The type being encoded.
        what: &'static str,
        /// Why.
        #[source]
        source: CodecError,
    },
    /// Bytes are not a valid encoding: truncated, corrupt, or of another type.
    #[error("cannot decode a `{what}` from {len} bytes")]
    Decode {
        /// The type being decoded.
        what: &'static str,
        /// How many bytes were given.
        len: usize,
        /// Why.
        #[source]
        source: CodecError,
    },
    /// A complete value was followed by more bytes: a framing error or a different type.
    #[error("a `{what}` was followed by {extra} unexpected bytes")]
    TrailingBytes {
        /// The type decoded.
        what: &'static str,
        /// How many bytes were left over.
        extra: usize,
    },
    /// The peer speaks another protocol version: master and worker come from different
    /// builds.
    #[error(
        "protocol version mismatch: this process speaks version {ours}, the peer speaks version {theirs}; \
         run master and workers from the same build"
    )]
    VersionMismatch {
        /// This process's version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
    /// The worker that connected runs other code than the master asked for.
    #[error("expected a worker of kind {expected:?}, but {found:?} connected")]
    WrongWorkerKind {
        /// The kind the master asked for.
        expected: String,
        /// The kind that connected.
        found: String,
    },
    /// A frame arrived where another was expected (for example a message before the
    /// handshake).
    #[error("protocol violation: expected {expected}, got {found}")]
    UnexpectedFrame {
        /// What was expected.
        expected: &'static str,
        /// What arrived.
        found: String,
    },
}

/// Why the encoding or decoding failed (the codec's own message).
#[derive(Debug)]
pub struct CodecError(postcard::Error);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for CodecError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<Kind> {
        vec![
            Kind::Do,
            Kind::Finished,
            Kind::Failed,
            Kind::Die,
            Kind::user("resize"),
        ]
    }

    fn all_addresses() -> Vec<Address> {
        vec![
            Address::Main,
            Address::named("worker-1"),
            Address::Broadcast,
        ]
    }

    #[test]
    fn every_message_type_round_trips() {
        let mut frames = vec![Frame::Hello(Hello::new("pool", Address::named("w0")))];
        for kind in all_kinds() {
            for receiver in all_addresses() {
                for task in [None, Some(TaskId(u64::MAX))] {
                    let mut envelope = Envelope::new(receiver.clone(), Address::Main, kind.clone())
                        .with_body(&("payload", 42_u64, vec![1.5_f64]))
                        .unwrap();
                    envelope.task = task;
                    frames.push(Frame::Message(envelope));
                }
            }
        }
        for frame in frames {
            let bytes = frame.encode().unwrap();
            assert_eq!(
                Frame::decode(&bytes).unwrap(),
                frame,
                "{}",
                frame.describe()
            );
        }
    }

    #[test]
    fn bodies_decode_to_their_type() {
        let envelope = Envelope::new(Address::Main, Address::named("w"), Kind::Finished)
            .with_body(&Ok::<u32, String>(5))
            .unwrap();
        assert_eq!(envelope.body::<Result<u32, String>>().unwrap(), Ok(5));
        assert!(envelope.body::<String>().is_err());
    }

    #[test]
    fn empty_and_trailing_bytes_are_errors() {
        let err = Frame::decode(&[]).unwrap_err();
        assert!(matches!(err, ProtocolError::Decode { len: 0, .. }), "{err}");
        let mut bytes = Frame::Message(Envelope::new(Address::Main, Address::Main, Kind::Die))
            .encode()
            .unwrap();
        bytes.push(0);
        let err = Frame::decode(&bytes).unwrap_err();
        assert!(
            matches!(err, ProtocolError::TrailingBytes { extra: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("1 unexpected bytes"));
    }

    #[test]
    fn a_huge_length_prefix_does_not_allocate_or_panic() {
        // A body claiming u64::MAX / 2 bytes, then nothing.
        let mut bytes = vec![1, 0, 0, 3, 0]; // Message, Main, Main, Die, no task.
        bytes.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(matches!(
            Frame::decode(&bytes),
            Err(ProtocolError::Decode { .. })
        ));
    }

    #[test]
    fn reply_swaps_addresses_and_keeps_the_task() {
        let request =
            Envelope::new(Address::named("w"), Address::Main, Kind::Do).with_task(TaskId(3));
        let reply = request.reply(Kind::Finished);
        assert_eq!(reply.receiver, Address::Main);
        assert_eq!(reply.sender, Address::named("w"));
        assert_eq!(reply.task, Some(TaskId(3)));
        assert_eq!(TaskId(3).next(), TaskId(4));
        assert_eq!(TaskId(3).to_string(), "task #3");
    }

    #[test]
    fn display_forms() {
        assert_eq!(Kind::Die.to_string(), "DIE");
        assert_eq!(Kind::user("ping").to_string(), "ping");
        assert_eq!(Address::Broadcast.to_string(), "*");
        let err = ProtocolError::VersionMismatch { ours: 1, theirs: 2 };
        assert!(err.to_string().contains("version 1"));
    }
}
