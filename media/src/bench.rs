//! `ledgerline bench mixer`: participants mixed in real time per core, ours against the
//! naive decode-sum-encode-per-listener mixer, on the same rooms and frames in the same run.
//!
//! Rooms of `ROOM_SIZE` participants (two talking, the rest silent, a third on PCMA) are fed
//! one frame each per tick and mixed; a figure is `participants × ticks × 20 ms / elapsed`,
//! the number of participants one core keeps up with. Median of three timed runs after a
//! warm-up; every run is bounded in ticks.

use std::hint::black_box;
use std::time::Instant;

use uuid::Uuid;

use crate::g711::Codec;
use crate::mixer::{naive::NaiveMixer, Frame, Mixer, Role, RoomConfig, FRAME, TICK_US};

pub const ROOM_SIZE: usize = 10;
pub const ROOMS: usize = 200;
pub const TALKERS_PER_ROOM: usize = 2;
const TICKS_OURS: u64 = 100;
const TICKS_NAIVE: u64 = 20;
const RUNS: usize = 3;

fn codec_of(i: usize) -> Codec {
    if i % 3 == 2 {
        Codec::Pcma
    } else {
        Codec::Pcmu
    }
}

/// The frames participant `i` of a room sends: a tone for talkers, silence for the rest.
fn frames() -> Vec<Frame> {
    (0..ROOM_SIZE)
        .map(|i| {
            let codec = codec_of(i);
            let mut f = [codec.silence(); FRAME];
            if i < TALKERS_PER_ROOM {
                for (k, b) in f.iter_mut().enumerate() {
                    let t = k as f64 / 8000.0;
                    let s = 6000.0 * (2.0 * std::f64::consts::PI * (400.0 + 300.0 * i as f64) * t).sin();
                    *b = codec.encode(s as i16);
                }
            }
            f
        })
        .collect()
}

fn ours_run(ticks: u64) -> f64 {
    let frames = frames();
    let mut rooms: Vec<(Mixer, Vec<Uuid>)> = (0..ROOMS)
        .map(|r| {
            let mut m = Mixer::new(RoomConfig {
                moderated: false,
                max_participants: ROOM_SIZE,
                record: false,
                waiting_prompt: vec![],
            });
            let legs: Vec<Uuid> = (0..ROOM_SIZE)
                .map(|i| Uuid::from_u128((r * ROOM_SIZE + i) as u128 + 1))
                .collect();
            for (i, leg) in legs.iter().enumerate() {
                // Room sizes are below the limit by construction.
                m.join(*leg, Role::Guest, codec_of(i)).expect("room has space");
            }
            (m, legs)
        })
        .collect();
    let start = Instant::now();
    let mut check = 0u64;
    for n in 0..ticks {
        for (m, legs) in rooms.iter_mut() {
            for (i, leg) in legs.iter().enumerate() {
                m.handle_audio(leg, &frames[i]);
            }
            m.tick(n * TICK_US);
            m.for_each_output(|_, _, frame| check += frame[0] as u64);
        }
    }
    black_box(check);
    participants_per_core(ticks, start.elapsed().as_secs_f64())
}

fn naive_run(ticks: u64) -> f64 {
    let frames = frames();
    let mut rooms: Vec<NaiveMixer> = (0..ROOMS)
        .map(|_| NaiveMixer::new((0..ROOM_SIZE).map(codec_of).collect()))
        .collect();
    let start = Instant::now();
    let mut check = 0u64;
    for _ in 0..ticks {
        for m in rooms.iter_mut() {
            m.frames.copy_from_slice(&frames);
            m.tick();
            for out in &m.out {
                check += out[0] as u64;
            }
        }
    }
    black_box(check);
    participants_per_core(ticks, start.elapsed().as_secs_f64())
}

fn participants_per_core(ticks: u64, elapsed_s: f64) -> f64 {
    let audio_s = ticks as f64 * TICK_US as f64 / 1e6;
    (ROOMS * ROOM_SIZE) as f64 * audio_s / elapsed_s.max(1e-9)
}

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(|a, b| a.total_cmp(b));
    runs[runs.len() / 2]
}

/// Measure both mixers; returns (ours, naive) in participants per core.
pub fn mixer() -> (u64, u64) {
    black_box(ours_run(10));
    black_box(naive_run(2));
    let ours = median((0..RUNS).map(|_| ours_run(TICKS_OURS)).collect());
    let naive = median((0..RUNS).map(|_| naive_run(TICKS_NAIVE)).collect());
    (ours as u64, naive as u64)
}

/// The benchmark's line, in the project's format.
pub fn bench_line(name: &str, ours: u64, baseline_name: &str, baseline: u64, unit: &str) -> String {
    let ratio_hundredths = (ours as u128 * 100).checked_div(baseline as u128).unwrap_or(0);
    format!(
        "BENCH {name} ours={ours} {baseline_name}={baseline} ratio={}.{:02} unit={unit}",
        ratio_hundredths / 100,
        ratio_hundredths % 100
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_mixers_run_and_the_line_has_the_format() {
        assert!(ours_run(2) > 0.0);
        assert!(naive_run(1) > 0.0);
        assert_eq!(
            bench_line("mixer", 700, "naive", 200, "participants"),
            "BENCH mixer ours=700 naive=200 ratio=3.50 unit=participants"
        );
    }
}
