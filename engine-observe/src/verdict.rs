//! What two looks in a row at a running engine say: each stage's rates, queue fill and the
//! split of its threads' time (working, waiting for input, waiting for room downstream), and
//! what limits the pipeline: the stage that works most (the bottleneck), or its source.

use std::collections::VecDeque;

use crate::snapshot::{Snapshot, StageSample};

/// A stage is named the bottleneck only if its threads work at least this share of their
/// time ([`StageRates::work_share`]) and more than any other stage's: a stage that works 30%
/// of the time has room to spare, however it compares with the others.
pub const BOTTLENECK_SHARE: f64 = 0.7;

/// The share of its time a stage must work to be named the bottleneck when the stage before
/// it waits for room at least this share of its time too: the stage holds its upstream
/// back. (On a crowded CPU a stage's upstream is often ready but not running, which leaves
/// the stage waiting for input it would otherwise have had.)
pub const HOLDING_BACK_SHARE: f64 = 0.5;

/// A pipeline with no bottleneck is source-bound when its frontend waits for input at least
/// this share of its time ([`StageRates::input_share`]).
pub const SOURCE_BOUND_SHARE: f64 = 0.5;

/// When the time a stage's threads were seen working or waiting (for input, for room) is
/// at least this share of the wall time, the rule reads its shares of that seen time; below
/// it, its shares of the wall time.
const SEEN_ENOUGH: f64 = 0.5;

/// How a stage is doing between two snapshots.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StageRates {
    /// The stage's name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Items received per second.
    pub in_per_second: f64,
    /// Items finished (passed on, filtered or failed) per second.
    pub out_per_second: f64,
    /// How full its input queue is, 0 to 1.
    pub queue_fill: f64,
    /// The share of the time its threads worked, 0 to 1 (averaged over its threads). Waiting
    /// for input and waiting for room downstream are not work.
    pub busy: f64,
    /// The share of the time its threads waited for input (an empty input queue, or a
    /// frontend's marked read of its source), 0 to 1.
    pub waiting_for_input: f64,
    /// The share of the time its threads waited for room in a full next queue, 0 to 1.
    pub waiting_for_room: f64,
    /// Whether its threads waited for room downstream in the interval.
    pub backpressured: bool,
    /// An async stage's futures in flight now (0 for other stages).
    pub in_flight: u64,
    /// An async stage's limit of futures in flight now (0 for other stages).
    pub concurrency_limit: u64,
}

impl StageRates {
    /// Whether the stage runs futures (it has a concurrency limit).
    pub fn is_async(&self) -> bool {
        self.concurrency_limit > 0
    }

    /// The time its threads were seen working, waiting for input or waiting for room, as a
    /// share of the wall time. The rest is time between the engine's marks: a thread that is
    /// ready but not given a CPU on a loaded machine (a stage that wakes another on every
    /// batch often is), a batch not yet published, or an offloading stage (async, worker
    /// processes) waiting for its results.
    fn seen(&self) -> f64 {
        self.busy + self.waiting_for_input + self.waiting_for_room
    }

    /// The share of the time the stage works, as the bottleneck rule reads it: of the time
    /// its threads were seen working or waiting, when that is most of the wall time (so a
    /// spinning stage on a crowded CPU still reads as working all the time); otherwise of the
    /// wall time (so an offloading stage that waits for its results does not).
    ///
    /// The views show this split: [`work_share`](Self::work_share),
    /// [`input_share`](Self::input_share) and [`room_share`](Self::room_share).
    pub fn work_share(&self) -> f64 {
        self.of_seen(self.busy)
    }

    /// The share of the time the stage waits for input, read as
    /// [`work_share`](Self::work_share) is.
    pub fn input_share(&self) -> f64 {
        self.of_seen(self.waiting_for_input)
    }

    /// The share of the time the stage waits for room downstream, read as
    /// [`work_share`](Self::work_share) is.
    pub fn room_share(&self) -> f64 {
        self.of_seen(self.waiting_for_room)
    }

    fn of_seen(&self, share: f64) -> f64 {
        let seen = self.seen();
        if seen >= SEEN_ENOUGH {
            share / seen
        } else {
            share
        }
    }

    /// How much of its capacity the stage uses, 0 to 1, which the bottleneck rule compares:
    /// its [`work_share`](Self::work_share); for an async stage that is not held back by the
    /// stage after it, at least the share of its limit in flight (its threads mostly wait for
    /// its futures, and those are the stage's work).
    pub fn load(&self) -> f64 {
        if self.is_async() && !self.backpressured {
            let used = self.in_flight as f64 / self.concurrency_limit as f64;
            self.work_share().max(used.clamp(0.0, 1.0))
        } else {
            self.work_share()
        }
    }
}

/// The rates of every stage over the interval between `before` and `now`; without `before`,
/// the averages since the engine started.
///
/// The interval is read on the engine's clock (`elapsed`, read with the counts) when both
/// snapshots have it, so a scrape that is slow to arrive does not skew the rates; otherwise
/// (a pod's beans alone) on the times the snapshots were taken.
pub fn rates(before: Option<&Snapshot>, now: &Snapshot) -> Vec<StageRates> {
    let wall = before.map_or(now.elapsed.as_secs_f64(), |b| {
        if !b.elapsed.is_zero() && now.elapsed > b.elapsed {
            (now.elapsed - b.elapsed).as_secs_f64()
        } else {
            now.at.saturating_duration_since(b.at).as_secs_f64()
        }
    });
    let wall = wall.max(1e-9);
    now.stages
        .iter()
        .map(|stage| {
            let old = before.and_then(|b| {
                b.stages
                    .iter()
                    .find(|s| s.name == stage.name && s.kind == stage.kind)
            });
            let zero = StageSample::default();
            let old = old.unwrap_or(&zero);
            let threads = stage.threads.max(1) as f64;
            let share = |now: f64, old: f64| ((now - old).max(0.0) / wall / threads).min(1.0);
            let blocked = stage.blocked_seconds - old.blocked_seconds;
            StageRates {
                name: stage.name.clone(),
                kind: stage.kind.clone(),
                in_per_second: (stage.items_in - old.items_in).max(0.0) / wall,
                out_per_second: (stage.handled() - old.handled()).max(0.0) / wall,
                queue_fill: if stage.queue_capacity > 0.0 {
                    (stage.queue_depth / stage.queue_capacity).clamp(0.0, 1.0)
                } else {
                    0.0
                },
                busy: share(stage.busy_seconds, old.busy_seconds),
                waiting_for_input: share(stage.waiting_input_seconds, old.waiting_input_seconds),
                waiting_for_room: share(stage.blocked_seconds, old.blocked_seconds),
                backpressured: blocked > wall * threads * 0.01,
                in_flight: stage.in_flight.max(0.0) as u64,
                concurrency_limit: stage.concurrency_limit.max(0.0) as u64,
            }
        })
        .collect()
}

/// The looks a view took in the last seconds, so that it takes rates and shares over at least
/// a second of the engine's clock whatever its refresh: counters move by whole batches, and a
/// frontend publishes its time when it hands a batch on, so a short interval reads unevenly.
#[derive(Debug, Default)]
pub(crate) struct Window {
    looks: VecDeque<Snapshot>,
}

impl Window {
    /// The shortest interval a view takes rates over, in seconds.
    const SPAN: f64 = 1.0;

    /// Keeps `now`, and returns the look to take its rates from: the newest one at least a
    /// second older, or none (the averages since the start) before there is one.
    pub(crate) fn base_for(&mut self, now: &Snapshot) -> Option<Snapshot> {
        // The engine's clock; without one (a pod's beans alone), the time of the look.
        let clock = |s: &Snapshot| {
            if s.elapsed.is_zero() {
                -now.at.saturating_duration_since(s.at).as_secs_f64()
            } else {
                s.elapsed.as_secs_f64()
            }
        };
        let t = clock(now);
        // A new run started its clock again.
        if self.looks.back().is_some_and(|last| clock(last) > t) {
            self.looks.clear();
        }
        while self.looks.len() > 1 && clock(&self.looks[1]) + Self::SPAN <= t {
            self.looks.pop_front();
        }
        let base = self
            .looks
            .front()
            .filter(|first| clock(first) + Self::SPAN <= t)
            .cloned();
        self.looks.push_back(now.clone());
        base
    }
}

/// What limits a pipeline, as the views say it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Verdict<'a> {
    /// This stage uses the most of its capacity, and most of it
    /// ([`BOTTLENECK_SHARE`] or more): the bottleneck.
    Bottleneck(&'a StageRates),
    /// No stage is the bottleneck, and the frontend spends most of its time
    /// ([`SOURCE_BOUND_SHARE`] or more) waiting for its source: the pipeline is source-bound.
    WaitingForInput,
    /// Neither: the stages have room to spare and the source does not wait (a run starting,
    /// ending, or balanced).
    Nothing,
}

impl<'a> Verdict<'a> {
    /// What the views show: `bottleneck: NAME`, `waiting for input`, or nothing.
    ///
    /// ```
    /// use engine::observe::Verdict;
    ///
    /// assert_eq!(Verdict::WaitingForInput.summary().as_deref(), Some("waiting for input"));
    /// assert_eq!(Verdict::Nothing.summary(), None);
    /// ```
    pub fn summary(&self) -> Option<String> {
        match self {
            Self::Bottleneck(stage) => Some(format!("bottleneck: {}", stage.name)),
            Self::WaitingForInput => Some("waiting for input".to_owned()),
            Self::Nothing => None,
        }
    }

    /// The bottleneck, if there is one.
    pub fn bottleneck(self) -> Option<&'a StageRates> {
        match self {
            Self::Bottleneck(stage) => Some(stage),
            Self::WaitingForInput | Self::Nothing => None,
        }
    }
}

/// What limits the pipeline: the stage whose threads work most ([`StageRates::load`]), if
/// they work most of the time ([`BOTTLENECK_SHARE`]), or at least half of it while the stage
/// before waits for room as long ([`HOLDING_BACK_SHARE`]); otherwise its source, if the
/// frontend mostly waits for input ([`SOURCE_BOUND_SHARE`]); otherwise nothing. `rates` are
/// in pipeline order, as [`rates`] gives them.
///
/// Work is what the engine counts as busy: waiting for input (an empty queue, a frontend's
/// read of its source marked with `engine::core::waiting_for_input`) and waiting for room
/// downstream are not work, so a frontend that waits on a slow pipe is never the bottleneck.
pub fn verdict(rates: &[StageRates]) -> Verdict<'_> {
    let busiest = rates
        .iter()
        .enumerate()
        .filter(|(_, r)| r.load() > 0.0)
        .max_by(|(_, a), (_, b)| a.load().total_cmp(&b.load()));
    if let Some((at, stage)) = busiest {
        let holds_back = at > 0
            && rates[at - 1].room_share() >= HOLDING_BACK_SHARE
            && stage.load() >= HOLDING_BACK_SHARE;
        if stage.load() >= BOTTLENECK_SHARE || holds_back {
            return Verdict::Bottleneck(stage);
        }
    }
    let mut frontends = rates.iter().filter(|r| r.kind == "frontend").peekable();
    if frontends.peek().is_some() && frontends.all(|r| r.input_share() >= SOURCE_BOUND_SHARE) {
        return Verdict::WaitingForInput;
    }
    Verdict::Nothing
}

/// The stage that limits the pipeline, if one does: see [`verdict`].
pub fn bottleneck(rates: &[StageRates]) -> Option<&StageRates> {
    verdict(rates).bottleneck()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// One stage's sample after 10 s on one thread: `busy`, `waiting` for input and
    /// `blocked` seconds.
    fn stage(name: &str, kind: &str, busy: f64, waiting: f64, blocked: f64) -> StageSample {
        let mut s = StageSample::new(name, kind);
        s.threads = 1;
        s.items_in = 1000.0;
        s.items_out = 1000.0;
        s.busy_seconds = busy;
        s.waiting_input_seconds = waiting;
        s.blocked_seconds = blocked;
        s
    }

    fn after_10s(stages: Vec<StageSample>) -> Snapshot {
        Snapshot::new(Instant::now(), Duration::from_secs(10), true, stages)
    }

    #[test]
    fn a_frontend_waiting_on_a_slow_source_is_source_bound_not_a_bottleneck() {
        // A pipe fed a line every 10 ms: the frontend reads (marked) nearly all the time,
        // the stages after it wait on empty queues.
        let now = after_10s(vec![
            stage("stdin", "frontend", 0.05, 9.9, 0.0),
            stage("parse", "transport", 0.3, 9.6, 0.0),
            stage("sink", "backend", 0.2, 9.7, 0.0),
        ]);
        let rates = rates(None, &now);
        let stdin = &rates[0];
        assert!(
            stdin.busy < 0.01 && stdin.waiting_for_input > 0.98,
            "{stdin:?}"
        );
        assert_eq!(verdict(&rates), Verdict::WaitingForInput);
        assert_eq!(bottleneck(&rates), None);
    }

    #[test]
    fn a_spinning_transport_is_the_bottleneck_and_its_frontend_backpressured() {
        let now = after_10s(vec![
            stage("numbers", "frontend", 0.4, 0.0, 9.5),
            stage("spin", "transport", 9.8, 0.1, 0.0),
            stage("sink", "backend", 0.3, 9.6, 0.0),
        ]);
        let rates = rates(None, &now);
        let Verdict::Bottleneck(spin) = verdict(&rates) else {
            panic!("{rates:?}");
        };
        assert_eq!(spin.name, "spin");
        assert!(rates[0].backpressured && (rates[0].waiting_for_room - 0.95).abs() < 1e-9);
        assert_eq!(
            verdict(&rates).summary().as_deref(),
            Some("bottleneck: spin")
        );
    }

    #[test]
    fn the_busiest_stage_is_not_named_unless_it_works_most_of_the_time() {
        // Balanced and light: the busiest works 40% of the time, the source does not wait.
        let now = after_10s(vec![
            stage("numbers", "frontend", 2.0, 0.0, 1.0),
            stage("parse", "transport", 4.0, 6.0, 0.0),
        ]);
        let light = rates(None, &now);
        assert_eq!(verdict(&light), Verdict::Nothing);
        // A stage at 70% is named, even when the frontend waits too.
        let now = after_10s(vec![
            stage("stdin", "frontend", 0.1, 9.0, 0.0),
            stage("parse", "transport", 7.0, 3.0, 0.0),
        ]);
        assert_eq!(bottleneck(&rates(None, &now)).unwrap().name, "parse");
    }

    #[test]
    fn a_spinning_stage_on_a_crowded_cpu_is_the_bottleneck_an_offloading_one_waiting_is_not() {
        // Seen 6 s of 10 (the rest: ready but off the CPU), working 5 of them: 83%.
        let crowded = after_10s(vec![
            stage("numbers", "frontend", 0.1, 0.0, 9.9),
            stage("spin", "transport", 5.0, 1.0, 0.0),
            stage("sink", "backend", 0.1, 9.9, 0.0),
        ]);
        let looks = rates(None, &crowded);
        assert!((looks[1].work_share() - 5.0 / 6.0).abs() < 1e-9);
        assert_eq!(bottleneck(&looks).unwrap().name, "spin");
        // Its upstream kept off the CPU: it waits for input a third of its time, yet holds
        // back a frontend that waits for room.
        let starved = after_10s(vec![
            stage("numbers", "frontend", 0.1, 0.0, 9.9),
            stage("spin", "transport", 6.0, 3.0, 0.0),
        ]);
        assert_eq!(bottleneck(&rates(None, &starved)).unwrap().name, "spin");
        // As busy, with nothing held back: room to spare.
        let light = after_10s(vec![
            stage("stdin", "frontend", 3.0, 2.0, 1.0),
            stage("parse", "transport", 6.0, 3.0, 0.0),
        ]);
        assert_eq!(verdict(&rates(None, &light)), Verdict::Nothing);
        // Seen 1 s of 10: it mostly waits for its results, which is not work.
        let offloading = after_10s(vec![
            stage("stdin", "frontend", 0.1, 9.8, 0.0),
            stage("placed", "transport", 0.8, 0.2, 0.0),
        ]);
        let looks = rates(None, &offloading);
        assert!((looks[1].work_share() - 0.08).abs() < 1e-9);
        assert_eq!(verdict(&looks), Verdict::WaitingForInput);
    }

    #[test]
    fn a_view_takes_rates_over_at_least_a_second_of_the_engines_clock() {
        let start = Instant::now();
        let look = |ms: u64| {
            let at = start + Duration::from_millis(ms);
            Snapshot::new(at, Duration::from_millis(ms), true, Vec::new())
        };
        let mut window = Window::default();
        let base = |w: &mut Window, ms| w.base_for(&look(ms)).map(|b| b.elapsed.as_millis());
        assert_eq!(base(&mut window, 250), None);
        assert_eq!(base(&mut window, 500), None);
        assert_eq!(base(&mut window, 1250), Some(250));
        assert_eq!(base(&mut window, 1500), Some(500));
        assert_eq!(base(&mut window, 1750), Some(500));
        assert_eq!(base(&mut window, 2600), Some(1500));
        // A new run: its clock starts again.
        assert_eq!(base(&mut window, 100), None);
    }

    #[test]
    fn the_shares_come_from_the_interval_between_two_looks_and_are_per_thread() {
        let start = Instant::now();
        let mut old = stage("parse", "transport", 1.0, 1.0, 0.0);
        old.threads = 2;
        let before = Snapshot::new(start, Duration::from_secs(1), true, vec![old.clone()]);
        let mut new = old;
        new.busy_seconds += 3.0; // Of 2 threads x 2 s.
        new.waiting_input_seconds += 0.5;
        new.blocked_seconds += 0.5;
        let now = Snapshot::new(
            start + Duration::from_secs(2),
            Duration::from_secs(3),
            true,
            vec![new],
        );
        let r = &rates(Some(&before), &now)[0];
        assert!((r.busy - 0.75).abs() < 1e-9, "{r:?}");
        assert!((r.waiting_for_input - 0.125).abs() < 1e-9, "{r:?}");
        assert!((r.waiting_for_room - 0.125).abs() < 1e-9, "{r:?}");
        assert_eq!(
            bottleneck(&rates(Some(&before), &now)).unwrap().name,
            "parse"
        );
    }

    #[test]
    fn an_async_stage_at_its_limit_is_the_bottleneck_though_its_thread_waits() {
        // Its thread mostly waits for its futures; 1000 of 1024 are in flight.
        let mut fetch = stage("fetch", "transport", 0.5, 0.2, 0.0);
        fetch.in_flight = 1000.0;
        fetch.concurrency_limit = 1024.0;
        let now = after_10s(vec![
            stage("urls", "frontend", 0.2, 0.0, 9.7),
            fetch.clone(),
            stage("store", "backend", 0.4, 9.5, 0.0),
        ]);
        let looks = rates(None, &now);
        assert!(looks[1].is_async() && looks[1].in_flight == 1000);
        assert_eq!(bottleneck(&looks).unwrap().name, "fetch");
        // With few in flight, it has room: fed slowly, the pipeline waits for input.
        fetch.in_flight = 3.0;
        let now = after_10s(vec![stage("urls", "frontend", 0.1, 9.8, 0.0), fetch]);
        assert_eq!(verdict(&rates(None, &now)), Verdict::WaitingForInput);
    }
}
