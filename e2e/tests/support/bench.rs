//! How benchmarks report: each figure of the speed table (issue 8) as a
//! line for people and a tab-separated `BENCH` line that `make bench`
//! (e2e/scripts/bench.sh) collects over several runs into min/median/max.
//! Benchmarks print; they never assert timings.

/// Which way a figure should go to meet its target.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
}

impl Target {
    fn parts(self) -> (&'static str, f64) {
        match self {
            Self::AtLeast(value) => (">=", value),
            Self::AtMost(value) => ("<=", value),
        }
    }
}

/// Prints figure `id` (a stable key: the table row) with its `value`,
/// `target` and a sentence saying how it was measured.
pub fn report(id: &str, value: f64, target: Target, how: &str) {
    let (op, goal) = target.parts();
    println!("FIGURE {id}: {value:.3} (target {op} {goal}); {how}");
    println!("BENCH\t{id}\t{value}\t{op}\t{goal}\t{how}");
}

/// Busy share of all CPUs (0.0-1.0) below which the machine counts as
/// quiet for [`wait_until_quiet`].
const QUIET_BELOW: f64 = 0.15;

/// Waits until the machine's CPUs have been quiet (busy under 15%) for two
/// half-second windows in a row, at most `limit`, and returns the busy
/// share of the last window. A benchmark that measures a reference and a
/// subject one after another compares them fairly only if nothing else
/// (Postgres writing a checkpoint after the previous benchmark, Kafka
/// compacting, a shop still stopping) takes the cores from one of them:
/// on this 2-core machine that moved the gateway's ratio from 0.29 to 0.19
/// between two runs of the same build.
pub async fn wait_until_quiet(limit: std::time::Duration) -> anyhow::Result<f64> {
    let started = std::time::Instant::now();
    let mut quiet_windows = 0;
    loop {
        let before = cpu_times()?;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let after = cpu_times()?;
        let total = (after.0 - before.0).max(1) as f64;
        let busy = (after.1 - before.1) as f64 / total;
        quiet_windows = if busy < QUIET_BELOW { quiet_windows + 1 } else { 0 };
        if quiet_windows >= 2 || started.elapsed() >= limit {
            return Ok(busy);
        }
    }
}

/// All CPUs' (total, busy) time in clock ticks since boot, from /proc/stat
/// (busy = everything but idle and iowait).
fn cpu_times() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .next()
        .filter(|line| line.starts_with("cpu "))
        .ok_or_else(|| anyhow::anyhow!("/proc/stat does not start with the all-CPU line"))?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>()?;
    anyhow::ensure!(ticks.len() >= 5, "/proc/stat's cpu line has {} fields", ticks.len());
    let total: u64 = ticks.iter().sum();
    // user nice system idle iowait irq softirq steal ...
    let idle = ticks[3] + ticks[4];
    Ok((total, total - idle))
}
