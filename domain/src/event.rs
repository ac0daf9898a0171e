//! How a domain event becomes a stored `(event_type, schema_version, payload)` triple and back.

use serde_json::Value;

/// Why a stored or offered event is not one we know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("event type `{event_type}` has no schema version {version}")]
    UnknownVersion { event_type: String, version: u32 },
    #[error("payload of `{event_type}` v{version} does not match its schema: {detail}")]
    InvalidPayload {
        event_type: String,
        version: u32,
        detail: String,
    },
}

/// A typed event family (one enum per aggregate).
pub trait DomainEvent: Sized + Clone + std::fmt::Debug {
    fn event_type(&self) -> &'static str;
    fn schema_version(&self) -> u32;
    fn to_payload(&self) -> Value;
    /// Decode a stored event, upcasting older schema versions when there are any.
    fn from_stored(event_type: &str, schema_version: u32, payload: &Value) -> Result<Self, SchemaError>;
    /// Every event type of this family.
    fn event_types() -> &'static [&'static str];
}

/// Declares an event enum whose variants wrap payload structs of the same name,
/// and implements [`DomainEvent`] for it (all at schema version 1).
#[macro_export]
macro_rules! event_family {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        $vis enum $name { $($variant($variant)),+ }

        impl $crate::event::DomainEvent for $name {
            fn event_type(&self) -> &'static str {
                match self { $($name::$variant(_) => stringify!($variant)),+ }
            }
            fn schema_version(&self) -> u32 { 1 }
            fn to_payload(&self) -> serde_json::Value {
                // Serializing a plain derive(Serialize) struct of strings, ids and integers cannot fail.
                match self { $($name::$variant(e) => serde_json::to_value(e).expect("plain struct serializes")),+ }
            }
            fn from_stored(event_type: &str, schema_version: u32, payload: &serde_json::Value) -> Result<Self, $crate::event::SchemaError> {
                match event_type {
                    $(stringify!($variant) => {
                        if schema_version != 1 {
                            return Err($crate::event::SchemaError::UnknownVersion { event_type: event_type.to_string(), version: schema_version });
                        }
                        <$variant as serde::Deserialize>::deserialize(payload)
                            .map($name::$variant)
                            .map_err(|e| $crate::event::SchemaError::InvalidPayload { event_type: event_type.to_string(), version: schema_version, detail: e.to_string() })
                    })+
                    other => Err($crate::event::SchemaError::UnknownType(other.to_string())),
                }
            }
            fn event_types() -> &'static [&'static str] {
                &[$(stringify!($variant)),+]
            }
        }

        impl $name {
            /// JSON Schemas of every event of this family, as `(event_type, version, schema)`.
            pub fn json_schemas() -> Vec<(&'static str, u32, serde_json::Value)> {
                vec![$((stringify!($variant), 1, serde_json::to_value(schemars::schema_for!($variant)).expect("a schema serializes"))),+]
            }
        }
    };
}
