//! The stop handle's tests: levels, waiting, callbacks, child handles.

use std::sync::atomic::AtomicUsize;
use std::thread;

use super::*;

#[test]
fn levels_only_rise() {
    let stop = StopHandle::new();
    assert_eq!(stop.level(), StopLevel::Running);
    assert!(stop.stop_now());
    assert!(!stop.stop());
    assert_eq!(stop.level(), StopLevel::Now);
    assert!(stop.is_stopping() && stop.is_stopped_now());
}

/// Waits (with a deadline, yielding) until `n` threads are blocked on the handle.
fn until_waiters(stop: &StopHandle, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while stop.waiter_count() != n {
        assert!(Instant::now() < deadline, "no thread blocked on the handle");
        thread::yield_now();
    }
}

#[test]
fn stop_from_another_thread_wakes_a_blocked_waiter() {
    let stop = StopHandle::new();
    let waiter = {
        let stop = stop.clone();
        thread::spawn(move || stop.wait())
    };
    until_waiters(&stop, 1);
    let stopper = {
        let stop = stop.clone();
        thread::spawn(move || stop.stop())
    };
    assert!(stopper.join().unwrap());
    assert_eq!(waiter.join().unwrap(), StopLevel::Graceful);
    assert_eq!(stop.waiter_count(), 0);
}

#[test]
fn a_blocked_wait_for_now_ignores_graceful_and_wakes_on_now() {
    let stop = StopHandle::new();
    let waiter = {
        let stop = stop.clone();
        thread::spawn(move || stop.wait_for_level(StopLevel::Now, Some(Duration::MAX)))
    };
    until_waiters(&stop, 1);
    stop.stop();
    // Still blocked after the graceful stop: the waiter went back to waiting.
    until_waiters(&stop, 1);
    stop.stop_now();
    assert_eq!(waiter.join().unwrap(), Some(StopLevel::Now));
}

#[test]
fn wait_timeout_returns_none_while_running() {
    let stop = StopHandle::new();
    assert_eq!(stop.wait_timeout(Duration::from_millis(5)), None);
    stop.stop();
    assert_eq!(
        stop.wait_timeout(Duration::from_secs(5)),
        Some(StopLevel::Graceful)
    );
}

#[test]
fn callbacks_see_each_level_once_and_unregister_on_drop() {
    let stop = StopHandle::new();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let sub = {
        let calls = Arc::clone(&calls);
        stop.on_stop(move |level| calls.lock().unwrap().push(level))
    };
    assert_eq!(stop.subscriber_count(), 1);
    stop.stop();
    stop.stop();
    stop.stop_now();
    drop(sub);
    assert_eq!(stop.subscriber_count(), 0);
    assert_eq!(
        *calls.lock().unwrap(),
        [StopLevel::Graceful, StopLevel::Now]
    );
}

#[test]
fn callbacks_run_in_registration_order_around_dropped_ones() {
    let stop = StopHandle::new();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let subs: Vec<_> = (0..10)
        .map(|i| {
            let calls = Arc::clone(&calls);
            stop.on_stop(move |_| calls.lock().unwrap().push(i))
        })
        .collect();
    let mut kept = Vec::new();
    for (i, sub) in subs.into_iter().enumerate() {
        if i % 3 == 0 {
            drop(sub);
        } else {
            kept.push(sub);
        }
    }
    assert_eq!(stop.subscriber_count(), 6);
    stop.stop();
    assert_eq!(*calls.lock().unwrap(), [1, 2, 4, 5, 7, 8]);
}

#[test]
fn many_children_leave_their_parent_in_any_order() {
    let parent = StopHandle::new();
    let mut children: Vec<_> = (0..2000).map(|_| parent.child()).collect();
    assert_eq!(parent.subscriber_count(), 2000);
    // Every other child first, then the rest from the back.
    let mut i = 0;
    children.retain(|_| {
        i += 1;
        i % 2 == 0
    });
    assert_eq!(parent.subscriber_count(), 1000);
    let last = children.pop().expect("a child");
    children.clear();
    assert_eq!(parent.subscriber_count(), 1);
    parent.stop();
    assert!(last.is_stopping());
}

#[test]
fn a_late_subscriber_is_called_at_once() {
    let stop = StopHandle::new();
    stop.stop();
    let hits = Arc::new(AtomicUsize::new(0));
    let hits2 = Arc::clone(&hits);
    stop.on_stop(move |_| {
        hits2.fetch_add(1, Ordering::SeqCst);
    })
    .detach();
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[test]
fn a_panicking_callback_does_not_skip_the_others() {
    let stop = StopHandle::new();
    let hits = Arc::new(AtomicUsize::new(0));
    let _bad = stop.on_stop(|_| panic!("a buggy callback"));
    let child = stop.child();
    let _good = {
        let hits = Arc::clone(&hits);
        stop.on_stop(move |_| {
            hits.fetch_add(1, Ordering::SeqCst);
        })
    };
    let caller = {
        let stop = stop.clone();
        thread::spawn(move || stop.stop())
    };
    // The panic reaches the caller, after every callback ran.
    assert!(caller.join().is_err());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(child.level(), StopLevel::Graceful);
    assert_eq!(stop.level(), StopLevel::Graceful);
}

#[test]
fn subscribing_while_stopping_sees_each_level_exactly_once() {
    for _ in 0..200 {
        let stop = StopHandle::new();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stopper = {
            let stop = stop.clone();
            thread::spawn(move || {
                stop.stop();
            })
        };
        let sub = {
            let calls = Arc::clone(&calls);
            stop.on_stop(move |level| calls.lock().unwrap().push(level))
        };
        stopper.join().unwrap();
        assert_eq!(*calls.lock().unwrap(), [StopLevel::Graceful]);
        drop(sub);
    }
}

#[test]
fn a_child_of_a_stopped_parent_starts_stopped() {
    let parent = StopHandle::new();
    parent.stop_now();
    assert_eq!(parent.child().level(), StopLevel::Now);
}

#[test]
fn a_callback_may_stop_the_handle_again() {
    let stop = StopHandle::new();
    let again = stop.clone();
    let _sub = stop.on_stop(move |_| {
        again.stop_now();
    });
    stop.stop();
    assert_eq!(stop.level(), StopLevel::Now);
}

#[test]
fn children_follow_the_parent_and_release_their_callback() {
    let parent = StopHandle::new();
    let child = parent.child();
    let grandchild = child.child();
    assert_eq!(parent.subscriber_count(), 1);
    child.stop();
    assert!(!parent.is_stopping());
    assert_eq!(grandchild.level(), StopLevel::Graceful);
    parent.stop_now();
    assert_eq!(child.level(), StopLevel::Now);
    assert_eq!(grandchild.level(), StopLevel::Now);
    drop(grandchild);
    drop(child);
    assert_eq!(parent.subscriber_count(), 0);
}

#[test]
fn handles_and_contexts_cross_threads() {
    fn shared<T: Send + Sync + Clone + 'static>() {}
    shared::<StopHandle>();
    shared::<crate::StageContext>();
    shared::<crate::AppConfig>();
    fn sendable<T: Send + 'static>() {}
    sendable::<StopSubscription>();
    sendable::<crate::StageError>();
}

#[test]
fn many_threads_escalating_end_at_now() {
    let stop = StopHandle::new();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || stop.escalate())
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(stop.level(), StopLevel::Now);
}
