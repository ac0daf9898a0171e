//! `ledgerline bench rating`: legs rated per second with the prefix index vs a linear scan.
//!
//! Both matchers run in the same process on the same seeded 50,000-prefix deck and price with
//! the same function, so the ratio isolates the lookup. The index rates a million legs; the
//! scan, which is about a hundred times slower, rates a bounded sample and is extrapolated.
//! Each figure is the median of three timed runs after a warm-up. Output, one line:
//! `BENCH rating ours=<legs/s> naive_scan=<legs/s> ratio=<x> unit=legs/s`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use billing::bench_support::{self, NaiveScan, BENCH_LEG_COUNT, BENCH_PREFIX_COUNT, BENCH_SEED};
use billing::CompiledTariff;

/// How many legs the naive scan rates per run.
const NAIVE_LEG_COUNT: usize = 2_000;

/// Timed runs per figure; the median is reported.
const RUNS: usize = 3;

/// Runs the benchmark and prints its line.
pub fn run() -> Result<()> {
    let version = bench_support::deck(BENCH_SEED, BENCH_PREFIX_COUNT);
    let tariff = CompiledTariff::new(version.clone());
    let legs = bench_support::legs(BENCH_SEED, BENCH_LEG_COUNT, &version);
    let scan = NaiveScan::new(&version);
    let tz = billing::parse_timezone("Europe/Berlin").map_err(|m| anyhow!(m))?;
    let sample = &legs[..NAIVE_LEG_COUNT.min(legs.len())];

    // Both matchers must agree before either is timed.
    let ours_sample = bench_support::rate_with_index(&tariff, sample, tz);
    let naive_sample = bench_support::rate_with_scan(&version, &scan, sample, tz);
    if ours_sample != naive_sample {
        return Err(anyhow!("index and scan disagree: {ours_sample:?} vs {naive_sample:?}"));
    }

    // Warm-up: caches, branch predictors, the allocator.
    black_box(bench_support::rate_with_index(&tariff, &legs[..legs.len() / 10], tz));
    black_box(bench_support::rate_with_scan(
        &version,
        &scan,
        &sample[..sample.len() / 10],
        tz,
    ));

    let ours = median_rate(legs.len(), || {
        black_box(bench_support::rate_with_index(&tariff, black_box(&legs), tz));
    });
    let naive = median_rate(sample.len(), || {
        black_box(bench_support::rate_with_scan(&version, &scan, black_box(sample), tz));
    });
    let ratio_hundredths = (ours * 100).checked_div(naive).unwrap_or(0);
    println!(
        "BENCH rating ours={ours} naive_scan={naive} ratio={}.{:02} unit=legs/s",
        ratio_hundredths / 100,
        ratio_hundredths % 100
    );
    Ok(())
}

/// Legs per second: the median of `RUNS` timings of `work`, which rates `legs` legs.
fn median_rate(legs: usize, mut work: impl FnMut()) -> u128 {
    let mut rates: Vec<u128> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            work();
            legs_per_second(legs, started.elapsed())
        })
        .collect();
    rates.sort_unstable();
    rates[RUNS / 2]
}

fn legs_per_second(legs: usize, elapsed: Duration) -> u128 {
    let nanos = elapsed.as_nanos().max(1);
    (legs as u128) * 1_000_000_000 / nanos
}
