//! Billing area: CDRs, charges (each with its explanation), balances, invoices, reports;
//! tariff, account, top-up, adjustment and period-close commands. The filters here are the
//! ones the CSV exports (`rest.rs`) use too.

use std::borrow::Cow;

use async_graphql::connection::{Connection, Edge};
use async_graphql::indexmap::IndexMap;
use async_graphql::parser::types::{Field, Selection, SelectionSet};
use async_graphql::registry::Registry;
use async_graphql::{
    ComplexObject, Context, ContextSelectionSet, Enum, InputObject, Name, Object, OutputType, Positioned, ScalarType,
    ServerResult, SimpleObject, Value,
};
use billing::account::{self, AccountCommand, AccountKind, AccountRejection};
use billing::aggregates::{Account, InvoiceBook, Tariff};
use billing::invoice::{self, BillingPeriod, InvoiceCommand, TaxMode, TaxPolicy};
use billing::tariff::{self, TariffCommand};
use billing::Crossing;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use commands::{CommandContext, CommandError, StreamRef};
use rust_decimal::Decimal;
use serde::Deserialize;
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::auth::Capability;
use super::error::{ApiError, ApiResult};
use super::raw_json::RawParts;
use super::{command, page, require, state, text, MutationResult};

/// Filters shared by `cdrs`, `charges` and their CSV exports.
#[derive(InputObject, Deserialize, Debug, Clone, Default)]
pub struct CallFilter {
    /// From this instant (inclusive): the call's start, or the charge's answer time.
    pub from: Option<DateTime<Utc>>,
    /// Until this instant (exclusive).
    pub to: Option<DateTime<Utc>>,
    /// Calls from or to this extension number.
    pub extension: Option<String>,
    /// `internal`, `outbound` or `inbound`.
    pub direction: Option<String>,
    /// CDRs: `answered`, `unanswered`, `rejected`, `in_progress`; charges: `rated`, `unrated`.
    pub status: Option<String>,
    pub account_id: Option<Uuid>,
    /// A destination prefix (digits, optionally with a leading `+`).
    pub destination: Option<String>,
}

impl CallFilter {
    pub fn validate(&self, charges: bool) -> ApiResult<()> {
        if let Some(d) = &self.direction {
            if !matches!(d.as_str(), "internal" | "outbound" | "inbound") {
                return Err(ApiError::invalid("direction must be internal, outbound or inbound"));
            }
        }
        if let Some(s) = &self.status {
            let ok = if charges {
                matches!(s.as_str(), "rated" | "unrated")
            } else {
                matches!(s.as_str(), "answered" | "unanswered" | "rejected" | "in_progress")
            };
            if !ok {
                return Err(ApiError::invalid(if charges {
                    "status must be rated or unrated"
                } else {
                    "status must be answered, unanswered, rejected or in_progress"
                }));
            }
        }
        for (name, value) in [("destination", &self.destination), ("extension", &self.extension)] {
            if let Some(v) = value {
                let digits = v.strip_prefix('+').unwrap_or(v);
                if v.len() > 32
                    || !digits
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'#')
                {
                    return Err(ApiError::invalid(format!("{name} must be up to 32 digits")));
                }
            }
        }
        if let (Some(from), Some(to)) = (self.from, self.to) {
            if to < from {
                return Err(ApiError::invalid("`to` is before `from`"));
            }
        }
        Ok(())
    }

    fn push_cdr_where(&self, q: &mut QueryBuilder<'_, Postgres>, tenant: Uuid) {
        q.push(" WHERE c.tenant_id = ").push_bind(tenant);
        if let Some(from) = self.from {
            q.push(" AND c.started_at >= ").push_bind(from);
        }
        if let Some(to) = self.to {
            q.push(" AND c.started_at < ").push_bind(to);
        }
        if let Some(ext) = &self.extension {
            q.push(" AND (c.caller = ").push_bind(ext.clone());
            q.push(" OR c.callee = ").push_bind(ext.clone()).push(")");
        }
        if let Some(d) = &self.direction {
            q.push(" AND c.direction = ").push_bind(d.clone());
        }
        if let Some(a) = self.account_id {
            q.push(" AND c.account_id = ").push_bind(a);
        }
        if let Some(d) = &self.destination {
            q.push(" AND starts_with(c.callee, ").push_bind(d.clone()).push(")");
        }
        match self.status.as_deref() {
            Some("answered") => {
                q.push(" AND c.answer_at IS NOT NULL");
            }
            Some("unanswered") => {
                q.push(" AND c.answer_at IS NULL AND c.end_at IS NOT NULL AND c.rejected_reason IS NULL");
            }
            Some("rejected") => {
                q.push(" AND c.rejected_reason IS NOT NULL");
            }
            Some("in_progress") => {
                q.push(" AND c.end_at IS NULL AND c.rejected_reason IS NULL");
            }
            _ => {}
        }
    }

    fn push_charge_where(&self, q: &mut QueryBuilder<'_, Postgres>, tenant: Uuid) {
        q.push(" WHERE ch.tenant_id = ").push_bind(tenant);
        if let Some(a) = self.account_id {
            q.push(" AND ch.account_id = ").push_bind(a);
        }
        if let Some(from) = self.from {
            q.push(" AND ch.answered_at >= ").push_bind(from);
        }
        if let Some(to) = self.to {
            q.push(" AND ch.answered_at < ").push_bind(to);
        }
        if let Some(d) = &self.destination {
            q.push(" AND starts_with(ch.destination, ")
                .push_bind(d.clone())
                .push(")");
        }
        if let Some(s) = &self.status {
            q.push(" AND ch.status = ").push_bind(s.clone());
        }
        if self.extension.is_some() || self.direction.is_some() {
            q.push(" AND EXISTS (SELECT 1 FROM rm_cdrs c WHERE c.tenant_id = ch.tenant_id AND c.call_id = ch.call_id");
            if let Some(ext) = &self.extension {
                q.push(" AND (c.caller = ").push_bind(ext.clone());
                q.push(" OR c.callee = ").push_bind(ext.clone()).push(")");
            }
            if let Some(d) = &self.direction {
                q.push(" AND c.direction = ").push_bind(d.clone());
            }
            q.push(")");
        }
    }
}

#[derive(SimpleObject, sqlx::FromRow, Debug, Clone)]
pub struct Cdr {
    pub call_id: Uuid,
    pub direction: String,
    pub caller: String,
    pub caller_name: String,
    pub callee: String,
    pub callee_name: String,
    pub did: Option<String>,
    pub trunk_id: Option<Uuid>,
    pub account_id: Option<Uuid>,
    pub started_at: DateTime<Utc>,
    pub authorized_at: Option<DateTime<Utc>>,
    pub max_duration_s: Option<i32>,
    pub rejected_reason: Option<String>,
    pub ring_at: Option<DateTime<Utc>>,
    pub answer_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
    pub duration_s: Option<i32>,
    pub billed_s: Option<i32>,
    pub end_reason: Option<String>,
    pub hangup_by: Option<String>,
    pub sip_status: Option<i32>,
    pub holds: i32,
    pub transfers: i32,
    pub transferred_to: Option<String>,
    pub charge: Option<Decimal>,
    pub currency: Option<String>,
}

pub const CDR_COLUMNS: &str = "c.call_id, c.direction, c.caller, c.caller_name, c.callee, c.callee_name, c.did, \
     c.trunk_id, c.account_id, c.started_at, c.authorized_at, c.max_duration_s, c.rejected_reason, c.ring_at, \
     c.answer_at, c.end_at, c.duration_s, c.billed_s, c.end_reason, c.hangup_by, c.sip_status, c.holds, \
     c.transfers, c.transferred_to, c.charge, c.currency";

#[derive(SimpleObject, sqlx::FromRow, Debug, Clone)]
pub struct Charge {
    pub call_id: Uuid,
    pub leg_id: Uuid,
    pub account_id: Uuid,
    pub answered_at: DateTime<Utc>,
    pub duration_s: i32,
    pub destination: String,
    /// `rated` or `unrated` (then `unratedReason` says why).
    pub status: String,
    pub unrated_reason: Option<String>,
    pub tariff_id: Option<Uuid>,
    pub tariff_version: Option<i32>,
    pub matched_prefix: Option<String>,
    pub billed_s: Option<i32>,
    pub currency: Option<String>,
    /// The posted amount.
    pub amount: Option<Decimal>,
    /// Before rounding.
    pub amount_exact: Option<Decimal>,
    /// How the amount was computed, as finance reads it.
    pub explanation: Option<String>,
}

/// A charge in a page of `charges`: to clients exactly a `Charge` (its type, fields and SDL
/// are `Charge`'s), answered in one pass over the selection when that is only plain fields.
/// A page is a hundred charges of sixteen scalars, and the library resolves every field as a
/// boxed future joined through a `FuturesUnordered` and inserted one by one: most of a page's
/// CPU (`bench api`). A selection with anything else (fragments, directives, `__typename`)
/// takes the library's path. Plain fields of a `SimpleObject` run no hooks: the schema has no
/// extensions (`schema.rs`), so nothing is skipped.
pub struct ChargeNode(pub Charge);

impl OutputType for ChargeNode {
    fn type_name() -> Cow<'static, str> {
        Charge::type_name()
    }

    fn qualified_type_name() -> String {
        Charge::qualified_type_name()
    }

    fn introspection_type_name(&self) -> Cow<'static, str> {
        self.0.introspection_type_name()
    }

    fn create_type_info(registry: &mut Registry) -> String {
        Charge::create_type_info(registry)
    }

    async fn resolve(&self, ctx: &ContextSelectionSet<'_>, field: &Positioned<Field>) -> ServerResult<Value> {
        match self.plain_fields(ctx) {
            Some(value) => Ok(value),
            None => OutputType::resolve(&self.0, ctx, field).await,
        }
    }
}

impl ChargeNode {
    /// The object the library would build (same keys, same order, same scalar values), or
    /// `None` when the selection is more than plain fields of `Charge`.
    fn plain_fields(&self, ctx: &ContextSelectionSet<'_>) -> Option<Value> {
        let plan = NodePlan::of(&ctx.item.node)?;
        Some(plan.value(&self.0))
    }
}

/// A plain field of `Charge`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChargeField {
    CallId,
    LegId,
    AccountId,
    AnsweredAt,
    DurationS,
    Destination,
    Status,
    UnratedReason,
    TariffId,
    TariffVersion,
    MatchedPrefix,
    BilledS,
    Currency,
    Amount,
    AmountExact,
    Explanation,
}

impl ChargeField {
    fn of(name: &str) -> Option<ChargeField> {
        use ChargeField::*;
        Some(match name {
            "callId" => CallId,
            "legId" => LegId,
            "accountId" => AccountId,
            "answeredAt" => AnsweredAt,
            "durationS" => DurationS,
            "destination" => Destination,
            "status" => Status,
            "unratedReason" => UnratedReason,
            "tariffId" => TariffId,
            "tariffVersion" => TariffVersion,
            "matchedPrefix" => MatchedPrefix,
            "billedS" => BilledS,
            "currency" => Currency,
            "amount" => Amount,
            "amountExact" => AmountExact,
            "explanation" => Explanation,
            _ => return None,
        })
    }

    /// The value the library resolves (the field's `ScalarType::to_value`).
    fn value(self, c: &Charge) -> Value {
        fn opt<T: ScalarType>(value: &Option<T>) -> Value {
            value.as_ref().map_or(Value::Null, ScalarType::to_value)
        }
        use ChargeField::*;
        match self {
            CallId => c.call_id.to_value(),
            LegId => c.leg_id.to_value(),
            AccountId => c.account_id.to_value(),
            AnsweredAt => c.answered_at.to_value(),
            DurationS => c.duration_s.to_value(),
            Destination => c.destination.to_value(),
            Status => c.status.to_value(),
            UnratedReason => opt(&c.unrated_reason),
            TariffId => opt(&c.tariff_id),
            TariffVersion => opt(&c.tariff_version),
            MatchedPrefix => opt(&c.matched_prefix),
            BilledS => opt(&c.billed_s),
            Currency => opt(&c.currency),
            Amount => opt(&c.amount),
            AmountExact => opt(&c.amount_exact),
            Explanation => opt(&c.explanation),
        }
    }

    /// That value's JSON, as `serde_json` writes it: every scalar here is a string (its
    /// `Display`, or RFC 3339 for the time), an integer or null.
    fn write_json(self, c: &Charge, out: &mut Vec<u8>, scratch: &mut String) {
        use std::fmt::Write as _;
        use ChargeField::*;
        fn text(out: &mut Vec<u8>, s: &str) {
            json_str(out, s);
        }
        fn shown(out: &mut Vec<u8>, scratch: &mut String, value: &impl std::fmt::Display) {
            scratch.clear();
            let _ = write!(scratch, "{value}");
            json_str(out, scratch);
        }
        fn int(out: &mut Vec<u8>, n: i32) {
            // The library's `Value::Number` of an `i32`, serialized (serde_json's itoa).
            let _ = serde_json::to_writer(&mut *out, &n);
        }
        fn null(out: &mut Vec<u8>) {
            out.extend_from_slice(b"null");
        }
        match self {
            CallId => json_uuid(out, &c.call_id),
            LegId => json_uuid(out, &c.leg_id),
            AccountId => json_uuid(out, &c.account_id),
            AnsweredAt => text(out, &c.answered_at.to_rfc3339()),
            DurationS => int(out, c.duration_s),
            Destination => text(out, &c.destination),
            Status => text(out, &c.status),
            UnratedReason => match &c.unrated_reason {
                Some(v) => text(out, v),
                None => null(out),
            },
            TariffId => match &c.tariff_id {
                Some(v) => json_uuid(out, v),
                None => null(out),
            },
            TariffVersion => match c.tariff_version {
                Some(v) => int(out, v),
                None => null(out),
            },
            MatchedPrefix => match &c.matched_prefix {
                Some(v) => text(out, v),
                None => null(out),
            },
            BilledS => match c.billed_s {
                Some(v) => int(out, v),
                None => null(out),
            },
            Currency => match &c.currency {
                Some(v) => text(out, v),
                None => null(out),
            },
            Amount => match &c.amount {
                Some(v) => shown(out, scratch, v),
                None => null(out),
            },
            AmountExact => match &c.amount_exact {
                Some(v) => shown(out, scratch, v),
                None => null(out),
            },
            Explanation => match &c.explanation {
                Some(v) => text(out, v),
                None => null(out),
            },
        }
    }
}

/// A JSON string as `serde_json` escapes it.
fn json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json escapes only `"`, `\\` and the control characters below 0x20: a string with
    // none of them (ids, times, amounts, most text) is written as it is, without its loop.
    if needs_escape(s.as_bytes()) {
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

fn needs_escape(bytes: &[u8]) -> bool {
    let special = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        // No early exit inside a chunk: the compiler checks the sixteen bytes at once.
        if chunk.iter().fold(false, |hit, &b| hit | special(b)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| special(b))
}

/// A UUID as a JSON string: its `Display` (hyphenated, lower case), which needs no escape.
fn json_uuid(out: &mut Vec<u8>, id: &Uuid) {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = id.hyphenated().encode_lower(&mut buf);
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
}

/// The fields of one selection when they are all plain fields (no fragment, directive or
/// argument); `distinct` also refuses a response key given twice.
fn plain_selection(set: &SelectionSet, distinct: bool) -> Option<Vec<(&Name, &Field)>> {
    let mut fields: Vec<(&Name, &Field)> = Vec::with_capacity(set.items.len());
    for selection in &set.items {
        let Selection::Field(field) = &selection.node else {
            return None;
        };
        let field = &field.node;
        if !field.directives.is_empty() || !field.arguments.is_empty() {
            return None;
        }
        let key = &field.response_key().node;
        if distinct && fields.iter().any(|(k, _)| *k == key) {
            return None;
        }
        fields.push((key, field));
    }
    Some(fields)
}

/// A plain selection of `Charge`: its response keys in the library's order (a key selected
/// twice keeps its first place, as the library's map does; validation makes both the same
/// field).
struct NodePlan(Vec<(Name, ChargeField)>);

impl NodePlan {
    fn of(set: &SelectionSet) -> Option<NodePlan> {
        let mut plan: Vec<(Name, ChargeField)> = Vec::with_capacity(set.items.len());
        for (key, field) in plain_selection(set, false)? {
            if !field.selection_set.node.items.is_empty() {
                return None;
            }
            let f = ChargeField::of(field.name.node.as_str())?;
            if !plan.iter().any(|(k, _)| k == key) {
                plan.push((key.clone(), f));
            }
        }
        Some(NodePlan(plan))
    }

    fn value(&self, c: &Charge) -> Value {
        // An object without fields (all skipped) is null, as the library answers it.
        if self.0.is_empty() {
            return Value::Null;
        }
        let mut object = IndexMap::with_capacity(self.0.len());
        for (key, f) in &self.0 {
            object.insert(key.clone(), f.value(c));
        }
        Value::Object(object)
    }

    fn write_json(&self, c: &Charge, out: &mut Vec<u8>, scratch: &mut String) {
        if self.0.is_empty() {
            out.extend_from_slice(b"null");
            return;
        }
        out.push(b'{');
        for (i, (key, f)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_str(out, key.as_str());
            out.push(b':');
            f.write_json(c, out, scratch);
        }
        out.push(b'}');
    }
}

enum EdgeField {
    Cursor,
    Node(NodePlan),
}

enum PageInfoField {
    HasPreviousPage,
    HasNextPage,
    StartCursor,
    EndCursor,
}

enum ConnectionField {
    Edges(Vec<(Name, EdgeField)>),
    Nodes(NodePlan),
    PageInfo(Vec<(Name, PageInfoField)>),
}

/// A plain selection of the charges connection: `edges { cursor node { … } }`, `nodes { … }`
/// and `pageInfo { … }` with plain fields and distinct response keys (else the library
/// answers, merging what it merges).
struct ConnectionPlan(Vec<(Name, ConnectionField)>);

impl ConnectionPlan {
    fn of(set: &SelectionSet) -> Option<ConnectionPlan> {
        let mut plan = Vec::new();
        for (key, field) in plain_selection(set, true)? {
            let sub = &field.selection_set.node;
            let f = match field.name.node.as_str() {
                "edges" => {
                    let mut edge = Vec::new();
                    for (key, field) in plain_selection(sub, true)? {
                        let f = match field.name.node.as_str() {
                            "cursor" if field.selection_set.node.items.is_empty() => EdgeField::Cursor,
                            "node" => EdgeField::Node(NodePlan::of(&field.selection_set.node)?),
                            _ => return None,
                        };
                        edge.push((key.clone(), f));
                    }
                    ConnectionField::Edges(edge)
                }
                "nodes" => ConnectionField::Nodes(NodePlan::of(sub)?),
                "pageInfo" => {
                    let mut info = Vec::new();
                    for (key, field) in plain_selection(sub, true)? {
                        if !field.selection_set.node.items.is_empty() {
                            return None;
                        }
                        let f = match field.name.node.as_str() {
                            "hasPreviousPage" => PageInfoField::HasPreviousPage,
                            "hasNextPage" => PageInfoField::HasNextPage,
                            "startCursor" => PageInfoField::StartCursor,
                            "endCursor" => PageInfoField::EndCursor,
                            _ => return None,
                        };
                        info.push((key.clone(), f));
                    }
                    ConnectionField::PageInfo(info)
                }
                _ => return None,
            };
            plan.push((key.clone(), f));
        }
        Some(ConnectionPlan(plan))
    }
}

/// A page of `charges`: to clients exactly the library's `ChargeConnection` (its type name,
/// type info and SDL are the library's). When the HTTP handler offers it (`raw_json.rs`) and
/// the selection is plain (`ConnectionPlan`), the page is written as JSON in one pass, cursors
/// included, with no `Value` per field, no future per edge; otherwise the library's
/// `Connection` of `ChargeNode`s answers. `api_finance` checks that both give the same bytes.
/// The one pass runs no per-field hooks for the edges and `pageInfo`: the schema has no
/// extensions (`schema.rs`); one added there must take the library's path here.
pub struct ChargePage {
    rows: Vec<Charge>,
    has_previous: bool,
    has_next: bool,
}

type ChargeConnection = Connection<String, ChargeNode>;

impl ChargePage {
    /// A page from `size + 1` fetched rows: the extra row only says there is a next page.
    pub fn new(mut rows: Vec<Charge>, size: i64, has_previous: bool) -> ChargePage {
        let has_next = rows.len() as i64 > size;
        rows.truncate(size.max(0) as usize);
        ChargePage {
            rows,
            has_previous,
            has_next,
        }
    }

    fn cursor_key(c: &Charge) -> Vec<String> {
        vec![ts(c.answered_at), c.call_id.to_string(), c.leg_id.to_string()]
    }

    /// The library's connection (the general path).
    fn connection(&self) -> ChargeConnection {
        let mut connection = Connection::new(self.has_previous, self.has_next);
        connection.edges.extend(
            self.rows
                .iter()
                .map(|c| Edge::new(page::encode(&Self::cursor_key(c)), ChargeNode(c.clone()))),
        );
        connection
    }

    /// `page::encode(&cursor_key(c))` as a JSON string (hex digits need no escape),
    /// straight into `out`.
    fn write_cursor(c: &Charge, out: &mut Vec<u8>, key: &mut Vec<u8>) {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        key.clear();
        key.extend_from_slice(c.answered_at.to_rfc3339_opts(SecondsFormat::Micros, true).as_bytes());
        key.push(b'|');
        key.extend_from_slice(c.call_id.hyphenated().encode_lower(&mut buf).as_bytes());
        key.push(b'|');
        key.extend_from_slice(c.leg_id.hyphenated().encode_lower(&mut buf).as_bytes());
        out.push(b'"');
        page::hex_into(out, key);
        out.push(b'"');
    }

    fn write_json(&self, plan: &ConnectionPlan, out: &mut Vec<u8>) {
        let (mut scratch, mut cursor_key) = (String::with_capacity(64), Vec::with_capacity(128));
        if plan.0.is_empty() {
            out.extend_from_slice(b"null");
            return;
        }
        out.push(b'{');
        for (i, (key, field)) in plan.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_str(out, key.as_str());
            out.push(b':');
            match field {
                ConnectionField::Edges(edge) => {
                    out.push(b'[');
                    for (n, c) in self.rows.iter().enumerate() {
                        if n > 0 {
                            out.push(b',');
                        }
                        if edge.is_empty() {
                            out.extend_from_slice(b"null");
                            continue;
                        }
                        out.push(b'{');
                        for (j, (key, f)) in edge.iter().enumerate() {
                            if j > 0 {
                                out.push(b',');
                            }
                            json_str(out, key.as_str());
                            out.push(b':');
                            match f {
                                EdgeField::Cursor => Self::write_cursor(c, out, &mut cursor_key),
                                EdgeField::Node(node) => node.write_json(c, out, &mut scratch),
                            }
                        }
                        out.push(b'}');
                    }
                    out.push(b']');
                }
                ConnectionField::Nodes(node) => {
                    out.push(b'[');
                    for (n, c) in self.rows.iter().enumerate() {
                        if n > 0 {
                            out.push(b',');
                        }
                        node.write_json(c, out, &mut scratch);
                    }
                    out.push(b']');
                }
                ConnectionField::PageInfo(info) => {
                    if info.is_empty() {
                        out.extend_from_slice(b"null");
                        continue;
                    }
                    out.push(b'{');
                    for (j, (key, f)) in info.iter().enumerate() {
                        if j > 0 {
                            out.push(b',');
                        }
                        json_str(out, key.as_str());
                        out.push(b':');
                        let cursor_of = |c: Option<&Charge>, out: &mut Vec<u8>, k: &mut Vec<u8>| match c {
                            Some(c) => Self::write_cursor(c, out, k),
                            None => out.extend_from_slice(b"null"),
                        };
                        match f {
                            PageInfoField::HasPreviousPage => out.extend_from_slice(bool_json(self.has_previous)),
                            PageInfoField::HasNextPage => out.extend_from_slice(bool_json(self.has_next)),
                            PageInfoField::StartCursor => cursor_of(self.rows.first(), out, &mut cursor_key),
                            PageInfoField::EndCursor => cursor_of(self.rows.last(), out, &mut cursor_key),
                        }
                    }
                    out.push(b'}');
                }
            }
        }
        out.push(b'}');
    }
}

fn bool_json(b: bool) -> &'static [u8] {
    if b {
        b"true"
    } else {
        b"false"
    }
}

impl OutputType for ChargePage {
    fn type_name() -> Cow<'static, str> {
        ChargeConnection::type_name()
    }

    fn qualified_type_name() -> String {
        ChargeConnection::qualified_type_name()
    }

    fn introspection_type_name(&self) -> Cow<'static, str> {
        ChargeConnection::type_name()
    }

    fn create_type_info(registry: &mut Registry) -> String {
        ChargeConnection::create_type_info(registry)
    }

    async fn resolve(&self, ctx: &ContextSelectionSet<'_>, field: &Positioned<Field>) -> ServerResult<Value> {
        // Offered by the HTTP handler, for a root field whose answer is never merged.
        let parts = ctx.data_opt::<std::sync::Arc<RawParts>>();
        let path = ctx.path_node.filter(|p| p.parent.is_none());
        if let (Some(parts), Some(path)) = (parts, path) {
            if let Some(plan) = ConnectionPlan::of(&ctx.item.node) {
                let mut out = Vec::with_capacity(1024 + 700 * self.rows.len());
                self.write_json(&plan, &mut out);
                parts.put(path.to_string_vec(), out);
                return Ok(Value::Null);
            }
        }
        OutputType::resolve(&self.connection(), ctx, field).await
    }
}

pub const CHARGE_COLUMNS: &str =
    "ch.call_id, ch.leg_id, ch.account_id, ch.answered_at, ch.duration_s, ch.destination, \
     ch.status, ch.unrated_reason, ch.tariff_id, ch.tariff_version, ch.matched_prefix, ch.billed_s, ch.currency, \
     ch.amount, ch.amount_exact, ch.explanation";

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The charges query: a page (`limit` rows) after `after`, in `(answered_at, call_id, leg_id)` order.
pub fn charges_query(
    tenant: Uuid,
    filter: &CallFilter,
    after: Option<(DateTime<Utc>, Uuid, Uuid)>,
    limit: Option<i64>,
) -> QueryBuilder<'static, Postgres> {
    let mut q = QueryBuilder::new(format!("SELECT {CHARGE_COLUMNS} FROM rm_charges ch"));
    filter.push_charge_where(&mut q, tenant);
    if let Some((at, call, leg)) = after {
        q.push(" AND (ch.answered_at, ch.call_id, ch.leg_id) > (")
            .push_bind(at)
            .push(", ")
            .push_bind(call)
            .push(", ")
            .push_bind(leg)
            .push(")");
    }
    q.push(" ORDER BY ch.answered_at, ch.call_id, ch.leg_id");
    if let Some(limit) = limit {
        q.push(" LIMIT ").push_bind(limit);
    }
    q
}

pub fn cdrs_query(
    tenant: Uuid,
    filter: &CallFilter,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: Option<i64>,
) -> QueryBuilder<'static, Postgres> {
    let mut q = QueryBuilder::new(format!("SELECT {CDR_COLUMNS} FROM rm_cdrs c"));
    filter.push_cdr_where(&mut q, tenant);
    if let Some((at, call)) = after {
        q.push(" AND (c.started_at, c.call_id) > (")
            .push_bind(at)
            .push(", ")
            .push_bind(call)
            .push(")");
    }
    q.push(" ORDER BY c.started_at, c.call_id");
    if let Some(limit) = limit {
        q.push(" LIMIT ").push_bind(limit);
    }
    q
}

#[derive(SimpleObject, sqlx::FromRow, Debug, Clone)]
pub struct Balance {
    pub account_id: Uuid,
    /// `prepaid` or `postpaid`.
    pub kind: String,
    pub credit_limit: Decimal,
    pub currency: String,
    pub billing_tz: String,
    pub payments: Decimal,
    pub adjustments: Decimal,
    pub settled_charges: Decimal,
    pub open_reservations: Decimal,
    pub balance: Decimal,
    /// Balance + credit limit - open reservations.
    pub available: Decimal,
    pub opened_at: DateTime<Utc>,
}

#[derive(SimpleObject, sqlx::FromRow, Debug, Clone, serde::Serialize)]
#[graphql(complex)]
pub struct Invoice {
    #[graphql(skip)]
    #[serde(skip)]
    pub tenant_id: Uuid,
    pub account_id: Uuid,
    /// `YYYY-MM` in the account's billing time zone.
    pub period: String,
    pub currency: String,
    /// `open` or `closed`.
    pub status: String,
    pub tax_rate_pct: Option<Decimal>,
    pub tax_mode: Option<String>,
    pub billed_net: Option<Decimal>,
    pub billed_tax: Option<Decimal>,
    pub billed_total: Option<Decimal>,
    pub corrected_net: Option<Decimal>,
    pub corrected_tax: Option<Decimal>,
    pub corrected_total: Option<Decimal>,
    /// The rendered document, as billed.
    pub document: String,
    pub corrected_document: String,
}

#[derive(SimpleObject, sqlx::FromRow, Debug, Clone, serde::Serialize)]
pub struct InvoiceLine {
    /// `as_billed` or `as_corrected`.
    pub view: String,
    pub line_no: i32,
    pub service: String,
    pub destination: String,
    pub kind: String,
    pub original_period: Option<String>,
    pub count: i64,
    pub amount: Decimal,
}

pub const INVOICE_COLUMNS: &str = "tenant_id, account_id, period, currency, status, tax_rate_pct, tax_mode, \
     billed_net, billed_tax, billed_total, corrected_net, corrected_tax, corrected_total, document, corrected_document";

impl Invoice {
    /// The id the REST export takes: `{account_id}_{period}`.
    pub fn invoice_id(&self) -> String {
        format!("{}_{}", self.account_id, self.period)
    }
}

pub async fn invoice_lines(pool: &sqlx::PgPool, invoice: &Invoice, view: Option<&str>) -> ApiResult<Vec<InvoiceLine>> {
    Ok(sqlx::query_as(
        "SELECT view, line_no, service, destination, kind, original_period, count, amount FROM rm_invoice_lines \
         WHERE tenant_id = $1 AND account_id = $2 AND period = $3 AND ($4::text IS NULL OR view = $4) \
         ORDER BY view, line_no",
    )
    .bind(invoice.tenant_id)
    .bind(invoice.account_id)
    .bind(&invoice.period)
    .bind(view)
    .fetch_all(pool)
    .await?)
}

#[ComplexObject]
impl Invoice {
    /// `{accountId}_{period}`: the id of `/api/v1/invoices/{id}`.
    async fn id(&self) -> String {
        self.invoice_id()
    }

    /// The grouped lines, of one view (`as_billed` or `as_corrected`) or both.
    async fn lines(&self, ctx: &Context<'_>, view: Option<String>) -> ApiResult<Vec<InvoiceLine>> {
        invoice_lines(&state(ctx).pool, self, view.as_deref()).await
    }
}

#[derive(SimpleObject, sqlx::FromRow, Debug, Clone)]
pub struct HourlyReport {
    pub hour: DateTime<Utc>,
    pub direction: String,
    pub trunk_id: Uuid,
    pub currency: String,
    pub calls: i64,
    pub answered: i64,
    pub duration_s: i64,
    pub billed_s: i64,
    pub cost: Decimal,
}

#[derive(SimpleObject, sqlx::FromRow, Debug, Clone)]
pub struct DestinationReport {
    pub day: NaiveDate,
    pub destination: String,
    pub currency: String,
    pub calls: i64,
    pub duration_s: i64,
    pub cost: Decimal,
}

#[derive(SimpleObject, sqlx::FromRow, Debug, Clone)]
pub struct DailyReport {
    pub day: NaiveDate,
    pub direction: String,
    pub trunk_id: Uuid,
    pub currency: String,
    pub calls: i64,
    pub answered: i64,
    pub duration_s: i64,
    pub billed_s: i64,
    pub cost: Decimal,
    /// Answer-seizure ratio, percent.
    pub asr_pct: Option<Decimal>,
    /// Average call duration, seconds.
    pub acd_s: Option<Decimal>,
}

fn cursor_after3(after: &Option<String>) -> ApiResult<Option<(DateTime<Utc>, Uuid, Uuid)>> {
    let Some(c) = after else { return Ok(None) };
    let parts = page::decode(c, 3)?;
    Ok(Some((
        page::parse(&parts[0])?,
        page::parse(&parts[1])?,
        page::parse(&parts[2])?,
    )))
}

fn cursor_after2(after: &Option<String>) -> ApiResult<Option<(DateTime<Utc>, Uuid)>> {
    let Some(c) = after else { return Ok(None) };
    let parts = page::decode(c, 2)?;
    Ok(Some((page::parse(&parts[0])?, page::parse(&parts[1])?)))
}

#[derive(Default)]
pub struct BillingQuery;

#[Object]
impl BillingQuery {
    /// Call detail records, by start time.
    #[graphql(complexity = "(first.unwrap_or(50).clamp(1, 500) as usize) * child_complexity")]
    async fn cdrs(
        &self,
        ctx: &Context<'_>,
        #[graphql(default)] filter: CallFilter,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Connection<String, Cdr>> {
        let caller = require(ctx, Capability::Read)?;
        filter.validate(false)?;
        let size = page::page_size(ctx, first)?;
        let rows: Vec<Cdr> = cdrs_query(caller.tenant_id, &filter, cursor_after2(&after)?, Some(size + 1))
            .build_query_as()
            .fetch_all(&state(ctx).pool)
            .await?;
        Ok(page::connection(rows, size, after.is_some(), |c| {
            vec![ts(c.started_at), c.call_id.to_string()]
        }))
    }

    /// Charges, each with its explanation, by answer time.
    #[graphql(complexity = "(first.unwrap_or(50).clamp(1, 500) as usize) * child_complexity")]
    async fn charges(
        &self,
        ctx: &Context<'_>,
        #[graphql(default)] filter: CallFilter,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<ChargePage> {
        let caller = require(ctx, Capability::Read)?;
        filter.validate(true)?;
        let size = page::page_size(ctx, first)?;
        let rows: Vec<Charge> = charges_query(caller.tenant_id, &filter, cursor_after3(&after)?, Some(size + 1))
            .build_query_as()
            .fetch_all(&state(ctx).pool)
            .await?;
        Ok(ChargePage::new(rows, size, after.is_some()))
    }

    /// Balances of the tenant's accounts (or of one).
    #[graphql(complexity = "(first.unwrap_or(50).clamp(1, 500) as usize) * child_complexity")]
    async fn balances(
        &self,
        ctx: &Context<'_>,
        account_id: Option<Uuid>,
        first: Option<i32>,
    ) -> ApiResult<Vec<Balance>> {
        let caller = require(ctx, Capability::Read)?;
        let size = page::page_size(ctx, first)?;
        Ok(sqlx::query_as(
            "SELECT account_id, kind, credit_limit, currency, billing_tz, payments, adjustments, settled_charges, \
             open_reservations, balance, available, opened_at FROM rm_balances_view \
             WHERE tenant_id = $1 AND ($2::uuid IS NULL OR account_id = $2) ORDER BY account_id LIMIT $3",
        )
        .bind(caller.tenant_id)
        .bind(account_id)
        .bind(size)
        .fetch_all(&state(ctx).pool)
        .await?)
    }

    /// Invoices (one per account and period).
    #[graphql(complexity = "(first.unwrap_or(50).clamp(1, 500) as usize) * child_complexity")]
    async fn invoices(
        &self,
        ctx: &Context<'_>,
        account_id: Option<Uuid>,
        period: Option<String>,
        first: Option<i32>,
    ) -> ApiResult<Vec<Invoice>> {
        let caller = require(ctx, Capability::Read)?;
        let size = page::page_size(ctx, first)?;
        if let Some(p) = &period {
            text("period", p, 7)?;
        }
        let sql = format!(
            "SELECT {INVOICE_COLUMNS} FROM rm_invoices WHERE tenant_id = $1 AND ($2::uuid IS NULL OR account_id = $2) \
             AND ($3::text IS NULL OR period = $3) ORDER BY account_id, period LIMIT $4"
        );
        Ok(sqlx::query_as(&sql)
            .bind(caller.tenant_id)
            .bind(account_id)
            .bind(period)
            .bind(size)
            .fetch_all(&state(ctx).pool)
            .await?)
    }

    /// Traffic per hour (UTC), direction and trunk.
    #[graphql(complexity = "(first.unwrap_or(50).clamp(1, 500) as usize) * child_complexity")]
    async fn hourly_report(
        &self,
        ctx: &Context<'_>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        first: Option<i32>,
    ) -> ApiResult<Vec<HourlyReport>> {
        let caller = require(ctx, Capability::Read)?;
        let size = page::page_size(ctx, first)?;
        Ok(sqlx::query_as(
            "SELECT hour, direction, trunk_id, currency, calls, answered, duration_s, billed_s, cost FROM rm_report_hourly \
             WHERE tenant_id = $1 AND hour >= $2 AND hour < $3 ORDER BY hour, direction, trunk_id, currency LIMIT $4",
        )
        .bind(caller.tenant_id)
        .bind(from)
        .bind(to)
        .bind(size)
        .fetch_all(&state(ctx).pool)
        .await?)
    }

    /// Traffic per day (UTC) with ASR and ACD.
    #[graphql(complexity = "(first.unwrap_or(50).clamp(1, 500) as usize) * child_complexity")]
    async fn daily_report(
        &self,
        ctx: &Context<'_>,
        from: NaiveDate,
        to: NaiveDate,
        first: Option<i32>,
    ) -> ApiResult<Vec<DailyReport>> {
        let caller = require(ctx, Capability::Read)?;
        let size = page::page_size(ctx, first)?;
        Ok(sqlx::query_as(
            "SELECT day, direction, trunk_id, currency, calls, answered, duration_s, billed_s, cost, asr_pct, acd_s \
             FROM rm_report_daily WHERE tenant_id = $1 AND day >= $2 AND day <= $3 \
             ORDER BY day, direction, trunk_id, currency LIMIT $4",
        )
        .bind(caller.tenant_id)
        .bind(from)
        .bind(to)
        .bind(size)
        .fetch_all(&state(ctx).pool)
        .await?)
    }

    /// Calls and cost per day and destination.
    #[graphql(complexity = "(first.unwrap_or(50).clamp(1, 500) as usize) * child_complexity")]
    async fn destination_report(
        &self,
        ctx: &Context<'_>,
        from: NaiveDate,
        to: NaiveDate,
        first: Option<i32>,
    ) -> ApiResult<Vec<DestinationReport>> {
        let caller = require(ctx, Capability::Read)?;
        let size = page::page_size(ctx, first)?;
        Ok(sqlx::query_as(
            "SELECT day, destination, currency, calls, duration_s, cost FROM rm_report_destinations \
             WHERE tenant_id = $1 AND day >= $2 AND day <= $3 ORDER BY day, destination, currency LIMIT $4",
        )
        .bind(caller.tenant_id)
        .bind(from)
        .bind(to)
        .bind(size)
        .fetch_all(&state(ctx).pool)
        .await?)
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum AccountKindInput {
    Prepaid,
    Postpaid,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum CrossingInput {
    /// The whole call at the price of the period it started in.
    WholeCall,
    /// Each interval at the price of its own period.
    Split,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum TaxModeInput {
    Inclusive,
    Exclusive,
}

/// Money from a client: at most 10 places and 10^9 in magnitude.
fn money(name: &str, amount: Decimal) -> ApiResult<Decimal> {
    if amount.scale() > 10 || amount.abs() > Decimal::from(1_000_000_000) {
        return Err(ApiError::invalid(format!(
            "{name} must have at most 10 decimal places and be at most 10^9"
        )));
    }
    Ok(amount)
}

fn not_found<R: std::error::Error>(
    what: &'static str,
    is_missing: fn(&R) -> bool,
) -> impl Fn(CommandError<R>) -> ApiError {
    move |e| match e {
        CommandError::Rejected(r) if is_missing(&r) => ApiError::not_found(format!("no such {what}")),
        other => other.into(),
    }
}

async fn account_command(
    ctx: &Context<'_>,
    cmd: &CommandContext,
    tenant_id: Uuid,
    account_id: Uuid,
    command: AccountCommand,
) -> ApiResult<commands::Outcome> {
    state(ctx)
        .handler
        .execute::<Account, AccountRejection>(cmd, StreamRef::of::<Account>(tenant_id, &account_id), |s| {
            account::decide(&command, s)
        })
        .await
        .map_err(not_found("account", |r| matches!(r, AccountRejection::NotOpened)))
}

#[derive(Default)]
pub struct BillingMutation;

#[Object]
impl BillingMutation {
    /// Create a tariff; publish its versions with `publishTariffVersion`.
    async fn create_tariff(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        name: String,
        currency: String,
    ) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageBilling)?;
        text("name", &name, 200)?;
        text("currency", &currency, 3)?;
        let cmd = command(ctx, &caller, "createTariff", idempotency_key);
        let tariff_id = Uuid::new_v5(&cmd.command_id, b"tariff");
        let command_ = TariffCommand::Create {
            tariff_id,
            tenant_id: caller.tenant_id,
            name,
            currency,
        };
        let outcome = state(ctx)
            .handler
            .execute::<Tariff, _>(&cmd, StreamRef::of::<Tariff>(caller.tenant_id, &tariff_id), |s| {
                tariff::decide(&command_, s)
            })
            .await?;
        Ok(MutationResult::new(tariff_id, outcome))
    }

    /// Publish a tariff version from a rate deck (the CSV of `ledgerline rate`).
    #[allow(clippy::too_many_arguments)]
    async fn publish_tariff_version(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        tariff_id: Uuid,
        effective_from: DateTime<Utc>,
        deck: String,
        #[graphql(default_with = "CrossingInput::WholeCall")] crossing: CrossingInput,
        #[graphql(desc = "`HH:MM-HH:MM` in the account's billing time zone.")] offpeak_window: Option<String>,
    ) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageBilling)?;
        let offpeak_window = match offpeak_window {
            Some(w) => Some(w.parse().map_err(ApiError::invalid)?),
            None => None,
        };
        let crossing = match crossing {
            CrossingInput::WholeCall => Crossing::WholeCall,
            CrossingInput::Split => Crossing::Split,
        };
        let options = billing::csv::DeckOptions {
            tariff_id,
            effective_from,
            offpeak_window,
            crossing,
            ..Default::default()
        };
        let version = billing::csv::parse_deck(&deck, &options).map_err(|e| ApiError::invalid(format!("deck: {e}")))?;
        let cmd = command(ctx, &caller, "publishTariffVersion", idempotency_key);
        let command_ = TariffCommand::PublishVersion {
            effective_from,
            now: cmd.now,
            rates: version.rates,
            offpeak_window,
            crossing,
            posting: version.posting,
        };
        let outcome = state(ctx)
            .handler
            .execute::<Tariff, _>(&cmd, StreamRef::of::<Tariff>(caller.tenant_id, &tariff_id), |s| {
                tariff::decide(&command_, s)
            })
            .await
            .map_err(not_found("tariff", |r| {
                matches!(r, tariff::TariffRejection::NotCreated)
            }))?;
        Ok(MutationResult::new(tariff_id, outcome))
    }

    /// Correct a published tariff version of the caller's tenant with the deck it should
    /// have had. Every charge billed with it is re-rated ("as corrected" beside "as billed";
    /// closed invoices keep "as billed") and each account's differences are posted as
    /// adjustments in its first open period and on its balance. Answers once the read
    /// models show it. A retry with the same key, or the same deck again, writes nothing new.
    #[allow(clippy::too_many_arguments)]
    async fn correct_tariff_version(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        tariff_id: Uuid,
        #[graphql(desc = "The version to correct (1 = the first published).")] version: i32,
        #[graphql(desc = "The corrected deck, the same columns as `publishTariffVersion`.")] deck: String,
        #[graphql(desc = "Why, as the adjustment lines will say.")] reason: String,
    ) -> ApiResult<TariffCorrectionResult> {
        let caller = require(ctx, Capability::ManageBilling)?;
        let version = u32::try_from(version)
            .ok()
            .filter(|v| *v >= 1)
            .ok_or_else(|| ApiError::invalid("version must be 1 or more"))?;
        text("reason", &reason, 500)?;
        if reason.trim().is_empty() {
            return Err(ApiError::invalid("reason must not be empty"));
        }
        let parsed = billing::csv::parse_deck(&deck, &billing::csv::DeckOptions::default())
            .map_err(|e| ApiError::invalid(format!("deck: {e}")))?;
        let correction = crate::finance::TariffCorrection {
            tariff_id,
            tenant: Some(caller.tenant_id),
            version,
            rates: parsed.rates,
            offpeak_window: None,
            crossing: None,
            posting: None,
            reason,
        };
        let cmd = command(ctx, &caller, "correctTariffVersion", idempotency_key);
        let done = crate::finance::correct_tariff(&state(ctx).store, &correction, &cmd)
            .await
            .map_err(|e| match e {
                crate::finance::FinanceError::NotFound(_) => ApiError::not_found("no such tariff version"),
                crate::finance::FinanceError::InvalidInput(m) => ApiError::invalid(m),
                crate::finance::FinanceError::Rejected(m) => ApiError::invalid(m),
                crate::finance::FinanceError::Store(m) => ApiError::internal(m),
            })?;
        Ok(TariffCorrectionResult {
            tariff_id,
            revision: done.revision as i32,
            newly_corrected: done.newly_corrected,
            charges: done.charges as i64,
            unrated: done.unrated as i64,
            adjustments: done.adjustments as i64,
            adjustment_total: done.adjustment_total,
        })
    }

    /// Open an account and its invoice book.
    async fn open_account(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        kind: AccountKindInput,
        #[graphql(default)] credit_limit: Decimal,
        currency: String,
        billing_tz: String,
    ) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageBilling)?;
        text("currency", &currency, 3)?;
        text("billingTz", &billing_tz, 64)?;
        let tz = billing::parse_timezone(&billing_tz).map_err(ApiError::invalid)?;
        let kind = match kind {
            AccountKindInput::Prepaid => AccountKind::Prepaid,
            AccountKindInput::Postpaid => AccountKind::Postpaid {
                credit_limit: money("creditLimit", credit_limit)?,
            },
        };
        let cmd = command(ctx, &caller, "openAccount", idempotency_key);
        let account_id = Uuid::new_v5(&cmd.command_id, b"account");
        let open = AccountCommand::Open {
            account_id,
            tenant_id: caller.tenant_id,
            kind,
            currency: currency.clone(),
            billing_tz: tz,
        };
        let outcome = account_command(ctx, &cmd, caller.tenant_id, account_id, open).await?;
        let mut book_cmd = cmd.clone();
        book_cmd.command_id = Uuid::new_v5(&cmd.command_id, b"invoice-book");
        let open_book = InvoiceCommand::Open {
            account_id,
            tenant_id: caller.tenant_id,
            currency,
            billing_tz: tz,
        };
        state(ctx)
            .handler
            .execute::<InvoiceBook, _>(
                &book_cmd,
                StreamRef::of::<InvoiceBook>(caller.tenant_id, &account_id),
                |s| invoice::decide(&open_book, s),
            )
            .await?;
        Ok(MutationResult::new(account_id, outcome))
    }

    /// Rate the account's calls answered from `effectiveFrom` on with `tariffId`.
    async fn assign_tariff(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        account_id: Uuid,
        tariff_id: Uuid,
        effective_from: DateTime<Utc>,
    ) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageBilling)?;
        let cmd = command(ctx, &caller, "assignTariff", idempotency_key);
        let c = AccountCommand::AssignTariff {
            tariff_id,
            effective_from,
            now: cmd.now,
        };
        let outcome = account_command(ctx, &cmd, caller.tenant_id, account_id, c).await?;
        Ok(MutationResult::new(account_id, outcome))
    }

    /// Record a payment.
    async fn top_up(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        account_id: Uuid,
        amount: Decimal,
    ) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageBilling)?;
        let amount = money("amount", amount)?;
        if amount <= Decimal::ZERO {
            return Err(ApiError::invalid("amount must be positive"));
        }
        let cmd = command(ctx, &caller, "topUp", idempotency_key);
        let c = AccountCommand::TopUp {
            payment_id: Uuid::new_v5(&cmd.command_id, b"payment"),
            amount,
        };
        let outcome = account_command(ctx, &cmd, caller.tenant_id, account_id, c).await?;
        Ok(MutationResult::new(account_id, outcome))
    }

    /// A signed correction (credit note, goodwill, late fix).
    async fn adjust_account(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        account_id: Uuid,
        amount: Decimal,
        reason: String,
    ) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageBilling)?;
        let amount = money("amount", amount)?;
        text("reason", &reason, 500)?;
        let cmd = command(ctx, &caller, "adjustAccount", idempotency_key);
        let c = AccountCommand::Adjust {
            adjustment_id: Uuid::new_v5(&cmd.command_id, b"adjustment"),
            amount,
            reason,
        };
        let outcome = account_command(ctx, &cmd, caller.tenant_id, account_id, c).await?;
        Ok(MutationResult::new(account_id, outcome))
    }

    /// Close an account's billing period (`YYYY-MM`), after it has ended, with the tax policy.
    async fn close_period(
        &self,
        ctx: &Context<'_>,
        idempotency_key: Uuid,
        account_id: Uuid,
        period: String,
        tax_rate_pct: Decimal,
        tax_mode: TaxModeInput,
    ) -> ApiResult<MutationResult> {
        let caller = require(ctx, Capability::ManageBilling)?;
        let period = parse_period(&period)?;
        let cmd = command(ctx, &caller, "closePeriod", idempotency_key);
        let c = InvoiceCommand::ClosePeriod {
            period,
            now: cmd.now,
            tax: TaxPolicy {
                rate_pct: money("taxRatePct", tax_rate_pct)?,
                mode: match tax_mode {
                    TaxModeInput::Inclusive => TaxMode::Inclusive,
                    TaxModeInput::Exclusive => TaxMode::Exclusive,
                },
            },
        };
        let outcome = state(ctx)
            .handler
            .execute::<InvoiceBook, _>(&cmd, StreamRef::of::<InvoiceBook>(caller.tenant_id, &account_id), |s| {
                invoice::decide(&c, s)
            })
            .await
            .map_err(not_found("invoice book", |r| {
                matches!(r, invoice::InvoiceRejection::NotOpened)
            }))?;
        Ok(MutationResult::new(account_id, outcome))
    }
}

pub fn parse_period(text: &str) -> ApiResult<BillingPeriod> {
    let bad = || ApiError::invalid("period must be YYYY-MM");
    let (y, m) = text.split_once('-').ok_or_else(bad)?;
    if y.len() != 4 || m.len() != 2 {
        return Err(bad());
    }
    let year: i32 = y.parse().map_err(|_| bad())?;
    let month: u32 = m.parse().map_err(|_| bad())?;
    if !(1..=12).contains(&month) || !(2000..=2999).contains(&year) {
        return Err(bad());
    }
    Ok(BillingPeriod { year, month })
}

/// What `correctTariffVersion` did.
#[derive(async_graphql::SimpleObject, Debug, Clone)]
pub struct TariffCorrectionResult {
    pub tariff_id: Uuid,
    /// The correction now in force for the version (1 = the first correction).
    pub revision: i32,
    /// False when the version already had exactly this deck: only the invoice step ran.
    pub newly_corrected: bool,
    /// Charges billed with the version and re-rated.
    pub charges: i64,
    /// Re-rated charges the corrected deck cannot rate (left as billed).
    pub unrated: i64,
    /// Invoice adjustments written, and their sum (positive: customers owe more).
    pub adjustments: i64,
    pub adjustment_total: Decimal,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_serde_jsons() {
        let mut every_ascii = String::new();
        for b in 0u8..0x80 {
            every_ascii.push(char::from(b));
        }
        let samples = [
            "",
            "plain",
            "prefix 49 tariff v1; 3 x 60 s at 0.0123/min (peak); fee 0; exact 0.0369, posted half-up",
            "a \"quote\" and a \\ backslash",
            "tab\there",
            "line\u{2028}separator é 📞 \u{7f}",
            "exactly sixteen!",
            "exactly sixteen\n",
            "0123456789abcdef0123456789abcde\u{1}",
            every_ascii.as_str(),
        ];
        for s in samples {
            let mut out = Vec::new();
            json_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
        for id in [Uuid::nil(), Uuid::max(), Uuid::new_v4()] {
            let mut out = Vec::new();
            json_uuid(&mut out, &id);
            assert_eq!(out, serde_json::to_vec(&id.to_string()).unwrap());
        }
    }

    #[test]
    fn written_cursors_are_page_cursors() {
        let c = Charge {
            call_id: Uuid::new_v4(),
            leg_id: Uuid::new_v4(),
            account_id: Uuid::new_v4(),
            answered_at: "2025-03-10T12:34:56.789012Z".parse().unwrap(),
            duration_s: 1,
            destination: "49".into(),
            status: "rated".into(),
            unrated_reason: None,
            tariff_id: None,
            tariff_version: None,
            matched_prefix: None,
            billed_s: None,
            currency: None,
            amount: None,
            amount_exact: None,
            explanation: None,
        };
        let (mut out, mut key) = (Vec::new(), Vec::new());
        ChargePage::write_cursor(&c, &mut out, &mut key);
        let expected = page::encode(&ChargePage::cursor_key(&c));
        assert_eq!(out, serde_json::to_vec(&expected).unwrap());
    }
}
