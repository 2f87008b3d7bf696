//! pymulproc's two flows, with its `DO` / `FINISHED` / `DIE` requests:
//!
//! - **PIPE (1:1)**: a parent and one child process on a two-way pipe. The parent sends
//!   `DO` with data, the child answers `FINISHED` with the result, and a `DIE` (the poison
//!   pill) makes the child return and exit with code 0. Every message carries its sender and
//!   recipient, as pymulproc's datagram carries the sender and recipient pids.
//! - **QUEUE (1:N)**: five child processes each send `FINISHED` with the value 3 to the
//!   parent as soon as they start; the parent adds them up to 15 and ends, and every child is
//!   then sent `DIE` and exits.
//!
//! Run with `cargo run --example proc_pymulproc --features proc`. It exits non-zero if any
//! check fails.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use anyhow::{Result, bail, ensure};
use engine_core::StageError;
use engine_core::protocol::{Address, Kind};
use engine_proc::{Child, Duplex, Handlers, Router};
use serde::{Deserialize, Serialize};

/// The data of a `DO` request.
#[derive(Debug, Serialize, Deserialize)]
struct Data {
    values: Vec<i64>,
}

/// The child of the PIPE flow: sums the values of each `DO`, returns on `DIE`.
fn pipe_child(pipe: &mut Duplex) -> Result<(), StageError> {
    loop {
        let message = pipe.recv()?;
        match message.kind {
            Kind::Do => {
                let data: Data = message.body()?;
                pipe.send(Kind::Finished, &data.values.iter().sum::<i64>())?;
            }
            Kind::Die => return Ok(()),
            other => return Err(StageError::msg(format!("unexpected request {other}"))),
        }
    }
}

/// The PIPE flow.
fn pipe() -> Result<()> {
    let child = Child::spawn(pipe_child)?;
    let parent = child.duplex();
    let child_address = Address::named(child.pid().to_string());
    ensure!(parent.me() == &Address::Main, "{parent:?}");
    ensure!(parent.peer() == &child_address, "{parent:?}");

    for values in [vec![20], vec![1, 2, 3, 4], vec![-5, 5, 100]] {
        let expected: i64 = values.iter().sum();
        parent.send(Kind::Do, &Data { values })?;
        let answer = parent.recv()?;
        println!(
            "[{}, {}, {}, {:?}]",
            answer.kind,
            answer.sender,
            answer.receiver,
            answer.body::<i64>()?
        );
        ensure!(answer.kind == Kind::Finished, "{answer:?}");
        ensure!(answer.sender == child_address, "{answer:?}");
        ensure!(answer.receiver == Address::Main, "{answer:?}");
        ensure!(answer.body::<i64>()? == expected, "{answer:?}");
    }

    parent.send(Kind::Die, &())?;
    let how = child.wait();
    println!("the child {how}");
    ensure!(how.is_success(), "the child should exit with code 0: {how}");
    Ok(())
}

/// How many children in the QUEUE flow.
const CHILDREN: usize = 5;
/// What each child sends.
const VALUE: u64 = 3;
/// The kind of the children's message.
const FINISHED: &str = "FINISHED";

/// A child of the QUEUE flow: sends its value to the parent as it starts.
fn queue_child(handlers: &mut Handlers) {
    handlers.on_start(|node| {
        node.send(&Address::Main, FINISHED, &VALUE)
            .map_err(StageError::new)
    });
}

/// The QUEUE flow.
fn queue() -> Result<()> {
    let sum = Rc::new(RefCell::new((0_u64, BTreeSet::<String>::new())));
    let mut router = Router::builder();
    for n in 1..=CHILDREN {
        router = router.worker(format!("child_{n}"), queue_child);
    }
    let report = router
        .on(FINISHED, {
            let sum = Rc::clone(&sum);
            move |node, value: u64| {
                let mut sum = sum.borrow_mut();
                sum.0 += value;
                if let Some(Address::Named(sender)) = node.sender() {
                    sum.1.insert(sender.clone());
                }
                if sum.1.len() == CHILDREN {
                    node.exit(); // Then every child is sent DIE.
                }
                Ok(())
            }
        })
        .run()?;

    let (total, senders) = &*sum.borrow();
    println!("sum {total} from {senders:?}");
    ensure!(*total == VALUE * CHILDREN as u64, "sum {total}");
    ensure!(senders.len() == CHILDREN, "{senders:?}");
    ensure!(report.main.handled == CHILDREN as u64, "{:?}", report.main);
    ensure!(report.workers.len() == CHILDREN, "{report:?}");
    for child in &report.workers {
        println!("{} (pid {}) {}", child.name, child.pid, child.exit);
        ensure!(
            child.exit.is_success() && !child.ended_early,
            "{} should exit with code 0 on DIE: {child:?}",
            child.name
        );
        match child.stats {
            Some(stats) if stats.sent == 1 && stats.handler_errors == 0 => {}
            other => bail!("{}: {other:?}", child.name),
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    engine_proc::init();

    println!("PIPE:");
    pipe()?;
    println!("QUEUE 1:N:");
    queue()?;
    println!("ok");
    Ok(())
}
