//! The Webhook aggregate: a tenant's HTTP endpoint that receives its events, signed.
//!
//! The signing secret never enters the log: the log is exported to auditors, so an event
//! names the secret only by a key id and a fingerprint. The secret itself arrives inside
//! a command (like an extension's password) and is kept by the shell in a table outside
//! the log, keyed by webhook and key id, written in the same transaction as the event
//! that names it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::decider::Aggregate;
use crate::event_family;

/// Bounds on what a webhook may hold.
pub const MAX_URL_LEN: usize = 2048;
pub const MAX_EVENT_TYPES: usize = 100;
pub const MAX_EVENT_TYPE_LEN: usize = 100;
pub const MIN_SECRET_LEN: usize = 16;
pub const MAX_SECRET_LEN: usize = 256;
pub const MAX_REASON_LEN: usize = 200;
/// The event-type filter that matches every event of the tenant.
pub const ALL_EVENTS: &str = "*";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRegistered {
    pub webhook_id: Uuid,
    pub tenant_id: Uuid,
    pub url: String,
    /// Event type names, sorted and unique, or the single entry `*`.
    pub event_types: Vec<String>,
    /// Names the secret kept outside the log; never the secret itself.
    pub secret_key_id: Uuid,
    /// First 16 hex digits of `sha256("ledgerline-webhook-secret-v1:{webhook_id}:{secret}")`,
    /// to tell which secret signed a delivery without revealing it.
    pub secret_fingerprint: String,
}

/// The URL or the event-type filter changed; both are given in full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookUpdated {
    pub url: String,
    pub event_types: Vec<String>,
}

/// A new signing secret replaced the old one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSecretRotated {
    pub secret_key_id: Uuid,
    pub secret_fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookDisabled {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookEnabled {}

/// The webhook is gone for good; its stream ends here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRemoved {}

event_family! {
    /// Everything that happens on a `webhook-{id}` stream.
    pub enum WebhookEvent {
        WebhookRegistered,
        WebhookUpdated,
        WebhookSecretRotated,
        WebhookDisabled,
        WebhookEnabled,
        WebhookRemoved,
    }
}

/// A signing secret in clear; exists only inside a command. `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(pub String);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

/// A new secret with the id the shell keeps it under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSecret {
    pub key_id: Uuid,
    pub secret: WebhookSecret,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookCommand {
    Register {
        webhook_id: Uuid,
        tenant_id: Uuid,
        url: String,
        event_types: Vec<String>,
        secret: NewSecret,
        /// Every event type the store knows, fetched by the shell (the decider looks nothing up).
        known_event_types: Vec<String>,
    },
    Update {
        url: Option<String>,
        event_types: Option<Vec<String>>,
        secret: Option<NewSecret>,
        known_event_types: Vec<String>,
    },
    Disable {
        reason: String,
    },
    Enable,
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookRejection {
    #[error("the webhook already exists")]
    AlreadyExists,
    #[error("no such webhook")]
    NotFound,
    #[error("the system tenant has no webhooks; register one for a tenant")]
    SystemTenant,
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    #[error("invalid event types: {0}")]
    InvalidEventTypes(String),
    #[error("invalid secret: {0}")]
    InvalidSecret(String),
    #[error("the webhook is already disabled")]
    AlreadyDisabled,
    #[error("the webhook is not disabled")]
    NotDisabled,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookState {
    pub registered: bool,
    pub removed: bool,
    pub webhook_id: Uuid,
    pub tenant_id: Uuid,
    pub url: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub secret_key_id: Uuid,
    pub secret_fingerprint: String,
}

impl WebhookState {
    /// Registered and not removed.
    pub fn exists(&self) -> bool {
        self.registered && !self.removed
    }
}

pub struct Webhook;

impl Aggregate for Webhook {
    type Event = WebhookEvent;
    type State = WebhookState;
    const STREAM_PREFIX: &'static str = "webhook";

    fn evolve(mut state: WebhookState, event: &WebhookEvent) -> WebhookState {
        match event {
            WebhookEvent::WebhookRegistered(e) => {
                state = WebhookState {
                    registered: true,
                    removed: false,
                    webhook_id: e.webhook_id,
                    tenant_id: e.tenant_id,
                    url: e.url.clone(),
                    event_types: e.event_types.clone(),
                    enabled: true,
                    secret_key_id: e.secret_key_id,
                    secret_fingerprint: e.secret_fingerprint.clone(),
                };
            }
            WebhookEvent::WebhookUpdated(e) => {
                state.url = e.url.clone();
                state.event_types = e.event_types.clone();
            }
            WebhookEvent::WebhookSecretRotated(e) => {
                state.secret_key_id = e.secret_key_id;
                state.secret_fingerprint = e.secret_fingerprint.clone();
            }
            WebhookEvent::WebhookDisabled(_) => state.enabled = false,
            WebhookEvent::WebhookEnabled(_) => state.enabled = true,
            WebhookEvent::WebhookRemoved(_) => {
                state.removed = true;
                state.enabled = false;
            }
        }
        state
    }
}

/// A removed webhook's stream takes no more events.
pub fn is_terminal(state: &WebhookState) -> bool {
    state.removed
}

pub fn decide(command: &WebhookCommand, state: &WebhookState) -> Result<Vec<WebhookEvent>, WebhookRejection> {
    match command {
        WebhookCommand::Register {
            webhook_id,
            tenant_id,
            url,
            event_types,
            secret,
            known_event_types,
        } => {
            if state.registered {
                return Err(WebhookRejection::AlreadyExists);
            }
            if tenant_id.is_nil() {
                return Err(WebhookRejection::SystemTenant);
            }
            let url = valid_url(url)?;
            let event_types = valid_event_types(event_types, known_event_types)?;
            let secret_fingerprint = valid_secret(webhook_id, &secret.secret)?;
            Ok(vec![WebhookEvent::WebhookRegistered(WebhookRegistered {
                webhook_id: *webhook_id,
                tenant_id: *tenant_id,
                url,
                event_types,
                secret_key_id: secret.key_id,
                secret_fingerprint,
            })])
        }
        WebhookCommand::Update {
            url,
            event_types,
            secret,
            known_event_types,
        } => {
            if !state.exists() {
                return Err(WebhookRejection::NotFound);
            }
            let url = match url {
                Some(url) => valid_url(url)?,
                None => state.url.clone(),
            };
            let event_types = match event_types {
                Some(types) => valid_event_types(types, known_event_types)?,
                None => state.event_types.clone(),
            };
            let rotated = match secret {
                Some(new) => Some(WebhookSecretRotated {
                    secret_key_id: new.key_id,
                    secret_fingerprint: valid_secret(&state.webhook_id, &new.secret)?,
                }),
                None => None,
            };
            let mut events = Vec::new();
            if url != state.url || event_types != state.event_types {
                events.push(WebhookEvent::WebhookUpdated(WebhookUpdated { url, event_types }));
            }
            if let Some(rotated) = rotated {
                events.push(WebhookEvent::WebhookSecretRotated(rotated));
            }
            Ok(events)
        }
        WebhookCommand::Disable { reason } => {
            if !state.exists() {
                return Err(WebhookRejection::NotFound);
            }
            if !state.enabled {
                return Err(WebhookRejection::AlreadyDisabled);
            }
            let reason: String = reason
                .trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_REASON_LEN)
                .collect();
            Ok(vec![WebhookEvent::WebhookDisabled(WebhookDisabled { reason })])
        }
        WebhookCommand::Enable => {
            if !state.exists() {
                return Err(WebhookRejection::NotFound);
            }
            if state.enabled {
                return Err(WebhookRejection::NotDisabled);
            }
            Ok(vec![WebhookEvent::WebhookEnabled(WebhookEnabled {})])
        }
        WebhookCommand::Remove => {
            if !state.exists() {
                return Err(WebhookRejection::NotFound);
            }
            Ok(vec![WebhookEvent::WebhookRemoved(WebhookRemoved {})])
        }
    }
}

/// Whether a webhook with this filter receives an event of this type.
pub fn matches(event_types: &[String], event_type: &str) -> bool {
    event_types.iter().any(|t| t == ALL_EVENTS || t == event_type)
}

/// The fingerprint that names a secret in the log without revealing it: salted with the
/// webhook id, so equal secrets of two webhooks do not show as equal.
pub fn secret_fingerprint(webhook_id: &Uuid, secret: &WebhookSecret) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"ledgerline-webhook-secret-v1:");
    hasher.update(webhook_id.to_string().as_bytes());
    hasher.update(b":");
    hasher.update(secret.0.as_bytes());
    let digest = hex::encode(hasher.finalize());
    digest[..16].to_string()
}

/// An absolute `http` or `https` URL with a host, no credentials and no fragment; returned
/// in normal form.
pub fn valid_url(url: &str) -> Result<String, WebhookRejection> {
    let url = url.trim();
    if url.is_empty() {
        return Err(WebhookRejection::InvalidUrl("it is empty".into()));
    }
    if url.len() > MAX_URL_LEN {
        return Err(WebhookRejection::InvalidUrl(format!("longer than {MAX_URL_LEN} bytes")));
    }
    let parsed = url::Url::parse(url).map_err(|e| WebhookRejection::InvalidUrl(format!("{e}")))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(WebhookRejection::InvalidUrl(format!(
            "the scheme must be http or https, not `{}`",
            parsed.scheme()
        )));
    }
    match parsed.host_str() {
        Some(host) if !host.is_empty() => {}
        _ => return Err(WebhookRejection::InvalidUrl("it has no host".into())),
    }
    // Credentials in a URL would land in the log, which auditors read.
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(WebhookRejection::InvalidUrl(
            "credentials in the URL are refused (they would be written to the log); sign with the secret instead"
                .into(),
        ));
    }
    if parsed.fragment().is_some() {
        return Err(WebhookRejection::InvalidUrl(
            "a fragment (#…) is never sent; remove it".into(),
        ));
    }
    let normal = parsed.to_string();
    if normal.len() > MAX_URL_LEN {
        return Err(WebhookRejection::InvalidUrl(format!("longer than {MAX_URL_LEN} bytes")));
    }
    Ok(normal)
}

/// A non-empty list of known event type names (sorted, duplicates dropped), or `*` alone.
pub fn valid_event_types(types: &[String], known: &[String]) -> Result<Vec<String>, WebhookRejection> {
    let mut out: Vec<String> = Vec::new();
    for raw in types {
        let t = raw.trim();
        if t.is_empty() {
            continue;
        }
        if t != ALL_EVENTS {
            if t.len() > MAX_EVENT_TYPE_LEN || !t.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(WebhookRejection::InvalidEventTypes(format!(
                    "`{}` is not an event type name",
                    t.chars().take(MAX_EVENT_TYPE_LEN).collect::<String>()
                )));
            }
            if !known.iter().any(|k| k == t) {
                return Err(WebhookRejection::InvalidEventTypes(format!("unknown event type `{t}`")));
            }
        }
        out.push(t.to_string());
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(WebhookRejection::InvalidEventTypes(
            "give at least one event type, or `*` for all".into(),
        ));
    }
    if out.len() > MAX_EVENT_TYPES {
        return Err(WebhookRejection::InvalidEventTypes(format!(
            "at most {MAX_EVENT_TYPES} event types"
        )));
    }
    if out.len() > 1 && out.iter().any(|t| t == ALL_EVENTS) {
        return Err(WebhookRejection::InvalidEventTypes("`*` stands alone".into()));
    }
    Ok(out)
}

fn valid_secret(webhook_id: &Uuid, secret: &WebhookSecret) -> Result<String, WebhookRejection> {
    let len = secret.0.chars().count();
    if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&len) {
        return Err(WebhookRejection::InvalidSecret(format!(
            "it must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} characters"
        )));
    }
    if !secret.0.chars().all(|c| c.is_ascii_graphic()) {
        return Err(WebhookRejection::InvalidSecret(
            "use printable ASCII without spaces".into(),
        ));
    }
    Ok(secret_fingerprint(webhook_id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DomainEvent;

    const SECRET: &str = "whsec_0123456789abcdef";

    fn known() -> Vec<String> {
        vec!["CallEnded".into(), "CallInitiated".into(), "TenantRenamed".into()]
    }

    fn new_secret(n: u128, secret: &str) -> NewSecret {
        NewSecret {
            key_id: Uuid::from_u128(n),
            secret: WebhookSecret(secret.into()),
        }
    }

    fn register(url: &str, types: &[&str]) -> WebhookCommand {
        WebhookCommand::Register {
            webhook_id: Uuid::from_u128(7),
            tenant_id: Uuid::from_u128(1),
            url: url.into(),
            event_types: types.iter().map(|t| t.to_string()).collect(),
            secret: new_secret(100, SECRET),
            known_event_types: known(),
        }
    }

    fn registered() -> WebhookEvent {
        WebhookEvent::WebhookRegistered(WebhookRegistered {
            webhook_id: Uuid::from_u128(7),
            tenant_id: Uuid::from_u128(1),
            url: "https://hooks.example.com/ledgerline".into(),
            event_types: vec!["CallEnded".into(), "CallInitiated".into()],
            secret_key_id: Uuid::from_u128(100),
            secret_fingerprint: secret_fingerprint(&Uuid::from_u128(7), &WebhookSecret(SECRET.into())),
        })
    }

    fn given(events: &[WebhookEvent]) -> WebhookState {
        Webhook::fold(events)
    }

    #[test]
    fn given_nothing_when_register_then_registered_with_sorted_types_and_no_secret() {
        let events = decide(
            &register(
                " https://hooks.example.com/ledgerline ",
                &["CallInitiated", "CallEnded", "CallEnded"],
            ),
            &given(&[]),
        )
        .unwrap();
        assert_eq!(events, vec![registered()]);
        let payload = events[0].to_payload().to_string();
        assert!(
            !payload.contains(SECRET),
            "the secret must never be in an event: {payload}"
        );
    }

    #[test]
    fn bad_urls_are_refused() {
        for bad in [
            "",
            "ftp://example.com/x",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "example.com/hook",
            "http://",
            "https://user:pw@example.com/hook",
            "https://example.com/hook#frag",
            "not a url",
        ] {
            assert!(
                matches!(
                    decide(&register(bad, &["*"]), &given(&[])),
                    Err(WebhookRejection::InvalidUrl(_))
                ),
                "{bad:?} must be refused"
            );
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(matches!(
            decide(&register(&long, &["*"]), &given(&[])),
            Err(WebhookRejection::InvalidUrl(_))
        ));
        assert!(decide(&register("http://127.0.0.1:8080/hook", &["*"]), &given(&[])).is_ok());
        let mut system = register("https://x.test/", &["*"]);
        if let WebhookCommand::Register { tenant_id, .. } = &mut system {
            *tenant_id = Uuid::nil();
        }
        assert_eq!(decide(&system, &given(&[])), Err(WebhookRejection::SystemTenant));
    }

    #[test]
    fn bad_filters_and_secrets_are_refused() {
        let state = given(&[]);
        for bad in [&[][..], &[" "], &["Nope"], &["*", "CallEnded"], &["Call Ended"]] {
            assert!(
                matches!(
                    decide(&register("https://x.test/", bad), &state),
                    Err(WebhookRejection::InvalidEventTypes(_))
                ),
                "{bad:?} must be refused"
            );
        }
        for bad in ["short", "has a space in the middle", &"x".repeat(MAX_SECRET_LEN + 1)] {
            let cmd = WebhookCommand::Register {
                webhook_id: Uuid::from_u128(7),
                tenant_id: Uuid::from_u128(1),
                url: "https://x.test/".into(),
                event_types: vec!["*".into()],
                secret: new_secret(1, bad),
                known_event_types: known(),
            };
            assert!(matches!(decide(&cmd, &state), Err(WebhookRejection::InvalidSecret(_))));
        }
        assert_eq!(
            decide(&register("https://x.test/", &["*"]), &given(&[registered()])),
            Err(WebhookRejection::AlreadyExists)
        );
    }

    #[test]
    fn the_secret_is_hidden_from_debug_and_fingerprints_differ_per_webhook() {
        let secret = WebhookSecret(SECRET.into());
        assert!(!format!("{:?}", register("https://x.test/", &["*"])).contains(SECRET));
        assert_ne!(
            secret_fingerprint(&Uuid::from_u128(1), &secret),
            secret_fingerprint(&Uuid::from_u128(2), &secret)
        );
    }

    type Case = (
        Vec<WebhookEvent>,
        WebhookCommand,
        Result<Vec<WebhookEvent>, WebhookRejection>,
    );

    #[test]
    fn update_disable_enable_remove_table() {
        let disabled = WebhookEvent::WebhookDisabled(WebhookDisabled {
            reason: "maintenance".into(),
        });
        let removed = WebhookEvent::WebhookRemoved(WebhookRemoved {});
        let update = |url: Option<&str>, types: Option<&[&str]>, secret: Option<NewSecret>| WebhookCommand::Update {
            url: url.map(String::from),
            event_types: types.map(|t| t.iter().map(|s| s.to_string()).collect()),
            secret,
            known_event_types: known(),
        };
        let cases: Vec<Case> = vec![
            (vec![], update(None, None, None), Err(WebhookRejection::NotFound)),
            (vec![registered()], update(None, None, None), Ok(vec![])),
            (
                vec![registered()],
                update(
                    Some("https://hooks.example.com/ledgerline"),
                    Some(&["CallEnded", "CallInitiated"]),
                    None,
                ),
                Ok(vec![]),
            ),
            (
                vec![registered()],
                update(None, Some(&["*"]), None),
                Ok(vec![WebhookEvent::WebhookUpdated(WebhookUpdated {
                    url: "https://hooks.example.com/ledgerline".into(),
                    event_types: vec!["*".into()],
                })]),
            ),
            (
                vec![registered()],
                update(
                    Some("http://other.test/h"),
                    None,
                    Some(new_secret(101, "another-secret-value")),
                ),
                Ok(vec![
                    WebhookEvent::WebhookUpdated(WebhookUpdated {
                        url: "http://other.test/h".into(),
                        event_types: vec!["CallEnded".into(), "CallInitiated".into()],
                    }),
                    WebhookEvent::WebhookSecretRotated(WebhookSecretRotated {
                        secret_key_id: Uuid::from_u128(101),
                        secret_fingerprint: secret_fingerprint(
                            &Uuid::from_u128(7),
                            &WebhookSecret("another-secret-value".into()),
                        ),
                    }),
                ]),
            ),
            (
                vec![registered()],
                update(Some("gopher://x"), None, None),
                Err(WebhookRejection::InvalidUrl(
                    "the scheme must be http or https, not `gopher`".into(),
                )),
            ),
            (
                vec![registered()],
                WebhookCommand::Disable {
                    reason: " maintenance\u{7} ".into(),
                },
                Ok(vec![disabled.clone()]),
            ),
            (
                vec![registered(), disabled.clone()],
                WebhookCommand::Disable { reason: String::new() },
                Err(WebhookRejection::AlreadyDisabled),
            ),
            (
                vec![registered()],
                WebhookCommand::Enable,
                Err(WebhookRejection::NotDisabled),
            ),
            (
                vec![registered(), disabled],
                WebhookCommand::Enable,
                Ok(vec![WebhookEvent::WebhookEnabled(WebhookEnabled {})]),
            ),
            (vec![registered()], WebhookCommand::Remove, Ok(vec![removed.clone()])),
            (
                vec![registered(), removed.clone()],
                WebhookCommand::Remove,
                Err(WebhookRejection::NotFound),
            ),
            (
                vec![registered(), removed.clone()],
                WebhookCommand::Enable,
                Err(WebhookRejection::NotFound),
            ),
            (
                vec![registered(), removed],
                register("https://x.test/", &["*"]),
                Err(WebhookRejection::AlreadyExists),
            ),
        ];
        for (history, command, expected) in cases {
            assert_eq!(
                decide(&command, &given(&history)),
                expected,
                "given {history:?} when {command:?}"
            );
        }
    }

    #[test]
    fn removal_is_terminal_and_matching_honours_the_filter() {
        let state = given(&[registered(), WebhookEvent::WebhookRemoved(WebhookRemoved {})]);
        assert!(is_terminal(&state));
        assert!(!state.exists());
        let filter = vec!["CallEnded".to_string()];
        assert!(matches(&filter, "CallEnded"));
        assert!(!matches(&filter, "CallInitiated"));
        assert!(matches(&["*".to_string()], "Anything"));
    }
}
