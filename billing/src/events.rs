//! The bridge between billing's event enums and the spine's event store: type names and payloads.
//!
//! Every event enum is serde-tagged as `{"event_type": ..., "payload": ...}`, so the store can
//! keep `event_type`, `schema_version` and `payload` in their own columns and hand them back.

use thiserror::Error;

/// The schema version of every billing event payload today. Bump it per event type when a
/// payload changes shape, and upcast old versions in `from_payload`.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum PayloadError {
    #[error("unknown schema version {version} for {event_type}")]
    UnknownSchemaVersion { event_type: String, version: u32 },
    #[error("payload does not decode as {event_type}: {source}")]
    Decode {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("event did not encode to a tagged object")]
    Encode,
}

/// Adds `schema_version`, `to_payload` and `from_payload` to an adjacently tagged event enum.
macro_rules! impl_event_payload {
    ($event:ty) => {
        impl $event {
            /// The payload schema version of this event.
            pub fn schema_version(&self) -> u32 {
                $crate::events::SCHEMA_VERSION
            }

            /// The payload alone, as the store keeps it next to `event_type`.
            pub fn to_payload(&self) -> Result<serde_json::Value, $crate::events::PayloadError> {
                let tagged = serde_json::to_value(self).map_err(|_| $crate::events::PayloadError::Encode)?;
                match tagged {
                    serde_json::Value::Object(mut fields) => fields
                        .remove("payload")
                        .ok_or($crate::events::PayloadError::Encode),
                    _ => Err($crate::events::PayloadError::Encode),
                }
            }

            /// Rebuilds an event from what the store kept.
            pub fn from_payload(
                event_type: &str,
                schema_version: u32,
                payload: serde_json::Value,
            ) -> Result<Self, $crate::events::PayloadError> {
                if schema_version != $crate::events::SCHEMA_VERSION {
                    return Err($crate::events::PayloadError::UnknownSchemaVersion {
                        event_type: event_type.to_string(),
                        version: schema_version,
                    });
                }
                let mut tagged = serde_json::Map::new();
                tagged.insert(
                    "event_type".to_string(),
                    serde_json::Value::String(event_type.to_string()),
                );
                tagged.insert("payload".to_string(), payload);
                serde_json::from_value(serde_json::Value::Object(tagged)).map_err(|source| {
                    $crate::events::PayloadError::Decode {
                        event_type: event_type.to_string(),
                        source,
                    }
                })
            }
        }
    };
}

pub(crate) use impl_event_payload;
