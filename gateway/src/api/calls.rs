//! Calls area: `hangupCall`, a request on the call's stream (`CallHangupRequested`) that the
//! SIP node holding the call acts on (`sip::hangup` follows the log; the node sends BYE or
//! CANCEL and records `CallEnded` with reason `hangup_requested`). The API decides nothing:
//! the call decider refuses an unknown or ended call.

use async_graphql::{Context, Object};
use commands::{CommandError, StreamRef};
use domain::call::{self, Call, CallCommand, CallRejection};
use uuid::Uuid;

use super::auth::Capability;
use super::error::{ApiError, ApiResult};
use super::{command, require, state, MutationResult};

#[derive(Default)]
pub struct CallsMutation;

#[Object]
impl CallsMutation {
    /// Ask the SIP node to end a call of the caller's tenant that has not ended: both sides
    /// get a BYE (or, still ringing, the legs are cancelled and the caller gets 487), and the
    /// call ends with reason `hangup_requested`, hung up by `operator`.
    async fn hangup_call(&self, ctx: &Context<'_>, idempotency_key: Uuid, call_id: Uuid) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ControlCalls)?;
        let cmd = command(ctx, &caller, "hangupCall", idempotency_key);
        let by = format!("api-key:{}", caller.key_id);
        let now = cmd.now;
        // The stream is loaded under the caller's tenant: another tenant's call is not found.
        let outcome = state(ctx)
            .handler
            .execute::<Call, CallRejection>(&cmd, StreamRef::of::<Call>(caller.tenant_id, &call_id), |s| {
                // Never before the call's last event: the SIP node stamps those with its clock.
                let at = match s.last_at {
                    Some(last) if last > now => last,
                    _ => now,
                };
                call::decide(&CallCommand::RequestHangup { by: by.clone(), at }, s)
            })
            .await
            .map_err(|e| match e {
                CommandError::Rejected(CallRejection::NotFound) => ApiError::not_found("no such call"),
                other => other.into(),
            })?;
        Ok(MutationResult::new(call_id, outcome))
    }
}
