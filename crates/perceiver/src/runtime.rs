//! Where a forward pass runs (rayon's pool) and how a batch's items are laid out (consecutive
//! row ranges of one buffer: no padding).

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Runs a forward pass on a thread of rayon's pool (`rayon::scope` runs it in place when called
/// on one, so passes nest without another hop). Called from outside the pool, each of a pass's
/// ~100 parallel ops would be injected into the pool and waited for on a futex by the calling
/// thread, which sleeps and is woken per op; inside, the ops fork and join on the workers' own
/// queues.
pub(crate) fn on_pool<R: Send>(pass: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| pass())
}

/// `pass(i)` for every i < `count`, at most `threads` at a time on the pool, each worker taking
/// the next i as it finishes one (so that items of unequal cost still share the work); the
/// results in order of i.
pub(crate) fn side_by_side<T: Send>(
    count: usize,
    threads: usize,
    pass: impl Fn(usize) -> T + Sync,
) -> Vec<T> {
    // A single pass (no whole round of inputs) asks for nothing: no workers are spawned.
    if count == 0 {
        return Vec::new();
    }
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<T>>> = (0..count).map(|_| Mutex::new(None)).collect();
    rayon::scope(|scope| {
        for _ in 0..threads.clamp(1, count) {
            scope.spawn(|_| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(slot) = results.get(i) else { break };
                let result = pass(i);
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
            });
        }
    });
    results
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .unwrap_or_else(PoisonError::into_inner)
                .expect("every item was taken by a worker")
        })
        .collect()
}

/// The index of the first NaN or infinity in `values`, if any. A branch-free pass first (it
/// vectorises), over the pool's threads: for weights read in place it is the first touch of
/// their pages, which would otherwise fault in on one thread while the packing that follows
/// runs on all. The position is sought only when there is one to report.
pub(crate) fn first_non_finite(values: &[f32]) -> Option<usize> {
    use rayon::prelude::*;
    let finite = |chunk: &[f32]| chunk.iter().fold(true, |ok, v| ok & v.is_finite());
    if values.par_chunks(1 << 16).all(finite) {
        return None;
    }
    values.iter().position(|v| !v.is_finite())
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
