//! Partition leases of a keyed source: the table of what this consumer owns, and the keeper
//! thread that renews, takes and gives up leases with one heartbeat script every third of
//! the lease time.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::broker::{Beat, Broker, Leases};
use crate::error::Chain;
use crate::partition::{lease_key, members_key};

/// How long a keyed source's lease on a partition lasts without renewal, by default. The
/// keeper renews it every third of that; a consumer that dies loses its partitions this long
/// after its last heartbeat.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// What happened to this consumer's ownership of a partition, as reported to
/// [`KeyedSource::on_ownership`](crate::KeyedSource::on_ownership).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// The consumer took the partition's lease: it owns the partition from `at` on. Entries
    /// left pending by the last owner are handed out first, in order.
    Acquired {
        /// The partition.
        partition: u32,
        /// When the lease was taken (after the server answered).
        at: SystemTime,
    },
    /// The consumer gave the partition up (its fair share fell, or it stops), after every
    /// item it read from it was finished and acknowledged; it owns it no more from `at` on
    /// (taken before the lease is deleted on the server).
    Released {
        /// The partition.
        partition: u32,
        /// When the consumer stopped owning it.
        at: SystemTime,
    },
    /// The consumer could not renew the lease in time (the server was unreachable for most
    /// of the lease time): it handed out nothing more from the partition after `at`.
    Lost {
        /// The partition.
        partition: u32,
        /// When the lease ran out, as this consumer counts it.
        at: SystemTime,
    },
}

/// A callback told of ownership changes.
pub(crate) type OnOwnership = Arc<dyn Fn(&Ownership) + Send + Sync>;

/// This consumer's view of one partition.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    /// Whether this consumer holds the lease, as of the last successful beat.
    pub(crate) held: bool,
    /// Until when the lease is surely still this consumer's (the beat's start plus most of
    /// the lease time).
    pub(crate) valid_until: Instant,
    /// Above the fair share: read no more, and give it up once nothing is outstanding.
    pub(crate) releasing: bool,
    /// Newly taken: claim the pending entries of the last owner before reading new ones.
    pub(crate) fresh: bool,
    /// Entries read from it and not settled yet (buffered, in the pipeline, or being
    /// acknowledged).
    pub(crate) outstanding: u64,
}

impl Slot {
    /// Whether entries of the partition may be handed out now.
    pub(crate) fn owned(&self, now: Instant) -> bool {
        self.held && now < self.valid_until
    }
}

/// The partitions of a keyed source, shared by its frontend, acknowledging and keeper
/// threads.
pub(crate) struct Table {
    slots: Mutex<Vec<Slot>>,
    /// Signalled when a partition is taken, or becomes free of outstanding entries.
    pub(crate) changed: Condvar,
}

impl Table {
    pub(crate) fn new(partitions: u32) -> Self {
        let now = Instant::now();
        let slot = Slot {
            held: false,
            valid_until: now,
            releasing: false,
            fresh: false,
            outstanding: 0,
        };
        Self {
            slots: Mutex::new(vec![slot; partitions as usize]),
            changed: Condvar::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        // Each update is one step; a panic elsewhere leaves the table consistent.
        engine_core::plumbing::lock(&self.slots)
    }

    /// Counts `n` entries of `partition` as settled.
    pub(crate) fn settled(&self, partition: u32, n: u64) {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(partition as usize) {
            slot.outstanding = slot.outstanding.saturating_sub(n);
        }
        drop(slots);
        self.changed.notify_all();
    }
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held: Vec<usize> = self
            .lock()
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.held)
            .map(|(i, _)| i)
            .collect();
        f.debug_struct("Table").field("held", &held).finish()
    }
}

/// What the frontend tells the keeper when it stops.
#[derive(Debug)]
pub(crate) enum Leave {
    /// Everything read was settled: give every lease up.
    Clean,
    /// Items are still in the pipeline: keep the leases until they run out, so that nobody
    /// takes the partitions while they may still be processed here.
    Dirty,
}

/// The keeper thread: one heartbeat every third of the lease time.
pub(crate) struct Keeper<B> {
    pub(crate) broker: B,
    pub(crate) stream: String,
    pub(crate) consumer: String,
    pub(crate) ttl: Duration,
    pub(crate) table: Arc<Table>,
    pub(crate) stop: Receiver<Leave>,
    pub(crate) on_ownership: Option<OnOwnership>,
    pub(crate) members: String,
    pub(crate) leases: Vec<String>,
    /// Partitions given up locally whose lease may still be on the server.
    pub(crate) to_release: Vec<u32>,
}

impl<B: Broker> Keeper<B> {
    /// The parts of a keeper known before it starts.
    pub(crate) fn parts(broker: B, stream: &str, group: &str, consumer: String) -> KeeperParts<B> {
        KeeperParts {
            broker,
            members: members_key(stream, group),
            stream: stream.to_owned(),
            consumer,
            group: group.to_owned(),
        }
    }

    /// Beats until the frontend stops; then leaves as it says.
    pub(crate) fn run(mut self) {
        let every = (self.ttl / 3).max(Duration::from_millis(5));
        loop {
            self.beat();
            match self.stop.recv_timeout(every) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(Leave::Clean) | Err(RecvTimeoutError::Disconnected) => {
                    self.leave();
                    return;
                }
                Ok(Leave::Dirty) => return,
            }
        }
    }

    fn report(&self, event: Ownership) {
        tracing::info!(stream = %self.stream, consumer = %self.consumer, ?event, "partition ownership");
        if let Some(on_ownership) = &self.on_ownership {
            on_ownership(&event);
        }
    }

    /// Gives up the partitions that are above the fair share and have nothing outstanding,
    /// renews the rest, and takes free ones up to the fair share.
    fn beat(&mut self) {
        self.release_settled();
        let sent = Instant::now();
        let beat = Beat {
            members: &self.members,
            leases: &self.leases,
            consumer: &self.consumer,
            ttl: self.ttl,
            release: &self.to_release,
            leave: false,
        };
        let leases = match self.broker.beat(&beat) {
            Ok(leases) => leases,
            Err(error) => {
                tracing::warn!(stream = %self.stream, error = %Chain(&error), "lease heartbeat failed; retrying");
                self.report_lapsed();
                return;
            }
        };
        self.to_release.clear();
        let mut slots = self.table.lock();
        self.apply(&mut slots, &leases, sent);
        give_up_excess(&mut slots, leases.fair as usize);
        drop(slots);
        self.table.changed.notify_all();
    }

    /// Marks for release the partitions being given up that have nothing outstanding any
    /// more: the next beat gives them up on the server.
    fn release_settled(&mut self) {
        let mut slots = self.table.lock();
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.held && slot.releasing && slot.outstanding == 0 {
                slot.held = false;
                slot.releasing = false;
                self.to_release
                    .push(u32::try_from(i).expect("few partitions"));
                self.report(Ownership::Released {
                    partition: u32::try_from(i).expect("few partitions"),
                    at: SystemTime::now(),
                });
            }
        }
    }

    /// Takes in what the server says this consumer holds after the beat sent at `sent`:
    /// renewed, newly acquired, and lost partitions.
    fn apply(&self, slots: &mut [Slot], leases: &Leases, sent: Instant) {
        // Most of the lease time, counted from before the request: the server set the expiry
        // later than that.
        let valid_until = sent + self.ttl.mul_f64(0.9);
        for (i, slot) in slots.iter_mut().enumerate() {
            let partition = u32::try_from(i).expect("few partitions");
            let now_held = leases.held.contains(&partition);
            let continuous = slot.held && sent < slot.valid_until;
            if slot.held && !continuous {
                self.report(Ownership::Lost {
                    partition,
                    at: system_time(slot.valid_until),
                });
                slot.held = false;
            }
            if now_held {
                if !slot.held {
                    slot.fresh = true;
                    slot.releasing = false;
                    self.report(Ownership::Acquired {
                        partition,
                        at: SystemTime::now(),
                    });
                }
                slot.held = true;
                slot.valid_until = valid_until;
            } else if slot.held {
                // Taken by someone else after it ran out on the server.
                self.report(Ownership::Lost {
                    partition,
                    at: system_time(slot.valid_until),
                });
                slot.held = false;
                slot.releasing = false;
            }
        }
    }

    /// After a failed beat: reports the leases that ran out meanwhile.
    fn report_lapsed(&mut self) {
        let now = Instant::now();
        let mut slots = self.table.lock();
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.held && now >= slot.valid_until {
                slot.held = false;
                slot.releasing = false;
                self.report(Ownership::Lost {
                    partition: u32::try_from(i).expect("few partitions"),
                    at: system_time(slot.valid_until),
                });
            }
        }
    }

    /// Gives up every lease and the membership.
    fn leave(&mut self) {
        {
            let mut slots = self.table.lock();
            for (i, slot) in slots.iter_mut().enumerate() {
                if slot.held {
                    slot.held = false;
                    self.report(Ownership::Released {
                        partition: u32::try_from(i).expect("few partitions"),
                        at: SystemTime::now(),
                    });
                }
            }
        }
        let beat = Beat {
            members: &self.members,
            leases: &self.leases,
            consumer: &self.consumer,
            ttl: self.ttl,
            release: &[],
            leave: true,
        };
        if let Err(error) = self.broker.beat(&beat) {
            tracing::warn!(stream = %self.stream, error = %Chain(&error), "cannot give up the leases; they run out by themselves");
        }
    }
}

/// What a keeper is made of before its table and options are known.
pub(crate) struct KeeperParts<B> {
    broker: B,
    members: String,
    stream: String,
    consumer: String,
    group: String,
}

impl<B> KeeperParts<B> {
    /// The keeper of the partition streams `partitions`.
    pub(crate) fn finish(
        self,
        partitions: &[String],
        ttl: Duration,
        table: Arc<Table>,
        stop: Receiver<Leave>,
        on_ownership: Option<OnOwnership>,
    ) -> Keeper<B> {
        Keeper {
            leases: partitions
                .iter()
                .map(|partition| lease_key(partition, &self.group))
                .collect(),
            broker: self.broker,
            stream: self.stream,
            consumer: self.consumer,
            ttl,
            table,
            stop,
            on_ownership,
            members: self.members,
            to_release: Vec::new(),
        }
    }
}

/// The wall-clock time of an instant (for reports).
fn system_time(at: Instant) -> SystemTime {
    let now = Instant::now();
    if at <= now {
        SystemTime::now() - (now - at)
    } else {
        SystemTime::now() + (at - now)
    }
}

/// Marks for release what is above the fair share `fair` (not counting what is being
/// released already), each partition between batches: once everything read from it is
/// settled (at a later beat).
fn give_up_excess(slots: &mut [Slot], fair: usize) {
    let held = slots.iter().filter(|slot| slot.held).count();
    let releasing = slots
        .iter()
        .filter(|slot| slot.held && slot.releasing)
        .count();
    let excess = held.saturating_sub(fair).saturating_sub(releasing);
    for slot in slots
        .iter_mut()
        .rev()
        .filter(|slot| slot.held && !slot.releasing)
        .take(excess)
    {
        slot.releasing = true;
    }
}
