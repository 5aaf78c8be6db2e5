//! Where a forward pass runs (rayon's pool) and how a batch's items are laid out (consecutive
//! row ranges of one buffer: no padding).

use std::ops::Range;

/// Runs a forward pass on a thread of rayon's pool (`rayon::scope` runs it in place when called
/// on one, so passes nest without another hop). Called from outside the pool, each of a pass's
/// ~100 parallel ops would be injected into the pool and waited for on a futex by the calling
/// thread, which sleeps and is woken per op; inside, the ops fork and join on the workers' own
/// queues.
pub(crate) fn on_pool<R: Send>(pass: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| pass())
}

/// Row ranges of consecutive items with the given row counts.
pub(crate) fn item_ranges(counts: impl IntoIterator<Item = usize>) -> Vec<Range<usize>> {
    let mut start = 0;
    counts
        .into_iter()
        .map(|n| {
            let range = start..start + n;
            start += n;
            range
        })
        .collect()
}
