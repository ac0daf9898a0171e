//! `ledgerline bench mixer`: participants mixed in real time per core, ours against the
//! naive decode-sum-encode-per-listener mixer, on the same rooms and frames in the same run.
//!
//! Rooms of `ROOM_SIZE` participants (two talking, the rest silent, a third on PCMA) are fed
//! one frame each per tick and mixed; a figure is `participants × ticks × 20 ms / CPU time`
//! of the mixing thread, the number of participants one core keeps up with. Median of three timed runs after a
//! warm-up; every run is bounded in ticks.

use std::hint::black_box;

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
    let start = thread_cpu_now();
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
    participants_per_core(ticks, thread_cpu_now() - start)
}

fn naive_run(ticks: u64) -> f64 {
    let frames = frames();
    let mut rooms: Vec<NaiveMixer> = (0..ROOMS)
        .map(|_| NaiveMixer::new((0..ROOM_SIZE).map(codec_of).collect()))
        .collect();
    let start = thread_cpu_now();
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
    participants_per_core(ticks, thread_cpu_now() - start)
}

/// CPU time of the calling thread, in seconds: "per core" figures divide by this, so other
/// load on the shared machine does not count against either mixer.
pub fn thread_cpu_now() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a live timespec the call fills.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
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

/// `ledgerline bench rtp_relay`: packets relayed per second by the engine (one thread,
/// epoll, `recvmmsg`/`sendmmsg`) against a naive relay (one task per socket, one syscall per
/// packet) on a one-worker runtime, both fed by the same generator over loopback. The
/// generator sends each burst as one GSO datagram so it outruns both relays: each is measured
/// saturated (its thread busy the whole run), not half idle waiting for packets.
pub mod relay {
    use std::net::{SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use uuid::Uuid;

    use crate::engine::{Engine, EngineConfig};
    use crate::g711::Codec;
    use crate::rtp::{self, RtpHeader};
    use crate::sys;

    pub const CALLS: usize = 50;
    const RUN: Duration = Duration::from_millis(2_000);
    const RUNS: usize = 3;

    fn packet(seq: u16) -> Vec<u8> {
        let mut out = Vec::new();
        rtp::build(
            &RtpHeader {
                marker: false,
                payload_type: 0,
                sequence: seq,
                timestamp: seq as u32 * 160,
                ssrc: 7,
            },
            &[0xFF; 160],
            &mut out,
        );
        out
    }

    /// Blast packets from one socket per call to `targets` for `RUN`; returns packets sent.
    fn generate(phones: &[UdpSocket], targets: &[SocketAddr]) -> u64 {
        let packets: Vec<Vec<u8>> = (0..sys::BATCH as u16).map(packet).collect();
        let segments: Vec<&[u8]> = packets.iter().map(|p| &p[..]).collect();
        let mut scratch = Vec::new();
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < RUN {
            for (phone, target) in phones.iter().zip(targets) {
                // One GSO send a burst where the kernel takes it (the generator must outrun
                // the relays, or they would be measured half idle); sendmmsg otherwise.
                match sys::send_gso(phone.as_raw_fd(), &segments, *target, &mut scratch) {
                    Ok(n) => sent += n as u64,
                    Err(_) => {
                        let batch: Vec<(&[u8], SocketAddr)> = packets.iter().map(|p| (&p[..], *target)).collect();
                        sent += sys::send_batch(phone.as_raw_fd(), &batch) as u64;
                    }
                }
            }
        }
        sent
    }

    fn sockets(n: usize) -> std::io::Result<Vec<UdpSocket>> {
        (0..n).map(|_| UdpSocket::bind("127.0.0.1:0")).collect()
    }

    /// CPU seconds (user + system) used so far by this process's threads whose name starts
    /// with `prefix`: a relay's throughput per core is packets over its own CPU time, which
    /// does not depend on what else the shared machine is running.
    pub fn thread_cpu_seconds(prefix: &str) -> f64 {
        let mut ticks = 0u64;
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return 0.0;
        };
        for task in tasks.flatten() {
            let path = task.path();
            let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
                continue;
            };
            if !comm.trim_end().starts_with(prefix) {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
                continue;
            };
            // Fields after the `(comm)`: state is 3rd; utime and stime are the 14th and 15th.
            let Some(rest) = stat.rsplit_once(')').map(|r| r.1) else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.len() > 12 {
                ticks += fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
            }
        }
        // SAFETY: sysconf only reads a constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        ticks as f64 / hz
    }

    /// Ours: returns packets relayed per CPU second of the engine thread.
    pub async fn ours() -> std::io::Result<f64> {
        let (engine, _events) = Engine::start(EngineConfig {
            bind_ip: "127.0.0.1".parse().expect("an address"),
            public_ip: None,
            port_min: 0,
            port_max: 0,
            data_dir: std::env::temp_dir(),
        })?;
        let phones = sockets(CALLS)?;
        let sinks = sockets(CALLS)?;
        let mut targets = Vec::new();
        let mut calls = Vec::new();
        for (phone, sink) in phones.iter().zip(&sinks) {
            let (call, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
            let ports = engine
                .add_leg(call, a, Codec::Pcmu, Some(phone.local_addr()?))
                .await
                .map_err(std::io::Error::other)?;
            engine
                .add_leg(call, b, Codec::Pcmu, Some(sink.local_addr()?))
                .await
                .map_err(std::io::Error::other)?;
            engine.bridge(a, b).await.map_err(std::io::Error::other)?;
            targets.push(SocketAddr::from(([127, 0, 0, 1], ports.rtp)));
            calls.push((call, b));
        }
        let cpu_before = thread_cpu_seconds("media-engine");
        tokio::task::spawn_blocking(move || generate(&phones, &targets))
            .await
            .map_err(std::io::Error::other)?;
        let mut relayed = 0u64;
        for (call, b) in calls {
            let stats = engine.delete_call(call).await.map_err(std::io::Error::other)?;
            relayed += stats
                .iter()
                .find(|s| s.leg_id == b)
                .map(|s| s.packets_sent)
                .unwrap_or(0);
        }
        let cpu = thread_cpu_seconds("media-engine") - cpu_before;
        engine.stop();
        drop(sinks);
        Ok(relayed as f64 / cpu.max(0.01))
    }

    /// The naive relay: a task per socket, `recv_from` then `send_to`, on one worker thread.
    pub fn naive() -> std::io::Result<f64> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("naive-relay")
            .enable_all()
            .build()?;
        let phones = sockets(CALLS)?;
        let sinks = sockets(CALLS)?;
        let relayed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut targets = Vec::new();
        let mut tasks = Vec::new();
        for sink in &sinks {
            let inbound = UdpSocket::bind("127.0.0.1:0")?;
            let outbound = UdpSocket::bind("127.0.0.1:0")?;
            inbound.set_nonblocking(true)?;
            outbound.set_nonblocking(true)?;
            targets.push(inbound.local_addr()?);
            let to = sink.local_addr()?;
            let relayed = relayed.clone();
            let stop = stop.clone();
            tasks.push(runtime.spawn(async move {
                let (Ok(inbound), Ok(outbound)) = (
                    tokio::net::UdpSocket::from_std(inbound),
                    tokio::net::UdpSocket::from_std(outbound),
                ) else {
                    return;
                };
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Ok((n, _))) =
                        tokio::time::timeout(Duration::from_millis(50), inbound.recv_from(&mut buf)).await
                    else {
                        continue;
                    };
                    if outbound.send_to(&buf[..n], to).await.is_ok() {
                        relayed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        let cpu_before = thread_cpu_seconds("naive-relay");
        generate(&phones, &targets);
        stop.store(true, Ordering::Relaxed);
        runtime.block_on(async {
            for t in tasks {
                let _ = t.await;
            }
        });
        // Both relays are measured up to the moment they stopped relaying (queued packets included).
        let cpu = thread_cpu_seconds("naive-relay") - cpu_before;
        drop(sinks);
        Ok(relayed.load(Ordering::Relaxed) as f64 / cpu.max(0.01))
    }

    /// Median of three runs each; returns (ours, naive) packets per second.
    pub async fn run() -> std::io::Result<(u64, u64)> {
        let mut ours_runs = Vec::new();
        let mut naive_runs = Vec::new();
        for _ in 0..RUNS {
            ours_runs.push(ours().await?);
            naive_runs.push(
                tokio::task::spawn_blocking(naive)
                    .await
                    .map_err(std::io::Error::other)??,
            );
        }
        Ok((super::median(ours_runs) as u64, super::median(naive_runs) as u64))
    }
}
