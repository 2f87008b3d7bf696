//! The crate's error type: what went wrong talking to a broker, and whether trying again can
//! help.

use engine_core::BoxError;
use engine_core::protocol::ProtocolError;

/// What went wrong with a stream address or a broker.
///
/// Errors that a reconnect or a short wait can cure (the server restarted, is loading its
/// data, the network dropped) say so through [`is_retryable`](Self::is_retryable); the stream
/// stages retry those for their [`retry_for`](crate::SinkOptions::retry_for) budget before
/// giving up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address is not a stream address this crate understands.
    #[error("invalid stream address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it, and what the expected form is.
        reason: String,
    },
    /// No connection could be made: nothing listens there, the host does not resolve, the TLS
    /// handshake failed, or the server refused the handshake (a database that does not
    /// exist).
    #[error("cannot reach the broker at {server}")]
    Unreachable {
        /// The server, as `redis://host:port`.
        server: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The server refused the credentials of the address (a wrong password or user, or none
    /// where one is needed). Not retried: fix the address. The password is not in the
    /// message.
    #[error("the broker at {server} refused the credentials (check the user and password)")]
    Unauthorized {
        /// The server, as `redis://host:port`.
        server: String,
        /// The server's answer.
        #[source]
        source: BoxError,
    },
    /// An established connection broke, or a reply did not come in time.
    #[error("lost the connection to the broker at {server} during {command}")]
    ConnectionLost {
        /// The server, as `redis://host:port`.
        server: String,
        /// The command that was running.
        command: &'static str,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The server is up but cannot serve the command yet (it is loading its data after a
    /// restart, for example); trying again shortly helps.
    #[error("the broker at {server} is busy and cannot run {command} yet")]
    Busy {
        /// The server, as `redis://host:port`.
        server: String,
        /// The command that was refused.
        command: &'static str,
        /// The server's answer.
        #[source]
        source: BoxError,
    },
    /// The server refused a command for good: a key of the wrong type, a missing permission.
    #[error("the broker at {server} refused {command}")]
    Refused {
        /// The server, as `redis://host:port`.
        server: String,
        /// The command that was refused.
        command: &'static str,
        /// The server's answer.
        #[source]
        source: BoxError,
    },
    /// The server answered with something this crate cannot use.
    #[error("unexpected reply from the broker at {server} to {command}: {reason}")]
    UnexpectedReply {
        /// The server, as `redis://host:port`.
        server: String,
        /// The command whose reply it was.
        command: &'static str,
        /// What is wrong with the reply.
        reason: String,
    },
    /// An item could not be encoded for the stream.
    #[error("cannot encode an item for stream {stream:?}")]
    Encode {
        /// The stream.
        stream: String,
        /// Why.
        #[source]
        source: ProtocolError,
    },
    /// A stream entry does not hold an item of the expected type; it went to the dead-letter
    /// stream.
    #[error("entry {id} of stream {stream:?} is not a valid item: {reason}")]
    BadEntry {
        /// The stream.
        stream: String,
        /// The entry's id.
        id: String,
        /// Why it cannot be decoded.
        reason: String,
    },
    /// A stream entry was written with another protocol version than this build speaks; it
    /// went to the dead-letter stream.
    #[error(
        "entry {id} of stream {stream:?} was written with protocol version {found}, \
         this consumer speaks version {expected}"
    )]
    OtherVersion {
        /// The stream.
        stream: String,
        /// The entry's id.
        id: String,
        /// The version in the entry.
        found: String,
        /// The version of this build ([`engine_core::protocol::PROTOCOL_VERSION`]).
        expected: u32,
    },
    /// A keyed stream was given another partition count than the one recorded for it on the
    /// server (by its first producer or consumer): items would go to partitions nobody
    /// reads, or keys would change partitions. Give the recorded count, or use a new stream.
    #[error("the keyed stream {stream:?} has {recorded} partitions on the server, not {given}")]
    Partitions {
        /// The keyed stream.
        stream: String,
        /// The count recorded on the server.
        recorded: u32,
        /// The count given.
        given: u32,
    },
    /// A write was not confirmed by as many replicas as the address asks for (`replicas=`)
    /// within its timeout. A sink's batch that failed so is not acknowledged upstream (its
    /// items are delivered again); the write itself may or may not survive a failover. Not
    /// retried: a replica that is down or far behind needs attention.
    #[error(
        "only {confirmed} of {wanted} replicas of the broker at {server} confirmed {command} \
         within {timeout:?}"
    )]
    NotReplicated {
        /// The server, as `redis://host:port`.
        server: String,
        /// The write that was not confirmed.
        command: &'static str,
        /// How many replicas had to confirm it.
        wanted: u32,
        /// How many did.
        confirmed: u32,
        /// How long the write waited.
        timeout: std::time::Duration,
    },
    /// The address asks more replicas to confirm each write (`replicas=`) than the server
    /// has connected: every write would fail. Lower `replicas=`, or add replicas.
    #[error("replicas={wanted} but the broker at {server} has {connected} connected replicas")]
    TooFewReplicas {
        /// The server, as `redis://host:port`.
        server: String,
        /// How many replicas the address asks for.
        wanted: u32,
        /// How many the server has connected.
        connected: u32,
    },
    /// A seed node of a cluster address (`redis+cluster://`) is a plain server, not a node
    /// of a Redis Cluster: the address mixes the two. Name the cluster's nodes only, or use
    /// `redis://` for a plain server.
    #[error("{node} in the cluster address {server} is not a Redis Cluster node")]
    NotACluster {
        /// The cluster address's seeds, as `redis+cluster://host:port,...`.
        server: String,
        /// The plain server, as `redis://host:port`.
        node: String,
    },
    /// Some hash slots of the cluster have no master: keys there can be neither read nor
    /// written. Assign them (`redis-cli --cluster fix`) before starting.
    #[error("{uncovered} of the 16384 slots of the cluster {server} have no master")]
    SlotsUncovered {
        /// The cluster, as `redis+cluster://host:port,...`.
        server: String,
        /// How many slots no master serves.
        uncovered: u32,
    },
    /// A retryable error lasted longer than the stage's retry budget.
    #[error("gave up after retrying for {waited:?}")]
    GaveUp {
        /// How long the stage kept trying.
        waited: std::time::Duration,
        /// The last error.
        #[source]
        source: Box<Error>,
    },
    /// The run was aborted while the stage waited for the broker (to reconnect, or for room
    /// in a bounded stream).
    #[error("the run was aborted while waiting for the broker")]
    Aborted,
}

impl Error {
    /// What a dead letter says of an entry this error made unreadable: a bad entry's own
    /// reason, or the error.
    pub(crate) fn dead_letter_reason(&self) -> String {
        match self {
            Self::BadEntry { reason, .. } => reason.clone(),
            other => other.to_string(),
        }
    }

    /// Whether trying again (after a reconnect or a short wait) can succeed.
    ///
    /// ```
    /// let err = engine::redis::StreamAddress::parse("http://x").unwrap_err();
    /// assert!(!err.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::ConnectionLost { .. } | Self::Busy { .. }
        )
    }

    /// Whether the connection this error came from must be dropped and made again.
    pub(crate) fn breaks_connection(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. }
                | Self::Unauthorized { .. }
                | Self::ConnectionLost { .. }
                | Self::UnexpectedReply { .. }
        )
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Displays an error with its sources: `outer: inner: innermost`.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}
