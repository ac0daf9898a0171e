//! Canonical bytes of an event and the per-stream SHA-256 hash chain.
//!
//! The bytes are computed from values exactly as Postgres gives them back (JSON with
//! sorted keys, timestamps at microsecond precision), so `audit verify` can recompute
//! every hash from the stored rows alone.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The fields that the hash covers, borrowed from either a new or a stored event.
pub struct HashedFields<'a> {
    pub event_id: Uuid,
    pub tenant_id: Uuid,
    pub stream_id: &'a str,
    pub stream_version: i64,
    pub event_type: &'a str,
    pub schema_version: i32,
    pub payload: &'a Value,
    pub metadata: &'a Value,
    pub occurred_at: DateTime<Utc>,
}

/// `sha256(previous hash of the stream ‖ canonical bytes of the event)`.
pub fn chain_hash(previous: &[u8], fields: &HashedFields<'_>) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(canonical_bytes(fields));
    hasher.finalize().to_vec()
}

pub fn canonical_bytes(f: &HashedFields<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(b'[');
    write_json(&mut out, &Value::String(f.event_id.to_string()));
    out.push(b',');
    write_json(&mut out, &Value::String(f.tenant_id.to_string()));
    out.push(b',');
    write_json(&mut out, &Value::String(f.stream_id.to_string()));
    out.extend_from_slice(format!(",{},", f.stream_version).as_bytes());
    write_json(&mut out, &Value::String(f.event_type.to_string()));
    out.extend_from_slice(format!(",{},", f.schema_version).as_bytes());
    write_json(&mut out, f.payload);
    out.push(b',');
    write_json(&mut out, f.metadata);
    out.push(b',');
    write_json(
        &mut out,
        &Value::String(f.occurred_at.to_rfc3339_opts(SecondsFormat::Micros, true)),
    );
    out.push(b']');
    out
}

/// JSON with object keys sorted by their bytes and no insignificant whitespace,
/// whatever map order the `serde_json` build uses.
fn write_json(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(out, &Value::String(key.clone()));
                out.push(b':');
                write_json(out, &map[key]);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(out, item);
            }
            out.push(b']');
        }
        // Scalars have one serde_json form; writing into a Vec cannot fail.
        scalar => serde_json::to_writer(&mut *out, scalar).expect("writing JSON into a Vec cannot fail"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields<'a>(payload: &'a Value, metadata: &'a Value) -> HashedFields<'a> {
        HashedFields {
            event_id: Uuid::from_u128(1),
            tenant_id: Uuid::from_u128(2),
            stream_id: "tenant-x",
            stream_version: 3,
            event_type: "TenantRenamed",
            schema_version: 1,
            payload,
            metadata,
            occurred_at: DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap(),
        }
    }

    #[test]
    fn key_order_does_not_change_the_bytes() {
        let a = json!({"b": 1, "a": {"y": [1, 2], "x": "s"}});
        let b: Value = serde_json::from_str(r#"{"a":{"x":"s","y":[1,2]},"b":1}"#).unwrap();
        let m = json!({});
        assert_eq!(canonical_bytes(&fields(&a, &m)), canonical_bytes(&fields(&b, &m)));
        let text = String::from_utf8(canonical_bytes(&fields(&a, &m))).unwrap();
        assert!(text.contains(r#"{"a":{"x":"s","y":[1,2]},"b":1}"#), "{text}");
        assert!(text.ends_with(r#""2023-11-14T22:13:20.123456Z"]"#), "{text}");
    }

    #[test]
    fn the_chain_depends_on_the_previous_hash_and_every_field() {
        let p = json!({"name": "a"});
        let m = json!({});
        let h1 = chain_hash(b"", &fields(&p, &m));
        assert_ne!(h1, chain_hash(&h1, &fields(&p, &m)));
        let p2 = json!({"name": "b"});
        assert_ne!(h1, chain_hash(b"", &fields(&p2, &m)));
        assert_eq!(h1.len(), 32);
    }
}
