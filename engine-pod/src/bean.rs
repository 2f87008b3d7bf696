//! Beans: the components a pod runs. An async bean is a tokio task; a blocking bean runs on a
//! thread of its own. Plain async functions and closures are beans, and so is any type
//! implementing [`Bean`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use engine_core::StageError;
use serde::{Deserialize, Serialize};

use crate::context::BeanContext;

/// What a bean's run returns: `Ok` when it finished its work, an error when it failed.
pub type BeanResult = Result<(), StageError>;

/// The future of one run of a bean.
pub type BeanFuture = Pin<Box<dyn Future<Output = BeanResult> + Send + 'static>>;

/// A component of the pod.
///
/// [`start`](Self::start) is called once per run (again after a restart) with the bean's
/// context, and returns the future the pod drives. A bean should end when
/// [`BeanContext::stopping`] resolves.
///
/// Closures and `async fn`s taking a [`BeanContext`] are beans (see [`bean_fn`]); a blocking
/// body goes through [`blocking`].
pub trait Bean: Send + Sync + 'static {
    /// Starts one run of the bean.
    fn start(&self, ctx: BeanContext) -> BeanFuture;

    /// Whether the bean runs on a thread of its own (see [`blocking`]).
    fn is_blocking(&self) -> bool {
        false
    }
}

/// Turns what a bean function returns into a [`BeanResult`]: `()` or `Result<(), E>` for any
/// error that converts into a [`StageError`].
pub trait IntoBeanResult {
    /// The conversion.
    fn into_bean_result(self) -> BeanResult;
}

impl IntoBeanResult for () {
    fn into_bean_result(self) -> BeanResult {
        Ok(())
    }
}

impl<E: Into<StageError>> IntoBeanResult for Result<(), E> {
    fn into_bean_result(self) -> BeanResult {
        self.map_err(Into::into)
    }
}

/// An async function or closure of the context, as a bean.
pub struct FnBean<F>(F);

impl<F> fmt::Debug for FnBean<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnBean")
    }
}

/// Makes a bean of an async function of its context.
///
/// ```
/// use engine_pod::{BeanContext, bean_fn};
///
/// async fn hello(ctx: BeanContext) {
///     tracing::info!(id = %ctx.id(), "hello world!");
/// }
/// let _bean = bean_fn(hello);
/// ```
pub fn bean_fn<F, Fut>(f: F) -> FnBean<F>
where
    F: Fn(BeanContext) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoBeanResult,
{
    FnBean(f)
}

impl<F, Fut> Bean for FnBean<F>
where
    F: Fn(BeanContext) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoBeanResult,
{
    fn start(&self, ctx: BeanContext) -> BeanFuture {
        let fut = (self.0)(ctx);
        Box::pin(async move { fut.await.into_bean_result() })
    }
}

/// A blocking function of the context, run on a thread of its own.
pub struct BlockingBean<F>(Arc<F>);

impl<F> fmt::Debug for BlockingBean<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlockingBean")
    }
}

/// Makes a bean of a blocking function, run on its own thread (not on tokio's pool, so it
/// cannot starve async beans). It should return when
/// [`BeanContext::is_stopping`] turns true; if it does not return by the pod's stop
/// deadline, the pod abandons the thread and ends anyway.
///
/// ```
/// use engine_pod::{BeanContext, blocking};
///
/// let _bean = blocking(|ctx: BeanContext| {
///     while !ctx.is_stopping() {
///         // Work in small steps.
/// #       break;
///     }
/// });
/// ```
pub fn blocking<F, R>(f: F) -> BlockingBean<F>
where
    F: Fn(BeanContext) -> R + Send + Sync + 'static,
    R: IntoBeanResult,
{
    BlockingBean(Arc::new(f))
}

impl<F, R> Bean for BlockingBean<F>
where
    F: Fn(BeanContext) -> R + Send + Sync + 'static,
    R: IntoBeanResult,
{
    fn start(&self, ctx: BeanContext) -> BeanFuture {
        let f = Arc::clone(&self.0);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let name = format!("bean-{}", ctx.id());
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let result = engine_core::catch_panic(|| f(ctx).into_bean_result());
            let _ = tx.send(result);
        });
        Box::pin(async move {
            spawned.map_err(StageError::new)?;
            rx.await.unwrap_or_else(|_| {
                Err(StageError::msg("the bean's thread ended without a result"))
            })
        })
    }

    fn is_blocking(&self) -> bool {
        true
    }
}

/// When the pod starts a bean again after it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Restart {
    /// Never: the bean's end is final (the default, as in the origin).
    #[default]
    Never,
    /// When it failed (returned an error or panicked).
    OnFailure,
    /// Whenever it ended, unless the pod is stopping.
    Always,
}

/// A bean's restart policy: when to restart, how often at most, and how long to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct RestartPolicy {
    /// When to restart.
    pub when: Restart,
    /// The most restarts within [`within`](Self::within); one more failure ends the bean as
    /// failed (the supervisor lesson of Erlang and supervisord: a crash loop must stop).
    pub max_restarts: u32,
    /// The window for `max_restarts`.
    #[serde(with = "humantime_serde_compat")]
    pub within: Duration,
    /// The wait before the first restart; doubled for each restart in a row, up to
    /// [`max_backoff`](Self::max_backoff).
    #[serde(with = "humantime_serde_compat")]
    pub backoff: Duration,
    /// The longest wait between restarts.
    #[serde(with = "humantime_serde_compat")]
    pub max_backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            when: Restart::Never,
            max_restarts: 5,
            within: Duration::from_secs(60),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RestartPolicy {
    /// A policy restarting `when`, with the default limits.
    pub fn new(when: Restart) -> Self {
        Self {
            when,
            ..Self::default()
        }
    }

    /// Sets the most restarts within a window.
    #[must_use]
    pub fn limit(mut self, max_restarts: u32, within: Duration) -> Self {
        self.max_restarts = max_restarts;
        self.within = within;
        self
    }

    /// Sets the first and the longest wait between restarts.
    #[must_use]
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max.max(first);
        self
    }

    /// The wait before restart number `n` in a row (0-based).
    pub(crate) fn delay(&self, n: u32) -> Duration {
        self.backoff
            .checked_mul(1_u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// Durations written like `"10s"`, `"250ms"` or `"1m 30s"` in config files.
pub(crate) mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let policy = RestartPolicy::new(Restart::Always)
            .backoff(Duration::from_millis(100), Duration::from_millis(700));
        let delays: Vec<_> = (0..5).map(|n| policy.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 700, 700]);
        assert_eq!(policy.delay(u32::MAX), Duration::from_millis(700));
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
}
