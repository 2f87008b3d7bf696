//! The control API's token: a secret compared in constant time and never shown in logs,
//! `Debug` output or the `--debug` config print.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The token the control API asks for (`Authorization: Bearer TOKEN`). Shown as `***`.
///
/// ```
/// use engine::pod::ControlToken;
///
/// let token = ControlToken::new("s3cret").expect("not empty");
/// assert!(token.matches("s3cret") && !token.matches("s3cre"));
/// assert_eq!(format!("{token:?} {token}"), "ControlToken(***) ***");
/// assert!(ControlToken::new("").is_none());
/// ```
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ControlToken(String);

impl<'de> Deserialize<'de> for ControlToken {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let token = String::deserialize(deserializer)?;
        Self::new(token).ok_or_else(|| serde::de::Error::custom("an empty token protects nothing"))
    }
}

impl ControlToken {
    /// A token; `None` for an empty one, which would protect nothing.
    pub fn new(token: impl Into<String>) -> Option<Self> {
        let token = token.into();
        (!token.is_empty()).then_some(Self(token))
    }

    /// Whether `given` is this token, in time that depends only on their lengths.
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The secret itself, to send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ControlToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ControlToken(***)")
    }
}

impl fmt::Display for ControlToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
