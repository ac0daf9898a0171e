//! `ledgerline bench sip-core`: the CPU one digest registration costs in the SIP node's core,
//! without sockets, the async runtime or Postgres: parsing both REGISTERs, the transaction
//! layer, the registrar (challenge, digest verification, contacts) and rendering both answers.
//!
//! The machine's speed drifts between sittings by more than a small change moves the
//! end-to-end benchmark (`bench/sip.sh`), so a change to the core is judged here: two builds
//! run this alternately, and compare.
//!
//! How: a first pass plays a phone for every user (REGISTER, the 401, REGISTER with an
//! answer, the 200), with the clock and the nonce randomness as inputs, and records what the
//! phones sent and what the location table answered. The timed pass feeds the same inputs to a
//! fresh node, which then issues the same nonces, so the recorded answers verify; it must
//! give the same status codes, or the run fails.

use super::digest::{answer_challenge, DigestConfig};
use super::message::SipMessage;
use super::node::{NodeConfig, NodeEvent, Now, SaveOutcome, SipNode};
use super::registrar::{Binding, BindingChange, ExtensionRecord, Lookup, RegistrarConfig};
use super::screening::NodeIdentity;
use super::transaction::{Timers, Transport};
use chrono::{TimeZone, Utc};
use domain::digest::Ha1;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use uuid::Uuid;

const DOMAIN: &str = "acme.test";

/// What one timed pass measured.
#[derive(Debug, Clone, Copy)]
pub struct CoreReport {
    pub registrations: usize,
    /// CPU time of the thread that ran the pass (time a neighbour took is not counted).
    pub elapsed: Duration,
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to fill; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec.max(0) as u64, now.tv_nsec.clamp(0, 999_999_999) as u32)
}

impl CoreReport {
    pub fn micros_per_registration(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e6 / self.registrations.max(1) as f64
    }
}

/// One input to the node, as recorded in the first pass.
enum Step {
    Datagram {
        at: Now,
        bytes: Vec<u8>,
    },
    Lookup {
        at: Now,
        user: usize,
        bindings: Vec<Binding>,
        random: [u8; 16],
    },
}

fn config() -> NodeConfig {
    NodeConfig {
        timers: Timers::default(),
        registrar: RegistrarConfig::default(),
        digest: DigestConfig {
            secret: b"bench".to_vec(),
            nonce_lifetime_secs: 300,
            max_tracked_nonces: 100_000,
            prefer_sha256: false,
            offer_sha256: true,
        },
        abuse: super::abuse::AbuseConfig {
            max_failures: 10,
            window: chrono::Duration::seconds(60),
            block_for: chrono::Duration::seconds(600),
            max_tracked_sources: 10_000,
        },
        identity: NodeIdentity {
            sent_by: vec!["127.0.0.1:5060".into()],
            branch_prefix: "llbench".into(),
        },
        max_server_transactions: 250_000,
        max_pending_lookups: 10_000,
        calls: super::b2bua::CallConfig::default(),
    }
}

fn lookups(users: usize) -> Vec<Lookup> {
    (0..users)
        .map(|u| Lookup::Tenant {
            tenant_id: Uuid::from_u128(1),
            sip_domain: DOMAIN.into(),
            suspended: false,
            extension: Some(ExtensionRecord {
                extension_id: Uuid::from_u128(1000 + u as u128),
                number: (1000 + u).to_string(),
                ha1: Ha1::compute(&(1000 + u).to_string(), DOMAIN, &format!("pass-{}", 1000 + u)),
                enabled: true,
            }),
        })
        .collect()
}

/// A REGISTER as sipp's `reg_auth.xml` sends it.
fn register(user: usize, call: usize, cseq: u32, authorization: Option<&str>) -> Vec<u8> {
    let number = 1000 + user;
    let authorization = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{call}-{cseq}\r\n\
From: <sip:{number}@{DOMAIN}>;tag={call}\r\nTo: <sip:{number}@{DOMAIN}>\r\nCall-ID: {call}-bench@127.0.0.1\r\n\
CSeq: {cseq} REGISTER\r\nContact: <sip:{number}@127.0.0.1:5080>\r\n{authorization}Max-Forwards: 70\r\n\
Expires: 3600\r\nUser-Agent: bars-sipp\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn phone() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5061))
}

fn at(call: usize) -> Now {
    // 20 µs apart: 50,000 registrations a second of simulated time.
    let mono = Duration::from_micros(20 * call as u64);
    Now {
        mono,
        wall: Utc.timestamp_opt(1_800_000_000, 0).single().unwrap_or_default()
            + chrono::Duration::microseconds(20 * call as i64),
    }
}

fn random(n: usize) -> [u8; 16] {
    (n as u128)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
        .to_be_bytes()
}

/// Drives one input through the node; pushes the status codes it sent and returns the
/// last datagram. Every save the node asks for succeeds at once; its changes go to `saved`.
fn feed(
    node: &mut SipNode,
    step: &Step,
    lookups: &[Lookup],
    codes: &mut Vec<u16>,
    saved: &mut Vec<BindingChange>,
) -> Option<Vec<u8>> {
    match step {
        Step::Datagram { at, bytes } => {
            node.handle_message(*at, phone(), Transport::Unreliable, SipMessage::parse(bytes));
        }
        Step::Lookup {
            at,
            user,
            bindings,
            random,
        } => {
            let id = match node.poll_event() {
                Some(NodeEvent::RegisterLookup { id, .. }) => id,
                _ => return None,
            };
            node.handle_register_lookup(*at, id, lookups[*user].clone(), bindings.clone(), true, *random);
            while let Some(event) = node.poll_event() {
                if let NodeEvent::BindingsChanged { id, changes, .. } = event {
                    node.handle_bindings_saved(*at, id, SaveOutcome::Saved);
                    saved.extend(changes);
                }
            }
        }
    }
    let mut last = None;
    while let Some(transmit) = node.poll_transmit() {
        // `SIP/2.0 401 ...`: the code is bytes 8 to 11.
        let code = transmit
            .bytes
            .get(8..11)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        codes.push(code);
        last = Some(transmit.bytes);
    }
    last
}

/// Plays `rounds` registrations of each of `users` phones; returns the recorded inputs and the
/// codes the node answered with.
fn record(users: usize, rounds: usize, lookups: &[Lookup]) -> (Vec<Step>, Vec<u16>) {
    let mut node = SipNode::new(config());
    let mut steps = Vec::with_capacity(users * rounds * 4);
    let mut codes = Vec::new();
    let mut table: HashMap<usize, Vec<Binding>> = HashMap::new();
    let mut call = 0;
    for _ in 0..rounds {
        for user in 0..users {
            call += 1;
            let first = Step::Datagram {
                at: at(call),
                bytes: register(user, call, 1, None),
            };
            feed(&mut node, &first, lookups, &mut codes, &mut Vec::new());
            steps.push(first);
            let ask = Step::Lookup {
                at: at(call),
                user,
                bindings: Vec::new(),
                random: random(2 * call),
            };
            let challenge = feed(&mut node, &ask, lookups, &mut codes, &mut Vec::new())
                .and_then(|bytes| SipMessage::parse(&bytes).ok())
                .and_then(|message| message.header("WWW-Authenticate").map(str::to_string));
            steps.push(ask);
            let number = (1000 + user).to_string();
            let authorization = challenge.as_deref().and_then(|c| {
                answer_challenge(
                    c,
                    &number,
                    &format!("pass-{number}"),
                    "REGISTER",
                    &format!("sip:{DOMAIN}"),
                )
            });
            let second = Step::Datagram {
                at: at(call),
                bytes: register(user, call, 2, authorization.as_deref()),
            };
            feed(&mut node, &second, lookups, &mut codes, &mut Vec::new());
            steps.push(second);
            let answer = Step::Lookup {
                at: at(call),
                user,
                bindings: table.get(&user).cloned().unwrap_or_default(),
                random: random(2 * call + 1),
            };
            let mut saved = Vec::new();
            feed(&mut node, &answer, lookups, &mut codes, &mut saved);
            steps.push(answer);
            let bindings = table.entry(user).or_default();
            for change in saved {
                match change {
                    BindingChange::Created(b) | BindingChange::Refreshed(b) => {
                        bindings.retain(|old| old.contact != b.contact);
                        bindings.push(b);
                    }
                    BindingChange::Changed { after, .. } => {
                        bindings.retain(|old| old.contact != after.contact);
                        bindings.push(after);
                    }
                    BindingChange::Removed { binding, .. } => bindings.retain(|old| old.contact != binding.contact),
                }
            }
        }
    }
    (steps, codes)
}

/// Runs the benchmark: one recording pass, then `passes` timed passes; returns each.
pub fn run(users: usize, rounds: usize, passes: usize) -> Result<Vec<CoreReport>, String> {
    let lookups = lookups(users);
    let (steps, expected) = record(users, rounds, &lookups);
    let registrations = users * rounds;
    let ok = expected.iter().filter(|c| **c == 200).count();
    if ok != registrations {
        return Err(format!(
            "the recording pass registered {ok} of {registrations} (codes seen: {:?})",
            expected.iter().take(8).collect::<Vec<_>>()
        ));
    }
    let mut reports = Vec::new();
    for _ in 0..passes {
        let mut node = SipNode::new(config());
        let mut codes = Vec::with_capacity(expected.len());
        let started = thread_cpu_time();
        let mut saved = Vec::new();
        for step in &steps {
            feed(&mut node, step, &lookups, &mut codes, &mut saved);
            saved.clear();
        }
        let elapsed = thread_cpu_time().saturating_sub(started);
        if codes != expected {
            return Err("a timed pass answered differently from the recording".into());
        }
        reports.push(CoreReport { registrations, elapsed });
    }
    Ok(reports)
}
