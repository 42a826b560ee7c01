//! What every tool measures with: latency histograms (one per worker, merged after the run), the
//! open-loop schedule, and this process's own CPU time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// This process's CPU time (user + system) so far, for the generator's own cost per request.
pub fn own_cpu() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesized command name; utime and stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    // CLK_TCK is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

/// One worker's results, merged after the run (no shared counters on the request path).
pub struct Tally {
    pub hist: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: u64,
}

impl Tally {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            hist: histogram()?,
            statuses: BTreeMap::new(),
            errors: 0,
        })
    }

    pub fn record(&mut self, status: Option<u16>, micros: u64) {
        self.hist.saturating_record(micros);
        match status {
            Some(s) => *self.statuses.entry(s).or_default() += 1,
            None => self.errors += 1,
        }
    }

    pub fn merge(&mut self, other: Self) -> anyhow::Result<()> {
        self.hist.add(other.hist)?;
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.errors += other.errors;
        Ok(())
    }
}

/// The open-loop spacing between requests at `rate` per second; none for a closed loop.
pub fn interval(rate: Option<u64>) -> Option<Duration> {
    rate.map(|r| Duration::from_secs_f64(1.0 / r.max(1) as f64))
}

/// Open loop: request `i` is due at `started + i × interval`; waits until then and returns that
/// time, so latency is measured from the schedule, not from when the request finally went out.
/// Closed loop (no interval): now.
pub async fn due(started: Instant, interval: Option<Duration>, i: usize) -> Instant {
    match interval {
        Some(iv) => {
            let due = started + iv.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
            due
        }
        None => Instant::now(),
    }
}

/// Microseconds since `due`, as a histogram records them (at least 1).
pub fn micros_since(due: Instant) -> u64 {
    u64::try_from(due.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    // Microseconds, 1 µs .. 60 s, 3 significant figures.
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}
