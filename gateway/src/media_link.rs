//! The SIP node's link to a media node (shell): runs the call layer's media commands
//! ([`NodeEvent::Media`](crate::sip::node::NodeEvent::Media)) over the control protocol, one
//! at a time and in order (so a call's early-media answer never overtakes its final one), and
//! answers every command, with [`MediaReply::Failed`] when the media node is unreachable,
//! refuses or is too slow: media never fails a call.

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
/// Commands queued for the media node at most.
pub const QUEUE: usize = 4096;

struct Job {
    ticket: MediaTicket,
    command: Command,
}

/// A handle on the worker that talks to one media node.
#[derive(Clone)]
pub struct MediaLink {
    jobs: mpsc::Sender<Job>,
    results: mpsc::Sender<(MediaTicket, MediaReply)>,
}

/// What a media node reports unprompted (see `media::control::ControlEvent`).
pub type MediaEvents = mpsc::Receiver<ControlEvent>;

impl MediaLink {
    /// Starts the worker for the media node at `addr`; every command's result comes out of
    /// the returned receiver, in the order the commands were submitted, and the media node's
    /// events out of the second one.
    pub fn spawn(addr: SocketAddr) -> (MediaLink, mpsc::Receiver<(MediaTicket, MediaReply)>, MediaEvents) {
        let (jobs_tx, jobs_rx) = mpsc::channel(QUEUE);
        let (results_tx, results_rx) = mpsc::channel(QUEUE);
        let (events_tx, events_rx) = mpsc::channel(QUEUE);
        tokio::spawn(worker(addr, jobs_rx, results_tx.clone(), events_tx));
        (
            MediaLink {
                jobs: jobs_tx,
                results: results_tx,
            },
            results_rx,
            events_rx,
        )
    }

    /// Queue a command; a full queue answers it as failed.
    pub fn submit(&self, ticket: MediaTicket, command: Command) {
        if let Err(e) = self.jobs.try_send(Job { ticket, command }) {
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
                // The call layer acts on `leg_ended` (a conference IVR hanging up); the rest
                // (DTMF, rooms' events) is read so the connection never logs it as dropped.
                let events_out = events_out.clone();
                tokio::spawn(async move {
                    while let Some(event) = events.recv().await {
                        tracing::debug!(?event, "media node event");
                        if matches!(event, ControlEvent::LegEnded { .. }) && events_out.try_send(event).is_err() {
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
