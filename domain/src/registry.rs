//! The registry of every event type the store accepts, used to validate appends and to
//! generate the JSON Schemas committed under `schemas/events/`.

use serde_json::Value;

use crate::apikey::ApiKeyEvent;
use crate::call::CallEvent;
use crate::conference::ConferenceEvent;
use crate::event::{DomainEvent, SchemaError};
use crate::extension::ExtensionEvent;
use crate::registration::RegistrationEvent;
use crate::routing::RoutingEvent;
use crate::security::SecurityEvent;
use crate::tenant::{SipDomainEvent, TenantEvent};
use crate::webhook::WebhookEvent;

/// Check that `(event_type, schema_version, payload)` is an event we know and that the
/// payload matches its schema. The store calls this before writing anything.
pub fn validate(event_type: &str, schema_version: u32, payload: &Value) -> Result<(), SchemaError> {
    if TenantEvent::event_types().contains(&event_type) {
        return TenantEvent::from_stored(event_type, schema_version, payload).map(drop);
    }
    if ExtensionEvent::event_types().contains(&event_type) {
        return ExtensionEvent::from_stored(event_type, schema_version, payload).map(drop);
    }
    if RegistrationEvent::event_types().contains(&event_type) {
        return RegistrationEvent::from_stored(event_type, schema_version, payload).map(drop);
    }
    if CallEvent::event_types().contains(&event_type) {
        return CallEvent::from_stored(event_type, schema_version, payload).map(drop);
    }
    if RoutingEvent::event_types().contains(&event_type) {
        return RoutingEvent::from_stored(event_type, schema_version, payload).map(drop);
    }
    if SecurityEvent::event_types().contains(&event_type) {
        return SecurityEvent::from_stored(event_type, schema_version, payload).map(drop);
    }
    if ConferenceEvent::event_types().contains(&event_type) {
        return ConferenceEvent::from_stored(event_type, schema_version, payload).map(drop);
    }
    if SipDomainEvent::event_types().contains(&event_type) {
        return SipDomainEvent::from_stored(event_type, schema_version, payload).map(drop);
    }
    if WebhookEvent::event_types().contains(&event_type) {
        return WebhookEvent::from_stored(event_type, schema_version, payload).map(drop);
    }
    if ApiKeyEvent::event_types().contains(&event_type) {
        return ApiKeyEvent::from_stored(event_type, schema_version, payload).map(drop);
    }
    Err(SchemaError::UnknownType(event_type.to_string()))
}

/// Every known event's JSON Schema, as `(event_type, version, schema)`, sorted by type.
pub fn json_schemas() -> Vec<(&'static str, u32, Value)> {
    let mut all = TenantEvent::json_schemas();
    all.extend(ExtensionEvent::json_schemas());
    all.extend(SipDomainEvent::json_schemas());
    all.extend(CallEvent::json_schemas());
    all.extend(RegistrationEvent::json_schemas());
    all.extend(RoutingEvent::json_schemas());
    all.extend(SecurityEvent::json_schemas());
    all.extend(WebhookEvent::json_schemas());
    all.extend(ConferenceEvent::json_schemas());
    all.extend(ApiKeyEvent::json_schemas());
    all.sort_by(|a, b| a.0.cmp(b.0));
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validates_known_and_refuses_unknown_or_malformed() {
        assert_eq!(validate("TenantRenamed", 1, &json!({"name": "Acme"})), Ok(()));
        assert!(matches!(
            validate("TenantExploded", 1, &json!({})),
            Err(SchemaError::UnknownType(_))
        ));
        assert!(matches!(
            validate("TenantRenamed", 2, &json!({"name": "x"})),
            Err(SchemaError::UnknownVersion { .. })
        ));
        assert!(matches!(
            validate("TenantRenamed", 1, &json!({"name": 5})),
            Err(SchemaError::InvalidPayload { .. })
        ));
        assert!(matches!(
            validate("TenantRenamed", 1, &json!({"name": "x", "extra": 1})),
            Err(SchemaError::InvalidPayload { .. })
        ));
    }

    #[test]
    fn every_event_type_has_a_schema() {
        let schemas = json_schemas();
        assert_eq!(
            schemas.len(),
            TenantEvent::event_types().len()
                + ExtensionEvent::event_types().len()
                + CallEvent::event_types().len()
                + RegistrationEvent::event_types().len()
                + RoutingEvent::event_types().len()
                + SecurityEvent::event_types().len()
                + WebhookEvent::event_types().len()
                + ConferenceEvent::event_types().len()
                + ApiKeyEvent::event_types().len()
                + 1
        );
    }
}
