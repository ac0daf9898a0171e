//! A tenant's routing table (`routing-{tenant_id}`): its SIP trunks, its outbound routes
//! (dialled prefix → ordered trunks, with digits stripped and prepended) and its inbound
//! DIDs (number → extension). One stream per tenant: changes are rare, and one decider
//! sees every rule at once, so a route never names a trunk that does not exist.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

use crate::decider::Aggregate;
use crate::event_family;

pub const MAX_TRUNKS: usize = 64;
pub const MAX_ROUTES: usize = 1024;
pub const MAX_DIDS: usize = 100_000;
pub const MAX_TRUNKS_PER_ROUTE: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrunkTransport {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrunkAdded {
    pub trunk_id: Uuid,
    pub name: String,
    /// The carrier's host name or address, and port.
    pub host: String,
    pub port: u16,
    pub transport: TrunkTransport,
    /// IP authentication: INVITEs from these addresses arrive through this trunk.
    #[serde(default)]
    pub allowed_ips: Vec<String>,
    /// Outbound digest credentials, for carriers that challenge.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrunkRemoved {
    pub trunk_id: Uuid,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteAdded {
    pub route_id: Uuid,
    /// Digits the dialled number starts with (`""` matches everything).
    pub prefix: String,
    pub strip_digits: u8,
    #[serde(default)]
    pub prepend: String,
    /// Among routes with the same prefix, lower goes first.
    #[serde(default)]
    pub priority: i32,
    /// Tried in this order: the next on a 5xx or a timeout.
    pub trunk_ids: Vec<Uuid>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRemoved {
    pub route_id: Uuid,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DidAdded {
    pub did: String,
    /// The extension number calls to this DID ring.
    pub extension_number: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DidRemoved {
    pub did: String,
    pub at: DateTime<Utc>,
}

event_family! {
    /// Everything that happens on a `routing-{tenant_id}` stream.
    pub enum RoutingEvent {
        TrunkAdded,
        TrunkRemoved,
        RouteAdded,
        RouteRemoved,
        DidAdded,
        DidRemoved,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutingCommand {
    AddTrunk(TrunkAdded),
    RemoveTrunk { trunk_id: Uuid, at: DateTime<Utc> },
    AddRoute(RouteAdded),
    RemoveRoute { route_id: Uuid, at: DateTime<Utc> },
    AddDid(DidAdded),
    RemoveDid { did: String, at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingRejection {
    #[error("a trunk named `{0}` exists already")]
    DuplicateTrunkName(String),
    #[error("the trunk exists already")]
    DuplicateTrunk,
    #[error("no such trunk {0}")]
    UnknownTrunk(Uuid),
    #[error("trunk {0} is still used by a route")]
    TrunkInUse(Uuid),
    #[error("the route exists already")]
    DuplicateRoute,
    #[error("no such route")]
    UnknownRoute,
    #[error("DID `{0}` is assigned already")]
    DuplicateDid(String),
    #[error("no such DID `{0}`")]
    UnknownDid(String),
    #[error("invalid {field}: {why}")]
    Invalid { field: &'static str, why: String },
    #[error("the routing table is full ({0})")]
    Full(&'static str),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingState {
    pub trunks: BTreeMap<Uuid, TrunkAdded>,
    pub routes: BTreeMap<Uuid, RouteAdded>,
    pub dids: BTreeMap<String, String>,
}

pub struct RoutingTable;

impl Aggregate for RoutingTable {
    type Event = RoutingEvent;
    type State = RoutingState;
    const STREAM_PREFIX: &'static str = "routing";

    fn evolve(mut state: RoutingState, event: &RoutingEvent) -> RoutingState {
        match event {
            RoutingEvent::TrunkAdded(e) => {
                state.trunks.insert(e.trunk_id, e.clone());
            }
            RoutingEvent::TrunkRemoved(e) => {
                state.trunks.remove(&e.trunk_id);
            }
            RoutingEvent::RouteAdded(e) => {
                state.routes.insert(e.route_id, e.clone());
            }
            RoutingEvent::RouteRemoved(e) => {
                state.routes.remove(&e.route_id);
            }
            RoutingEvent::DidAdded(e) => {
                state.dids.insert(e.did.clone(), e.extension_number.clone());
            }
            RoutingEvent::DidRemoved(e) => {
                state.dids.remove(&e.did);
            }
        }
        state
    }
}

fn invalid(field: &'static str, why: impl Into<String>) -> RoutingRejection {
    RoutingRejection::Invalid { field, why: why.into() }
}

fn digits(field: &'static str, value: &str, allow_empty: bool, plus: bool) -> Result<(), RoutingRejection> {
    let body = if plus {
        value.strip_prefix('+').unwrap_or(value)
    } else {
        value
    };
    if (!allow_empty && body.is_empty()) || value.len() > 32 || !body.chars().all(|c| c.is_ascii_digit()) {
        return Err(invalid(
            field,
            format!("`{value}` is not a number of at most 32 digits"),
        ));
    }
    Ok(())
}

fn host(value: &str) -> Result<(), RoutingRejection> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if ok {
        Ok(())
    } else {
        Err(invalid("host", format!("`{value}` is not a host name or address")))
    }
}

pub fn decide(command: &RoutingCommand, state: &RoutingState) -> Result<Vec<RoutingEvent>, RoutingRejection> {
    match command {
        RoutingCommand::AddTrunk(e) => {
            if state.trunks.contains_key(&e.trunk_id) {
                return Err(RoutingRejection::DuplicateTrunk);
            }
            if state.trunks.len() >= MAX_TRUNKS {
                return Err(RoutingRejection::Full("trunks"));
            }
            if e.name.trim().is_empty() || e.name.len() > 64 {
                return Err(invalid("name", "1 to 64 characters"));
            }
            if state.trunks.values().any(|t| t.name == e.name) {
                return Err(RoutingRejection::DuplicateTrunkName(e.name.clone()));
            }
            host(&e.host)?;
            if e.port == 0 {
                return Err(invalid("port", "0 is not a port"));
            }
            if e.allowed_ips.len() > 32 {
                return Err(invalid("allowed_ips", "at most 32 addresses"));
            }
            for ip in &e.allowed_ips {
                if ip.parse::<std::net::IpAddr>().is_err() {
                    return Err(invalid("allowed_ips", format!("`{ip}` is not an IP address")));
                }
            }
            if e.username.is_some() != e.password.is_some() {
                return Err(invalid(
                    "credentials",
                    "a username needs a password and the other way round",
                ));
            }
            Ok(vec![RoutingEvent::TrunkAdded(e.clone())])
        }
        RoutingCommand::RemoveTrunk { trunk_id, at } => {
            if !state.trunks.contains_key(trunk_id) {
                return Err(RoutingRejection::UnknownTrunk(*trunk_id));
            }
            if state.routes.values().any(|r| r.trunk_ids.contains(trunk_id)) {
                return Err(RoutingRejection::TrunkInUse(*trunk_id));
            }
            Ok(vec![RoutingEvent::TrunkRemoved(TrunkRemoved {
                trunk_id: *trunk_id,
                at: *at,
            })])
        }
        RoutingCommand::AddRoute(e) => {
            if state.routes.contains_key(&e.route_id) {
                return Err(RoutingRejection::DuplicateRoute);
            }
            if state.routes.len() >= MAX_ROUTES {
                return Err(RoutingRejection::Full("routes"));
            }
            digits("prefix", &e.prefix, true, true)?;
            digits("prepend", &e.prepend, true, true)?;
            if e.trunk_ids.is_empty() || e.trunk_ids.len() > MAX_TRUNKS_PER_ROUTE {
                return Err(invalid("trunks", format!("1 to {MAX_TRUNKS_PER_ROUTE} trunks")));
            }
            if let Some(unknown) = e.trunk_ids.iter().find(|id| !state.trunks.contains_key(id)) {
                return Err(RoutingRejection::UnknownTrunk(*unknown));
            }
            Ok(vec![RoutingEvent::RouteAdded(e.clone())])
        }
        RoutingCommand::RemoveRoute { route_id, at } => {
            if !state.routes.contains_key(route_id) {
                return Err(RoutingRejection::UnknownRoute);
            }
            Ok(vec![RoutingEvent::RouteRemoved(RouteRemoved {
                route_id: *route_id,
                at: *at,
            })])
        }
        RoutingCommand::AddDid(e) => {
            digits("did", &e.did, false, true)?;
            digits("extension", &e.extension_number, false, false)?;
            if state.dids.contains_key(&e.did) {
                return Err(RoutingRejection::DuplicateDid(e.did.clone()));
            }
            if state.dids.len() >= MAX_DIDS {
                return Err(RoutingRejection::Full("DIDs"));
            }
            Ok(vec![RoutingEvent::DidAdded(e.clone())])
        }
        RoutingCommand::RemoveDid { did, at } => {
            if !state.dids.contains_key(did) {
                return Err(RoutingRejection::UnknownDid(did.clone()));
            }
            Ok(vec![RoutingEvent::DidRemoved(DidRemoved {
                did: did.clone(),
                at: *at,
            })])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn trunk(id: u128, name: &str) -> TrunkAdded {
        TrunkAdded {
            trunk_id: Uuid::from_u128(id),
            name: name.into(),
            host: "carrier.example".into(),
            port: 5060,
            transport: TrunkTransport::Udp,
            allowed_ips: vec!["192.0.2.1".into()],
            username: None,
            password: None,
            at: at(),
        }
    }

    fn run(commands: &[RoutingCommand]) -> Result<RoutingState, RoutingRejection> {
        let mut state = RoutingState::default();
        for command in commands {
            for event in decide(command, &state)? {
                state = RoutingTable::evolve(state, &event);
            }
        }
        Ok(state)
    }

    fn route(trunks: Vec<Uuid>) -> RouteAdded {
        RouteAdded {
            route_id: Uuid::from_u128(9),
            prefix: "00".into(),
            strip_digits: 2,
            prepend: "+".into(),
            priority: 0,
            trunk_ids: trunks,
            at: at(),
        }
    }

    #[test]
    fn trunks_routes_and_dids_hold_together() {
        let state = run(&[
            RoutingCommand::AddTrunk(trunk(1, "primary")),
            RoutingCommand::AddTrunk(trunk(2, "backup")),
            RoutingCommand::AddRoute(route(vec![Uuid::from_u128(1), Uuid::from_u128(2)])),
            RoutingCommand::AddDid(DidAdded {
                did: "+4930123".into(),
                extension_number: "1001".into(),
                at: at(),
            }),
        ])
        .unwrap();
        assert_eq!(state.trunks.len(), 2);
        assert_eq!(state.dids.get("+4930123").map(String::as_str), Some("1001"));
        // A trunk a route uses cannot go; a route cannot name a trunk that does not exist.
        assert_eq!(
            decide(
                &RoutingCommand::RemoveTrunk {
                    trunk_id: Uuid::from_u128(1),
                    at: at()
                },
                &state
            ),
            Err(RoutingRejection::TrunkInUse(Uuid::from_u128(1)))
        );
        let mut other = route(vec![Uuid::from_u128(7)]);
        other.route_id = Uuid::from_u128(10);
        assert_eq!(
            decide(&RoutingCommand::AddRoute(other), &state),
            Err(RoutingRejection::UnknownTrunk(Uuid::from_u128(7)))
        );
    }

    #[test]
    fn bad_input_is_refused_with_the_field_named() {
        let state = run(&[RoutingCommand::AddTrunk(trunk(1, "primary"))]).unwrap();
        assert_eq!(
            decide(&RoutingCommand::AddTrunk(trunk(2, "primary")), &state),
            Err(RoutingRejection::DuplicateTrunkName("primary".into()))
        );
        let mut bad = trunk(3, "x");
        bad.allowed_ips = vec!["not-an-ip".into()];
        assert!(matches!(
            decide(&RoutingCommand::AddTrunk(bad), &state),
            Err(RoutingRejection::Invalid {
                field: "allowed_ips",
                ..
            })
        ));
        let mut bad = trunk(4, "y");
        bad.host = "evil host\r\n".into();
        assert!(decide(&RoutingCommand::AddTrunk(bad), &state).is_err());
        let did = |d: &str| {
            RoutingCommand::AddDid(DidAdded {
                did: d.into(),
                extension_number: "1001".into(),
                at: at(),
            })
        };
        assert!(decide(&did("12ab"), &state).is_err());
        assert!(decide(&did(""), &state).is_err());
        let state = run(&[did("+15550100")]).unwrap();
        assert_eq!(
            decide(&did("+15550100"), &state),
            Err(RoutingRejection::DuplicateDid("+15550100".into()))
        );
    }
}
