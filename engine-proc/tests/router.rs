//! The router and the duplex child with real processes: routing, broadcast, bad input,
//! periodic actions, crashes, stops.

mod common;

use std::time::Duration;

use engine_core::protocol::{Address, Kind};
use engine_core::{Restart, RestartPolicy, StageError, StopHandle};
use engine_proc::{Child, Duplex, ExitHow, Handlers, ProcError, Router};

fn to(name: &str) -> Address {
    Address::named(name)
}

/// Forwards "work" to the worker "b", adding one: worker to worker, not through main.
fn forwarder(h: &mut Handlers) {
    h.on("work", |node, n: u64| {
        Ok(node.send(&to("b"), "work", &(n + 1))?)
    });
}

/// Answers "work" to main, doubling, and says who sent it.
fn doubler(h: &mut Handlers) {
    h.on("work", |node, n: u64| {
        let from = node
            .sender()
            .cloned()
            .ok_or_else(|| StageError::msg("no sender"))?;
        Ok(node.send(&Address::Main, "done", &(n * 2, from.to_string()))?)
    });
    h.on("hello", |node, (): ()| {
        let me = node.me().clone();
        Ok(node.send(&Address::Main, "hi", &me)?)
    });
}

fn messages_reach_workers_directly_and_come_back() {
    let report = Router::builder()
        .worker("a", forwarder)
        .worker("b", doubler)
        .on_start(|node| Ok(node.send(&to("a"), "work", &20_u64)?))
        .on("done", |node, (n, from): (u64, String)| {
            assert_eq!(n, 42);
            assert_eq!(from, "a", "b got it straight from a");
            node.exit();
            Ok(())
        })
        .run()
        .unwrap();
    assert_eq!(report.main.handled, 1);
    for name in ["a", "b"] {
        let worker = report.worker(name).unwrap();
        assert_eq!(worker.exit, ExitHow::Code(0), "{worker:?}");
        assert!(!worker.ended_early);
        assert_eq!(worker.stats.unwrap().handled, 1, "{worker:?}");
    }
}

fn a_broadcast_reaches_every_worker() {
    let mut greeted = Vec::new();
    let report = Router::builder()
        .worker("b", doubler)
        .worker("c", doubler)
        .worker("d", doubler)
        .on_start(|node| Ok(node.send(&Address::Broadcast, "hello", &())?))
        .on("hi", move |node, who: Address| {
            greeted.push(who.to_string());
            if greeted.len() == 3 {
                greeted.sort();
                assert_eq!(greeted, ["b", "c", "d"]);
                node.exit();
            }
            Ok(())
        })
        .run()
        .unwrap();
    assert_eq!(report.main.handled, 3);
    assert_eq!(report.main.sent, 3);
}

/// Greets every other worker from its start action, and tells main of each greeting it gets.
fn greeter(h: &mut Handlers) {
    h.on_start(|node| {
        let me = node.me().to_string();
        let others: Vec<String> = node.peer_names().into_iter().map(str::to_owned).collect();
        for other in others {
            node.send(&to(&other), "greet", &me)?;
        }
        Ok(())
    });
    h.on("greet", |node, from: String| {
        let me = node.me().to_string();
        Ok(node.send(&Address::Main, "greeted", &(from, me))?)
    });
}

fn messages_sent_from_start_actions_before_the_peer_list_arrives_are_all_handled() {
    const WORKERS: usize = 6;
    const GREETINGS: usize = WORKERS * (WORKERS - 1);
    let mut greeted = std::collections::BTreeSet::new();
    // Should a greeting be lost, the run still ends (and the asserts fail).
    let stop = StopHandle::new();
    let _deadline = stop.stop_now_after(Duration::from_secs(30)).unwrap();
    let mut builder = Router::builder().stop_handle(&stop);
    for i in 0..WORKERS {
        builder = builder.worker(format!("w{i}"), greeter);
    }
    let report = builder
        .on("greeted", move |node, pair: (String, String)| {
            assert_ne!(pair.0, pair.1);
            assert!(greeted.insert(pair), "each greeting arrives once");
            if greeted.len() == GREETINGS {
                node.exit();
            }
            Ok(())
        })
        .run()
        .unwrap();
    assert_eq!(report.main.handled, GREETINGS as u64, "{:?}", report.main);
    for worker in &report.workers {
        assert_eq!(worker.exit, ExitHow::Code(0), "{worker:?}");
        assert!(!worker.ended_early, "{worker:?}");
        let stats = worker.stats.as_ref().unwrap();
        assert_eq!(stats.handled, WORKERS as u64 - 1, "{worker:?}");
        assert_eq!(stats.sent, 2 * (WORKERS as u64 - 1), "{worker:?}");
    }
}

/// Counts what it handles and reports on "report".
fn patient(h: &mut Handlers) {
    h.on("number", |_, _: u64| Ok(()));
    h.on("report", |node, (): ()| {
        Ok(node.send(&Address::Main, "stats", &node.stats())?)
    });
}

fn unknown_kinds_bad_bodies_and_corrupt_frames_are_counted_not_fatal() {
    let report = Router::builder()
        .worker("p", patient)
        .on_start(|node| {
            node.send(&to("p"), "no-such-kind", &1_u8)?;
            node.send(&to("p"), "number", &"not a number at all")?;
            node.send_raw_frame("p", b"EN\x01\x00\x00\x00\xff\xff\xff\xff".to_vec())?;
            node.send_raw_frame("p", vec![1, 2, 3])?;
            node.send(&to("p"), "number", &7_u64)?;
            node.send(&to("p"), "report", &())?;
            Ok(())
        })
        .on("stats", |node, stats: engine_proc::NodeStats| {
            assert_eq!(stats.unknown_kind, 1, "{stats:?}");
            assert_eq!(stats.bad_body, 1, "{stats:?}");
            assert_eq!(stats.corrupt_frames, 2, "{stats:?}");
            assert_eq!(stats.handled, 1, "{stats:?}");
            node.exit();
            Ok(())
        })
        .run()
        .unwrap();
    assert_eq!(report.main.handled, 1, "the worker survived and answered");
    assert_eq!(report.worker("p").unwrap().exit, ExitHow::Code(0));
}

fn sending_to_an_unknown_name_is_a_typed_error() {
    let report = Router::builder()
        .worker("p", patient)
        .on_start(|node| {
            let error = node.send(&to("nobody"), "number", &1_u64).unwrap_err();
            assert!(
                matches!(error, ProcError::NoSuchPeer(ref n) if n == "nobody"),
                "{error}"
            );
            node.exit();
            Ok(())
        })
        .run()
        .unwrap();
    assert_eq!(report.main.handler_errors, 0);
}

/// Sends "tick" to main from its periodic action.
fn ticker(h: &mut Handlers) {
    h.every(Duration::from_millis(5), |node| {
        Ok(node.send(&Address::Main, "tick", &())?)
    });
}

fn periodic_actions_run_in_main_and_in_workers() {
    let mut ticks = 0;
    let mut rounds = 0;
    let report = Router::builder()
        .worker("t", ticker)
        .on("tick", move |node, (): ()| {
            ticks += 1;
            if ticks == 3 {
                node.send(&Address::Main, "ticks-done", &())?;
            }
            Ok(())
        })
        .on("ticks-done", |_, (): ()| Ok(()))
        .every(Duration::from_millis(5), move |node| {
            rounds += 1;
            if rounds >= 3 && node.stats().handled >= 4 {
                node.exit();
            }
            Ok(())
        })
        .run()
        .unwrap();
    assert!(report.main.handled >= 4, "{:?}", report.main);
}

/// Aborts on "crash".
fn fragile(h: &mut Handlers) {
    h.on("crash", |_, (): ()| std::process::abort());
}

fn a_crashing_worker_is_noticed_and_reported() {
    let report = Router::builder()
        .worker("f", fragile)
        .on_start(|node| Ok(node.send(&to("f"), "crash", &())?))
        .run()
        .unwrap();
    let worker = report.worker("f").unwrap();
    assert!(worker.ended_early);
    assert_eq!(worker.exit, ExitHow::Signal(libc::SIGABRT), "{worker:?}");
}

/// Says hello with its pid when it starts, aborts on "crash", answers "ping" with "pong".
fn phoenix(h: &mut Handlers) {
    h.on_start(|node| Ok(node.send(&Address::Main, "hello", &std::process::id())?));
    h.on("crash", |_, (): ()| std::process::abort());
    h.on("ping", |node, (): ()| {
        Ok(node.send(&Address::Main, "pong", &())?)
    });
}

/// Forwards "forward" to the phoenix as "ping".
fn relay(h: &mut Handlers) {
    h.on("forward", |node, (): ()| {
        Ok(node.send(&to("phoenix"), "ping", &())?)
    });
}

fn a_crashed_worker_is_restarted_and_its_peers_reach_the_new_process() {
    let pids = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let seen = std::rc::Rc::clone(&pids);
    // Should the new process stay unreachable, the run still ends (and the asserts fail).
    let stop = StopHandle::new();
    let _deadline = stop.stop_now_after(Duration::from_secs(30)).unwrap();
    let report = Router::builder()
        .worker("phoenix", phoenix)
        .worker("relay", relay)
        .restart(RestartPolicy::new(Restart::OnFailure).limit(1, Duration::from_secs(60)))
        .stop_handle(&stop)
        .on("hello", move |node, pid: u32| {
            seen.borrow_mut().push(pid);
            if seen.borrow().len() == 1 {
                // The first process crashes; the second is reached through another worker.
                Ok(node.send(&to("phoenix"), "crash", &())?)
            } else {
                Ok(node.send(&to("relay"), "forward", &())?)
            }
        })
        .on("pong", |node, (): ()| {
            node.exit();
            Ok(())
        })
        .run()
        .unwrap();
    let pids = pids.borrow();
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert_ne!(pids[0], pids[1]);
    let phoenix = report.worker("phoenix").unwrap();
    assert_eq!(phoenix.restarts, 1, "{phoenix:?}");
    assert_eq!(phoenix.pid, pids[1]);
    assert_eq!(phoenix.exit, ExitHow::Code(0), "{phoenix:?}");
    assert!(!phoenix.ended_early, "{phoenix:?}");
    let relay = report.worker("relay").unwrap();
    assert_eq!(relay.stats.as_ref().unwrap().handled, 1, "{relay:?}");
    for pid in pids.iter() {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "no process, no zombie"
        );
    }
}

fn a_stop_tells_every_worker_to_die() {
    let stop = StopHandle::new();
    let trigger = stop.clone();
    let report = Router::builder()
        .worker("b", doubler)
        .worker("c", patient)
        .stop_handle(&stop)
        .on_start(|node| Ok(node.send(&to("b"), "work", &1_u64)?))
        .on("done", move |_, _: (u64, String)| {
            trigger.stop();
            Ok(())
        })
        .run()
        .unwrap();
    for worker in &report.workers {
        assert_eq!(worker.exit, ExitHow::Code(0), "{worker:?}");
        assert!(!worker.ended_early, "{worker:?}");
    }
}

/// Doubles `Do` bodies, echoes blobs by length, ends on `Die`.
fn child_main(pipe: &mut Duplex) -> Result<(), StageError> {
    loop {
        let message = match pipe.recv() {
            Ok(message) => message,
            Err(ProcError::Protocol(_)) => {
                pipe.send(Kind::Failed, "corrupt")?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match message.kind {
            Kind::Do => pipe.send(Kind::Finished, &(message.body::<u64>()? * 2))?,
            Kind::Die => return Ok(()),
            Kind::User(ref k) if k == "echo" => pipe.send_bytes(Kind::Finished, message.body)?,
            Kind::User(ref k) if k == "blob" => {
                let sum: u64 = message.body.iter().map(|b| u64::from(*b)).sum();
                pipe.send(Kind::Finished, &(message.body.len() as u64, sum))?;
            }
            _ => return Err(StageError::msg("unexpected message")),
        }
    }
}

fn a_duplex_child_answers_survives_garbage_and_exits_on_die() {
    let child = Child::spawn(child_main).unwrap();
    let pipe = child.duplex();
    pipe.send(Kind::Do, &21_u64).unwrap();
    let answer = pipe.recv().unwrap();
    assert_eq!(answer.kind, Kind::Finished);
    assert_eq!(answer.body::<u64>().unwrap(), 42);
    assert_eq!(answer.sender.to_string(), child.pid().to_string());

    pipe.send_raw_frame(vec![0xde, 0xad]).unwrap();
    assert_eq!(pipe.recv().unwrap().kind, Kind::Failed);

    // A large body travels in shared memory and arrives whole.
    let blob: Vec<u8> = (0..3_000_000_u32).map(|i| (i % 251) as u8).collect();
    let expected: u64 = blob.iter().map(|b| u64::from(*b)).sum();
    pipe.send_bytes(Kind::user("blob"), blob).unwrap();
    assert_eq!(
        pipe.recv().unwrap().body::<(u64, u64)>().unwrap(),
        (3_000_000, expected)
    );

    pipe.send(Kind::Die, &()).unwrap();
    assert!(child.wait().is_success());
}

/// Body `i` of the large-body stream: its length and bytes depend on `i`.
fn large_body(i: usize) -> Vec<u8> {
    let len = 65_536 + (i * 7_919) % 250_000;
    (0..len).map(|p| (p * 31 + i * 17) as u8).collect()
}

fn large_bodies_keep_their_contents_both_ways_while_regions_are_reused() {
    let child = Child::spawn(child_main).unwrap();
    let pipe = child.duplex();
    // Windows of 4 bodies in flight each way, 300 bodies: the regions are filled again and
    // again, while the other side may still be reading the previous ones.
    for window in 0..75 {
        for i in window * 4..window * 4 + 4 {
            pipe.send_bytes(Kind::user("echo"), large_body(i)).unwrap();
        }
        for i in window * 4..window * 4 + 4 {
            let echo = pipe.recv().unwrap();
            assert_eq!(echo.kind, Kind::Finished);
            assert!(echo.body == large_body(i), "body {i} came back changed");
        }
    }
    pipe.send(Kind::Die, &()).unwrap();
    assert!(child.wait().is_success());
}

fn a_dropped_child_is_killed_and_reaped() {
    let child = Child::spawn(child_main).unwrap();
    let pid = child.pid();
    drop(child);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "no process, no zombie"
    );
}

fn main() {
    engine_proc::init();
    let tests: &[(&str, fn())] = &[
        (
            "messages_reach_workers_directly_and_come_back",
            messages_reach_workers_directly_and_come_back,
        ),
        (
            "a_broadcast_reaches_every_worker",
            a_broadcast_reaches_every_worker,
        ),
        (
            "messages_sent_from_start_actions_before_the_peer_list_arrives_are_all_handled",
            messages_sent_from_start_actions_before_the_peer_list_arrives_are_all_handled,
        ),
        (
            "unknown_kinds_bad_bodies_and_corrupt_frames_are_counted_not_fatal",
            unknown_kinds_bad_bodies_and_corrupt_frames_are_counted_not_fatal,
        ),
        (
            "sending_to_an_unknown_name_is_a_typed_error",
            sending_to_an_unknown_name_is_a_typed_error,
        ),
        (
            "periodic_actions_run_in_main_and_in_workers",
            periodic_actions_run_in_main_and_in_workers,
        ),
        (
            "a_crashing_worker_is_noticed_and_reported",
            a_crashing_worker_is_noticed_and_reported,
        ),
        (
            "a_crashed_worker_is_restarted_and_its_peers_reach_the_new_process",
            a_crashed_worker_is_restarted_and_its_peers_reach_the_new_process,
        ),
        (
            "a_stop_tells_every_worker_to_die",
            a_stop_tells_every_worker_to_die,
        ),
        (
            "a_duplex_child_answers_survives_garbage_and_exits_on_die",
            a_duplex_child_answers_survives_garbage_and_exits_on_die,
        ),
        (
            "large_bodies_keep_their_contents_both_ways_while_regions_are_reused",
            large_bodies_keep_their_contents_both_ways_while_regions_are_reused,
        ),
        (
            "a_dropped_child_is_killed_and_reaped",
            a_dropped_child_is_killed_and_reaped,
        ),
    ];
    std::process::exit(common::run_tests(tests));
}
