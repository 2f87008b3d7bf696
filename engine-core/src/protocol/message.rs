//! The messages of the protocol: addresses, kinds, task ids and the envelope that carries
//! them with a body.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{ProtocolError, from_bytes, to_bytes};
use crate::error::StageError;

/// Where a message goes to or comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
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

    /// Whether a message sent to this address is for the process at `me`: `me` itself, or
    /// [`Broadcast`](Self::Broadcast). [`Envelope::is_for`] also leaves the sender out of its
    /// own broadcast.
    ///
    /// ```
    /// # use engine::core::protocol::Address;
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
#[non_exhaustive]
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
/// postcard. Task results travel as [`Kind::Finished`] with the result or [`Kind::Failed`]
/// with a [`StageError`]: see [`reply_with_result`](Self::reply_with_result) and
/// [`result`](Self::result).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
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

    /// Whether this message is for the process at `me`: addressed to it, or broadcast by
    /// another process.
    ///
    /// ```
    /// # use engine::core::protocol::{Address, Envelope, Kind};
    /// let w1 = Address::named("w1");
    /// let note = Envelope::new(Address::Broadcast, w1.clone(), Kind::user("reload"));
    /// assert!(note.is_for(&Address::named("w2")));
    /// assert!(!note.is_for(&w1));
    /// ```
    pub fn is_for(&self, me: &Address) -> bool {
        match self.receiver {
            Address::Broadcast => &self.sender != me,
            ref receiver => receiver == me,
        }
    }

    /// The reply to a task: [`Kind::Finished`] with the value, or [`Kind::Failed`] with the
    /// error, addressed back to the sender with the same task id.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::Encode`] if the value cannot be serialised.
    ///
    /// ```
    /// # use engine::core::StageError;
    /// # use engine::core::protocol::{Address, Envelope, Kind, TaskId};
    /// let task = Envelope::new(Address::named("w"), Address::Main, Kind::Do).with_task(TaskId(9));
    /// let ok = task.reply_with_result(&Ok::<u32, StageError>(3))?;
    /// assert_eq!(ok.kind, Kind::Finished);
    /// assert_eq!(ok.result::<u32>()?.unwrap(), 3);
    /// let failed = task.reply_with_result(&Err::<u32, _>(StageError::msg("no such file")))?;
    /// assert_eq!(failed.kind, Kind::Failed);
    /// assert_eq!(failed.result::<u32>()?.unwrap_err().to_string(), "no such file");
    /// # Ok::<(), engine::core::protocol::ProtocolError>(())
    /// ```
    pub fn reply_with_result<T: Serialize>(
        &self,
        result: &Result<T, StageError>,
    ) -> Result<Self, ProtocolError> {
        match result {
            Ok(value) => self.reply(Kind::Finished).with_body(value),
            Err(error) => self.reply(Kind::Failed).with_body(error),
        }
    }

    /// Reads a task result: the body of a [`Kind::Finished`] message as `Ok`, or of a
    /// [`Kind::Failed`] message as `Err`.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::UnexpectedFrame`] for any other kind, or a decoding error if the body
    /// does not decode.
    pub fn result<T: DeserializeOwned>(&self) -> Result<Result<T, StageError>, ProtocolError> {
        match self.kind {
            Kind::Finished => self.body().map(Ok),
            Kind::Failed => self.body().map(Err),
            ref other => Err(ProtocolError::UnexpectedFrame {
                expected: "a FINISHED or FAILED message",
                found: other.to_string(),
            }),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_decode_to_their_type() {
        let envelope = Envelope::new(Address::Main, Address::named("w"), Kind::Finished)
            .with_body(&Ok::<u32, String>(5))
            .unwrap();
        assert_eq!(envelope.body::<Result<u32, String>>().unwrap(), Ok(5));
        assert!(envelope.body::<String>().is_err());
    }

    #[test]
    fn results_are_read_only_from_result_kinds() {
        let die = Envelope::new(Address::Main, Address::Main, Kind::Die);
        assert!(matches!(
            die.result::<u32>(),
            Err(ProtocolError::UnexpectedFrame { .. })
        ));
        let panic = crate::plumbing::catch_panic(|| -> Result<u32, StageError> { panic!("at 4") });
        let reply = die.reply_with_result(&panic).unwrap();
        let back = reply.result::<u32>().unwrap().unwrap_err();
        assert!(back.is_panic());
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
