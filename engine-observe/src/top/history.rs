//! The recent rates of each stage that `engine top` keeps, drawn as a sparkline per stage.

use std::collections::{HashMap, VecDeque};

use crate::verdict::StageRates;

/// How many rates a stage's sparkline shows.
const SPARK_WIDTH: usize = 16;

/// The bars of a sparkline, lowest to highest.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The last rates out of each stage, which `engine top` draws as a sparkline per stage.
#[derive(Debug, Default)]
pub struct RateHistory {
    stages: HashMap<(String, String), VecDeque<f64>>,
}

impl RateHistory {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one look's rates, keeping the last few of each stage.
    pub fn record(&mut self, rates: &[StageRates]) {
        for r in rates {
            let kept = self
                .stages
                .entry((r.name.clone(), r.kind.clone()))
                .or_default();
            if kept.len() == SPARK_WIDTH {
                kept.pop_front();
            }
            kept.push_back(r.out_per_second);
        }
    }

    /// The stage's rates out as a sparkline, oldest first, scaled to the highest of them,
    /// padded on the left to a fixed width.
    ///
    /// ```
    /// use engine::observe::top::RateHistory;
    ///
    /// let history = RateHistory::new();
    /// assert_eq!(history.sparkline("parse", "transport").chars().count(), 16);
    /// ```
    pub fn sparkline(&self, name: &str, kind: &str) -> String {
        let rates = self
            .stages
            .get(&(name.to_owned(), kind.to_owned()))
            .cloned()
            .unwrap_or_default();
        let top = rates.iter().copied().fold(0.0_f64, f64::max);
        let mut line = " ".repeat(SPARK_WIDTH - rates.len());
        for rate in rates {
            let level = if top > 0.0 {
                ((rate / top) * (BARS.len() - 1) as f64).round() as usize
            } else {
                0
            };
            line.push(BARS[level.min(BARS.len() - 1)]);
        }
        line
    }
}
