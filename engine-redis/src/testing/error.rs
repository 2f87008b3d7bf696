//! Why a throwaway `redis-server` could not start, with how to install one when it is
//! missing.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// How to install `redis-server`, for the error when it is missing.
const INSTALL_HINT: &str = "install it with `apt-get install -y redis-server` (Debian/Ubuntu) \
                            or `brew install redis` (macOS), or put it on PATH";

/// Why a [`Server`](crate::testing::Server) could not start.
///
/// `Debug` shows the same message as `Display`, followed by its causes, so that an
/// `unwrap()` in a test says how to install `redis-server` too.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// No `redis-server` executable was found.
    #[error("redis-server is not installed (looked for {}); {INSTALL_HINT}", list(.searched))]
    NotInstalled {
        /// Where it was looked for.
        searched: Vec<PathBuf>,
    },
    /// A file system or process operation failed.
    #[error("cannot {action}")]
    Io {
        /// What was being done.
        action: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The server exited before it answered.
    #[error("redis-server exited at start ({status}); the end of its log:\n{log}")]
    Exited {
        /// How it exited.
        status: ExitStatus,
        /// The last lines of its log.
        log: String,
    },
    /// The server did not answer `PING` in time.
    #[error("redis-server did not answer on 127.0.0.1:{port} within {timeout:?}: {last}")]
    NotReady {
        /// The port it was started on.
        port: u16,
        /// How long it was given.
        timeout: Duration,
        /// The last connection error.
        last: String,
    },
    /// A throwaway [`Cluster`](crate::testing::Cluster) could not be formed, or did not
    /// reach the state waited for.
    #[error("the test cluster could not {action}: {detail}")]
    Cluster {
        /// What was being done.
        action: String,
        /// What went wrong: the command's output, or the state the cluster was in.
        detail: String,
    },
}

impl fmt::Debug for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")?;
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

fn list(paths: &[PathBuf]) -> String {
    let names: Vec<_> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Server, ServerOptions};

    #[test]
    fn a_missing_redis_server_says_how_to_install_it() {
        let missing = std::env::temp_dir().join("no-such-dir-for-engine-redis/redis-server");
        let err = Server::start_with(ServerOptions::new().program(&missing)).unwrap_err();
        assert!(
            matches!(&err, ServerError::NotInstalled { searched } if searched == &[missing]),
            "{err}"
        );
        for message in [err.to_string(), format!("{err:?}")] {
            assert!(
                message.contains("apt-get install -y redis-server"),
                "{message}"
            );
            assert!(
                message.contains("no-such-dir-for-engine-redis"),
                "{message}"
            );
        }
    }

    #[test]
    fn an_io_error_shows_its_cause_in_debug() {
        let err = ServerError::Io {
            action: "start redis-server".to_owned(),
            source: io::Error::new(io::ErrorKind::PermissionDenied, "permission denied"),
        };
        assert_eq!(err.to_string(), "cannot start redis-server");
        assert_eq!(
            format!("{err:?}"),
            "cannot start redis-server: permission denied"
        );
    }
}
