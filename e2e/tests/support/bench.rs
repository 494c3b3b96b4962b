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
