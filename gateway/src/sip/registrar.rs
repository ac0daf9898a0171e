//! The registrar's decision (RFC 3261 §10.3) as a pure function: a REGISTER, what the shell
//! looked up, the current bindings and `now` in; the response and the binding changes out.
//!
//! The shell looks the tenant up by the Request-URI's domain and the extension by the To
//! user, loads the AOR's bindings from the location table shared by every SIP node, calls
//! [`decide_register`], sends the response and writes the changes. Only created, changed and
//! removed bindings become events; a refresh only moves an expiry.

use super::digest::{DigestVerifier, Verdict};
use super::message::{build_response, uri_user_host, Contact, SipMessage};
use chrono::{DateTime, Duration, Utc};
use domain::digest::Ha1;
use uuid::Uuid;

/// Expiry bounds and per-AOR limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrarConfig {
    /// Below this (and above zero) a REGISTER gets 423 with `Min-Expires`.
    pub min_expires_secs: u32,
    /// Longer requests are shortened to this.
    pub max_expires_secs: u32,
    /// Used when neither the contact nor the request says.
    pub default_expires_secs: u32,
    /// The most contacts one extension may have registered at once.
    pub max_contacts_per_aor: usize,
    /// A quiet refresh is not written: one that changes nothing a reader can see (same
    /// contact, source and user agent, whatever its Call-ID) and whose stored binding still
    /// has at least `100 - quiet_refresh_percent` percent of the granted interval to run. The
    /// 200 then grants what the stored binding has left, so a phone is never told of an
    /// expiry the location table does not hold (RFC 3261 §10.3 lets a registrar shorten an
    /// interval). A phone refreshing far more often than its interval asks for (a
    /// registration storm, a bench) costs a read and no write; one refreshing at half its
    /// interval, as phones do, is always written. 0 writes every refresh.
    pub quiet_refresh_percent: u32,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            min_expires_secs: 60,
            max_expires_secs: 3600,
            default_expires_secs: 3600,
            max_contacts_per_aor: 10,
            quiet_refresh_percent: 10,
        }
    }
}

/// What the shell found for the request's domain and To user.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// No tenant has this SIP domain.
    UnknownDomain,
    Tenant {
        tenant_id: Uuid,
        sip_domain: String,
        suspended: bool,
        extension: Option<ExtensionRecord>,
    },
}

/// An extension as the read model holds it.
#[derive(Debug, Clone)]
pub struct ExtensionRecord {
    pub extension_id: Uuid,
    pub number: String,
    pub ha1: Ha1,
    pub enabled: bool,
}

/// One contact bound to an extension, as the location table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The Contact URI exactly as the phone sent it.
    pub contact: String,
    pub expires_at: DateTime<Utc>,
    pub call_id: String,
    pub cseq: u32,
    /// The transport address the REGISTER came from, which is how a phone behind NAT is reached.
    pub source: String,
    /// The phone's `User-Agent` (at most [`USER_AGENT_MAX`] bytes), empty when it sent none.
    pub user_agent: String,
}

/// The longest `User-Agent` kept with a binding; longer ones are cut at a character boundary.
pub const USER_AGENT_MAX: usize = 200;

/// The `User-Agent` a binding records: trimmed and bounded, so a hostile header cannot bloat
/// the location table or the log.
pub fn user_agent_of(request: &SipMessage) -> String {
    let value = request.header("User-Agent").unwrap_or("").trim();
    let mut end = value.len().min(USER_AGENT_MAX);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalReason {
    Unregistered,
    Expired,
}

/// A change to the location table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingChange {
    Created(Binding),
    /// Only the expiry, Call-ID or CSeq moved: written to the table, never an event. A new
    /// Call-ID alone is a phone that restarted and registered the same contact again; nothing
    /// that a reader of the log can see has changed.
    Refreshed(Binding),
    /// The same contact now comes from another source address or user agent.
    Changed {
        before: Binding,
        after: Binding,
    },
    Removed {
        binding: Binding,
        reason: RemovalReason,
    },
}

impl BindingChange {
    /// Whether this change is a fact worth an event (creation, change, removal).
    pub fn is_event(&self) -> bool {
        !matches!(self, BindingChange::Refreshed(_))
    }
}

/// What to do about one REGISTER.
#[derive(Debug, Clone)]
pub struct RegisterOutcome {
    pub response: rsip::Response,
    pub changes: Vec<BindingChange>,
    /// Credentials were presented and were wrong: counts towards the source's abuse limit.
    pub auth_failed: bool,
}

/// The request-specific inputs besides the message.
#[derive(Debug, Clone, Copy)]
pub struct RegisterContext<'a> {
    /// `ip:port` the request came from.
    pub source: &'a str,
    pub now: DateTime<Utc>,
    /// Fresh randomness for a nonce, from the shell's CSPRNG.
    pub nonce_random: [u8; 16],
    /// The tag for our To header.
    pub to_tag: &'a str,
    /// The bindings given are the table's state, and this node's: this node wrote them, no
    /// save of this extension by this node was in flight when they were read, nor has one
    /// begun since. Only then may a quiet refresh stand on them unwritten (otherwise a save
    /// still on its way, of a binding from another address say, would land after and win;
    /// and a binding another node wrote should now say the phone comes through this one).
    pub bindings_settled: bool,
}

/// Decides the answer to a REGISTER.
pub fn decide_register(
    request: &SipMessage,
    lookup: &Lookup,
    current: &[Binding],
    verifier: &mut DigestVerifier,
    config: &RegistrarConfig,
    context: RegisterContext<'_>,
) -> RegisterOutcome {
    let reply = |code: u16, extra: &[(&str, String)]| RegisterOutcome {
        response: build_response(request, code, context.to_tag, extra),
        changes: Vec::new(),
        auth_failed: false,
    };
    let Some(domain) = request.request_domain() else {
        return reply(400, &[]);
    };
    // The AOR is the To URI; it must be in the domain the request is addressed to.
    let Some((Some(user), to_host)) = uri_user_host(&request.to.uri) else {
        return reply(400, &[]);
    };
    if to_host != domain {
        return reply(403, &[]);
    }
    let (sip_domain, extension) = match lookup {
        Lookup::UnknownDomain => return reply(404, &[]),
        Lookup::Tenant { suspended: true, .. } => return reply(403, &[]),
        Lookup::Tenant {
            sip_domain, extension, ..
        } => (sip_domain, extension),
    };
    let challenge = |verifier: &mut DigestVerifier, stale: bool, failed: bool| {
        let challenge = verifier.challenge(sip_domain, context.now, context.nonce_random, stale);
        let mut outcome = reply(401, &challenge.header_fields(false));
        outcome.auth_failed = failed;
        outcome
    };
    let credentials = match request.digest_credentials(false) {
        None => return challenge(verifier, false, false),
        Some(Err(_)) => {
            let mut outcome = reply(400, &[]);
            outcome.auth_failed = true;
            return outcome;
        }
        Some(Ok(credentials)) => credentials,
    };
    // Authenticating as one user does not allow registering another (§10.3 step 6).
    if credentials.username != user {
        let mut outcome = reply(403, &[]);
        outcome.auth_failed = true;
        return outcome;
    }
    let method = crate::sip::message::method_name(request.cseq.method);
    let ha1 = extension.as_ref().map(|e| &e.ha1);
    match verifier.verify(&credentials, method, sip_domain, ha1, context.now) {
        Verdict::Ok => {}
        Verdict::Stale => return challenge(verifier, true, false),
        Verdict::Invalid(_) => return challenge(verifier, false, true),
    }
    // Verified against a real HA1, so the extension exists; a disabled one is told so only
    // now, after its password proved the caller knows it.
    match extension {
        Some(extension) if extension.enabled => {}
        _ => return reply(403, &[]),
    }
    match apply_contacts(request, current, config, context) {
        Ok((bindings, changes)) => {
            let contacts: Vec<(&str, String)> = bindings
                .iter()
                .map(|b| {
                    let remaining = (b.expires_at - context.now).num_seconds().max(0);
                    let mut value = Vec::with_capacity(b.contact.len() + 20);
                    value.push(b'<');
                    value.extend_from_slice(b.contact.as_bytes());
                    value.extend_from_slice(b">;expires=");
                    crate::sip::message::write_decimal(&mut value, remaining.unsigned_abs());
                    // The contact is a str, the rest ASCII.
                    ("Contact", String::from_utf8(value).unwrap_or_default())
                })
                .collect();
            RegisterOutcome {
                response: build_response(request, 200, context.to_tag, &contacts),
                changes,
                auth_failed: false,
            }
        }
        Err(Refusal::IntervalTooBrief) => reply(423, &[("Min-Expires", config.min_expires_secs.to_string())]),
        Err(Refusal::TooManyContacts) => reply(403, &[]),
        Err(Refusal::Malformed | Refusal::OutOfOrder) => reply(400, &[]),
    }
}

/// Bindings past their expiry, as removals for the shell to write (and publish).
pub fn purge_expired(bindings: &[Binding], now: DateTime<Utc>) -> Vec<BindingChange> {
    bindings
        .iter()
        .filter(|b| b.expires_at <= now)
        .map(|b| BindingChange::Removed {
            binding: b.clone(),
            reason: RemovalReason::Expired,
        })
        .collect()
}

enum Refusal {
    Malformed,
    IntervalTooBrief,
    TooManyContacts,
    OutOfOrder,
}

/// Applies the Contact list to the current bindings (§10.3 steps 7-8): returns the bindings
/// in force afterwards and the changes, or why the whole request is refused.
fn apply_contacts(
    request: &SipMessage,
    current: &[Binding],
    config: &RegistrarConfig,
    context: RegisterContext<'_>,
) -> Result<(Vec<Binding>, Vec<BindingChange>), Refusal> {
    let now = context.now;
    let mut changes = purge_expired(current, now);
    let mut bindings: Vec<Binding> = current.iter().filter(|b| b.expires_at > now).cloned().collect();
    let contacts = request.contacts().map_err(|_| Refusal::Malformed)?;
    let header_expires = request.expires().map_err(|_| Refusal::Malformed)?;
    let call_id = &request.call_id;
    let cseq = request.cseq.seq;
    let user_agent = user_agent_of(request);

    if contacts.contains(&Contact::Star) {
        // `*` must stand alone and come with Expires: 0 (§10.2.2).
        if contacts.len() != 1 || header_expires != Some(0) {
            return Err(Refusal::Malformed);
        }
        for binding in &bindings {
            if binding.call_id == *call_id && binding.cseq >= cseq {
                return Err(Refusal::OutOfOrder);
            }
        }
        for binding in bindings.drain(..) {
            changes.push(BindingChange::Removed {
                binding,
                reason: RemovalReason::Unregistered,
            });
        }
        return Ok((bindings, changes));
    }

    // First check every contact, so that a refusal changes nothing.
    let mut wanted = Vec::with_capacity(contacts.len());
    for contact in &contacts {
        let Contact::Uri { uri, expires } = contact else {
            return Err(Refusal::Malformed);
        };
        let expires = expires.or(header_expires).unwrap_or(config.default_expires_secs);
        if expires != 0 && expires < config.min_expires_secs {
            return Err(Refusal::IntervalTooBrief);
        }
        if let Some(existing) = bindings.iter().find(|b| b.contact == *uri) {
            if existing.call_id == *call_id && existing.cseq >= cseq {
                return Err(Refusal::OutOfOrder);
            }
        }
        wanted.push((uri.clone(), expires.min(config.max_expires_secs)));
    }

    for (uri, expires) in wanted {
        let position = bindings.iter().position(|b| b.contact == uri);
        if expires == 0 {
            if let Some(position) = position {
                let binding = bindings.remove(position);
                changes.push(BindingChange::Removed {
                    binding,
                    reason: RemovalReason::Unregistered,
                });
            }
            continue;
        }
        let after = Binding {
            contact: uri,
            expires_at: now + Duration::seconds(i64::from(expires)),
            call_id: call_id.clone(),
            cseq,
            source: context.source.to_string(),
            user_agent: user_agent.clone(),
        };
        match position {
            Some(position)
                if context.bindings_settled && is_quiet_refresh(&bindings[position], &after, expires, config, now) => {}
            Some(position) => {
                let before = std::mem::replace(&mut bindings[position], after.clone());
                if before.source == after.source && before.user_agent == after.user_agent {
                    changes.push(BindingChange::Refreshed(after));
                } else {
                    changes.push(BindingChange::Changed { before, after });
                }
            }
            None => {
                bindings.push(after.clone());
                changes.push(BindingChange::Created(after));
            }
        }
    }
    if bindings.len() > config.max_contacts_per_aor {
        return Err(Refusal::TooManyContacts);
    }
    Ok((bindings, changes))
}

/// Whether `after`, asked for `expires` seconds, may stand on the stored `before` unwritten
/// (see [`RegistrarConfig::quiet_refresh_percent`]).
fn is_quiet_refresh(
    before: &Binding,
    after: &Binding,
    expires: u32,
    config: &RegistrarConfig,
    now: DateTime<Utc>,
) -> bool {
    let slack_ms = i64::from(expires) * 1000 * i64::from(config.quiet_refresh_percent.min(100)) / 100;
    let left = before.expires_at - now;
    config.quiet_refresh_percent > 0
        && before.source == after.source
        && before.user_agent == after.user_agent
        // Never more than asked for, and not much less.
        && before.expires_at <= after.expires_at
        && left >= Duration::seconds(i64::from(expires)) - Duration::milliseconds(slack_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::digest::{compute_response, DigestConfig};
    use chrono::TimeZone;

    const DOMAIN: &str = "acme.example.com";

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).single().unwrap()
    }

    fn verifier() -> DigestVerifier {
        DigestVerifier::new(DigestConfig {
            secret: b"k".to_vec(),
            nonce_lifetime_secs: 300,
            max_tracked_nonces: 100,
            prefer_sha256: true,
            offer_sha256: true,
        })
    }

    fn lookup(enabled: bool, suspended: bool, known: bool) -> Lookup {
        Lookup::Tenant {
            tenant_id: Uuid::nil(),
            sip_domain: DOMAIN.into(),
            suspended,
            extension: known.then(|| ExtensionRecord {
                extension_id: Uuid::nil(),
                number: "1001".into(),
                ha1: Ha1::compute("1001", DOMAIN, "pw"),
                enabled,
            }),
        }
    }

    fn context(now: DateTime<Utc>) -> RegisterContext<'static> {
        RegisterContext {
            source: "192.0.2.10:5060",
            now,
            nonce_random: [9; 16],
            to_tag: "reg",
            bindings_settled: true,
        }
    }

    /// A REGISTER with `contact_lines` and `extra` headers, authorized with `password`
    /// against the nonce in `challenge` (if any) with nonce-count `nc`.
    fn register(contact_lines: &str, extra: &str, auth: Option<(&str, &str, u32)>, cseq: u32) -> SipMessage {
        let authorization = match auth {
            Some((nonce, password, nc)) => {
                let ha1 = Ha1::compute("1001", DOMAIN, password);
                let nc = format!("{nc:08x}");
                let uri = "sip:acme.example.com";
                let response = compute_response(true, &ha1.sha256, nonce, &nc, "c", "auth", "REGISTER", uri);
                format!(
                    "Authorization: Digest username=\"1001\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", uri=\"{uri}\", \
response=\"{response}\", algorithm=SHA-256, qop=auth, nc={nc}, cnonce=\"c\"\r\n"
                )
            }
            None => String::new(),
        };
        let text = format!(
            "REGISTER sip:acme.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{cseq}\r\n\
Max-Forwards: 70\r\nTo: <sip:1001@acme.example.com>\r\nFrom: <sip:1001@acme.example.com>;tag=f\r\n\
Call-ID: reg-call\r\nCSeq: {cseq} REGISTER\r\n{contact_lines}{extra}{authorization}Content-Length: 0\r\n\r\n"
        );
        SipMessage::parse(text.as_bytes()).unwrap()
    }

    fn nonce_of(outcome: &RegisterOutcome) -> String {
        let message = SipMessage::from_rsip(outcome.response.clone().into()).unwrap();
        let value = message.header("WWW-Authenticate").unwrap().to_string();
        let start = value.find("nonce=\"").unwrap() + 7;
        value[start..].split('"').next().unwrap().to_string()
    }

    fn status(outcome: &RegisterOutcome) -> u16 {
        outcome.response.status_code.code()
    }

    /// Runs challenge then authorized REGISTER; returns the second outcome.
    fn registered(
        v: &mut DigestVerifier,
        contacts: &str,
        extra: &str,
        current: &[Binding],
        now: DateTime<Utc>,
        cseq: u32,
    ) -> RegisterOutcome {
        registered_with(
            &RegistrarConfig::default(),
            context(now),
            v,
            contacts,
            extra,
            current,
            cseq,
        )
    }

    /// [`registered`] with a registrar configuration and a context (its nonce randomness
    /// taken from `cseq`).
    fn registered_with(
        config: &RegistrarConfig,
        context: RegisterContext<'static>,
        v: &mut DigestVerifier,
        contacts: &str,
        extra: &str,
        current: &[Binding],
        cseq: u32,
    ) -> RegisterOutcome {
        let context = RegisterContext {
            nonce_random: [cseq as u8; 16],
            ..context
        };
        let first = decide_register(
            &register(contacts, extra, None, cseq),
            &lookup(true, false, true),
            current,
            v,
            config,
            context,
        );
        assert_eq!(status(&first), 401);
        let nonce = nonce_of(&first);
        let request = register(contacts, extra, Some((&nonce, "pw", 1)), cseq + 1);
        decide_register(&request, &lookup(true, false, true), current, v, config, context)
    }

    fn contact_expires(outcome: &RegisterOutcome) -> Vec<String> {
        outcome
            .response
            .to_string()
            .lines()
            .filter_map(|l| l.strip_prefix("Contact: "))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_quiet_refresh_stands_on_the_stored_binding_unwritten() {
        let mut v = verifier();
        let now = at(1000);
        // Written 100 s ago for an hour, by another Call-ID (a phone that restarted, or a
        // bench registering the same device over and over): 3,500 s of 3,600 left.
        let stored = Binding {
            contact: "sip:1001@192.0.2.10".into(),
            expires_at: now + Duration::seconds(3500),
            call_id: "earlier".into(),
            cseq: 7,
            source: "192.0.2.10:5060".into(),
            user_agent: "Phone/1.0".into(),
        };
        let contact = "Contact: <sip:1001@192.0.2.10>\r\n";
        let agent = "User-Agent: Phone/1.0\r\n";
        let outcome = registered(&mut v, contact, agent, std::slice::from_ref(&stored), now, 3);
        assert_eq!(status(&outcome), 200);
        assert!(outcome.changes.is_empty(), "nothing to write: {:?}", outcome.changes);
        assert_eq!(
            contact_expires(&outcome),
            ["<sip:1001@192.0.2.10>;expires=3500"],
            "the 200 grants what the table holds, not the hour asked for"
        );

        // Less than 90% of the interval left: written, as a refresh.
        let older = Binding {
            expires_at: now + Duration::seconds(3239),
            ..stored.clone()
        };
        let outcome = registered(&mut v, contact, agent, std::slice::from_ref(&older), now, 5);
        assert!(
            matches!(&outcome.changes[..], [BindingChange::Refreshed(b)] if b.expires_at == now + Duration::seconds(3600))
        );
        assert_eq!(contact_expires(&outcome), ["<sip:1001@192.0.2.10>;expires=3600"]);

        // A new source or user agent is a change however recent the binding.
        let moved = Binding {
            source: "198.51.100.7:4000".into(),
            ..stored.clone()
        };
        let outcome = registered(&mut v, contact, agent, &[moved], now, 7);
        assert!(matches!(&outcome.changes[..], [BindingChange::Changed { .. }]));
        let outcome = registered(
            &mut v,
            contact,
            "User-Agent: Phone/2.0\r\n",
            std::slice::from_ref(&stored),
            now,
            9,
        );
        assert!(matches!(&outcome.changes[..], [BindingChange::Changed { .. }]));

        // A shorter interval asked for than the stored one has left is written (the phone
        // must not be granted more than it asked).
        let outcome = registered(
            &mut v,
            "Contact: <sip:1001@192.0.2.10>;expires=600\r\n",
            agent,
            std::slice::from_ref(&stored),
            now,
            11,
        );
        assert!(
            matches!(&outcome.changes[..], [BindingChange::Refreshed(b)] if b.expires_at == now + Duration::seconds(600))
        );

        // Bindings read while a save of the extension was in flight may be stale: written.
        let unsettled = RegisterContext {
            bindings_settled: false,
            ..context(now)
        };
        let outcome = registered_with(
            &RegistrarConfig::default(),
            unsettled,
            &mut v,
            contact,
            agent,
            std::slice::from_ref(&stored),
            15,
        );
        assert!(
            matches!(&outcome.changes[..], [BindingChange::Refreshed(_)]),
            "{:?}",
            outcome.changes
        );

        // Turned off, every refresh is written.
        let config = RegistrarConfig {
            quiet_refresh_percent: 0,
            ..RegistrarConfig::default()
        };
        let outcome = registered_with(
            &config,
            context(now),
            &mut v,
            contact,
            agent,
            std::slice::from_ref(&stored),
            13,
        );
        assert!(matches!(&outcome.changes[..], [BindingChange::Refreshed(_)]));
    }

    #[test]
    fn challenge_then_register_creates_a_binding() {
        let mut v = verifier();
        let outcome = registered(
            &mut v,
            "Contact: <sip:1001@192.0.2.10>\r\n",
            "Expires: 600\r\n",
            &[],
            at(0),
            1,
        );
        assert_eq!(status(&outcome), 200);
        assert_eq!(outcome.changes.len(), 1);
        let BindingChange::Created(binding) = &outcome.changes[0] else {
            panic!("{:?}", outcome.changes)
        };
        assert_eq!(binding.expires_at, at(600));
        assert_eq!(binding.source, "192.0.2.10:5060");
        let response = SipMessage::from_rsip(outcome.response.into()).unwrap();
        assert_eq!(response.header("Contact"), Some("<sip:1001@192.0.2.10>;expires=600"));
        assert_eq!(response.to.tag.as_deref(), Some("reg"));
    }

    #[test]
    fn a_refresh_is_not_an_event_but_a_new_source_is() {
        let mut v = verifier();
        let existing = Binding {
            contact: "sip:1001@192.0.2.10".into(),
            expires_at: at(100),
            call_id: "reg-call".into(),
            cseq: 1,
            source: "192.0.2.10:5060".into(),
            user_agent: String::new(),
        };
        let outcome = registered(
            &mut v,
            "Contact: <sip:1001@192.0.2.10>\r\n",
            "",
            std::slice::from_ref(&existing),
            at(50),
            5,
        );
        assert!(matches!(&outcome.changes[..], [BindingChange::Refreshed(b)] if b.expires_at == at(50 + 3600)));
        assert!(!outcome.changes[0].is_event());
        let moved = Binding {
            source: "198.51.100.7:4000".into(),
            ..existing
        };
        let outcome = registered(&mut v, "Contact: <sip:1001@192.0.2.10>\r\n", "", &[moved], at(50), 7);
        assert!(matches!(&outcome.changes[..], [BindingChange::Changed { .. }]));
        assert!(outcome.changes[0].is_event());
    }

    #[test]
    fn a_restarted_phone_refreshes_but_a_new_user_agent_is_a_change() {
        let mut v = verifier();
        // The phone restarted: a new Call-ID, the same contact, source and user agent.
        let before_restart = Binding {
            contact: "sip:1001@192.0.2.10".into(),
            expires_at: at(100),
            call_id: "previous-boot".into(),
            cseq: 900,
            source: "192.0.2.10:5060".into(),
            user_agent: "Phone/1.0".into(),
        };
        let outcome = registered(
            &mut v,
            "Contact: <sip:1001@192.0.2.10>\r\n",
            "User-Agent:  Phone/1.0 \r\n",
            std::slice::from_ref(&before_restart),
            at(50),
            1,
        );
        let [BindingChange::Refreshed(after)] = &outcome.changes[..] else {
            panic!("{:?}", outcome.changes)
        };
        assert!(!outcome.changes[0].is_event());
        assert_eq!(after.call_id, "reg-call", "the table follows the new Call-ID");
        assert_eq!(after.cseq, 2, "and its CSeq, lower than the old boot's");

        // A firmware upgrade shows in the user agent: a change worth an event.
        let outcome = registered(
            &mut v,
            "Contact: <sip:1001@192.0.2.10>\r\n",
            "User-Agent: Phone/2.0\r\n",
            std::slice::from_ref(&before_restart),
            at(50),
            3,
        );
        let [BindingChange::Changed { after, .. }] = &outcome.changes[..] else {
            panic!("{:?}", outcome.changes)
        };
        assert_eq!(after.user_agent, "Phone/2.0");
        assert!(outcome.changes[0].is_event());

        // A hostile user agent is kept bounded, cut on a character boundary.
        let long = format!("User-Agent: {}\r\n", "é".repeat(USER_AGENT_MAX));
        let outcome = registered(&mut v, "Contact: <sip:1001@192.0.2.10>\r\n", &long, &[], at(50), 5);
        let [BindingChange::Created(created)] = &outcome.changes[..] else {
            panic!("{:?}", outcome.changes)
        };
        assert_eq!(created.user_agent, "é".repeat(USER_AGENT_MAX / 2));
    }

    #[test]
    fn several_contacts_and_unregistering_one_or_all() {
        let mut v = verifier();
        let outcome = registered(
            &mut v,
            "Contact: <sip:1001@192.0.2.10>, <sip:1001@192.0.2.11>;expires=120\r\n",
            "",
            &[],
            at(0),
            1,
        );
        assert_eq!(outcome.changes.len(), 2);
        let bindings: Vec<Binding> = outcome
            .changes
            .iter()
            .filter_map(|c| match c {
                BindingChange::Created(b) => Some(b.clone()),
                _ => None,
            })
            .collect();
        let outcome = registered(
            &mut v,
            "Contact: <sip:1001@192.0.2.11>;expires=0\r\n",
            "",
            &bindings,
            at(10),
            10,
        );
        assert!(matches!(
            &outcome.changes[..],
            [BindingChange::Removed {
                reason: RemovalReason::Unregistered,
                ..
            }]
        ));
        let outcome = registered(&mut v, "Contact: *\r\n", "Expires: 0\r\n", &bindings, at(10), 20);
        assert_eq!(outcome.changes.len(), 2);
        assert!(outcome
            .changes
            .iter()
            .all(|c| matches!(c, BindingChange::Removed { .. })));
        let response = SipMessage::from_rsip(outcome.response.into()).unwrap();
        assert_eq!(response.header("Contact"), None);
        // `*` without Expires: 0 is malformed.
        let outcome = registered(&mut v, "Contact: *\r\n", "", &bindings, at(10), 30);
        assert_eq!(status(&outcome), 400);
    }

    #[test]
    fn too_brief_gets_423_and_too_long_is_shortened() {
        let mut v = verifier();
        let outcome = registered(
            &mut v,
            "Contact: <sip:1001@192.0.2.10>\r\n",
            "Expires: 30\r\n",
            &[],
            at(0),
            1,
        );
        assert_eq!(status(&outcome), 423);
        assert!(outcome.changes.is_empty());
        let response = SipMessage::from_rsip(outcome.response.into()).unwrap();
        assert_eq!(response.header("Min-Expires"), Some("60"));
        let outcome = registered(
            &mut v,
            "Contact: <sip:1001@192.0.2.10>\r\n",
            "Expires: 99999\r\n",
            &[],
            at(0),
            5,
        );
        assert!(matches!(&outcome.changes[..], [BindingChange::Created(b)] if b.expires_at == at(3600)));
    }

    #[test]
    fn expired_bindings_are_purged_as_removals() {
        let binding = Binding {
            contact: "sip:1001@192.0.2.10".into(),
            expires_at: at(100),
            call_id: "x".into(),
            cseq: 1,
            source: "s".into(),
            user_agent: String::new(),
        };
        assert!(purge_expired(std::slice::from_ref(&binding), at(99)).is_empty());
        assert_eq!(
            purge_expired(std::slice::from_ref(&binding), at(100)),
            vec![BindingChange::Removed {
                binding,
                reason: RemovalReason::Expired
            }]
        );
    }

    #[test]
    fn wrong_password_and_unknown_user_get_the_same_fresh_challenge() {
        let mut v = verifier();
        let config = RegistrarConfig::default();
        let contact = "Contact: <sip:1001@192.0.2.10>\r\n";
        let first = decide_register(
            &register(contact, "", None, 1),
            &lookup(true, false, true),
            &[],
            &mut v,
            &config,
            context(at(0)),
        );
        assert!(!first.auth_failed, "a first REGISTER without credentials is normal");
        let nonce = nonce_of(&first);
        let wrong = register(contact, "", Some((&nonce, "bad", 1)), 2);
        let known = decide_register(&wrong, &lookup(true, false, true), &[], &mut v, &config, context(at(1)));
        let unknown = decide_register(
            &wrong,
            &lookup(true, false, false),
            &[],
            &mut v,
            &config,
            context(at(1)),
        );
        assert_eq!(status(&known), 401);
        assert!(known.auth_failed && unknown.auth_failed);
        assert_eq!(known.response.to_string(), unknown.response.to_string());
    }

    #[test]
    fn suspended_tenants_disabled_extensions_and_unknown_domains() {
        let mut v = verifier();
        let config = RegistrarConfig::default();
        let contact = "Contact: <sip:1001@192.0.2.10>\r\n";
        let request = register(contact, "", None, 1);
        let suspended = decide_register(
            &request,
            &lookup(true, true, true),
            &[],
            &mut v,
            &config,
            context(at(0)),
        );
        assert_eq!(status(&suspended), 403);
        let unknown = decide_register(&request, &Lookup::UnknownDomain, &[], &mut v, &config, context(at(0)));
        assert_eq!(status(&unknown), 404);
        // A disabled extension is challenged like any other, and refused once authenticated.
        let first = decide_register(
            &request,
            &lookup(false, false, true),
            &[],
            &mut v,
            &config,
            context(at(0)),
        );
        assert_eq!(status(&first), 401);
        let authed = register(contact, "", Some((&nonce_of(&first), "pw", 1)), 2);
        let disabled = decide_register(
            &authed,
            &lookup(false, false, true),
            &[],
            &mut v,
            &config,
            context(at(0)),
        );
        assert_eq!(status(&disabled), 403);
    }

    #[test]
    fn a_replayed_register_and_a_stale_nonce() {
        let mut v = verifier();
        let config = RegistrarConfig::default();
        let contact = "Contact: <sip:1001@192.0.2.10>\r\n";
        let first = decide_register(
            &register(contact, "", None, 1),
            &lookup(true, false, true),
            &[],
            &mut v,
            &config,
            context(at(0)),
        );
        let authed = register(contact, "", Some((&nonce_of(&first), "pw", 1)), 2);
        let ok = decide_register(
            &authed,
            &lookup(true, false, true),
            &[],
            &mut v,
            &config,
            context(at(1)),
        );
        assert_eq!(status(&ok), 200);
        let replay = decide_register(
            &authed,
            &lookup(true, false, true),
            &[],
            &mut v,
            &config,
            context(at(2)),
        );
        assert_eq!(status(&replay), 401);
        assert!(replay.auth_failed);
        let late = register(contact, "", Some((&nonce_of(&first), "pw", 2)), 3);
        let stale = decide_register(
            &late,
            &lookup(true, false, true),
            &[],
            &mut v,
            &config,
            context(at(400)),
        );
        assert_eq!(status(&stale), 401);
        assert!(!stale.auth_failed);
        let message = SipMessage::from_rsip(stale.response.into()).unwrap();
        assert!(message.header("WWW-Authenticate").unwrap().ends_with("stale=true"));
    }

    #[test]
    fn out_of_order_cseq_on_the_same_call_id_is_refused() {
        let mut v = verifier();
        let existing = Binding {
            contact: "sip:1001@192.0.2.10".into(),
            expires_at: at(1000),
            call_id: "reg-call".into(),
            cseq: 50,
            source: "192.0.2.10:5060".into(),
            user_agent: String::new(),
        };
        let outcome = registered(&mut v, "Contact: <sip:1001@192.0.2.10>\r\n", "", &[existing], at(0), 3);
        assert_eq!(status(&outcome), 400);
        assert!(outcome.changes.is_empty());
    }

    #[test]
    fn another_users_credentials_cannot_register_this_aor() {
        let mut v = verifier();
        let config = RegistrarConfig::default();
        let text = String::from_utf8(register("", "", Some(("n", "pw", 1)), 1).to_bytes())
            .unwrap()
            .replace("username=\"1001\"", "username=\"1002\"");
        let request = SipMessage::parse(text.as_bytes()).unwrap();
        let outcome = decide_register(
            &request,
            &lookup(true, false, true),
            &[],
            &mut v,
            &config,
            context(at(0)),
        );
        assert_eq!(status(&outcome), 403);
    }
}
