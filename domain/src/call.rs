//! The Call aggregate: one stream per call (`call-{id}`), with its legs, from initiation to
//! the end, so that CDRs and charges can be rebuilt from facts alone.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::decider::Aggregate;
use crate::event_family;

/// Bounds that keep one call's stream small.
pub const MAX_LEGS_PER_CALL: usize = 32;
pub const MAX_NUMBER_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Extension to extension of the same tenant.
    Internal,
    /// From an extension out through a trunk.
    Outbound,
    /// From a trunk (a DID) in to the tenant.
    Inbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Party {
    Caller,
    Callee,
    /// The node itself (limits, credit exhausted, timeouts).
    System,
    /// A person through the API (`hangupCall`).
    Operator,
}

/// Why a call ended, in words finance and support read in CDRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    NormalClearing,
    Busy,
    NoAnswer,
    Unavailable,
    NotFound,
    Cancelled,
    Rejected,
    CreditExhausted,
    Failed,
    /// An operator asked for the call to end (`CallHangupRequested`).
    HangupRequested,
    /// A conference participant's session ended around them (the last host of a moderated
    /// room left) and the media node disconnected them.
    ConferenceEnded,
    /// A conference participant was kicked (`kickParticipant`) and the media node
    /// disconnected them.
    Kicked,
}

impl EndReason {
    /// The reason a final SIP failure status stands for.
    pub fn from_sip_status(status: u16) -> EndReason {
        match status {
            200..=299 => EndReason::NormalClearing,
            486 | 600 => EndReason::Busy,
            408 => EndReason::NoAnswer,
            480 => EndReason::Unavailable,
            404 | 604 => EndReason::NotFound,
            487 => EndReason::Cancelled,
            402 | 403 | 603 => EndReason::Rejected,
            _ => EndReason::Failed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallInitiated {
    pub call_id: Uuid,
    pub tenant_id: Uuid,
    pub direction: Direction,
    pub caller: String,
    #[serde(default)]
    pub caller_name: String,
    pub callee: String,
    #[serde(default)]
    pub did: Option<String>,
    #[serde(default)]
    pub trunk_id: Option<Uuid>,
    /// The account billed for this call, if any.
    #[serde(default)]
    pub account_id: Option<Uuid>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallAuthorized {
    /// The longest the call may last once answered (prepaid), or none.
    #[serde(default)]
    pub max_duration_s: Option<u32>,
    #[serde(default)]
    pub reservation_id: Option<Uuid>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallRejected {
    pub reason: String,
    pub sip_status: u16,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LegCreated {
    pub leg_id: Uuid,
    /// Where the leg goes: a contact URI, a trunk, a conference.
    pub target: String,
    #[serde(default)]
    pub trunk_id: Option<Uuid>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallRinging {
    pub leg_id: Uuid,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallAnswered {
    pub leg_id: Uuid,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallHeld {
    pub by: Party,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallResumed {
    pub by: Party,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallTransferred {
    pub by: Party,
    pub to: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallEnded {
    pub hangup_by: Party,
    pub reason: EndReason,
    pub sip_status: u16,
    pub at: DateTime<Utc>,
    /// Media statistics per leg, where a media node anchored the call's RTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media: Vec<LegMedia>,
}

/// What a media node saw on one leg of a call: integer counters only, so replays compare
/// byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LegMedia {
    pub leg_id: Uuid,
    /// The codec negotiated on the leg (`PCMU`, `PCMA`, ...).
    pub codec: String,
    pub packets_received: u64,
    pub packets_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Packets missing from the received sequence.
    pub packets_lost: u64,
    /// RFC 3550 interarrival jitter, in microseconds.
    pub jitter_us: u64,
}

/// An operator asks the SIP node holding the call to end it (both legs). The node acts on
/// it and records the end as usual (`CallEnded`, reason `hangup_requested`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallHangupRequested {
    /// Who asked, e.g. `api-key:{key_id}`.
    pub requested_by: String,
    pub at: DateTime<Utc>,
}

/// The longest `requested_by` a hang-up request carries.
pub const MAX_ACTOR_LEN: usize = 200;

event_family! {
    /// Everything that happens on a `call-{id}` stream.
    pub enum CallEvent {
        CallInitiated,
        CallAuthorized,
        CallRejected,
        LegCreated,
        CallRinging,
        CallAnswered,
        CallHeld,
        CallResumed,
        CallTransferred,
        CallEnded,
        CallHangupRequested,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallCommand {
    Initiate(CallInitiated),
    /// Authorize with what the account decided (the max duration comes from billing).
    Authorize {
        max_duration_s: Option<u32>,
        reservation_id: Option<Uuid>,
        at: DateTime<Utc>,
    },
    Reject {
        reason: String,
        sip_status: u16,
        at: DateTime<Utc>,
    },
    CreateLeg {
        leg_id: Uuid,
        target: String,
        trunk_id: Option<Uuid>,
        at: DateTime<Utc>,
    },
    Ring {
        leg_id: Uuid,
        at: DateTime<Utc>,
    },
    Answer {
        leg_id: Uuid,
        at: DateTime<Utc>,
    },
    Hold {
        by: Party,
        at: DateTime<Utc>,
    },
    Resume {
        by: Party,
        at: DateTime<Utc>,
    },
    Transfer {
        by: Party,
        to: String,
        at: DateTime<Utc>,
    },
    End {
        hangup_by: Party,
        sip_status: u16,
        /// Overrides the reason the status implies (e.g. `credit_exhausted`).
        reason: Option<EndReason>,
        at: DateTime<Utc>,
        /// Per-leg media statistics, if a media node anchored the call.
        media: Vec<LegMedia>,
    },
    /// From the API: ask the SIP node to end a call that has not ended.
    RequestHangup {
        by: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallRejection {
    #[error("the call already exists")]
    AlreadyExists,
    #[error("no such call")]
    NotFound,
    #[error("the call has ended")]
    Ended,
    #[error("the call is not authorized yet")]
    NotAuthorized,
    #[error("the call is already authorized or rejected")]
    AlreadyDecided,
    #[error("no such leg")]
    UnknownLeg,
    #[error("the call has reached {MAX_LEGS_PER_CALL} legs")]
    TooManyLegs,
    #[error("the call is not answered")]
    NotAnswered,
    #[error("the call is already answered")]
    AlreadyAnswered,
    #[error("the call is already on hold")]
    AlreadyHeld,
    #[error("the call is not on hold")]
    NotHeld,
    #[error("invalid number `{0}`")]
    InvalidNumber(String),
    #[error("time runs backwards: {0}")]
    TimeTravel(String),
    #[error("invalid actor")]
    InvalidActor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    #[default]
    None,
    Initiated,
    Authorized,
    Rejected,
    Answered,
    Ended,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallState {
    pub phase: Phase,
    pub initiated: Option<CallInitiated>,
    pub max_duration_s: Option<u32>,
    pub legs: Vec<Uuid>,
    pub answered_leg: Option<Uuid>,
    pub answered_at: Option<DateTime<Utc>>,
    pub on_hold: bool,
    pub last_at: Option<DateTime<Utc>>,
}

impl CallState {
    pub fn is_terminal(&self) -> bool {
        matches!(self.phase, Phase::Ended | Phase::Rejected)
    }
}

pub struct Call;

impl Aggregate for Call {
    type Event = CallEvent;
    type State = CallState;
    const STREAM_PREFIX: &'static str = "call";

    fn evolve(mut state: CallState, event: &CallEvent) -> CallState {
        let at = match event {
            CallEvent::CallInitiated(e) => {
                state.phase = Phase::Initiated;
                state.initiated = Some(e.clone());
                e.at
            }
            CallEvent::CallAuthorized(e) => {
                state.phase = Phase::Authorized;
                state.max_duration_s = e.max_duration_s;
                e.at
            }
            CallEvent::CallRejected(e) => {
                state.phase = Phase::Rejected;
                e.at
            }
            CallEvent::LegCreated(e) => {
                state.legs.push(e.leg_id);
                e.at
            }
            CallEvent::CallRinging(e) => e.at,
            CallEvent::CallAnswered(e) => {
                state.phase = Phase::Answered;
                state.answered_leg = Some(e.leg_id);
                state.answered_at = Some(e.at);
                e.at
            }
            CallEvent::CallHeld(e) => {
                state.on_hold = true;
                e.at
            }
            CallEvent::CallResumed(e) => {
                state.on_hold = false;
                e.at
            }
            CallEvent::CallTransferred(e) => e.at,
            CallEvent::CallEnded(e) => {
                state.phase = Phase::Ended;
                e.at
            }
            CallEvent::CallHangupRequested(e) => e.at,
        };
        state.last_at = Some(at);
        state
    }
}

pub fn decide(command: &CallCommand, state: &CallState) -> Result<Vec<CallEvent>, CallRejection> {
    if let CallCommand::Initiate(e) = command {
        if state.phase != Phase::None {
            return Err(CallRejection::AlreadyExists);
        }
        for number in [&e.caller, &e.callee] {
            if number.is_empty() || number.len() > MAX_NUMBER_LEN || number.chars().any(|c| c.is_control()) {
                return Err(CallRejection::InvalidNumber(
                    number.chars().take(MAX_NUMBER_LEN).collect(),
                ));
            }
        }
        return Ok(vec![CallEvent::CallInitiated(e.clone())]);
    }
    if state.phase == Phase::None {
        return Err(CallRejection::NotFound);
    }
    if state.is_terminal() {
        return Err(CallRejection::Ended);
    }
    let at = command_time(command);
    if let Some(last) = state.last_at {
        if at < last {
            return Err(CallRejection::TimeTravel(format!("{at} is before {last}")));
        }
    }
    let authorized = matches!(state.phase, Phase::Authorized | Phase::Answered);
    match command {
        CallCommand::Initiate(_) => unreachable!("handled above"),
        CallCommand::Authorize {
            max_duration_s,
            reservation_id,
            at,
        } => {
            if state.phase != Phase::Initiated {
                return Err(CallRejection::AlreadyDecided);
            }
            Ok(vec![CallEvent::CallAuthorized(CallAuthorized {
                max_duration_s: *max_duration_s,
                reservation_id: *reservation_id,
                at: *at,
            })])
        }
        CallCommand::Reject { reason, sip_status, at } => {
            if state.phase != Phase::Initiated {
                return Err(CallRejection::AlreadyDecided);
            }
            Ok(vec![CallEvent::CallRejected(CallRejected {
                reason: reason.clone(),
                sip_status: *sip_status,
                at: *at,
            })])
        }
        CallCommand::CreateLeg {
            leg_id,
            target,
            trunk_id,
            at,
        } => {
            if !authorized {
                return Err(CallRejection::NotAuthorized);
            }
            if state.legs.len() >= MAX_LEGS_PER_CALL {
                return Err(CallRejection::TooManyLegs);
            }
            Ok(vec![CallEvent::LegCreated(LegCreated {
                leg_id: *leg_id,
                target: target.clone(),
                trunk_id: *trunk_id,
                at: *at,
            })])
        }
        CallCommand::Ring { leg_id, at } => {
            known_leg(state, leg_id)?;
            if state.phase == Phase::Answered {
                return Ok(vec![]);
            }
            Ok(vec![CallEvent::CallRinging(CallRinging {
                leg_id: *leg_id,
                at: *at,
            })])
        }
        CallCommand::Answer { leg_id, at } => {
            known_leg(state, leg_id)?;
            if state.phase == Phase::Answered {
                return Err(CallRejection::AlreadyAnswered);
            }
            if !authorized {
                return Err(CallRejection::NotAuthorized);
            }
            Ok(vec![CallEvent::CallAnswered(CallAnswered {
                leg_id: *leg_id,
                at: *at,
            })])
        }
        CallCommand::Hold { by, at } => {
            if state.phase != Phase::Answered {
                return Err(CallRejection::NotAnswered);
            }
            if state.on_hold {
                return Err(CallRejection::AlreadyHeld);
            }
            Ok(vec![CallEvent::CallHeld(CallHeld { by: *by, at: *at })])
        }
        CallCommand::Resume { by, at } => {
            if !state.on_hold {
                return Err(CallRejection::NotHeld);
            }
            Ok(vec![CallEvent::CallResumed(CallResumed { by: *by, at: *at })])
        }
        CallCommand::Transfer { by, to, at } => {
            if state.phase != Phase::Answered {
                return Err(CallRejection::NotAnswered);
            }
            if to.is_empty() || to.len() > MAX_NUMBER_LEN {
                return Err(CallRejection::InvalidNumber(to.chars().take(MAX_NUMBER_LEN).collect()));
            }
            Ok(vec![CallEvent::CallTransferred(CallTransferred {
                by: *by,
                to: to.clone(),
                at: *at,
            })])
        }
        CallCommand::End {
            hangup_by,
            sip_status,
            reason,
            at,
            media,
        } => {
            let reason = reason.unwrap_or_else(|| {
                if state.phase == Phase::Answered {
                    EndReason::NormalClearing
                } else {
                    EndReason::from_sip_status(*sip_status)
                }
            });
            Ok(vec![CallEvent::CallEnded(CallEnded {
                hangup_by: *hangup_by,
                reason,
                sip_status: *sip_status,
                at: *at,
                media: media.clone(),
            })])
        }
        CallCommand::RequestHangup { by, at } => {
            if by.is_empty() || by.len() > MAX_ACTOR_LEN || by.chars().any(char::is_control) {
                return Err(CallRejection::InvalidActor);
            }
            Ok(vec![CallEvent::CallHangupRequested(CallHangupRequested {
                requested_by: by.clone(),
                at: *at,
            })])
        }
    }
}

fn known_leg(state: &CallState, leg_id: &Uuid) -> Result<(), CallRejection> {
    if state.legs.contains(leg_id) {
        Ok(())
    } else {
        Err(CallRejection::UnknownLeg)
    }
}

fn command_time(command: &CallCommand) -> DateTime<Utc> {
    match command {
        CallCommand::Initiate(e) => e.at,
        CallCommand::Authorize { at, .. }
        | CallCommand::Reject { at, .. }
        | CallCommand::CreateLeg { at, .. }
        | CallCommand::Ring { at, .. }
        | CallCommand::Answer { at, .. }
        | CallCommand::Hold { at, .. }
        | CallCommand::Resume { at, .. }
        | CallCommand::Transfer { at, .. }
        | CallCommand::End { at, .. }
        | CallCommand::RequestHangup { at, .. } => *at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    const LEG: Uuid = Uuid::from_u128(10);

    fn initiated() -> CallEvent {
        CallEvent::CallInitiated(CallInitiated {
            call_id: Uuid::from_u128(1),
            tenant_id: Uuid::from_u128(2),
            direction: Direction::Internal,
            caller: "1001".into(),
            caller_name: "Alice".into(),
            callee: "1002".into(),
            did: None,
            trunk_id: None,
            account_id: None,
            at: t(0),
        })
    }

    fn authorized() -> CallEvent {
        CallEvent::CallAuthorized(CallAuthorized {
            max_duration_s: None,
            reservation_id: None,
            at: t(0),
        })
    }

    fn leg() -> CallEvent {
        CallEvent::LegCreated(LegCreated {
            leg_id: LEG,
            target: "sip:1002@10.0.0.2".into(),
            trunk_id: None,
            at: t(0),
        })
    }

    fn answered() -> CallEvent {
        CallEvent::CallAnswered(CallAnswered { leg_id: LEG, at: t(5) })
    }

    fn state(events: &[CallEvent]) -> CallState {
        Call::fold(events)
    }

    #[test]
    fn a_whole_call_flows_from_initiation_to_the_end() {
        let mut history = vec![];
        let steps: Vec<CallCommand> = vec![
            CallCommand::Authorize {
                max_duration_s: Some(3000),
                reservation_id: None,
                at: t(0),
            },
            CallCommand::CreateLeg {
                leg_id: LEG,
                target: "sip:1002@10.0.0.2".into(),
                trunk_id: None,
                at: t(0),
            },
            CallCommand::Ring { leg_id: LEG, at: t(1) },
            CallCommand::Answer { leg_id: LEG, at: t(5) },
            CallCommand::Hold {
                by: Party::Caller,
                at: t(10),
            },
            CallCommand::Resume {
                by: Party::Caller,
                at: t(20),
            },
            CallCommand::End {
                hangup_by: Party::Callee,
                sip_status: 200,
                reason: None,
                at: t(65),
                media: vec![],
            },
        ];
        history.push(initiated());
        for step in steps {
            let events = decide(&step, &state(&history)).unwrap_or_else(|e| panic!("{step:?}: {e}"));
            history.extend(events);
        }
        let last = history.last().unwrap();
        assert!(
            matches!(last, CallEvent::CallEnded(e) if e.reason == EndReason::NormalClearing && e.hangup_by == Party::Callee)
        );
        assert!(state(&history).is_terminal());
        assert_eq!(state(&history).answered_at, Some(t(5)));
    }

    #[test]
    fn rules_table() {
        let end = |status: u16| CallCommand::End {
            hangup_by: Party::System,
            sip_status: status,
            reason: None,
            at: t(9),
            media: vec![],
        };
        let ended = CallEvent::CallEnded(CallEnded {
            hangup_by: Party::Caller,
            reason: EndReason::Cancelled,
            sip_status: 487,
            at: t(3),
            media: vec![],
        });
        let answer = CallCommand::Answer { leg_id: LEG, at: t(6) };
        let hangup = |by: &str, s: i64| CallCommand::RequestHangup {
            by: by.into(),
            at: t(s),
        };
        let cases: Vec<(Vec<CallEvent>, CallCommand, Result<(), CallRejection>)> = vec![
            (
                vec![initiated()],
                CallCommand::Initiate(match initiated() {
                    CallEvent::CallInitiated(e) => e,
                    _ => unreachable!(),
                }),
                Err(CallRejection::AlreadyExists),
            ),
            (vec![], answer.clone(), Err(CallRejection::NotFound)),
            (
                vec![initiated(), leg()],
                answer.clone(),
                Err(CallRejection::NotAuthorized),
            ),
            (
                vec![initiated(), authorized()],
                answer.clone(),
                Err(CallRejection::UnknownLeg),
            ),
            (
                vec![initiated(), authorized(), leg(), answered()],
                answer.clone(),
                Err(CallRejection::AlreadyAnswered),
            ),
            (
                vec![initiated(), authorized(), leg(), ended.clone()],
                answer.clone(),
                Err(CallRejection::Ended),
            ),
            (
                vec![initiated(), authorized()],
                CallCommand::Hold {
                    by: Party::Caller,
                    at: t(1),
                },
                Err(CallRejection::NotAnswered),
            ),
            (
                vec![initiated(), authorized(), leg(), answered()],
                CallCommand::Resume {
                    by: Party::Caller,
                    at: t(9),
                },
                Err(CallRejection::NotHeld),
            ),
            (
                vec![initiated(), authorized(), leg(), answered()],
                CallCommand::Ring { leg_id: LEG, at: t(1) },
                Err(CallRejection::TimeTravel(format!("{} is before {}", t(1), t(5)))),
            ),
            (
                vec![initiated()],
                CallCommand::Authorize {
                    max_duration_s: None,
                    reservation_id: None,
                    at: t(1),
                },
                Ok(()),
            ),
            (
                vec![initiated(), authorized()],
                CallCommand::Reject {
                    reason: "x".into(),
                    sip_status: 403,
                    at: t(1),
                },
                Err(CallRejection::AlreadyDecided),
            ),
            (vec![initiated()], end(486), Ok(())),
            // A hang-up request: for a ringing or answered call, never an ended or unknown one.
            (vec![initiated(), authorized(), leg()], hangup("api-key:1", 1), Ok(())),
            (
                vec![initiated(), authorized(), leg(), answered()],
                hangup("api-key:1", 6),
                Ok(()),
            ),
            (vec![], hangup("api-key:1", 6), Err(CallRejection::NotFound)),
            (
                vec![initiated(), authorized(), leg(), ended.clone()],
                hangup("api-key:1", 6),
                Err(CallRejection::Ended),
            ),
            (
                vec![
                    initiated(),
                    CallEvent::CallRejected(CallRejected {
                        reason: "no funds".into(),
                        sip_status: 402,
                        at: t(0),
                    }),
                ],
                hangup("api-key:1", 6),
                Err(CallRejection::Ended),
            ),
            (
                vec![initiated(), authorized(), leg(), answered()],
                hangup("", 6),
                Err(CallRejection::InvalidActor),
            ),
            (
                vec![initiated(), authorized(), leg(), answered()],
                hangup("api-key:1", 1),
                Err(CallRejection::TimeTravel(format!("{} is before {}", t(1), t(5)))),
            ),
        ];
        for (history, command, expected) in cases {
            assert_eq!(
                decide(&command, &state(&history)).map(drop),
                expected,
                "given {history:?} when {command:?}"
            );
        }
    }

    #[test]
    fn unanswered_calls_end_with_the_reason_their_status_implies() {
        for (status, reason) in [
            (486, EndReason::Busy),
            (480, EndReason::Unavailable),
            (404, EndReason::NotFound),
            (408, EndReason::NoAnswer),
            (487, EndReason::Cancelled),
            (503, EndReason::Failed),
        ] {
            let events = decide(
                &CallCommand::End {
                    hangup_by: Party::System,
                    sip_status: status,
                    reason: None,
                    at: t(1),
                    media: vec![],
                },
                &state(&[initiated(), authorized()]),
            )
            .unwrap();
            assert!(
                matches!(&events[0], CallEvent::CallEnded(e) if e.reason == reason),
                "{status}"
            );
        }
        // An explicit reason wins: the node cut a prepaid call.
        let events = decide(
            &CallCommand::End {
                hangup_by: Party::System,
                sip_status: 200,
                reason: Some(EndReason::CreditExhausted),
                at: t(60),
                media: vec![],
            },
            &state(&[initiated(), authorized(), leg(), answered()]),
        )
        .unwrap();
        assert!(matches!(&events[0], CallEvent::CallEnded(e) if e.reason == EndReason::CreditExhausted));
    }

    #[test]
    fn a_hangup_request_is_recorded_and_the_node_ends_the_call_as_requested() {
        let mut history = vec![initiated(), authorized(), leg(), answered()];
        let requested = decide(
            &CallCommand::RequestHangup {
                by: "api-key:7".into(),
                at: t(30),
            },
            &state(&history),
        )
        .unwrap();
        assert_eq!(
            requested,
            vec![CallEvent::CallHangupRequested(CallHangupRequested {
                requested_by: "api-key:7".into(),
                at: t(30),
            })]
        );
        history.extend(requested);
        // The request ends nothing by itself: the call is still answered until the node ends it.
        assert_eq!(state(&history).phase, Phase::Answered);
        let ended = decide(
            &CallCommand::End {
                hangup_by: Party::Operator,
                sip_status: 200,
                reason: Some(EndReason::HangupRequested),
                at: t(30),
                media: vec![],
            },
            &state(&history),
        )
        .unwrap();
        assert!(matches!(&ended[0], CallEvent::CallEnded(e)
            if e.reason == EndReason::HangupRequested && e.hangup_by == Party::Operator));
        history.extend(ended);
        assert!(decide(
            &CallCommand::RequestHangup {
                by: "api-key:7".into(),
                at: t(31),
            },
            &state(&history),
        )
        .is_err());
    }
}
