//! The SIP node's link to a media node (shell): runs the call layer's media commands
//! ([`NodeEvent::Media`](crate::sip::node::NodeEvent::Media)) over the control protocol and
//! answers every command, with [`MediaReply::Failed`] when the media node is unreachable,
//! refuses or is too slow: media never fails a call.
//!
//! Commands run on [`LANES`] connections, each one command at a time; a call's commands all
//! take the lane of its call id, so they stay in order (a call's early-media answer never
//! overtakes its final one) while different calls do not wait for each other. The media
//! node sends its events on every connection: each `leg_ended` and `disconnect` (the calls
//! it asks the call layer to hang up) is passed on once.

use std::net::SocketAddr;
use std::time::Duration;

use media::control::{Client, ClientError, Command, ControlEvent};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::sip::anchoring::{MediaReply, MediaTicket};

/// How long connecting to the media node may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one command may take before the call goes on without it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed connection, commands fail at once for this long (no call waits on a
/// media node that is down), then the next command tries again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Commands queued for the media node at most (per lane).
pub const QUEUE: usize = 4096;
/// Connections to one media node; a call's commands always use the same one.
pub const LANES: usize = 4;

struct Job {
    ticket: MediaTicket,
    command: Command,
}

/// A handle on the worker that talks to one media node.
#[derive(Clone)]
pub struct MediaLink {
    lanes: Vec<mpsc::Sender<Job>>,
    results: mpsc::Sender<(MediaTicket, MediaReply)>,
}

/// What a media node reports unprompted (see `media::control::ControlEvent`).
pub type MediaEvents = mpsc::Receiver<ControlEvent>;

impl MediaLink {
    /// Starts the lanes for the media node at `addr`; every command's result comes out of
    /// the returned receiver (a call's in the order its commands were submitted), and the
    /// media node's events out of the second one.
    pub fn spawn(addr: SocketAddr) -> (MediaLink, mpsc::Receiver<(MediaTicket, MediaReply)>, MediaEvents) {
        let (results_tx, results_rx) = mpsc::channel(QUEUE);
        let (raw_events_tx, raw_events_rx) = mpsc::channel(QUEUE);
        let (events_tx, events_rx) = mpsc::channel(QUEUE);
        tokio::spawn(dedupe_events(raw_events_rx, events_tx));
        let lanes = (0..LANES)
            .map(|_| {
                let (jobs_tx, jobs_rx) = mpsc::channel(QUEUE);
                tokio::spawn(worker(addr, jobs_rx, results_tx.clone(), raw_events_tx.clone()));
                jobs_tx
            })
            .collect();
        (
            MediaLink {
                lanes,
                results: results_tx,
            },
            results_rx,
            events_rx,
        )
    }

    /// Queue a command on its call's lane; a full queue answers it as failed.
    pub fn submit(&self, ticket: MediaTicket, command: Command) {
        let lane = &self.lanes[lane_of(&command, self.lanes.len())];
        if let Err(e) = lane.try_send(Job { ticket, command }) {
            let reason = match e {
                mpsc::error::TrySendError::Full(_) => "the media queue is full",
                mpsc::error::TrySendError::Closed(_) => "the media link stopped",
            };
            let results = self.results.clone();
            tokio::spawn(async move {
                let _ = results.send((ticket, MediaReply::Failed(reason.into()))).await;
            });
        }
    }
}

/// The lane of a command: by its call id (by leg id for the commands that name only a leg,
/// which a call's own commands never are).
fn lane_of(command: &Command, lanes: usize) -> usize {
    let id = match command {
        Command::Offer { call_id, .. }
        | Command::Answer { call_id, .. }
        | Command::Delete { call_id }
        | Command::ConferenceJoin { call_id, .. }
        | Command::PlayPrompt { call_id, .. }
        | Command::ConferenceIvr { call_id, .. }
        | Command::Dtmf { call_id, .. } => call_id,
        Command::ConferenceLeave { leg_id } | Command::Mute { leg_id, .. } => leg_id,
    };
    (id.as_u128() % lanes.max(1) as u128) as usize
}

/// Pass each `leg_ended` and `disconnect` on once, though every lane's connection reports it.
async fn dedupe_events(mut raw: mpsc::Receiver<ControlEvent>, out: mpsc::Sender<ControlEvent>) {
    const REMEMBERED: usize = 10_000;
    let mut seen = std::collections::HashSet::new();
    let mut order = std::collections::VecDeque::new();
    while let Some(event) = raw.recv().await {
        let key = match &event {
            ControlEvent::LegEnded { call_id, leg_id } => Some((*call_id, *leg_id)),
            ControlEvent::Disconnect { call_id, leg_id, .. } => Some((*call_id, *leg_id)),
            _ => None,
        };
        if let Some(key) = key {
            if !seen.insert(key) {
                continue;
            }
            order.push_back(key);
        }
        if order.len() > REMEMBERED {
            if let Some(old) = order.pop_front() {
                seen.remove(&old);
            }
        }
        if out.send(event).await.is_err() {
            return;
        }
    }
}

async fn worker(
    addr: SocketAddr,
    mut jobs: mpsc::Receiver<Job>,
    results: mpsc::Sender<(MediaTicket, MediaReply)>,
    events: mpsc::Sender<ControlEvent>,
) {
    let mut client: Option<Client> = None;
    let mut down_until: Option<Instant> = None;
    while let Some(job) = jobs.recv().await {
        let reply = run(addr, &mut client, &mut down_until, &events, job.command).await;
        if results.send((job.ticket, reply)).await.is_err() {
            return;
        }
    }
}

async fn run(
    addr: SocketAddr,
    client: &mut Option<Client>,
    down_until: &mut Option<Instant>,
    events_out: &mpsc::Sender<ControlEvent>,
    command: Command,
) -> MediaReply {
    if client.is_none() {
        if down_until.is_some_and(|until| Instant::now() < until) {
            return MediaReply::Failed(format!("media node {addr} unreachable"));
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(addr)).await {
            Ok(Ok((connected, mut events))) => {
                // The call layer acts on `leg_ended` (a conference IVR hanging up) and
                // `disconnect` (a participant kicked, or whose session ended); the rest (DTMF,
                // rooms' events) is read so the connection never logs it as dropped.
                let events_out = events_out.clone();
                tokio::spawn(async move {
                    while let Some(event) = events.recv().await {
                        tracing::debug!(?event, "media node event");
                        let for_calls =
                            matches!(event, ControlEvent::LegEnded { .. } | ControlEvent::Disconnect { .. });
                        if for_calls && events_out.try_send(event).is_err() {
                            tracing::warn!("media node event dropped (the call layer is not reading)");
                        }
                    }
                });
                *client = Some(connected);
                *down_until = None;
            }
            Ok(Err(e)) => {
                tracing::warn!(%addr, error = %e, "media node unreachable; calls pass their SDP through");
                *down_until = Some(Instant::now() + RETRY_AFTER);
                return MediaReply::Failed(e.to_string());
            }
            Err(_) => {
                tracing::warn!(%addr, "connecting to the media node timed out; calls pass their SDP through");
                *down_until = Some(Instant::now() + RETRY_AFTER);
                return MediaReply::Failed("connect timed out".into());
            }
        }
    }
    let Some(connected) = client.as_ref() else {
        return MediaReply::Failed("not connected".into());
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, connected.request(command)).await {
        Ok(Ok(response)) => MediaReply::Done {
            sdp: response.sdp,
            stats: response.stats,
        },
        Ok(Err(ClientError::Refused(reason))) => MediaReply::Failed(reason),
        Ok(Err(e)) => {
            // The connection is gone: the next command connects again.
            *client = None;
            MediaReply::Failed(e.to_string())
        }
        Err(_) => {
            *client = None;
            MediaReply::Failed("the media node did not answer in time".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn every_command_of_a_call_takes_one_lane_and_calls_spread_over_the_lanes() {
        let mut used = std::collections::HashSet::new();
        for n in 0..64u128 {
            let call_id = Uuid::from_u128(0x5eed_0000 + n * 7919);
            let leg_id = Uuid::from_u128(n);
            let commands = [
                Command::Offer {
                    call_id,
                    leg_id,
                    sdp: String::new(),
                    peer_leg_id: None,
                },
                Command::Answer {
                    call_id,
                    leg_id,
                    sdp: String::new(),
                },
                Command::Delete { call_id },
            ];
            let lanes: std::collections::HashSet<usize> = commands.iter().map(|c| lane_of(c, LANES)).collect();
            assert_eq!(lanes.len(), 1, "one call, one lane");
            used.extend(lanes);
        }
        assert_eq!(used.len(), LANES, "calls use every lane");
    }

    #[tokio::test]
    async fn a_leg_ended_or_disconnect_reported_on_every_lane_is_passed_on_once() {
        let (raw_tx, raw_rx) = mpsc::channel(16);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        tokio::spawn(dedupe_events(raw_rx, out_tx));
        let (a, b, c) = (
            ControlEvent::LegEnded {
                call_id: Uuid::from_u128(1),
                leg_id: Uuid::from_u128(2),
            },
            ControlEvent::LegEnded {
                call_id: Uuid::from_u128(3),
                leg_id: Uuid::from_u128(4),
            },
            ControlEvent::Disconnect {
                room_id: Uuid::from_u128(9),
                call_id: Uuid::from_u128(5),
                leg_id: Uuid::from_u128(6),
                reason: media::control::DisconnectReason::Kicked,
            },
        );
        for event in [&a, &a, &c, &b, &a, &c, &b, &c] {
            raw_tx.send(event.clone()).await.unwrap();
        }
        drop(raw_tx);
        let mut got = Vec::new();
        while let Some(event) = out_rx.recv().await {
            got.push(event);
        }
        assert_eq!(got, vec![a, c, b]);
    }
}
