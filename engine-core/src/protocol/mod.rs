//! The wire protocol for everything that crosses a process boundary: frames, envelopes,
//! addresses, control messages and task ids, encoded with postcard.
//!
//! It unites the two origin protocols: multipro_lab's message (receiver name, message type,
//! body) and pymulproc's 4-field datagram (request, sender, recipient, data) with its `DO`,
//! `FINISHED` and `DIE` requests. An [`Envelope`] carries a receiver and a sender
//! [`Address`], a [`Kind`] (a control message or a user-named kind), an optional [`TaskId`]
//! and a body of bytes; a [`Hello`] frame opens every worker connection, and the master answers
//! [`Frame::Welcome`] or [`Frame::Reject`].
//!
//! Every encoded frame starts with a fixed header, the magic bytes `EN` and
//! [`PROTOCOL_VERSION`] as 4 little-endian bytes, read before anything else: a peer from
//! another build is refused with [`ProtocolError::VersionMismatch`], even when its frames
//! have another layout.
//!
//! Decoding never panics on arbitrary bytes: truncated or corrupt input gives a
//! [`ProtocolError`], and a length prefix larger than the input is refused without
//! allocating.
//!
//! # Examples
//!
//! ```
//! use engine::core::protocol::{Address, Envelope, Frame, Kind, TaskId};
//!
//! let request = Envelope::new(Address::Main, Address::named("resizer"), Kind::Do)
//!     .with_task(TaskId(7))
//!     .with_body(&(640_u32, 480_u32))?;
//! let bytes = Frame::Message(request.clone()).encode()?;
//!
//! let Frame::Message(received) = Frame::decode(&bytes)? else { panic!("not a message") };
//! assert_eq!(received, request);
//! assert_eq!(received.body::<(u32, u32)>()?, (640, 480));
//!
//! assert!(Frame::decode(&bytes[..bytes.len() - 1]).is_err());
//! # Ok::<(), engine::core::protocol::ProtocolError>(())
//! ```

mod message;

use std::any::type_name;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use message::{Address, Envelope, Kind, TaskId};

/// The version of this protocol. A worker and its master must speak the same one: every
/// frame's header carries it, and the [`Hello`] handshake checks it.
pub const PROTOCOL_VERSION: u32 = 1;

/// The first bytes of every encoded [`Frame`].
pub const FRAME_MAGIC: [u8; 2] = *b"EN";

/// The length of the fixed header before every frame: magic and version.
pub const FRAME_HEADER_LEN: usize = FRAME_MAGIC.len() + 4;

/// The handshake a worker sends first, over the connection its master handed it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
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
    /// # use engine::core::protocol::{Address, Hello, ProtocolError};
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
#[non_exhaustive]
pub enum Frame {
    /// The worker's handshake, always the first frame on a connection.
    Hello(Hello),
    /// The master accepted the handshake.
    Welcome,
    /// The master refused the handshake; the worker should exit with this reason.
    Reject {
        /// Why, for the worker's error message.
        reason: String,
    },
    /// A message.
    Message(Envelope),
}

impl Frame {
    /// Encodes the frame, behind the fixed header (magic and [`PROTOCOL_VERSION`]).
    ///
    /// # Errors
    ///
    /// [`ProtocolError::Encode`] if serialisation fails (it does not for well-formed frames).
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        // Room for the body too, so that a large one is copied once.
        let body = match self {
            Self::Message(envelope) => envelope.body.len(),
            _ => 0,
        };
        let mut bytes = Vec::with_capacity(FRAME_HEADER_LEN + 64 + body);
        bytes.extend_from_slice(&FRAME_MAGIC);
        bytes.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        postcard::to_io(self, &mut bytes).map_err(|source| ProtocolError::Encode {
            what: type_name::<Self>(),
            source: CodecError(source),
        })?;
        Ok(bytes)
    }

    /// Decodes a frame from untrusted bytes. Never panics.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::NotAFrame`] if the header is missing or wrong,
    /// [`ProtocolError::VersionMismatch`] if the peer speaks another version,
    /// [`ProtocolError::Decode`] for truncated or corrupt bytes after the header, and
    /// [`ProtocolError::TrailingBytes`] when bytes follow a complete frame.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let Some((header, rest)) = bytes.split_first_chunk::<FRAME_HEADER_LEN>() else {
            return Err(ProtocolError::NotAFrame {
                reason: format!(
                    "{} bytes, shorter than the {FRAME_HEADER_LEN}-byte header",
                    bytes.len()
                ),
            });
        };
        let (magic, version) = header.split_at(FRAME_MAGIC.len());
        if magic != FRAME_MAGIC {
            return Err(ProtocolError::NotAFrame {
                reason: format!("it starts with {magic:02x?}, not the magic bytes \"EN\""),
            });
        }
        let mut version_bytes = [0; 4];
        version_bytes.copy_from_slice(version);
        let theirs = u32::from_le_bytes(version_bytes);
        if theirs != PROTOCOL_VERSION {
            return Err(ProtocolError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs,
            });
        }
        from_bytes(rest)
    }

    /// A short description for logs: `hello` or the message kind.
    pub fn describe(&self) -> String {
        match self {
            Self::Hello(hello) => format!("hello from {} ({})", hello.name, hello.worker_kind),
            Self::Welcome => "welcome".to_owned(),
            Self::Reject { reason } => format!("reject: {reason}"),
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
    postcard::serialize_with_flavor(value, Bytes(Vec::new())).map_err(|source| {
        ProtocolError::Encode {
            what: type_name::<T>(),
            source: CodecError(source),
        }
    })
}

/// Postcard's output as a `Vec`, like its own `StdVec`, but writing the few bytes of a varint
/// one by one instead of through `extend_from_slice`: a `memmove` call per integer made up
/// most of the cost of encoding a batch of small items.
struct Bytes(Vec<u8>);

impl postcard::ser_flavors::Flavor for Bytes {
    type Output = Vec<u8>;

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() <= 16 {
            self.0.reserve(data.len());
            for &byte in data {
                self.0.push(byte);
            }
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
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
    /// The bytes are not an engine frame at all: too short for the header, or without the
    /// magic bytes.
    #[error("not an engine frame: {reason}")]
    NotAFrame {
        /// What is wrong with the header.
        reason: String,
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
        let mut frames = vec![
            Frame::Hello(Hello::new("pool", Address::named("w0"))),
            Frame::Welcome,
            Frame::Reject {
                reason: "wrong kind".into(),
            },
        ];
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
    fn empty_and_trailing_bytes_are_errors() {
        let err = Frame::decode(&[]).unwrap_err();
        assert!(matches!(err, ProtocolError::NotAFrame { .. }), "{err}");
        let err = Frame::decode(b"XX\x01\0\0\0\0").unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");
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
        let mut bytes = Frame::Welcome.encode().unwrap();
        bytes.truncate(FRAME_HEADER_LEN);
        bytes.extend([3, 0, 0, 3, 0]); // Message, Main, Main, Die, no task.
        bytes.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(matches!(
            Frame::decode(&bytes),
            Err(ProtocolError::Decode { .. })
        ));
    }

    #[test]
    fn a_frame_from_another_version_is_a_version_mismatch() {
        // A future version whose layout differs: the header is read first, so the error names
        // the versions instead of failing to decode.
        let mut bytes = FRAME_MAGIC.to_vec();
        bytes.extend_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
        bytes.extend_from_slice(&[9, 9, 9, 200, 1, 2, 3]);
        let err = Frame::decode(&bytes).unwrap_err();
        assert!(
            matches!(err, ProtocolError::VersionMismatch { ours: PROTOCOL_VERSION, theirs } if theirs == PROTOCOL_VERSION + 1),
            "{err}"
        );
    }
}
