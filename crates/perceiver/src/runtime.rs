//! Where a forward pass runs (rayon's pool) and how a batch's items are laid out (consecutive
//! row ranges of one buffer: no padding).

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

/// Runs a forward pass of `threads` tasks on a thread of rayon's pool (`rayon::scope` runs it
/// in place when called on one, so passes nest without another hop). Called from outside the
/// pool, each of a pass's ~100 parallel ops would be injected into the pool and waited for on a
/// futex by the calling thread, which sleeps and is woken per op; inside, the ops fork and join
/// on the workers' own queues. While it runs, the pool's other workers it uses stay awake
/// ([`KeepAwake`]).
pub(crate) fn on_pool<R: Send>(threads: usize, pass: impl FnOnce() -> R + Send) -> R {
    static PASSES: KeepAwake = KeepAwake::new();
    rayon::scope(|_| PASSES.run(threads, pass))
}

/// While any of its passes runs, `threads - 1` of the pool's workers look for the pass's work
/// by spinning instead of sleeping. A pass forks and joins about ten times a latent layer, and a
/// worker that runs out of work between them goes to sleep within microseconds (rayon spins
/// only a few rounds); waking it again is a futex call, and in a virtual machine an interrupt
/// sent across vCPUs, for every op. Only when the pool has no more threads than the machine has
/// cores: a spinning worker would otherwise take a core from one with work.
pub(crate) struct KeepAwake {
    /// Passes running now, nested ones included.
    passes: AtomicUsize,
    /// Workers now spinning for them.
    spinning: AtomicUsize,
}

impl KeepAwake {
    pub(crate) const fn new() -> Self {
        Self {
            passes: AtomicUsize::new(0),
            spinning: AtomicUsize::new(0),
        }
    }

    /// `pass()` on the calling worker, with the others it needs kept awake: the first of the
    /// passes running at once starts the spinners, and they stop once none runs.
    pub(crate) fn run<R>(&'static self, threads: usize, pass: impl FnOnce() -> R) -> R {
        struct Running(&'static KeepAwake);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.passes.fetch_sub(1, Ordering::AcqRel);
            }
        }
        if self.passes.fetch_add(1, Ordering::AcqRel) == 0 {
            for _ in 1..spinners(threads) {
                self.spinning.fetch_add(1, Ordering::AcqRel);
                rayon::spawn(move || self.spin());
            }
        }
        let _running = Running(self);
        pass()
    }

    /// A worker's wait for work while any pass runs: it runs what the pool's queues hold (the
    /// passes' forked halves, stolen as soon as they are pushed), and between them yields its
    /// core to the OS rather than sleeping. Nothing waits for it: it ends once no pass runs.
    fn spin(&self) {
        while self.passes.load(Ordering::Acquire) > 0 {
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::thread::yield_now();
            }
        }
        self.spinning.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How many of the pool's workers a pass of `threads` tasks keeps busy (its caller's included),
/// where spinning pays (see [`KeepAwake`]); 0 or 1: none spins.
fn spinners(threads: usize) -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::current_num_threads();
    match pool <= cores {
        true => threads.min(pool),
        false => 0,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;
    use std::time::{Duration, Instant};

    /// Waits until no worker spins for `awake`, failing after a generous while.
    fn wait_for_no_spinner(awake: &KeepAwake) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while awake.spinning.load(Ordering::Acquire) > 0 {
            assert!(Instant::now() < deadline, "a spinner outlived the passes");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn kept_awake_passes_give_their_results_and_the_spinners_stop_after_them() {
        static AWAKE: KeepAwake = KeepAwake::new();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let squares = |n: u64| (0..n).into_par_iter().map(|i| i * i).sum::<u64>();
        let expected = |n: u64| (0..n).map(|i| i * i).sum::<u64>();
        for round in 0..20 {
            // A pass, and passes nested in one (as a model's passes call each other).
            let (one, nested) = pool.install(|| {
                let one = AWAKE.run(2, || squares(10_000));
                let nested = AWAKE.run(2, || squares(100) + AWAKE.run(2, || squares(1_000)));
                (one, nested)
            });
            assert_eq!(one, expected(10_000), "round {round}");
            assert_eq!(nested, expected(100) + expected(1_000), "round {round}");
            wait_for_no_spinner(&AWAKE);
            assert_eq!(AWAKE.passes.load(Ordering::Acquire), 0);
        }
    }

    #[test]
    fn a_pass_that_panics_is_no_longer_counted() {
        static AWAKE: KeepAwake = KeepAwake::new();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| AWAKE.run(2, || panic!("a pass that fails")))
        }));
        assert!(result.is_err());
        assert_eq!(AWAKE.passes.load(Ordering::Acquire), 0);
        wait_for_no_spinner(&AWAKE);
    }
}
