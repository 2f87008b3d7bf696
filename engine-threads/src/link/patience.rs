//! A consumer's short wait before it sleeps: it gives its core away a few times
//! ([`std::thread::yield_now`]) and looks at its queue after each.
//!
//! A consumer that has caught up with its producers would otherwise announce its sleep at
//! once, and a producer that sees a sleeper hands its batch on however small, waking it. With
//! more stage threads than cores (1 frontend, 4 transport threads and 1 backend on 2 cores),
//! most batches went that way, 200 to 300 items each, and the futex wake-ups took most of the
//! CPU. While a consumer yields it is not yet a sleeper: the producer it gives its core to
//! fills whole batches, and the consumer finds them without being woken.
//!
//! A yield is only cheap when it gives the core to the engine's own threads. When other
//! programs keep the cores busy, it hands the core to one of them for a whole time slice (a
//! millisecond or more) while batches pile up: the pipeline above beside two busy loops fell
//! from about 20M items/s to 2M to 8M. The two cases differ in what the process did while the
//! consumer was away: beside its own threads, a long yield saw the process use a core or more;
//! beside other programs, less than half of one. So a yield longer than [`LONG_YIELD`] during
//! which the process used less than half a core stops every consumer of the process from
//! yielding for a pause, which doubles while such yields keep coming (up to [`MAX_PAUSE`]) and
//! starts short again once they are rare. Beside busy programs, consumers sleep at once, as
//! they did before.
//!
//! No item waits long for this: a consumer yields at most [`YIELDS`] times and stops once it
//! has been away [`LONG_YIELD`], looking at its queue after each yield; then it looks
//! everywhere (frontend slots too) and sleeps as before. Where the process's CPU time cannot
//! be read (not unix), consumers never yield.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The most times a consumer yields before it announces its sleep.
pub(super) const YIELDS: u32 = 4;

/// The longest a consumer yields before one sleep (and a yield shorter than this cost nothing
/// worth checking).
const LONG_YIELD: Duration = Duration::from_micros(200);

/// The pause after a first costly yield.
const MIN_PAUSE: Duration = Duration::from_millis(10);

/// The longest pause.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// When consumers may yield again, as nanoseconds since [`epoch`] (0: now).
static PAUSED_UNTIL: AtomicU64 = AtomicU64::new(0);

/// The last pause, in nanoseconds.
static PAUSE: AtomicU64 = AtomicU64::new(0);

/// When the last costly yield ended, as nanoseconds since [`epoch`].
static LAST_COSTLY: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A consumer's yields before one sleep.
pub(super) struct Patience {
    started: Instant,
    /// The process's CPU time when the yields began.
    cpu: Duration,
}

impl Patience {
    /// Yields may begin, unless a costly yield paused them.
    #[inline]
    pub(super) fn begin() -> Option<Self> {
        if cfg!(not(unix)) {
            return None;
        }
        let until = PAUSED_UNTIL.load(Ordering::Relaxed);
        let started = Instant::now();
        if until != 0 && nanos(started.duration_since(epoch())) < until {
            return None;
        }
        Some(Self {
            started,
            cpu: process_cpu(),
        })
    }

    /// Gives the core away once; returns false once the yields so far took [`LONG_YIELD`],
    /// after which the caller stops yielding. If they were costly (another program had the
    /// core), every consumer stops yielding for a pause.
    pub(super) fn yield_once(&self) -> bool {
        std::thread::yield_now();
        let away = self.started.elapsed();
        if away < LONG_YIELD {
            return true;
        }
        if is_costly(away, process_cpu().saturating_sub(self.cpu)) {
            costly(nanos(epoch().elapsed()));
        }
        false
    }
}

/// Whether yields for `away` during which the process used `used` of CPU gave the core to
/// another program: it was long, and the process used less than half a core meanwhile.
fn is_costly(away: Duration, used: Duration) -> bool {
    away >= LONG_YIELD && used * 2 < away
}

/// Records a costly yield that ended at `now`: pauses yielding, for twice the last pause when
/// the last costly yield was recent (within 8 pauses), else for the shortest pause.
fn costly(now: u64) {
    let last = LAST_COSTLY.swap(now, Ordering::Relaxed);
    let previous = PAUSE.load(Ordering::Relaxed);
    let pause = if previous == 0 || now.saturating_sub(last) > previous.saturating_mul(8) {
        nanos(MIN_PAUSE)
    } else {
        previous.saturating_mul(2).min(nanos(MAX_PAUSE))
    };
    PAUSE.store(pause, Ordering::Relaxed);
    PAUSED_UNTIL.store(now.saturating_add(pause).max(1), Ordering::Relaxed);
}

/// The CPU time of the whole process so far.
#[cfg(unix)]
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant libc knows.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &raw mut ts) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
    Duration::new(secs, nanos)
}

/// Never read: [`Patience::begin`] gives no yields where the process's CPU time is not known.
#[cfg(not(unix))]
fn process_cpu() -> Duration {
    Duration::ZERO
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costly_yields_pause_yielding_for_longer_while_they_keep_coming() {
        let ms = |n: u64| n * 1_000_000;
        costly(ms(1000));
        assert_eq!(PAUSE.load(Ordering::Relaxed), ms(10));
        assert_eq!(PAUSED_UNTIL.load(Ordering::Relaxed), ms(1010));
        // Soon after: twice as long, up to a second.
        costly(ms(1011));
        assert_eq!(PAUSE.load(Ordering::Relaxed), ms(20));
        for n in 0..10 {
            costly(ms(1012 + n));
        }
        assert_eq!(PAUSE.load(Ordering::Relaxed), ms(1000));
        // Rare again (more than 8 pauses after the last): short again.
        costly(ms(20_000));
        assert_eq!(PAUSE.load(Ordering::Relaxed), ms(10));
        assert_eq!(PAUSED_UNTIL.load(Ordering::Relaxed), ms(20_010));
        // The statics are the process's: leave yielding allowed for other tests.
        PAUSED_UNTIL.store(0, Ordering::Relaxed);
    }

    #[test]
    fn a_yield_is_costly_when_long_and_the_process_mostly_waited() {
        let us = Duration::from_micros;
        // Short: never.
        assert!(!is_costly(us(150), us(0)));
        // Long, the process's own threads had the cores (measured: 1 to 2 cores' worth).
        assert!(!is_costly(us(1500), us(1600)));
        assert!(!is_costly(us(1500), us(800)));
        // Long, other programs had them (measured: under half a core).
        assert!(is_costly(us(1500), us(200)));
    }

    #[cfg(unix)]
    #[test]
    fn the_process_cpu_time_grows_with_work() {
        let (before, started) = (process_cpu(), Instant::now());
        let mut x = 0_u64;
        // Bounded, so that a clock that never moves fails the test instead of hanging it.
        while process_cpu() < before + Duration::from_millis(5)
            && started.elapsed() < Duration::from_secs(10)
        {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(process_cpu() >= before + Duration::from_millis(5) && x > 0);
    }
}
