//! [`StageKind`]: which of the three stages a piece of code is, below both the stage traits
//! and the [`StageContext`](crate::StageContext) that names it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Which of the three stages a piece of code is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum StageKind {
    /// Produces items: reads a source, generates data.
    Frontend,
    /// Maps each item to zero or one output.
    Transport,
    /// Consumes items: the sink of the pipeline.
    Backend,
}

impl StageKind {
    /// The lowercase name: `"frontend"`, `"transport"` or `"backend"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Frontend => "frontend",
            Self::Transport => "transport",
            Self::Backend => "backend",
        }
    }
}

impl fmt::Display for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_kind_names_pad_in_tables() {
        assert_eq!(format!("[{:<10}]", StageKind::Backend), "[backend   ]");
        assert_eq!(StageKind::Frontend.as_str(), "frontend");
    }
}
