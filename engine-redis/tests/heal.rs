//! Healing at once, against a real `redis-server`: entries delivered to a source's consumer
//! but never handed out (the server logged the delivery, then died or dropped the
//! connection before it replied) come back as soon as the source (re)connects, not after
//! the claim idle time; twenty server crashes in a row each heal within 3 s, and repeat
//! nothing; a stream flowing through two restarts processes no entry twice; consumers that
//! are gone are removed from the group.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::wait_until;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use engine_redis::testing::{Server, ServerOptions};
use engine_redis::{
    Broker, Delivered, RedisBroker, SinkOptions, SourceOptions, StreamAddress, StreamSink,
    StreamSource,
};
use engine_threads::{Engine, EngineHandle};

const WAIT: Duration = Duration::from_secs(60);

/// How long healing may take once the server is back (the bound).
const HEAL_BOUND: Duration = Duration::from_secs(3);

/// Options that make the claim sweep useless for healing: only re-reading the source's own
/// pending list can bring the lost entries back within [`HEAL_BOUND`].
fn no_sweep_healing() -> SourceOptions {
    SourceOptions::new()
        .claim_idle(Duration::from_secs(600))
        .block(Duration::from_millis(50))
}

/// Starts a source reading `address` as the consumer `worker`; each processed item goes to
/// the returned channel.
fn consumer(address: &StreamAddress, options: SourceOptions) -> (EngineHandle, Receiver<u64>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let source = StreamSource::<u64>::new(address.clone().with_consumer("worker")).options(options);
    let handle = Engine::builder(source)
        .backend(move |n: u64| tx.send(n).expect("the test listens"))
        .spawn()
        .expect("the consumer starts");
    (handle, rx)
}

/// Appends `items` to `stream` and, in the same transaction, delivers them to the consumer
/// `worker` of the group `engine` without anyone receiving them: what a source sees when
/// the server delivered a read and went away before it replied.
fn deliver_behind_its_back(server: &Server, stream: &str, items: std::ops::Range<u64>) {
    let mut conn = server.connection().unwrap();
    let _ = redis::cmd("XGROUP")
        .arg(&["CREATE", stream, "engine", "0", "MKSTREAM"])
        .exec(&mut conn);
    let n = items.end - items.start;
    let mut pipe = redis::pipe();
    pipe.atomic();
    for item in items {
        let payload = engine_core::protocol::to_bytes(&item).unwrap();
        pipe.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg(engine_redis::VERSION_FIELD)
            .arg(engine_core::protocol::PROTOCOL_VERSION)
            .arg(engine_redis::PAYLOAD_FIELD)
            .arg(payload)
            .ignore();
    }
    pipe.cmd("XREADGROUP")
        .arg(&["GROUP", "engine", "worker", "COUNT"])
        .arg(n)
        .arg(&["STREAMS", stream, ">"])
        .ignore();
    pipe.exec(&mut conn).unwrap();
    assert!(common::pending(&mut conn, stream, "engine") >= n as usize);
}

/// Appends `items` as a stream sink would.
fn append(server: &Server, stream: &str, items: std::ops::Range<u64>) {
    let mut broker = RedisBroker::connect(&server.address(stream).unwrap()).unwrap();
    let payloads: Vec<Vec<u8>> = items
        .map(|n| engine_core::protocol::to_bytes(&n).unwrap())
        .collect();
    assert_eq!(
        broker.append(stream, &payloads, None).unwrap(),
        payloads.len()
    );
}

/// Receives until every item of `want` was seen, or `deadline` passes; returns how many of
/// the items received were seen before (repeats).
fn receive_all(
    rx: &Receiver<u64>,
    seen: &mut HashSet<u64>,
    want: &HashSet<u64>,
    deadline: Instant,
) -> Result<u64, RecvTimeoutError> {
    let mut repeats = 0;
    while !want.is_subset(seen) {
        repeats += u64::from(!seen.insert(rx.recv_deadline(deadline)?));
    }
    Ok(repeats)
}

/// Stops the consumer, and checks that every entry was finished.
fn stop_and_check_empty(server: &Server, stream: &str, handle: EngineHandle) {
    handle.stop();
    handle.join().expect("the consumer ends well");
    let mut conn = server.connection().unwrap();
    assert_eq!(common::len(&mut conn, stream), 0, "every entry was deleted");
    assert_eq!(common::pending(&mut conn, stream, "engine"), 0);
}

#[test]
fn entries_delivered_before_the_start_are_taken_back_at_once() {
    let _heavy = common::heavy();
    let server = Server::start().unwrap();
    deliver_behind_its_back(&server, "early", 0..10);
    let started = Instant::now();
    let (handle, rx) = consumer(&server.address("early").unwrap(), no_sweep_healing());
    let (mut seen, want) = (HashSet::new(), (0..10).collect());
    let repeats = receive_all(&rx, &mut seen, &want, started + HEAL_BOUND)
        .expect("the own pending entries are handed out at the start");
    assert_eq!(repeats, 0);
    stop_and_check_empty(&server, "early", handle);
}

#[test]
fn entries_delivered_in_a_lost_reply_are_taken_back_after_the_reconnect() {
    let _heavy = common::heavy();
    let server = Server::start().unwrap();
    let address = server.address("lost").unwrap();
    let (handle, rx) = consumer(&address, no_sweep_healing());
    append(&server, "lost", 0..5);
    let (mut seen, mut want) = (HashSet::new(), (0..5).collect::<HashSet<_>>());
    receive_all(&rx, &mut seen, &want, Instant::now() + WAIT).unwrap();

    // Delivered to the source's consumer, but the source never got the reply; then its
    // connections break.
    deliver_behind_its_back(&server, "lost", 5..15);
    let mut conn = server.connection().unwrap();
    let killed: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
        .query(&mut conn)
        .unwrap();
    assert!(
        killed >= 2,
        "the source's connections were dropped ({killed})"
    );
    let dropped = Instant::now();
    want.extend(5..15);
    let repeats = receive_all(&rx, &mut seen, &want, dropped + HEAL_BOUND)
        .expect("the lost entries are handed out right after the reconnect");
    assert_eq!(repeats, 0, "only the lost entries came back");
    stop_and_check_empty(&server, "lost", handle);
}

#[test]
fn twenty_server_crashes_in_a_row_each_heal_within_three_seconds() {
    const ROUNDS: u64 = 20;
    const PER_ROUND: u64 = 100;
    const LOST: u64 = 10;
    let _heavy = common::heavy();
    let mut server = Server::start_with(ServerOptions::new().append_only(true)).unwrap();
    let address = server.address("crash").unwrap();
    let (handle, rx) = consumer(&address, no_sweep_healing());
    // Once this is through, the source has started (and re-read its empty pending list).
    const WARM_UP: u64 = u64::MAX;
    let mut broker = RedisBroker::connect(&address).unwrap();
    broker
        .append(
            "crash",
            &[engine_core::protocol::to_bytes(&WARM_UP).unwrap()],
            None,
        )
        .unwrap();
    assert_eq!(rx.recv_timeout(WAIT), Ok(WARM_UP));
    drop(broker);
    let mut seen = HashSet::new();
    let mut heals = Vec::new();
    let mut repeats = 0;
    for round in 0..ROUNDS {
        let base = round * PER_ROUND;
        // The first items of the round are delivered in a reply the source never gets; the
        // rest are read normally. Then the server crashes mid-stream.
        deliver_behind_its_back(&server, "crash", base..base + LOST);
        append(&server, "crash", base + LOST..base + PER_ROUND);
        let first = rx.recv_timeout(WAIT).expect("the round's items flow");
        repeats += u64::from(!seen.insert(first));
        assert!(
            (base..base + LOST).all(|n| !seen.contains(&n)),
            "round {round}: a lost entry came back before the crash"
        );
        server.restart().unwrap();
        let back = Instant::now();
        let want: HashSet<u64> = (base..base + PER_ROUND).collect();
        match receive_all(&rx, &mut seen, &want, back + HEAL_BOUND) {
            Ok(n) => repeats += n,
            Err(_) => {
                let missing = want.difference(&seen).count();
                panic!(
                    "round {round}: {missing} items still missing {HEAL_BOUND:?} after the \
                     server was back"
                );
            }
        }
        heals.push(back.elapsed());
    }
    // Whatever the source had in its pipeline or buffer at each crash stays out of its
    // re-read of its own pending list; the server (fsync always) loses no acknowledgement.
    while let Ok(n) = rx.try_recv() {
        repeats += u64::from(!seen.insert(n));
    }
    assert_eq!(repeats, 0, "items processed twice across {ROUNDS} crashes");
    let longest = heals.iter().max().copied().unwrap_or_default();
    let total: Duration = heals.iter().sum();
    eprintln!(
        "healed {ROUNDS} crashes: longest {longest:?}, mean {:?}",
        total / u32::try_from(ROUNDS).unwrap()
    );
    assert!(longest < HEAL_BOUND);
    assert_eq!(seen, (0..ROUNDS * PER_ROUND).collect::<HashSet<_>>());
    stop_and_check_empty(&server, "crash", handle);
}

#[test]
fn consumers_long_idle_with_nothing_pending_are_removed() {
    let _heavy = common::heavy();
    let server = Server::start().unwrap();
    let mut conn = server.connection().unwrap();
    redis::cmd("XGROUP")
        .arg(&["CREATE", "ghosts", "engine", "0", "MKSTREAM"])
        .exec(&mut conn)
        .unwrap();
    // Before the consumer exists: Redis counts its idle time from its creation, which a
    // loaded machine may take a while to report back.
    let created = Instant::now();
    redis::cmd("XGROUP")
        .arg(&["CREATECONSUMER", "ghosts", "engine", "gone"])
        .exec(&mut conn)
        .unwrap();
    // A consumer that died holding an entry: kept until its entry is claimed.
    let _: String = redis::cmd("XADD")
        .arg(&["ghosts", "*", "d", "x"])
        .query(&mut conn)
        .unwrap();
    redis::cmd("XREADGROUP")
        .arg(&["GROUP", "engine", "holder", "STREAMS", "ghosts", ">"])
        .exec(&mut conn)
        .unwrap();
    let idle = Duration::from_millis(300);

    let options = no_sweep_healing()
        .sweep_every(Duration::from_millis(20))
        .remove_consumers_idle_for(idle);
    let (handle, rx) = consumer(&server.address("ghosts").unwrap(), options);
    // Redis 7.0 lists a consumer once it has read something.
    append(&server, "ghosts", 1..2);
    assert_eq!(rx.recv_timeout(WAIT), Ok(1));
    wait_until("the idle consumer is removed", WAIT, || {
        !common::consumers(&mut conn, "ghosts", "engine").contains_key("gone")
    });
    assert!(
        created.elapsed() >= idle,
        "removed before it was idle long enough"
    );
    let left = common::consumers(&mut conn, "ghosts", "engine");
    assert_eq!(left.get("holder"), Some(&1), "{left:?}");
    assert!(
        left.contains_key("worker"),
        "the live consumer stays: {left:?}"
    );
    handle.stop();
    handle.join().unwrap();
}

#[test]
fn a_stream_flowing_through_two_restarts_processes_no_entry_twice() {
    const ITEMS: u64 = 20_000;
    let _heavy = common::heavy();
    let mut server = Server::start_with(ServerOptions::new().append_only(true)).unwrap();
    let address = server.address("flow").unwrap();
    let producer = Engine::builder(0..ITEMS)
        .backend(StreamSink::<u64>::new(address.clone()).options(SinkOptions::new().bound(2_000)))
        .spawn()
        .expect("the producer starts");
    let (tx, rx) = crossbeam_channel::unbounded();
    let source = StreamSource::<u64>::new(address.with_consumer("worker")).options(
        SourceOptions::new()
            .claim_idle(Duration::from_secs(600))
            .block(Duration::from_millis(50)),
    );
    let settlement = source.settlement();
    let consumer = Engine::builder(source.with_ids())
        .backend(move |item: Delivered<u64>| {
            tx.send((item.id.entry(), item.item))
                .expect("the test listens");
        })
        .spawn()
        .expect("the consumer starts");

    // Entries processed (by id), and how often each item was.
    let mut entries = HashSet::new();
    let mut items: HashMap<u64, u64> = HashMap::new();
    let mut repeated_entries = 0;
    let mut receive = |until: usize| {
        while items.len() < until {
            let (entry, item) = rx.recv_timeout(WAIT).expect("the items flow");
            repeated_entries += u64::from(!entries.insert(entry));
            *items.entry(item).or_default() += 1;
        }
    };
    for third in 1..=2 {
        receive(usize::try_from(ITEMS / 3 * third).unwrap());
        server.restart().unwrap();
    }
    receive(usize::try_from(ITEMS).unwrap());
    assert_eq!(producer.join().unwrap().processed(), ITEMS);
    let mut conn = server.connection().unwrap();
    wait_until("every entry is finished", WAIT, || {
        common::len(&mut conn, "flow") == 0 && common::pending(&mut conn, "flow", "engine") == 0
    });
    consumer.stop();
    consumer.join().expect("the consumer ends well");
    while let Ok((entry, item)) = rx.try_recv() {
        repeated_entries += u64::from(!entries.insert(entry));
        *items.entry(item).or_default() += 1;
    }
    // An item in two entries was appended twice by the producer: its append reached the
    // server, whose reply was lost in the crash, so the sink wrote it again (a dedup sink
    // would not). That is the only repeat left; no entry is processed twice.
    let appended_twice: u64 = items.values().map(|n| n - 1).sum();
    eprintln!(
        "two restarts: {} entries processed, {appended_twice} items appended twice by the \
         producer, {} entries taken back from the source's own pending list",
        entries.len(),
        settlement.recovered()
    );
    assert_eq!(
        repeated_entries, 0,
        "an entry was processed twice: re-read while in the pipeline"
    );
    assert_eq!(items.len() as u64, ITEMS, "no item is lost");
}
