//! The counters of a pool's or placed stage's workers: for the whole set (`PoolStats`) and
//! per worker slot (metrics). Updated per batch or event, never per task.

use std::sync::atomic::{AtomicU64, Ordering};

/// The counters of all the workers.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) worker_deaths: AtomicU64,
    pub(crate) respawns: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) corrupt_frames: AtomicU64,
    pub(crate) recycles: AtomicU64,
    /// Tasks sent to an idle worker by the thread that submitted them.
    pub(crate) handed: AtomicU64,
}

/// The counters of one worker slot (the processes that held it, one after another), for
/// metrics. Updated per batch or event, never per task.
#[derive(Debug, Default)]
pub(crate) struct SlotCounters {
    pub(crate) tasks: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) deaths: AtomicU64,
    pub(crate) respawns: AtomicU64,
    pub(crate) recycles: AtomicU64,
}

/// A worker process's life event, counted for the set and for its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// It ended unexpectedly.
    Death,
    /// A new process took a dead one's place.
    Respawn,
    /// A new process took a well one's place.
    Recycle,
}

impl Counters {
    /// Counts `event` of the worker in `slot`.
    pub(crate) fn count(&self, slot: &SlotCounters, event: Event) {
        let (all, one) = match event {
            Event::Death => (&self.worker_deaths, &slot.deaths),
            Event::Respawn => (&self.respawns, &slot.respawns),
            Event::Recycle => (&self.recycles, &slot.recycles),
        };
        all.fetch_add(1, Ordering::Relaxed);
        one.fetch_add(1, Ordering::Relaxed);
    }
}

impl SlotCounters {
    /// Counts a batch of `tasks` tasks, `failed` of which failed.
    pub(crate) fn batch(&self, tasks: u64, failed: u64) {
        self.tasks.fetch_add(tasks, Ordering::Relaxed);
        self.failed.fetch_add(failed, Ordering::Relaxed);
    }

    /// The slot as metrics show it, held by the live process `pid` (`None`: none holds it
    /// now), whose resident memory is read now.
    #[cfg(feature = "metrics")]
    pub(crate) fn snapshot(&self, pid: Option<u32>) -> SlotSnapshot {
        SlotSnapshot {
            tasks: self.tasks.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            deaths: self.deaths.load(Ordering::Relaxed),
            respawns: self.respawns.load(Ordering::Relaxed),
            recycles: self.recycles.load(Ordering::Relaxed),
            up: pid.is_some(),
            memory: pid.and_then(resident_bytes),
        }
    }
}

/// One worker slot, as metrics show it.
#[cfg(feature = "metrics")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotSnapshot {
    pub(crate) tasks: u64,
    pub(crate) failed: u64,
    pub(crate) deaths: u64,
    pub(crate) respawns: u64,
    pub(crate) recycles: u64,
    /// Whether a live process holds the slot.
    pub(crate) up: bool,
    /// The resident memory of the process holding the slot, in bytes: `None` while none
    /// does, or where `/proc` cannot tell.
    pub(crate) memory: Option<u64>,
}

/// The resident memory of process `pid`, from `/proc/<pid>/statm` (`None` where there is no
/// `/proc`, or once the process is gone): for the memory limit and the worker metrics.
pub(crate) fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages.saturating_mul(u64::try_from(page).ok()?))
}
