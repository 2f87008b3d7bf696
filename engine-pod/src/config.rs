//! The pod's config: a TOML file with pod settings and `[[beans]]` tables, overridden by
//! environment variables, themselves overridden by command-line options.
//!
//! ```toml
//! log_level = "info"
//! debug = false
//! stop_wait_time = "10s"
//!
//! [[beans]]
//! core = "tcp_server"        # a registered bean
//! label = "api"              # optional, shared by a group
//! restart = "on-failure"     # or a table: { when = "always", max_restarts = 3, within = "1m" }
//! port = 9000                # every other key is a parameter of the bean
//! ```
//!
//! `control_token = "..."` (or `ENGINE_POD_CONTROL_TOKEN`, or `--token`) is the token
//! the status bean's control API asks for; a status bean bound to another address than
//! loopback does not start without one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::token::ControlToken;
use engine_core::{Restart, RestartPolicy};

/// The environment variables that override the file: `ENGINE_POD_LOG_LEVEL`,
/// `ENGINE_POD_DEBUG`, `ENGINE_POD_STOP_WAIT_TIME`, `ENGINE_POD_CONTROL_TOKEN`.
pub const ENV_PREFIX: &str = "ENGINE_POD_";

/// Pod-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PodConfig {
    /// The log level or filter (default `info`).
    pub log_level: String,
    /// Debug mode: prints the effective config at start (default false).
    pub debug: bool,
    /// How long the pod waits for beans to end after a stop request before cancelling them;
    /// `None` waits as long as they take (the origin's default).
    pub stop_wait_time: Option<Duration>,
    /// The token the control API asks for (default none: loopback only, no token).
    pub control_token: Option<ControlToken>,
}

impl Default for PodConfig {
    fn default() -> Self {
        Self {
            log_level: "info".to_owned(),
            debug: false,
            stop_wait_time: None,
            control_token: None,
        }
    }
}

/// One `[[beans]]` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct BeanConfig {
    /// The registered name of the bean.
    pub core: String,
    /// The bean's label.
    pub label: Option<String>,
    /// Its restart policy.
    pub restart: RestartPolicy,
    /// Every other key: the bean's parameters.
    pub params: toml::Table,
}

impl BeanConfig {
    /// A bean made from the registered name `core`, with no parameters.
    pub fn new(core: impl Into<String>) -> Self {
        Self {
            core: core.into(),
            label: None,
            restart: RestartPolicy::default(),
            params: toml::Table::new(),
        }
    }
}

/// A whole config: pod settings and beans.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PodFile {
    /// The pod settings.
    pub pod: PodConfig,
    /// The beans, in start order.
    pub beans: Vec<BeanConfig>,
}

/// What is wrong with a config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not valid TOML, or a pod setting is wrong.
    #[error("invalid config{}: {message}", in_file(.path))]
    Syntax {
        /// The file, if the text came from one.
        path: Option<PathBuf>,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A `[[beans]]` table is wrong (no `core`, a bad `label` or `restart`).
    #[error("bean #{index} ({core}): {message}")]
    Bean {
        /// The table's 1-based position.
        index: usize,
        /// Its `core`, if it has one.
        core: String,
        /// What is wrong.
        message: String,
    },
    /// No bean is registered under this name.
    #[error("bean #{index}: unknown core {core:?}; registered: {}", .known.join(", "))]
    UnknownCore {
        /// The table's 1-based position.
        index: usize,
        /// The name asked for.
        core: String,
        /// The registered names.
        known: Vec<String>,
    },
    /// A bean's parameters do not fit its parameter type.
    #[error("bean {core:?}: parameter `{key}`: {message}")]
    Params {
        /// The bean's core.
        core: String,
        /// The path of the key that did not fit (`.` for the whole table).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An environment variable or option has a value that does not parse.
    #[error("{name}: {message}")]
    Override {
        /// The variable or option.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A quick-start bean argument (`core:key=value,...`) does not parse.
    #[error("bean argument {arg:?}: {message}")]
    Argument {
        /// The argument.
        arg: String,
        /// What is wrong.
        message: String,
    },
}

fn in_file(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

/// The pod settings as written, every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    log_level: Option<String>,
    debug: Option<bool>,
    stop_wait_time: Option<String>,
    control_token: Option<String>,
    #[serde(default)]
    beans: Vec<toml::Table>,
}

impl PodFile {
    /// Reads a config file.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`], [`ConfigError::Syntax`] or [`ConfigError::Bean`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|err| match err {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: Some(path.to_owned()),
                message,
            },
            other => other,
        })
    }

    /// Parses config text.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Syntax`] or [`ConfigError::Bean`].
    ///
    /// ```
    /// use engine::pod::PodFile;
    ///
    /// let file = PodFile::parse("stop_wait_time = \"2s\"\n[[beans]]\ncore = \"echo\"\nport = 7")?;
    /// assert_eq!(file.pod.stop_wait_time, Some(std::time::Duration::from_secs(2)));
    /// assert_eq!(file.beans[0].params["port"].as_integer(), Some(7));
    /// # Ok::<(), engine::pod::ConfigError>(())
    /// ```
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let syntax = |message: String| ConfigError::Syntax {
            path: None,
            message,
        };
        let raw: RawFile =
            toml::from_str(text).map_err(|err| syntax(err.to_string().trim_end().to_owned()))?;
        let mut pod = PodConfig::default();
        pod.log_level = raw.log_level.unwrap_or(pod.log_level);
        pod.debug = raw.debug.unwrap_or(pod.debug);
        if let Some(wait) = raw.stop_wait_time {
            let wait = parse_duration(&wait).map_err(|m| syntax(format!("stop_wait_time: {m}")))?;
            pod.stop_wait_time = Some(wait);
        }
        if let Some(token) = raw.control_token {
            let empty = || syntax("control_token: an empty token protects nothing".to_owned());
            pod.control_token = Some(ControlToken::new(token).ok_or_else(empty)?);
        }
        let beans = raw
            .beans
            .into_iter()
            .enumerate()
            .map(|(i, table)| bean_config(i + 1, table))
            .collect::<Result<_, _>>()?;
        Ok(Self { pod, beans })
    }

    /// Applies `ENGINE_POD_*` environment variables from `vars` (pass `std::env::vars()`).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Override`] for a value that does not parse.
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (name, value) in vars {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let bad = |message: String| ConfigError::Override {
                name: name.clone(),
                message,
            };
            match key {
                "LOG_LEVEL" => self.pod.log_level = value,
                "DEBUG" => self.pod.debug = parse_bool(&value).map_err(bad)?,
                "STOP_WAIT_TIME" => {
                    self.pod.stop_wait_time = Some(parse_duration(&value).map_err(bad)?);
                }
                "CONTROL_TOKEN" => {
                    self.pod.control_token = Some(
                        ControlToken::new(value)
                            .ok_or_else(|| bad("an empty token protects nothing".to_owned()))?,
                    );
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Parses `"10s"`, `"250ms"`, `"1m 30s"`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|err| format!("{text:?} is not a duration such as \"10s\" ({err})"))
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => Err(format!("{other:?} is not a boolean")),
    }
}

fn bean_config(index: usize, mut table: toml::Table) -> Result<BeanConfig, ConfigError> {
    let core = match table.remove("core") {
        Some(toml::Value::String(core)) => core,
        Some(other) => {
            return Err(ConfigError::Bean {
                index,
                core: String::from("?"),
                message: format!("`core` must be a string, not {}", other.type_str()),
            });
        }
        None => {
            return Err(ConfigError::Bean {
                index,
                core: String::from("?"),
                message: "no `core` (the registered name of the bean)".to_owned(),
            });
        }
    };
    let bad = |message: String| ConfigError::Bean {
        index,
        core: core.clone(),
        message,
    };
    let label = match table.remove("label") {
        None => None,
        Some(toml::Value::String(label)) => Some(label),
        Some(other) => {
            return Err(bad(format!(
                "`label` must be a string, not {}",
                other.type_str()
            )));
        }
    };
    let restart = match table.remove("restart") {
        None => RestartPolicy::default(),
        Some(toml::Value::String(when)) => {
            let when: Restart = toml::Value::String(when.clone()).try_into().map_err(|_| {
                bad(format!(
                    "`restart`: {when:?} is not never, on-failure or always"
                ))
            })?;
            RestartPolicy::new(when)
        }
        Some(value) => {
            let policy: RestartPolicy = serde_path_to_error::deserialize(value).map_err(|err| {
                let key = err.path().to_string();
                bad(format!("`restart.{key}`: {}", err.into_inner().message()))
            })?;
            policy.backoff(policy.backoff, policy.max_backoff)
        }
    };
    Ok(BeanConfig {
        core,
        label,
        restart,
        params: table,
    })
}

/// Deserialises a bean's parameters, naming the key that did not fit.
pub(crate) fn params<T: DeserializeOwned>(
    core: &str,
    table: &toml::Table,
) -> Result<T, ConfigError> {
    let value = toml::Value::Table(table.clone());
    serde_path_to_error::deserialize(value).map_err(|err| {
        let key = err.path().to_string();
        ConfigError::Params {
            core: core.to_owned(),
            key,
            message: err.into_inner().message().to_owned(),
        }
    })
}

/// Parses a quick-start argument `core:key=value,key=value` (values are TOML values, or
/// strings when they are not: `port=9000` is a number, `name=ozzy` a string).
///
/// # Errors
///
/// [`ConfigError::Argument`] when the argument has no core or a pair has no `=`.
pub fn parse_bean_arg(arg: &str) -> Result<BeanConfig, ConfigError> {
    let bad = |message: &str| ConfigError::Argument {
        arg: arg.to_owned(),
        message: message.to_owned(),
    };
    let (core, rest) = arg.split_once(':').unwrap_or((arg, ""));
    if core.is_empty() {
        return Err(bad("no bean name before `:`"));
    }
    let mut table = toml::Table::new();
    for pair in rest.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| bad("expected key=value"))?;
        let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_owned()));
        table.insert(key.trim().to_owned(), value);
    }
    table.insert("core".to_owned(), toml::Value::String(core.to_owned()));
    bean_config(1, table).map_err(|err| bad(&err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beans_keep_their_parameters_and_policies() {
        let file = PodFile::parse(
            r#"
            log_level = "debug"
            [[beans]]
            core = "a"
            label = "x"
            restart = "always"
            n = 3
            [[beans]]
            core = "b"
            restart = { when = "on-failure", max_restarts = 2 }
            "#,
        )
        .unwrap();
        assert_eq!(file.pod.log_level, "debug");
        assert_eq!(file.beans[0].label.as_deref(), Some("x"));
        assert_eq!(file.beans[0].restart.when, Restart::Always);
        assert_eq!(file.beans[0].params["n"].as_integer(), Some(3));
        assert_eq!(file.beans[1].restart.max_restarts, 2);
    }

    #[test]
    fn policies_read_from_config_text() {
        let policy: RestartPolicy =
            toml::from_str("when = \"on-failure\"\nmax_restarts = 3\nwithin = \"1m\"").unwrap();
        assert_eq!(policy.when, Restart::OnFailure);
        assert_eq!(policy.max_restarts, 3);
        assert_eq!(policy.within, Duration::from_secs(60));
        assert!(toml::from_str::<RestartPolicy>("whenn = \"always\"").is_err());
    }

    #[test]
    fn errors_name_the_bean_and_the_key() {
        let err = PodFile::parse("[[beans]]\nlabel = \"x\"").unwrap_err();
        assert_eq!(
            err.to_string(),
            "bean #1 (?): no `core` (the registered name of the bean)"
        );
        let err = PodFile::parse("[[beans]]\ncore = \"a\"\nrestart = \"sometimes\"").unwrap_err();
        assert!(
            err.to_string().contains("not never, on-failure or always"),
            "{err}"
        );
        let err = PodFile::parse("stop_wait_time = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("stop_wait_time"), "{err}");
        let err = PodFile::parse("colour = 1").unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");

        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code, reason = "only deserialised")]
        struct Server {
            port: u16,
        }
        let table: toml::Table = toml::from_str("port = \"x\"").unwrap();
        let err = params::<Server>("tcp_server", &table).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("bean \"tcp_server\": parameter `port`:"),
            "{err}"
        );
        let table: toml::Table = toml::from_str("port = 1\nhots = 2").unwrap();
        let err = params::<Server>("tcp_server", &table).unwrap_err();
        assert!(err.to_string().contains("unknown field `hots`"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut file = PodFile::parse("stop_wait_time = \"10s\"").unwrap();
        file.apply_env([
            ("ENGINE_POD_STOP_WAIT_TIME".to_owned(), "250ms".to_owned()),
            ("ENGINE_POD_DEBUG".to_owned(), "yes".to_owned()),
            ("HOME".to_owned(), "/root".to_owned()),
        ])
        .unwrap();
        assert_eq!(file.pod.stop_wait_time, Some(Duration::from_millis(250)));
        assert!(file.pod.debug);
        let err = file
            .apply_env([("ENGINE_POD_DEBUG".to_owned(), "maybe".to_owned())])
            .unwrap_err();
        assert!(err.to_string().starts_with("ENGINE_POD_DEBUG"), "{err}");
    }

    #[test]
    fn quick_start_arguments() {
        let bean = parse_bean_arg("tcp_server:port=9000,host=0.0.0.0").unwrap();
        assert_eq!(bean.core, "tcp_server");
        assert_eq!(bean.params["port"].as_integer(), Some(9000));
        assert_eq!(bean.params["host"].as_str(), Some("0.0.0.0"));
        assert_eq!(parse_bean_arg("stdin").unwrap().core, "stdin");
        assert!(parse_bean_arg(":x=1").is_err());
        assert!(parse_bean_arg("a:novalue").is_err());
    }
}
