//! [`EntryId`]: a stream entry's place in the broker's order, below the broker trait and
//! the key names that embed it.

use std::fmt;
use std::str::FromStr;

/// The id of a stream entry: the broker's order of entries, `<milliseconds>-<sequence>`.
///
/// # Examples
///
/// ```
/// use engine::redis::EntryId;
///
/// let id: EntryId = "1700000000000-3".parse().unwrap();
/// assert_eq!(id, EntryId::new(1_700_000_000_000, 3));
/// assert_eq!(id.to_string(), "1700000000000-3");
/// assert!(EntryId::new(1, 9) < EntryId::new(2, 0));
/// assert!("not-an-id".parse::<EntryId>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EntryId {
    /// The milliseconds part.
    pub ms: u64,
    /// The sequence part.
    pub seq: u64,
}

impl EntryId {
    /// The smallest id: the start of a stream.
    pub const ZERO: Self = Self { ms: 0, seq: 0 };

    /// The id `<ms>-<seq>`.
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// Parses `<ms>-<seq>` (or `<ms>`) from bytes, as a broker sends them.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        std::str::from_utf8(bytes).ok()?.parse().ok()
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The text is not an entry id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a stream entry id (expected <milliseconds>-<sequence>)")]
pub struct ParseEntryIdError;

impl FromStr for EntryId {
    type Err = ParseEntryIdError;

    fn from_str(s: &str) -> Result<Self, ParseEntryIdError> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Ok(Self {
            ms: ms.parse().map_err(|_| ParseEntryIdError)?,
            seq: seq.parse().map_err(|_| ParseEntryIdError)?,
        })
    }
}
