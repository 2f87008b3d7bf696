//! Scale out through Redis Streams: one producer and two consumer processes on this machine.
//!
//! The example starts its own throwaway `redis-server` on a free loopback port, with
//! `engine::redis::testing::Server` (it must be installed: `apt-get install -y redis-server`),
//! then starts two copies of itself as consumers
//! (`REDIS_SCALE_OUT_CONSUMER=<tag>`). Each consumer reads the stream `in` through the consumer
//! group `engine`, squares each number and appends `(n, n², tag)` to the stream `out`. The
//! producer, in this process, appends 20,000 numbers to `in`, keeping at most 1,000
//! unfinished entries there (backpressure). The example checks that every number was
//! processed exactly once, that both consumers took a share, and that `in` is empty.
//!
//! Run with `cargo run --example redis_scale_out`. It exits non-zero if any check fails.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example shows its results"
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use engine::redis::testing::Server;
use engine::redis::{Broker, RedisBroker, SinkOptions, StreamAddress, StreamSink, StreamSource};
use engine::threads::Engine;

/// Set in a consumer copy, to its tag.
const CONSUMER: &str = "REDIS_SCALE_OUT_CONSUMER";
/// The address of `in`, given to the consumers.
const INPUT: &str = "REDIS_SCALE_OUT_INPUT";
const ITEMS: u64 = 20_000;

fn main() -> Result<()> {
    if let Ok(tag) = std::env::var(CONSUMER) {
        return consume(tag.parse().context("the consumer tag is a number")?);
    }
    // A throwaway server, killed (and its directory removed) when `server` drops.
    let server = Server::start()?;
    println!("redis-server on port {}", server.port());
    let input = server.address("in")?;
    let consumers = [spawn_consumer(&input, 1)?, spawn_consumer(&input, 2)?];

    let report = Engine::builder(0..ITEMS)
        .backend(StreamSink::<u64>::new(input.clone()).options(SinkOptions::new().bound(1_000)))
        .run()?;
    ensure!(report.processed() == ITEMS, "the producer wrote {report}");
    println!("producer: {} numbers appended to `in`", report.processed());

    // Wait (with a deadline) until every number is in `out`.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut out = Vec::new();
    let mut reader = Reader::new(&server.address("out")?, "check")?;
    while (out.len() as u64) < ITEMS {
        ensure!(
            Instant::now() < deadline,
            "only {} results arrived",
            out.len()
        );
        out.extend(reader.read::<(u64, u64, u64)>()?);
    }
    for consumer in consumers {
        consumer.stop()?;
    }

    let mut times: HashMap<u64, u32> = HashMap::new();
    let mut shares: HashMap<u64, u64> = HashMap::new();
    for &(n, square, tag) in &out {
        ensure!(square == n * n, "{n} squared is not {square}");
        *times.entry(n).or_default() += 1;
        *shares.entry(tag).or_default() += 1;
    }
    ensure!(
        times.len() as u64 == ITEMS,
        "{} distinct numbers processed",
        times.len()
    );
    ensure!(
        times.values().all(|&t| t == 1),
        "a number was processed twice"
    );
    ensure!(shares.len() == 2, "not both consumers worked: {shares:?}");
    ensure!(
        Reader::new(&input, "leftovers")?.read::<u64>()?.is_empty(),
        "`in` still holds entries"
    );
    println!(
        "every number processed exactly once; consumer 1 did {}, consumer 2 did {}",
        shares[&1], shares[&2]
    );
    println!("ok");
    Ok(())
}

/// A consumer: `in` -> square -> `out`, until SIGTERM.
fn consume(tag: u64) -> Result<()> {
    let input: StreamAddress = std::env::var(INPUT)?.parse()?;
    let output = input.clone().with_stream("out");
    let source = StreamSource::<u64>::new(input);
    let engine = Engine::builder(source)
        .transport(move |n: u64| (n, n * n, tag))
        .backend(StreamSink::<(u64, u64, u64)>::new(output))
        .build()?;
    let _signals = engine::core::install_signal_handler(engine.stop_handle())?;
    println!("ready");
    std::io::stdout().flush()?;
    // After SIGTERM, `run` returns once the source has sent its last acknowledgements.
    let report = engine.run()?;
    eprintln!("consumer {tag}: {report}");
    report.check()?;
    Ok(())
}

/// A consumer process.
struct Consumer(Child);

fn spawn_consumer(input: &StreamAddress, tag: u64) -> Result<Consumer> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(CONSUMER, tag.to_string())
        .env(INPUT, input.as_str())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("piped")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    ensure!(line.trim() == "ready", "consumer {tag} did not start");
    Ok(Consumer(child))
}

impl Consumer {
    /// Stops the consumer gracefully (SIGTERM) and checks its exit status.
    fn stop(mut self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()?;
        ensure!(status.success(), "kill failed");
        let status = self.0.wait()?;
        ensure!(status.success(), "a consumer failed: {status}");
        Ok(())
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads a stream from its start through a group of its own, without acknowledging.
struct Reader {
    broker: RedisBroker,
    stream: String,
    group: String,
}

impl Reader {
    fn new(address: &StreamAddress, group: &str) -> Result<Self> {
        let mut broker = RedisBroker::connect(address)?;
        broker.create_group(address.stream(), group)?;
        Ok(Self {
            broker,
            stream: address.stream().to_owned(),
            group: group.to_owned(),
        })
    }

    fn read<T: serde::de::DeserializeOwned>(&mut self) -> Result<Vec<T>> {
        let entries = self.broker.read(
            &self.stream,
            &self.group,
            "example",
            1000,
            Duration::from_millis(50),
        )?;
        entries
            .into_iter()
            .map(|entry| {
                let bytes = entry.payload.context("an entry without payload")?;
                Ok(engine::core::protocol::from_bytes(&bytes)?)
            })
            .collect()
    }
}
