//! A keyed source whose lease heartbeats are answered slowly, against a real `redis-server`:
//! the lease lapses on the consumer's side while a read's entries are still to be handed
//! out, and the late reply then finds the lease this consumer's, held without a break. The
//! entries the source dropped meanwhile are pending for it, where no read of new entries
//! finds them: the source must claim them again, in order. (Before the fix they stayed
//! stuck for good, which stalled the benchmark's keyed cluster case about once in twelve
//! runs on a loaded machine, where two slow heartbeats in a row did the same.)
//!
//! The interleaving is forced by a broker that wraps the real one: the read that delivers
//! the entries is held; the next beat is answered slowly (as a loaded cluster answers), so
//! that the one after it is sent late in the lease's validity; that one is answered just
//! after the validity ran out, once the read was let go, and early enough that the validity
//! it gives lasts past the next beat.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::wait_until;
use crossbeam_channel::{Receiver, Sender};
use engine_core::StopHandle;
use engine_redis::testing::Server;
use engine_redis::{
    Appended, Batch, Beat, Broker, Claimed, Connector, DeadLetter, Delivery, EntryId, KeyedSource,
    Leases, Ownership, Pending, RedisBroker, Result, SourceOptions, StreamAddress, StreamSink,
};
use engine_threads::Engine;

const ITEMS: u64 = 200;
const WAIT: Duration = Duration::from_secs(60);

/// The lease time: long enough for the margins below on a loaded machine.
const LEASE: Duration = Duration::from_secs(3);

/// How long the late beat's reply comes after the lease's local validity ran out.
const LAPSED_BY: Duration = Duration::from_millis(50);

/// How long the late beat is held after the read was let go: the source hands the read's
/// entries out (or drops them) in that time; it takes microseconds.
const READ_AHEAD: Duration = Duration::from_millis(300);

/// The beats, one after another: as they come, one slow, one late, then as they come.
const NORMAL: u8 = 0;
const SLOW: u8 = 1;
const LATE: u8 = 2;
const DONE: u8 = 3;

fn sleep_until(at: Instant) {
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
}

/// The hold-ups to force, shared by every broker of one connector.
#[derive(Debug)]
struct Gate {
    /// The next read that delivers entries parks until the beat lets it go.
    hold_read: AtomicBool,
    /// Which beat comes next: [`NORMAL`], [`SLOW`] or [`LATE`], then [`DONE`].
    beats: AtomicU8,
    /// When the keeper last called for a beat.
    last_beat: Mutex<Option<Instant>>,
    /// Whether a beat was held as meant.
    forced: AtomicBool,
    parked: (Sender<()>, Receiver<()>),
    let_go: (Sender<()>, Receiver<()>),
}

#[derive(Debug, Clone)]
struct LateBeats {
    address: StreamAddress,
    gate: Arc<Gate>,
}

impl Connector for LateBeats {
    type Broker = LateBroker;

    fn connect(&self) -> Result<LateBroker> {
        Ok(LateBroker {
            inner: RedisBroker::connect(&self.address)?,
            gate: Arc::clone(&self.gate),
        })
    }
}

struct LateBroker {
    inner: RedisBroker,
    gate: Arc<Gate>,
}

impl Broker for LateBroker {
    fn server(&self) -> &str {
        self.inner.server()
    }

    fn append_batches(&mut self, batches: &[Batch<'_>], bound: Option<u64>) -> Result<Appended> {
        self.inner.append_batches(batches, bound)
    }

    fn record_partitions(&mut self, key: &str, partitions: u32) -> Result<u32> {
        self.inner.record_partitions(key, partitions)
    }

    fn partition_streams(&mut self, stream: &str, partitions: u32) -> Result<Vec<String>> {
        self.inner.partition_streams(stream, partitions)
    }

    fn create_group(&mut self, stream: &str, group: &str) -> Result<()> {
        self.inner.create_group(stream, group)
    }

    fn read(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>> {
        self.inner.read(stream, group, consumer, count, block)
    }

    fn read_streams(
        &mut self,
        streams: &[&str],
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<(usize, Vec<Delivery>)>> {
        let read = self
            .inner
            .read_streams(streams, group, consumer, count, block)?;
        let delivered = read.iter().any(|(_, d)| !d.is_empty());
        if delivered && self.gate.hold_read.swap(false, Ordering::SeqCst) {
            let _ = self.gate.parked.0.send(());
            // Until the beat lets it go; the deadline only bounds a broken test.
            let _ = self.gate.let_go.1.recv_timeout(WAIT);
        }
        Ok(read)
    }

    fn beat(&mut self, beat: &Beat<'_>) -> Result<Leases> {
        let called = Instant::now();
        let last = self
            .gate
            .last_beat
            .lock()
            .expect("one keeper")
            .replace(called);
        let leases = self.inner.beat(beat);
        match self
            .gate
            .beats
            .compare_exchange(SLOW, LATE, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => {
                // A slow reply: the keeper sends the next beat this much later.
                sleep_until(called + beat.ttl.mul_f64(0.3));
                return leases;
            }
            Err(LATE) => {}
            Err(_) => return leases,
        }
        self.gate.beats.store(DONE, Ordering::SeqCst);
        // The reply to a beat sent while the lease was surely held comes after the lease's
        // local validity (90% of the lease time after the last beat was sent), but early
        // enough that the validity it gives lasts past the next beat.
        let last = last.expect("a beat came before");
        sleep_until(last + beat.ttl.mul_f64(0.9) + LAPSED_BY);
        let _ = self.gate.let_go.0.send(());
        std::thread::sleep(READ_AHEAD);
        self.gate.forced.store(true, Ordering::SeqCst);
        leases
    }

    fn settle(
        &mut self,
        stream: &str,
        group: &str,
        finished: &[EntryId],
        failed: &[(EntryId, String)],
    ) -> Result<()> {
        self.inner.settle(stream, group, finished, failed)
    }

    fn claim(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        from: EntryId,
        count: usize,
    ) -> Result<Claimed> {
        self.inner
            .claim(stream, group, consumer, min_idle, from, count)
    }

    fn own_pending(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        after: Option<EntryId>,
        count: usize,
    ) -> Result<Vec<Pending>> {
        self.inner
            .own_pending(stream, group, consumer, after, count)
    }

    fn idle_pending(
        &mut self,
        stream: &str,
        group: &str,
        min_idle: Duration,
        after: Option<EntryId>,
        count: usize,
    ) -> Result<Vec<(String, Pending)>> {
        self.inner
            .idle_pending(stream, group, min_idle, after, count)
    }

    fn claim_ids(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        ids: &[EntryId],
    ) -> Result<Vec<Delivery>> {
        self.inner.claim_ids(stream, group, consumer, min_idle, ids)
    }

    fn remove_idle_consumers(
        &mut self,
        stream: &str,
        group: &str,
        keep: &str,
        idle: Duration,
    ) -> Result<Vec<String>> {
        self.inner.remove_idle_consumers(stream, group, keep, idle)
    }

    fn keep_alive(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        ids: &[EntryId],
    ) -> Result<()> {
        self.inner.keep_alive(stream, group, consumer, ids)
    }

    fn last_error(&mut self, stream: &str, id: EntryId) -> Result<Option<String>> {
        self.inner.last_error(stream, id)
    }

    fn dead_letter(
        &mut self,
        stream: &str,
        group: &str,
        dead_stream: &str,
        letters: &[DeadLetter<'_>],
    ) -> Result<()> {
        self.inner.dead_letter(stream, group, dead_stream, letters)
    }
}

#[test]
fn entries_dropped_while_a_late_heartbeat_is_out_are_claimed_again() {
    let server = Server::start().unwrap_or_else(|error| panic!("{error}"));
    let address: StreamAddress = format!("{}?partitions=1&block_ms=50", server.stream_url("late"))
        .parse()
        .expect("a valid address");
    let gate = Arc::new(Gate {
        hold_read: AtomicBool::new(false),
        beats: AtomicU8::new(NORMAL),
        last_beat: Mutex::new(None),
        forced: AtomicBool::new(false),
        parked: crossbeam_channel::bounded(1),
        let_go: crossbeam_channel::bounded(1),
    });
    let connector = LateBeats {
        address: address.clone(),
        gate: Arc::clone(&gate),
    };

    let seen = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicU64::new(0));
    let acquired = Arc::new(AtomicBool::new(false));
    let stop = StopHandle::new();
    let source = KeyedSource::<u64, _>::with_connector(connector, address.stream(), "g")
        .partitions(1)
        .options(
            SourceOptions::new()
                .lease(LEASE)
                .block(Duration::from_millis(50)),
        )
        .consumer("c")
        .on_ownership({
            let acquired = Arc::clone(&acquired);
            move |event| {
                if matches!(event, Ownership::Acquired { .. }) {
                    acquired.store(true, Ordering::SeqCst);
                }
            }
        });
    let consumer = Engine::builder(source)
        .backend({
            let (seen, count) = (Arc::clone(&seen), Arc::clone(&count));
            move |n: u64| {
                seen.lock().expect("one backend").push(n);
                count.fetch_add(1, Ordering::SeqCst);
            }
        })
        .backend_threads(1)
        .stop_handle(&stop)
        .spawn()
        .expect("the consumer starts");
    wait_until("the consumer owns the partition", WAIT, || {
        acquired.load(Ordering::SeqCst)
    });

    // The first read that delivers is held, then the next beat.
    gate.hold_read.store(true, Ordering::SeqCst);
    let sink = StreamSink::<u64>::new(address.clone()).keyed(1, |n: &u64| n.to_le_bytes());
    let report = Engine::builder(0..ITEMS)
        .backend(sink)
        .run()
        .expect("the producer runs");
    assert_eq!(report.processed(), ITEMS);
    gate.parked
        .1
        .recv_timeout(WAIT)
        .expect("a read delivers the items");
    gate.beats.store(SLOW, Ordering::SeqCst);

    wait_until("every item is processed", WAIT, || {
        count.load(Ordering::SeqCst) >= ITEMS
    });
    assert!(
        gate.forced.load(Ordering::SeqCst),
        "the beat was held past the lease"
    );
    stop.stop();
    consumer.join().expect("the consumer runs");
    let seen = seen.lock().expect("the consumer stopped").clone();
    assert_eq!(
        seen,
        (0..ITEMS).collect::<Vec<_>>(),
        "each item once, in order"
    );
}
