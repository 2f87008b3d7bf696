//! The one adaptive batch-size rule the engines share.

use std::time::Duration;

/// The batch size that makes one batch take about `target`, given that the last one of
/// `items` items took `took`; between 1 and `max`.
///
/// Engines hand items over in batches to share the cost of a channel operation or a process
/// round trip among many items, and size them by the consumer's speed: a fast stage gets
/// large batches, a slow one small batches, so that an item waits at most about `target`
/// behind the others of its batch. The threaded engine's queues and the process pool both
/// use it; the pool also caps how fast a batch may grow.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use engine::core::plumbing::fit_batch;
///
/// let target = Duration::from_millis(1);
/// // 100 items in 10 µs: 0.1 µs each, so 10,000 fit in a millisecond.
/// assert_eq!(fit_batch(100, Duration::from_micros(10), target, 1 << 20), 10_000);
/// // Capped by `max`.
/// assert_eq!(fit_batch(100, Duration::from_micros(10), target, 512), 512);
/// // A slow stage (5 ms per item) goes one by one.
/// assert_eq!(fit_batch(2, Duration::from_millis(10), target, 512), 1);
/// // No items measured: keep the largest.
/// assert_eq!(fit_batch(0, Duration::ZERO, target, 512), 512);
/// ```
pub fn fit_batch(items: usize, took: Duration, target: Duration, max: usize) -> usize {
    let max = max.max(1);
    if items == 0 {
        return max;
    }
    let per_item = (took.as_nanos() / items as u128).max(1);
    (target.as_nanos() / per_item).clamp(1, max as u128) as usize
}
