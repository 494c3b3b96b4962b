//! glibc's malloc, tuned for a long-lived server before any thread starts.
//!
//! Two of glibc's defaults cost a service resident memory it does not use:
//!
//! - **The dynamic mmap threshold.** After a large block allocated by mmap
//!   is freed, glibc raises its threshold to that block's size, so later
//!   blocks of that size come from the arenas and stay resident after they
//!   are freed. Pinning the threshold (at 1 MiB) keeps large buffers in
//!   their own mappings, given back to the system when freed.
//! - **Arenas.** Each thread that meets contention gets an arena of its own,
//!   up to 8 per CPU; a process with tokio's workers and blocking threads,
//!   librdkafka's threads and the log writer ends up with a dozen, each
//!   keeping the freed memory of whatever ran there. We allow two per CPU.
//!
//! One arena per CPU saved a little more, but made the gateway's reads
//! bimodal: in about one shop in three, busy threads shared an arena and
//! the reads ran at 17-19k instead of 28-30k requests/s (wrk, 32
//! connections, `GET /api/products/{id}`, `commerce local up`). With two
//! per CPU, five shops out of five read at 26.2-28.5k (no tuning: four at
//! 27.8-30.8k). Idle RSS of `commerce serve all` after 1,000 registrations
//! (e2e/tests/throughput.rs): 65.6-65.7 MiB with the threshold alone, 63.9
//! with both.
//!
//! The same settings could be given as `MALLOC_MMAP_THRESHOLD_` and
//! `MALLOC_ARENA_MAX` in the environment; setting them here makes them the
//! program's own, in every way it is started.
//!
//! A third cost has no setting: glibc gives freed memory back to the system
//! only from the top of the main heap. What a burst of work freed elsewhere
//! (in the other arenas, or below a block still in use) stays resident
//! until `malloc_trim`, which releases the free pages of every arena. So a
//! thread of ours calls it every [`TRIM_INTERVAL`] (allocators such as
//! jemalloc do the same on their own, by decay). A call takes each arena's
//! lock for the time of its walk, about a millisecond here.

/// Largest allocation served from the arenas; larger ones are mmapped.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 1 << 20;

/// Arenas allowed per CPU (glibc's default is 8).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS_PER_CPU: usize = 2;

/// Sets glibc's malloc parameters. Call it first in `main`, before any
/// other thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune() {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let arenas = libc::c_int::try_from(cpus.saturating_mul(ARENAS_PER_CPU)).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes malloc's parameters; it takes plain
    // integers and is called before any other thread could allocate.
    let (threshold_set, arenas_set) = unsafe {
        (libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD), libc::mallopt(libc::M_ARENA_MAX, arenas))
    };
    // mallopt returns 1 on success; a refusal leaves glibc's defaults,
    // which work, only with more memory.
    if threshold_set != 1 || arenas_set != 1 {
        eprintln!(
            "warning: glibc refused the malloc settings (mmap threshold {threshold_set}, arenas {arenas_set})"
        );
    }
}

/// Other C libraries: their defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}

/// How often freed memory is given back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts the thread that gives freed memory back every [`TRIM_INTERVAL`].
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn start_trimming() {
    let started =
        std::thread::Builder::new().name("malloc-trim".to_owned()).stack_size(64 << 10).spawn(|| {
            loop {
                std::thread::sleep(TRIM_INTERVAL);
                // SAFETY: malloc_trim takes a plain integer (the padding to keep
                // at the top of the heap) and is safe to call from any thread.
                unsafe {
                    libc::malloc_trim(0);
                }
            }
        });
    if let Err(error) = started {
        eprintln!("warning: cannot start the thread that gives freed memory back: {error}");
    }
}

/// Other C libraries: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn start_trimming() {}
