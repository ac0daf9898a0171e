//! Media anchoring for the call layer: every call's RTP goes through a media node, so the
//! SDP of the offer (to the callee), the answer (to the caller) and each re-INVITE is
//! rewritten to point at it, and the media node's per-leg statistics end up in `CallEnded`.
//!
//! Sans-IO like the rest of the node: the call layer emits [`NodeEvent::Media`] with a
//! control-protocol command ("anchor this offer") and waits; the shell runs it on the media
//! node and hands the result back to [`SipNode::handle_media`]. A failed or refused command
//! is not a failed call: the SDP then passes through unchanged (with a warning), and a call
//! whose offer was not anchored is never anchored later.
//!
//! The media node knows two legs per call: the caller's side and the callee's side, whose ids
//! are derived from the call id ([`caller_media_leg`], [`callee_media_leg`]). Forked legs all
//! get the callee side's port; when the call ends, the callee side's statistics are reported
//! under the id of the leg that answered, which is the leg the CDR knows.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::call::{CallCommand, EndReason, LegMedia, Party};
use media::control::{Command, ControlEvent, DisconnectReason};
use uuid::Uuid;

use super::{ActiveCall, Dialog, Purpose, Route, Side};
use crate::sip::dtmf_info::InfoDtmf;
use crate::sip::message::SipMessage;
use crate::sip::node::{NodeEvent, Now, SipNode};
use crate::sip::transaction::TransactionKey;

/// Commands waiting for the media node at most (more are not anchored: pass-through).
pub const MAX_WAITING: usize = 20_000;

/// Identifies one media command and its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MediaTicket(pub u64);

/// What became of a media command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaReply {
    /// Done: the rewritten SDP (offer, answer) or the legs' statistics (delete).
    Done { sdp: Option<String>, stats: Vec<LegMedia> },
    /// Refused, unreachable or too slow: the call goes on without anchoring.
    Failed(String),
}

/// The media node's leg for the caller's side of a call.
pub fn caller_media_leg(call_id: Uuid) -> Uuid {
    Uuid::new_v5(&call_id, b"media-caller")
}

/// The media node's leg for the callee's side of a call (whichever fork answers).
pub fn callee_media_leg(call_id: Uuid) -> Uuid {
    Uuid::new_v5(&call_id, b"media-callee")
}

/// The call layer's anchoring memory.
#[derive(Default)]
pub(in crate::sip) struct Anchoring {
    next: u64,
    waiting: HashMap<u64, Waiting>,
    /// Calls whose offer the media node anchored: the SDP the callee side is offered.
    anchored: HashMap<Uuid, Vec<u8>>,
}

/// A response to relay once its SDP is anchored.
#[derive(Clone)]
struct HeldReply {
    key: TransactionKey,
    request: SipMessage,
    code: u16,
    tag: String,
    content_type: String,
    body: Vec<u8>,
}

/// How a call ended, recorded once the media node has said what it counted.
struct Ending {
    hangup_by: Party,
    sip_status: u16,
    reason: Option<EndReason>,
    at: DateTime<Utc>,
}

enum Waiting {
    /// The caller's offer: the legs go out once it is anchored.
    Offer { call: Uuid, route: Route },
    /// The callee's answer (or early media SDP) for the caller.
    Answer { reply: Box<HeldReply> },
    /// A re-INVITE's offer, to send to the other side once anchored.
    ReOffer {
        call: Uuid,
        dialog: Dialog,
        to: Side,
        content_type: Option<String>,
        body: Vec<u8>,
    },
    /// The call ended; its statistics are coming.
    Delete { call: Uuid, ending: Ending },
    /// A caller of a conference access number: answered once the media node's IVR has
    /// the leg.
    Ivr { call: Uuid, access_number: String },
    /// A late anchoring of a call already over: freed, nothing to do.
    Discard,
}

fn media_leg(call_id: Uuid, side: Side) -> Uuid {
    match side {
        Side::Caller => caller_media_leg(call_id),
        Side::Leg(_) => callee_media_leg(call_id),
    }
}

/// A body the media node can anchor: SDP, present.
fn is_sdp(body: &[u8], content_type: Option<&str>) -> bool {
    let sdp_type = content_type.is_none_or(|t| t.trim().eq_ignore_ascii_case("application/sdp"));
    sdp_type && body.starts_with(b"v=")
}

impl SipNode {
    fn ask_media(&mut self, call_id: Uuid, command: Command, waiting: Waiting) -> bool {
        let anchoring = &mut self.calls.media;
        if anchoring.waiting.len() >= MAX_WAITING {
            tracing::warn!(call = %call_id, "too many media commands waiting; media passes through");
            return false;
        }
        anchoring.next += 1;
        let ticket = MediaTicket(anchoring.next);
        anchoring.waiting.insert(ticket.0, waiting);
        self.events.push_back(NodeEvent::Media {
            ticket,
            call_id,
            command,
        });
        true
    }

    /// Whether the call's media goes through the media node now. A blind transfer joins the
    /// remaining party to the target with their own SDP, so a transferred call is no longer
    /// anchored (its statistics still cover the time before).
    fn media_anchored(&self, call: &ActiveCall) -> bool {
        self.calls.media.anchored.contains_key(&call.id) && !call.legs.iter().any(|l| l.transfer)
    }

    /// The SDP the callee side is offered: the anchored one, or the caller's own.
    pub(super) fn offer_body(&self, call: &ActiveCall) -> Vec<u8> {
        match self.calls.media.anchored.get(&call.id) {
            Some(sdp) => sdp.clone(),
            None => call.a_invite.body.clone(),
        }
    }

    /// Before the legs go out: ask the media node to anchor the caller's offer. Returns the
    /// route back when there is nothing to anchor (the legs go out at once).
    pub(super) fn anchor_offer(&mut self, id: Uuid, route: Route) -> Option<Route> {
        if !self.config.calls.anchor_media {
            return Some(route);
        }
        let has_targets = match &route {
            Route::Extension { contacts, .. } => !contacts.is_empty(),
            Route::Trunks(trunks) => !trunks.is_empty(),
            Route::Conference { .. } | Route::NotFound => false,
        };
        let Some(call) = self.calls.active.get(&id) else {
            return Some(route);
        };
        let invite = &call.a_invite;
        if !has_targets || !is_sdp(&invite.body, invite.header("Content-Type")) {
            return Some(route);
        }
        let command = Command::Offer {
            call_id: id,
            leg_id: caller_media_leg(id),
            sdp: String::from_utf8_lossy(&invite.body).into_owned(),
            peer_leg_id: Some(callee_media_leg(id)),
        };
        // The route travels with the command; a refusal to queue hands it straight back.
        let waiting = Waiting::Offer {
            call: id,
            route: route.clone(),
        };
        if self.ask_media(id, command, waiting) {
            None
        } else {
            Some(route)
        }
    }

    /// A call to a conference room's access number: the media node's IVR takes the caller's
    /// offer and answers; without a media node the call is refused (503), never passed on.
    pub(super) fn route_to_conference(&mut self, now: Now, id: Uuid, access_number: String) {
        let Some(call) = self.calls.active.get_mut(&id) else {
            return;
        };
        call.conference = true;
        call.ring_deadline = None;
        let invite = &call.a_invite;
        if !is_sdp(&invite.body, invite.header("Content-Type")) {
            return self.refuse_conference(now, id, 488, "an SDP offer is needed");
        }
        if !self.config.calls.anchor_media {
            return self.refuse_conference(now, id, 503, "no media node");
        }
        let command = Command::ConferenceIvr {
            call_id: id,
            leg_id: caller_media_leg(id),
            sdp: String::from_utf8_lossy(&invite.body).into_owned(),
            tenant_id: call.tenant_id,
            access_number: access_number.clone(),
        };
        if !self.ask_media(
            id,
            command,
            Waiting::Ivr {
                call: id,
                access_number,
            },
        ) {
            self.refuse_conference(now, id, 503, "media node busy");
        }
    }

    /// The conference call cannot be answered: the caller gets `status`, and the call (already
    /// authorized, so past `CallRejected`) ends with it.
    fn refuse_conference(&mut self, now: Now, id: Uuid, status: u16, reason: &str) {
        let Some(call) = self.calls.active.get(&id) else {
            return;
        };
        let (key, invite, tag) = (call.a_key.clone(), call.a_invite.clone(), call.a_tag.clone());
        let reason_header = format!("SIP;cause={status};text=\"{reason}\"");
        self.reply(now, &key, &invite, status, &tag, &[("Reason", reason_header)], None);
        self.end(now, id, Party::System, status, Some(EndReason::Unavailable));
    }

    /// The media node's IVR has the caller (`sdp`), or could not take it (`None`: 503).
    fn conference_answered(&mut self, now: Now, id: Uuid, access_number: String, sdp: Option<Vec<u8>>) {
        let live = self.calls.active.get(&id).is_some_and(|c| !c.finished);
        if !live {
            if sdp.is_some() {
                self.ask_media(id, Command::Delete { call_id: id }, Waiting::Discard);
            }
            return;
        }
        let Some(sdp) = sdp else {
            return self.refuse_conference(now, id, 503, "media node unavailable");
        };
        self.calls.media.anchored.insert(id, sdp.clone());
        // The IVR is the call's one leg (the media node's leg for the caller).
        let leg_id = caller_media_leg(id);
        let at = self.at(now, id);
        self.apply(
            now,
            id,
            CallCommand::CreateLeg {
                leg_id,
                target: format!("conference:{access_number}"),
                trunk_id: None,
                at,
            },
        );
        self.apply(now, id, CallCommand::Answer { leg_id, at });
        let Some(call) = self.calls.active.get_mut(&id) else {
            return;
        };
        let (key, invite, tag) = (call.a_key.clone(), call.a_invite.clone(), call.a_tag.clone());
        call.awaiting_ack.push((invite.cseq.seq, key.clone()));
        self.reply(now, &key, &invite, 200, &tag, &[], Some((&sdp, "application/sdp")));
    }

    /// A re-INVITE from a conference caller (a session refresh, a hold): answered with the
    /// media node's SDP as it is; the media node's leg is left alone (a changed caller
    /// address is not followed).
    pub(super) fn conference_reinvite(&mut self, now: Now, key: TransactionKey, request: SipMessage, id: Uuid) {
        let tag = request.to.tag.clone().unwrap_or_default();
        let answer = self.calls.media.anchored.get(&id).cloned().unwrap_or_default();
        if let Some(call) = self.calls.active.get_mut(&id) {
            call.awaiting_ack.push((request.cseq.seq, key.clone()));
        }
        self.reply(now, &key, &request, 200, &tag, &[], Some((&answer, "application/sdp")));
    }

    /// An INFO from a conference caller: a DTMF body (`application/dtmf-relay` or
    /// `application/dtmf`) is answered 200 and its digit goes to the media node, which takes
    /// it as an RFC 4733 event of the caller's leg (the IVR's code, a room's `*6`); a
    /// malformed one is answered 400; another INFO package 200, as on any call.
    pub(super) fn conference_info(&mut self, now: Now, key: TransactionKey, request: SipMessage, id: Uuid) {
        let tag = request.to.tag.clone().unwrap_or_default();
        let digit = match crate::sip::dtmf_info::parse(request.header("Content-Type"), &request.body) {
            Ok(InfoDtmf::Digit(digit)) => digit,
            Ok(InfoDtmf::NotDtmf) => return self.reply(now, &key, &request, 200, &tag, &[], None),
            Err(e) => {
                tracing::debug!(call = %id, error = %e, "a malformed DTMF INFO");
                let warning = "399 ledgerline \"malformed DTMF body\"".to_string();
                return self.reply(now, &key, &request, 400, &tag, &[("Warning", warning)], None);
            }
        };
        self.reply(now, &key, &request, 200, &tag, &[], None);
        let live = self.calls.active.get(&id).is_some_and(|c| !c.finished);
        if live && self.calls.media.anchored.contains_key(&id) {
            let command = Command::Dtmf {
                call_id: id,
                leg_id: caller_media_leg(id),
                digit,
            };
            self.ask_media(id, command, Waiting::Discard);
        }
    }

    /// An event from the media node about one of our conference calls: the IVR gave up on
    /// its caller (too many wrong codes, or silence: `leg_ended`), or the participant is out
    /// of the room (`disconnect`: kicked, or the last host of a moderated room left). Either
    /// way the call is hung up: BYE to the caller, then the usual end (`kicked` or
    /// `conference_ended` for a disconnect). Events of calls this node does not hold, of
    /// another leg, or of a call already over are ignored.
    pub fn handle_media_event(&mut self, now: Now, event: ControlEvent) {
        let (call_id, leg_id, reason) = match event {
            ControlEvent::LegEnded { call_id, leg_id } => (call_id, leg_id, None),
            ControlEvent::Disconnect {
                call_id,
                leg_id,
                reason,
                ..
            } => {
                let reason = match reason {
                    DisconnectReason::Kicked => EndReason::Kicked,
                    DisconnectReason::ConferenceEnded => EndReason::ConferenceEnded,
                };
                (call_id, leg_id, Some(reason))
            }
            ControlEvent::Dtmf { .. } | ControlEvent::SessionEnded { .. } => return,
        };
        let Some(call) = self.calls.active.get(&call_id) else {
            return;
        };
        if !call.conference || call.finished || leg_id != caller_media_leg(call_id) {
            return;
        }
        let dialog = call.a_dialog.clone();
        self.bye(now, &dialog, call_id);
        self.end(now, call_id, Party::System, 200, reason);
    }

    /// Relays a callee's response (18x or 2xx, with its SDP) to the caller, anchored when
    /// the call is.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn relay_answer(
        &mut self,
        now: Now,
        id: Uuid,
        key: TransactionKey,
        request: SipMessage,
        code: u16,
        tag: String,
        response: &SipMessage,
    ) {
        self.relay_with_media(now, id, Side::Leg(0), key, request, code, tag, response);
    }

    /// Relays `response` on the server transaction `key`; when the call is anchored and the
    /// response carries SDP, it is first rewritten by the media node as the answer from
    /// `answered_by`'s side.
    #[allow(clippy::too_many_arguments)]
    fn relay_with_media(
        &mut self,
        now: Now,
        id: Uuid,
        answered_by: Side,
        key: TransactionKey,
        request: SipMessage,
        code: u16,
        tag: String,
        response: &SipMessage,
    ) {
        let content_type = response.header("Content-Type").unwrap_or("application/sdp").to_string();
        let anchored = self.calls.active.get(&id).is_some_and(|c| self.media_anchored(c));
        let reply = HeldReply {
            key,
            request,
            code,
            tag,
            content_type,
            body: response.body.clone(),
        };
        if anchored && code < 300 && is_sdp(&reply.body, Some(&reply.content_type)) {
            let command = Command::Answer {
                call_id: id,
                leg_id: media_leg(id, answered_by),
                sdp: String::from_utf8_lossy(&reply.body).into_owned(),
            };
            let fallback = reply.clone();
            if self.ask_media(id, command, Waiting::Answer { reply: Box::new(reply) }) {
                return;
            }
            return self.send_held(now, fallback, None);
        }
        self.send_held(now, reply, None);
    }

    fn send_held(&mut self, now: Now, reply: HeldReply, sdp: Option<Vec<u8>>) {
        let body = sdp.unwrap_or(reply.body);
        self.reply(
            now,
            &reply.key,
            &reply.request,
            reply.code,
            &reply.tag,
            &[],
            Some((&body, &reply.content_type)),
        );
    }

    /// Sends a re-INVITE to the other side of the call, its offer anchored first when the
    /// call is.
    pub(super) fn send_reinvite(
        &mut self,
        now: Now,
        id: Uuid,
        from: Side,
        to: Side,
        dialog: Dialog,
        invite: SipMessage,
    ) {
        let anchored = self.calls.active.get(&id).is_some_and(|c| self.media_anchored(c));
        let content_type = invite.header("Content-Type").map(str::to_string);
        if anchored && is_sdp(&invite.body, content_type.as_deref()) {
            let command = Command::Offer {
                call_id: id,
                leg_id: media_leg(id, from),
                sdp: String::from_utf8_lossy(&invite.body).into_owned(),
                peer_leg_id: Some(media_leg(id, to)),
            };
            let waiting = Waiting::ReOffer {
                call: id,
                dialog: dialog.clone(),
                to,
                content_type,
                body: invite.body.clone(),
            };
            if self.ask_media(id, command, waiting) {
                return;
            }
        }
        self.send_request(
            now,
            dialog.destination,
            dialog.transport,
            invite,
            Purpose::ReInvite { call: id, to },
        );
    }

    /// Relays the answer to a re-INVITE to the side that sent it, anchored when the call is.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn relay_reinvite_answer(
        &mut self,
        now: Now,
        id: Uuid,
        answered_by: Side,
        key: TransactionKey,
        request: SipMessage,
        code: u16,
        tag: String,
        response: &SipMessage,
    ) {
        self.relay_with_media(now, id, answered_by, key, request, code, tag, response);
    }

    /// The call ends: an anchored call frees its ports first and records `CallEnded` with
    /// what the media node counted. Returns false when the call was not anchored (the caller
    /// records `CallEnded` itself).
    pub(super) fn release_media(
        &mut self,
        id: Uuid,
        hangup_by: Party,
        sip_status: u16,
        reason: Option<EndReason>,
        at: DateTime<Utc>,
    ) -> bool {
        if self.calls.media.anchored.remove(&id).is_none() {
            return false;
        }
        let ending = Ending {
            hangup_by,
            sip_status,
            reason,
            at,
        };
        self.ask_media(
            id,
            Command::Delete { call_id: id },
            Waiting::Delete { call: id, ending },
        )
    }

    /// The result of a media command, from the shell.
    pub fn handle_media(&mut self, now: Now, ticket: MediaTicket, reply: MediaReply) {
        let Some(waiting) = self.calls.media.waiting.remove(&ticket.0) else {
            return;
        };
        let (sdp, stats) = match reply {
            MediaReply::Done { sdp, stats } => (sdp.map(String::into_bytes), stats),
            MediaReply::Failed(error) => {
                if !matches!(waiting, Waiting::Discard) {
                    tracing::warn!(%error, "media node: the call's media passes through unanchored");
                }
                (None, Vec::new())
            }
        };
        match waiting {
            Waiting::Offer { call, route } => {
                let live = self.calls.active.get(&call).is_some_and(|c| !c.finished);
                if !live {
                    // Ended while the media node was asked: free what it anchored.
                    if sdp.is_some() {
                        self.ask_media(call, Command::Delete { call_id: call }, Waiting::Discard);
                    }
                    return;
                }
                if let Some(sdp) = sdp {
                    self.calls.media.anchored.insert(call, sdp);
                }
                self.route_legs(now, call, route);
            }
            Waiting::Answer { reply, .. } => self.send_held(now, *reply, sdp),
            Waiting::ReOffer {
                call,
                dialog,
                to,
                content_type,
                body,
            } => {
                let body = sdp.unwrap_or(body);
                // Composed again with the anchored body (the first one was never sent).
                let Some(invite) = self.compose(
                    "INVITE",
                    &dialog.target,
                    dialog.transport,
                    &dialog.local,
                    &dialog.remote,
                    &dialog.call_id,
                    dialog.cseq,
                    &[],
                    &body,
                    content_type.as_deref(),
                ) else {
                    return;
                };
                self.send_request(
                    now,
                    dialog.destination,
                    dialog.transport,
                    invite,
                    Purpose::ReInvite { call, to },
                );
            }
            Waiting::Delete { call, ending } => {
                let answered_leg = self
                    .calls
                    .active
                    .get(&call)
                    .and_then(|c| c.answered.and_then(|i| c.legs.get(i)))
                    .map(|l| l.leg_id);
                let callee_side = callee_media_leg(call);
                let media = stats
                    .into_iter()
                    .map(|mut m| {
                        if m.leg_id == callee_side {
                            if let Some(leg_id) = answered_leg {
                                m.leg_id = leg_id;
                            }
                        }
                        m
                    })
                    .collect();
                self.apply(
                    now,
                    call,
                    CallCommand::End {
                        hangup_by: ending.hangup_by,
                        sip_status: ending.sip_status,
                        reason: ending.reason,
                        at: ending.at,
                        media,
                    },
                );
            }
            Waiting::Ivr { call, access_number } => self.conference_answered(now, call, access_number, sdp),
            Waiting::Discard => {}
        }
    }
}

#[cfg(test)]
mod tests {
    //! The call layer with anchoring on a virtual clock: the offer, the answer, a re-INVITE
    //! and the end each wait for the media node's answer, and a media node that fails
    //! leaves the call working with its SDP unchanged.

    use std::net::SocketAddr;
    use std::time::Duration;

    use chrono::TimeZone;
    use domain::call::CallEvent;

    use super::*;
    use crate::sip::abuse::AbuseConfig;
    use crate::sip::b2bua::{CallConfig, CallLookup, ContactTarget, TenantCall};
    use crate::sip::digest::DigestConfig;
    use crate::sip::message::build_response;
    use crate::sip::node::{NodeConfig, Transmit};
    use crate::sip::registrar::RegistrarConfig;
    use crate::sip::screening::NodeIdentity;
    use crate::sip::transaction::{Timers, Transport};

    const CALLER_SDP: &str =
        "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    const CALLEE_SDP: &str =
        "v=0\r\no=- 2 2 IN IP4 192.0.2.21\r\ns=-\r\nc=IN IP4 192.0.2.21\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8\r\n";
    const TO_CALLEE: &str =
        "v=0\r\no=- 1 1 IN IP4 203.0.113.5\r\ns=-\r\nc=IN IP4 203.0.113.5\r\nt=0 0\r\nm=audio 30002 RTP/AVP 0\r\n";
    const TO_CALLER: &str =
        "v=0\r\no=- 2 2 IN IP4 203.0.113.5\r\ns=-\r\nc=IN IP4 203.0.113.5\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\n";

    fn node(anchor_media: bool) -> SipNode {
        SipNode::new(NodeConfig {
            timers: Timers::default(),
            registrar: RegistrarConfig::default(),
            digest: DigestConfig {
                secret: b"s".to_vec(),
                nonce_lifetime_secs: 300,
                max_tracked_nonces: 1000,
                prefer_sha256: true,
                offer_sha256: true,
            },
            abuse: AbuseConfig::default(),
            identity: NodeIdentity {
                sent_by: vec!["sip1.example.net:5060".into()],
                branch_prefix: "z9hG4bK-ll-".into(),
            },
            max_server_transactions: 100,
            max_pending_lookups: 100,
            calls: CallConfig {
                anchor_media,
                ..CallConfig::default()
            },
        })
    }

    fn now(ms: u64) -> Now {
        Now {
            mono: Duration::from_millis(ms),
            wall: Utc.timestamp_opt(1_700_000_000, 0).single().unwrap() + chrono::Duration::milliseconds(ms as i64),
        }
    }

    /// The caller is a trunk (no digest challenge), the callee one registered contact.
    fn carrier() -> SocketAddr {
        "192.0.2.10:5060".parse().unwrap()
    }

    fn phone() -> SocketAddr {
        "192.0.2.21:5060".parse().unwrap()
    }

    fn lookup() -> CallLookup {
        CallLookup::Tenant(Box::new(TenantCall {
            tenant_id: Uuid::from_u128(1),
            sip_domain: "acme.example.com".into(),
            suspended: false,
            caller: None,
            from_trunk: Some(Uuid::from_u128(9)),
            did: Some("1002".into()),
            route: Route::Extension {
                extension_id: Uuid::from_u128(3),
                number: "1002".into(),
                contacts: vec![ContactTarget {
                    uri: "sip:1002@192.0.2.21:5060".into(),
                    destination: phone(),
                    transport: Transport::Unreliable,
                }],
            },
            call_limit: None,
            account: None,
        }))
    }

    fn message(method_line: &str, headers: &str, body: &str) -> Vec<u8> {
        let content = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/sdp\r\n".to_string()
        };
        format!(
            "{method_line}\r\n{headers}Max-Forwards: 70\r\n{content}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn sent(node: &mut SipNode) -> Vec<(SocketAddr, SipMessage)> {
        std::iter::from_fn(|| node.poll_transmit())
            .map(|t: Transmit| (t.destination, SipMessage::parse(&t.bytes).unwrap()))
            .collect()
    }

    /// Drains the node's events: the media commands, and the call events' names.
    fn events(node: &mut SipNode) -> (Vec<(MediaTicket, Command)>, Vec<CallEvent>) {
        let (mut media, mut calls) = (Vec::new(), Vec::new());
        while let Some(event) = node.poll_event() {
            match event {
                NodeEvent::Media { ticket, command, .. } => media.push((ticket, command)),
                NodeEvent::CallEvents { events, .. } => calls.extend(events),
                _ => {}
            }
        }
        (media, calls)
    }

    fn done(sdp: &str) -> MediaReply {
        MediaReply::Done {
            sdp: Some(sdp.into()),
            stats: vec![],
        }
    }

    fn stats(leg_id: Uuid, packets: u64) -> LegMedia {
        LegMedia {
            leg_id,
            codec: "PCMU".into(),
            packets_received: packets,
            packets_sent: packets,
            bytes_received: packets * 160,
            bytes_sent: packets * 160,
            packets_lost: 0,
            jitter_us: 0,
        }
    }

    /// The carrier's INVITE up to the node's first action; returns the call id.
    fn invite(node: &mut SipNode) -> Uuid {
        let invite = message(
            "INVITE sip:1002@acme.example.com SIP/2.0",
            "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKcarrier1\r\nFrom: <sip:5551234@carrier.example>;tag=c1\r\n\
To: <sip:1002@acme.example.com>\r\nCall-ID: anchored-call\r\nCSeq: 1 INVITE\r\nContact: <sip:5551234@192.0.2.10:5060>\r\n",
            CALLER_SDP,
        );
        node.handle_datagram(now(0), carrier(), Transport::Unreliable, &invite);
        let Some(NodeEvent::CallLookup { id, .. }) = node.poll_event() else {
            panic!("the INVITE reaches the call layer")
        };
        node.handle_call_lookup(now(1), id, lookup(), [7; 16]);
        let call_id = node.calls.active.keys().next().copied().expect("a call");
        call_id
    }

    fn invites_to(sent: &[(SocketAddr, SipMessage)], to: SocketAddr) -> Vec<SipMessage> {
        sent.iter()
            .filter(|(d, m)| *d == to && m.method() == Some(rsip::Method::Invite))
            .map(|(_, m)| m.clone())
            .collect()
    }

    fn status_to(sent: &[(SocketAddr, SipMessage)], to: SocketAddr, code: u16) -> Option<SipMessage> {
        sent.iter()
            .find(|(d, m)| *d == to && m.status() == Some(code))
            .map(|(_, m)| m.clone())
    }

    fn ok_with(request: &SipMessage, tag: &str, contact: &str, sdp: &str) -> Vec<u8> {
        let mut response = build_response(request, 200, tag, &[]);
        response
            .headers
            .push(rsip::Header::Other("Contact".into(), format!("<{contact}>")));
        response
            .headers
            .push(rsip::Header::Other("Content-Type".into(), "application/sdp".into()));
        response.body = sdp.as_bytes().to_vec();
        crate::sip::message::to_bytes(&response.into())
    }

    #[test]
    fn offer_answer_reinvite_and_end_wait_for_the_media_node() {
        let mut node = node(true);
        let id = invite(&mut node);
        let out = sent(&mut node);
        assert!(
            invites_to(&out, phone()).is_empty(),
            "no leg before the offer is anchored"
        );
        let (media, calls) = events(&mut node);
        assert_eq!(calls.len(), 2, "initiated and authorized: {calls:?}");
        let [(ticket, command)] = media.as_slice() else {
            panic!("one media command: {media:?}")
        };
        assert_eq!(
            command,
            &Command::Offer {
                call_id: id,
                leg_id: caller_media_leg(id),
                sdp: CALLER_SDP.into(),
                peer_leg_id: Some(callee_media_leg(id)),
            }
        );
        node.handle_media(now(2), *ticket, done(TO_CALLEE));
        let out = sent(&mut node);
        let legs = invites_to(&out, phone());
        assert_eq!(legs.len(), 1);
        assert_eq!(
            legs[0].body,
            TO_CALLEE.as_bytes(),
            "the callee is offered the media node"
        );

        // The callee answers: the caller hears nothing until the answer is anchored.
        node.handle_datagram(
            now(10),
            phone(),
            Transport::Unreliable,
            &ok_with(&legs[0], "callee", "sip:1002@192.0.2.21:5060", CALLEE_SDP),
        );
        let out = sent(&mut node);
        assert!(status_to(&out, carrier(), 200).is_none());
        let (media, calls) = events(&mut node);
        assert!(matches!(calls.last(), Some(CallEvent::CallAnswered(_))), "{calls:?}");
        let [(ticket, command)] = media.as_slice() else {
            panic!("one media command: {media:?}")
        };
        assert_eq!(
            command,
            &Command::Answer {
                call_id: id,
                leg_id: callee_media_leg(id),
                sdp: CALLEE_SDP.into(),
            }
        );
        node.handle_media(now(11), *ticket, done(TO_CALLER));
        let answer = status_to(&sent(&mut node), carrier(), 200).expect("the caller gets the answer");
        assert_eq!(answer.body, TO_CALLER.as_bytes());
        node.handle_datagram(
            now(12),
            carrier(),
            Transport::Unreliable,
            &message(
                "ACK sip:1002@127.0.0.1:5060 SIP/2.0",
                &format!(
                    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKcarrier2\r\nFrom: <sip:5551234@carrier.example>;tag=c1\r\n\
To: {}\r\nCall-ID: anchored-call\r\nCSeq: 1 ACK\r\n",
                    answer.to.value
                ),
                "",
            ),
        );

        // The callee puts the caller on hold: its offer is anchored before the caller sees it.
        let hold = CALLEE_SDP.replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
        let leg = &legs[0];
        node.handle_datagram(
            now(20),
            phone(),
            Transport::Unreliable,
            &message(
                &format!(
                    "INVITE {} SIP/2.0",
                    leg.contacts()
                        .ok()
                        .and_then(|c| c.into_iter().next())
                        .map(|c| match c {
                            crate::sip::message::Contact::Uri { uri, .. } => uri,
                            _ => String::new(),
                        })
                        .unwrap_or_default()
                ),
                &format!(
                    "Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKhold\r\nFrom: {};tag=callee\r\nTo: {}\r\n\
Call-ID: {}\r\nCSeq: 2 INVITE\r\nContact: <sip:1002@192.0.2.21:5060>\r\n",
                    leg.to.value, leg.from.value, leg.call_id
                ),
                &hold,
            ),
        );
        assert!(invites_to(&sent(&mut node), carrier()).is_empty());
        let (media, calls) = events(&mut node);
        assert!(matches!(calls.as_slice(), [CallEvent::CallHeld(_)]), "{calls:?}");
        let [(ticket, command)] = media.as_slice() else {
            panic!("one media command: {media:?}")
        };
        assert_eq!(
            command,
            &Command::Offer {
                call_id: id,
                leg_id: callee_media_leg(id),
                sdp: hold.clone(),
                peer_leg_id: Some(caller_media_leg(id)),
            }
        );
        let held = TO_CALLER.replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
        node.handle_media(now(21), *ticket, done(&held));
        let reinvites = invites_to(&sent(&mut node), carrier());
        assert_eq!(reinvites.len(), 1);
        assert_eq!(reinvites[0].body, held.as_bytes(), "the caller's re-INVITE is anchored");
        node.handle_datagram(
            now(22),
            carrier(),
            Transport::Unreliable,
            &ok_with(&reinvites[0], "c1", "sip:5551234@192.0.2.10:5060", CALLER_SDP),
        );
        let (media, _) = events(&mut node);
        let [(ticket, command)] = media.as_slice() else {
            panic!("one media command: {media:?}")
        };
        assert!(
            matches!(command, Command::Answer { leg_id, .. } if *leg_id == caller_media_leg(id)),
            "{command:?}"
        );
        assert!(status_to(&sent(&mut node), phone(), 200).is_none());
        node.handle_media(now(23), *ticket, done(TO_CALLEE));
        let ok = status_to(&sent(&mut node), phone(), 200).expect("the callee gets the answer");
        assert_eq!(ok.body, TO_CALLEE.as_bytes());

        // The caller hangs up: `CallEnded` waits for the statistics, the callee side's under
        // the answered leg's id.
        node.handle_datagram(
            now(30),
            carrier(),
            Transport::Unreliable,
            &message(
                "BYE sip:1002@127.0.0.1:5060 SIP/2.0",
                &format!(
                    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKcarrier3\r\nFrom: <sip:5551234@carrier.example>;tag=c1\r\n\
To: {}\r\nCall-ID: anchored-call\r\nCSeq: 2 BYE\r\n",
                    answer.to.value
                ),
                "",
            ),
        );
        let (media, calls) = events(&mut node);
        assert!(calls.is_empty(), "no CallEnded before the statistics: {calls:?}");
        let [(ticket, Command::Delete { call_id })] = media.as_slice() else {
            panic!("a delete: {media:?}")
        };
        assert_eq!(*call_id, id);
        node.handle_media(
            now(31),
            *ticket,
            MediaReply::Done {
                sdp: None,
                stats: vec![stats(caller_media_leg(id), 50), stats(callee_media_leg(id), 49)],
            },
        );
        let (_, calls) = events(&mut node);
        let [CallEvent::CallEnded(ended)] = calls.as_slice() else {
            panic!("CallEnded: {calls:?}")
        };
        let answered_leg = node.calls.active[&id].legs[0].leg_id;
        assert_eq!(
            ended.media,
            vec![stats(caller_media_leg(id), 50), stats(answered_leg, 49)]
        );
        assert_eq!(
            ended.at,
            now(30).wall,
            "the end is when the BYE came, not the statistics"
        );
    }

    #[test]
    fn a_failing_media_node_leaves_the_sdp_unchanged_and_the_call_working() {
        let mut node = node(true);
        let id = invite(&mut node);
        let (media, _) = events(&mut node);
        let [(ticket, _)] = media.as_slice() else {
            panic!("one media command: {media:?}")
        };
        node.handle_media(now(2), *ticket, MediaReply::Failed("connection refused".into()));
        let legs = invites_to(&sent(&mut node), phone());
        assert_eq!(legs.len(), 1);
        assert_eq!(legs[0].body, CALLER_SDP.as_bytes(), "passed through");
        node.handle_datagram(
            now(10),
            phone(),
            Transport::Unreliable,
            &ok_with(&legs[0], "callee", "sip:1002@192.0.2.21:5060", CALLEE_SDP),
        );
        let answer = status_to(&sent(&mut node), carrier(), 200).expect("answered at once");
        assert_eq!(answer.body, CALLEE_SDP.as_bytes());
        let (media, _) = events(&mut node);
        assert!(media.is_empty(), "an unanchored call asks nothing more: {media:?}");
        // A late answer to a call already over frees its ports.
        let mut other = self::node(true);
        let id2 = invite(&mut other);
        let (media, _) = events(&mut other);
        other.end(now(5), id2, Party::Caller, 487, Some(EndReason::Cancelled));
        let (_, calls) = events(&mut other);
        assert!(matches!(calls.as_slice(), [CallEvent::CallEnded(_)]), "{calls:?}");
        other.handle_media(now(6), media[0].0, done(TO_CALLEE));
        let (media, _) = events(&mut other);
        assert!(matches!(media.as_slice(), [(_, Command::Delete { call_id })] if *call_id == id2));
        assert!(invites_to(&sent(&mut other), phone()).is_empty());
        let _ = id;
    }

    #[test]
    fn without_anchoring_nothing_waits() {
        let mut node = node(false);
        invite(&mut node);
        let legs = invites_to(&sent(&mut node), phone());
        assert_eq!(legs[0].body, CALLER_SDP.as_bytes());
        assert!(events(&mut node).0.is_empty());
    }

    /// The carrier's INVITE on a DID that reaches a conference room's access number.
    fn conference_invite(node: &mut SipNode) -> Uuid {
        let invite = message(
            "INVITE sip:+4930700@acme.example.com SIP/2.0",
            "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKcarrier7\r\nFrom: <sip:5551234@carrier.example>;tag=c7\r\n\
To: <sip:+4930700@acme.example.com>\r\nCall-ID: conference-call\r\nCSeq: 1 INVITE\r\nContact: <sip:5551234@192.0.2.10:5060>\r\n",
            CALLER_SDP,
        );
        node.handle_datagram(now(0), carrier(), Transport::Unreliable, &invite);
        let Some(NodeEvent::CallLookup { id, .. }) = node.poll_event() else {
            panic!("the INVITE reaches the call layer")
        };
        let CallLookup::Tenant(mut tenant) = lookup() else {
            unreachable!()
        };
        tenant.route = Route::Conference {
            access_number: "7000".into(),
        };
        node.handle_call_lookup(now(1), id, CallLookup::Tenant(tenant), [8; 16]);
        node.calls.active.keys().next().copied().expect("a call")
    }

    #[test]
    fn a_conference_call_is_answered_by_the_media_nodes_ivr_and_hung_up_when_it_gives_up() {
        let mut node = node(true);
        let id = conference_invite(&mut node);
        let out = sent(&mut node);
        assert!(invites_to(&out, phone()).is_empty(), "no phone is called");
        assert!(status_to(&out, carrier(), 200).is_none());
        let (media, _) = events(&mut node);
        let [(ticket, command)] = media.as_slice() else {
            panic!("one media command: {media:?}")
        };
        assert_eq!(
            command,
            &Command::ConferenceIvr {
                call_id: id,
                leg_id: caller_media_leg(id),
                sdp: CALLER_SDP.into(),
                tenant_id: Uuid::from_u128(1),
                access_number: "7000".into(),
            }
        );
        node.handle_media(now(2), *ticket, done(TO_CALLER));
        let ok = status_to(&sent(&mut node), carrier(), 200).expect("the caller is answered");
        assert_eq!(ok.body, TO_CALLER.as_bytes(), "with the media node's SDP");
        let (_, calls) = events(&mut node);
        assert!(
            matches!(calls.as_slice(), [CallEvent::LegCreated(_), CallEvent::CallAnswered(_)]),
            "{calls:?}"
        );
        // A session refresh is answered with the same SDP, no media command.
        let to_tag = ok.to.tag.clone().expect("the 200 has a To tag");
        let reinvite = message(
            "INVITE sip:ll@sip1.example.net:5060 SIP/2.0",
            &format!(
                "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKcarrier8\r\nFrom: <sip:5551234@carrier.example>;tag=c7\r\n\
To: <sip:+4930700@acme.example.com>;tag={to_tag}\r\nCall-ID: conference-call\r\nCSeq: 2 INVITE\r\n\
Contact: <sip:5551234@192.0.2.10:5060>\r\n"
            ),
            CALLER_SDP,
        );
        node.handle_datagram(now(3), carrier(), Transport::Unreliable, &reinvite);
        let refreshed = status_to(&sent(&mut node), carrier(), 200).expect("the re-INVITE is answered");
        assert_eq!(refreshed.body, TO_CALLER.as_bytes());
        assert!(events(&mut node).0.is_empty());
        // Another call's leg means nothing; this call's leg ended: BYE, then the media is freed.
        node.handle_media_event(
            now(3),
            ControlEvent::LegEnded {
                call_id: Uuid::from_u128(42),
                leg_id: caller_media_leg(Uuid::from_u128(42)),
            },
        );
        assert!(sent(&mut node).is_empty());
        node.handle_media_event(
            now(4),
            ControlEvent::LegEnded {
                call_id: id,
                leg_id: caller_media_leg(id),
            },
        );
        let out = sent(&mut node);
        assert!(
            out.iter()
                .any(|(d, m)| *d == carrier() && m.method() == Some(rsip::Method::Bye)),
            "{out:?}"
        );
        let (media, _) = events(&mut node);
        let [(ticket, Command::Delete { call_id })] = media.as_slice() else {
            panic!("the call's media is deleted: {media:?}")
        };
        assert_eq!(*call_id, id);
        node.handle_media(
            now(5),
            *ticket,
            MediaReply::Done {
                sdp: None,
                stats: vec![stats(caller_media_leg(id), 50)],
            },
        );
        let (_, calls) = events(&mut node);
        let [CallEvent::CallEnded(ended)] = calls.as_slice() else {
            panic!("{calls:?}")
        };
        assert_eq!(ended.hangup_by, Party::System);
        assert_eq!(ended.media.len(), 1);
    }

    /// A conference call answered by the IVR; the 200's To tag.
    fn answered_conference_call(node: &mut SipNode) -> (Uuid, String) {
        let id = conference_invite(node);
        let _ = sent(node);
        let (media, _) = events(node);
        let [(ticket, Command::ConferenceIvr { .. })] = media.as_slice() else {
            panic!("the IVR is asked: {media:?}")
        };
        node.handle_media(now(2), *ticket, done(TO_CALLER));
        let ok = status_to(&sent(node), carrier(), 200).expect("the caller is answered");
        let _ = events(node);
        (id, ok.to.tag.clone().expect("the 200 has a To tag"))
    }

    /// The media node's `Delete` answered; the call's `CallEnded`.
    fn ended_after_delete(node: &mut SipNode, id: Uuid) -> domain::call::CallEnded {
        let (media, _) = events(node);
        let [(ticket, Command::Delete { call_id })] = media.as_slice() else {
            panic!("the call's media is deleted: {media:?}")
        };
        assert_eq!(*call_id, id);
        node.handle_media(
            now(9),
            *ticket,
            MediaReply::Done {
                sdp: None,
                stats: vec![stats(caller_media_leg(id), 50)],
            },
        );
        let (_, calls) = events(node);
        let [CallEvent::CallEnded(ended)] = calls.as_slice() else {
            panic!("{calls:?}")
        };
        ended.clone()
    }

    #[test]
    fn a_participant_the_media_node_disconnects_is_hung_up_with_the_reason() {
        for (reason, want) in [
            (DisconnectReason::Kicked, EndReason::Kicked),
            (DisconnectReason::ConferenceEnded, EndReason::ConferenceEnded),
        ] {
            let mut node = node(true);
            let (id, _) = answered_conference_call(&mut node);
            let disconnect = |call_id: Uuid, leg_id: Uuid| ControlEvent::Disconnect {
                room_id: Uuid::from_u128(77),
                call_id,
                leg_id,
                reason,
            };
            // Another call's leg, or another leg of this call: nothing happens.
            node.handle_media_event(
                now(3),
                disconnect(Uuid::from_u128(42), caller_media_leg(Uuid::from_u128(42))),
            );
            node.handle_media_event(now(3), disconnect(id, callee_media_leg(id)));
            assert!(sent(&mut node).is_empty());
            assert!(events(&mut node).0.is_empty());
            node.handle_media_event(now(4), disconnect(id, caller_media_leg(id)));
            let out = sent(&mut node);
            let byes = out
                .iter()
                .filter(|(d, m)| *d == carrier() && m.method() == Some(rsip::Method::Bye))
                .count();
            assert_eq!(byes, 1, "{out:?}");
            let ended = ended_after_delete(&mut node, id);
            assert_eq!(ended.hangup_by, Party::System);
            assert_eq!(ended.reason, want);
            assert_eq!(ended.sip_status, 200);
            // The same event again (another lane's copy): the call is over, nothing more.
            node.handle_media_event(now(10), disconnect(id, caller_media_leg(id)));
            assert!(sent(&mut node).is_empty());
            assert!(events(&mut node).0.is_empty());
        }
    }

    /// An INFO from the conference caller with `content_type` and `body`.
    fn info(tag: &str, cseq: u32, content_type: &str, body: &str) -> Vec<u8> {
        format!(
            "INFO sip:ll@sip1.example.net:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKinfo{cseq}\r\n\
From: <sip:5551234@carrier.example>;tag=c7\r\nTo: <sip:+4930700@acme.example.com>;tag={tag}\r\n\
Call-ID: conference-call\r\nCSeq: {cseq} INFO\r\nMax-Forwards: 70\r\nContent-Type: {content_type}\r\n\
Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn dtmf_in_a_conference_callers_info_goes_to_the_media_node() {
        let mut node = node(true);
        let (id, tag) = answered_conference_call(&mut node);
        let cases = [
            ("application/dtmf-relay", "Signal=5\r\nDuration=160\r\n", 200, Some('5')),
            ("application/dtmf", "#", 200, Some('#')),
            ("application/dtmf-relay", "Signal=10\r\n", 200, Some('*')),
            ("application/dtmf-relay", "Signal=X\r\nDuration=160\r\n", 400, None),
            ("application/dtmf-relay", "Duration=160\r\n", 400, None),
            ("application/dtmf", "", 400, None),
            ("application/x-other-package", "whatever", 200, None),
        ];
        for (cseq, (content_type, body, status, digit)) in (3..).zip(cases) {
            node.handle_datagram(
                now(3),
                carrier(),
                Transport::Unreliable,
                &info(&tag, cseq, content_type, body),
            );
            let out = sent(&mut node);
            assert!(status_to(&out, carrier(), status).is_some(), "{body:?}: {out:?}");
            let (media, _) = events(&mut node);
            match digit {
                Some(digit) => assert!(
                    matches!(
                        media.as_slice(),
                        [(_, Command::Dtmf { call_id, leg_id, digit: d })]
                            if *call_id == id && *leg_id == caller_media_leg(id) && *d == digit
                    ),
                    "{body:?}: {media:?}"
                ),
                None => assert!(media.is_empty(), "{body:?}: {media:?}"),
            }
        }
    }

    #[test]
    fn a_conference_call_without_a_media_node_is_refused_with_503() {
        for anchor_media in [true, false] {
            let mut node = node(anchor_media);
            conference_invite(&mut node);
            let (media, mut calls) = events(&mut node);
            assert_eq!(media.len(), usize::from(anchor_media), "{media:?}");
            if let [(ticket, _)] = media.as_slice() {
                node.handle_media(now(2), *ticket, MediaReply::Failed("unreachable".into()));
            }
            let out = sent(&mut node);
            assert!(status_to(&out, carrier(), 503).is_some(), "{out:?}");
            assert!(status_to(&out, carrier(), 200).is_none());
            let (media, more) = events(&mut node);
            assert!(media.is_empty());
            calls.extend(more);
            let [CallEvent::CallInitiated(_), CallEvent::CallAuthorized(_), CallEvent::CallEnded(ended)] =
                calls.as_slice()
            else {
                panic!("{calls:?}")
            };
            assert_eq!(ended.sip_status, 503);
        }
    }
}
