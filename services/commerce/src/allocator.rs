//! glibc's malloc, tuned for a long-lived server before any thread starts.
//!
//! Two of glibc's defaults cost a service resident memory it does not use:
//!
//! - **Arenas.** Each thread that meets contention gets an arena of its own,
//!   up to 8 per CPU. A process with tokio's workers and blocking threads,
//!   librdkafka's threads and the log writer ends up with a dozen arenas,
//!   each keeping the freed memory of whatever ran there. More arenas than
//!   CPUs cannot run at once, so we allow one per CPU.
//! - **The dynamic mmap threshold.** After a large block allocated by mmap
//!   is freed, glibc raises its threshold to that block's size, so later
//!   blocks of that size come from the arenas and stay resident after they
//!   are freed. Pinning the threshold (at 1 MiB) keeps large buffers in
//!   their own mappings, given back to the system when freed.
//!
//! Measured on `commerce serve all` (e2e/tests/throughput.rs, release):
//! the idle RSS after 1,000 registrations went from 70.4 to 64.7 MiB with
//! both settings (66.8 with the arenas alone); see the stop's note for the
//! runs. jemalloc was tried instead and held more (69.0 MiB idle).
//!
//! The same settings could be given as `MALLOC_ARENA_MAX` and
//! `MALLOC_MMAP_THRESHOLD_` in the environment; setting them here makes them
//! the program's own, in every way it is started.

/// Largest allocation served from the arenas; larger ones are mmapped.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 1 << 20;

/// Sets glibc's malloc parameters. Call it first in `main`, before any
/// other thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune() {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let arenas = libc::c_int::try_from(cpus).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes malloc's parameters; it takes plain
    // integers and is called before any other thread could allocate.
    let (arenas_set, threshold_set) = unsafe {
        (libc::mallopt(libc::M_ARENA_MAX, arenas), libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    };
    // mallopt returns 1 on success; a refusal leaves glibc's defaults,
    // which work, only with more memory.
    if arenas_set != 1 || threshold_set != 1 {
        eprintln!(
            "warning: glibc refused the malloc settings (arenas {arenas_set}, mmap threshold {threshold_set})"
        );
    }
}

/// Other C libraries: their defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}
