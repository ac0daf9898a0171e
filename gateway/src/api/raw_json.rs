//! Parts of a GraphQL answer that their resolver wrote as JSON text, and the answer's
//! serialization around them.
//!
//! A page of charges is a hundred objects of sixteen scalars, each with a cursor: built as a
//! `Value` tree, serialized, then dropped, it is most of a request's CPU. A resolver that can
//! write its part directly (`billing::ChargePage`, when the selection is plain fields) puts
//! the JSON here under its path and answers a placeholder (`Value::Null`); `response_json`
//! writes the answer as `serde_json` would, with each part in its placeholder's place. Each
//! part's bytes are the same bytes the library's value would have serialized to (tested
//! beside each writer and over HTTP in `gateway/tests/api_finance.rs`).
//!
//! Only the HTTP handler offers this (it puts a `RawParts` in the request's data, and only
//! for a document whose root fields have distinct response keys, so that no two parts would
//! have to be merged); anything else executing the schema (graphql-ws) gets plain values.

use std::sync::Mutex;

use async_graphql::{Response, Value};

/// One part: the response path (field response keys and list indices as text) and its JSON.
type Part = (Vec<String>, Vec<u8>);

/// The parts written for one request.
#[derive(Default)]
pub struct RawParts {
    parts: Mutex<Vec<Part>>,
}

impl RawParts {
    pub fn put(&self, path: Vec<String>, json: Vec<u8>) {
        self.parts.lock().unwrap_or_else(|p| p.into_inner()).push((path, json));
    }

    pub fn take(&self) -> Vec<(Vec<String>, Vec<u8>)> {
        std::mem::take(&mut *self.parts.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// `response` as JSON, the bytes `serde_json::to_vec(response)` gives once each part stands
/// in its place; `capacity` is a guess of the length.
pub fn response_json(response: &Response, parts: &[Part], capacity: usize) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(capacity);
    if parts.is_empty() {
        serde_json::to_writer(&mut out, response)?;
        return Ok(out);
    }
    // `Response`'s derived `Serialize`: data, then extensions and errors when not empty.
    out.extend_from_slice(b"{\"data\":");
    let parts: Vec<&Part> = parts.iter().collect();
    write_value(&mut out, &response.data, 0, &parts)?;
    if !response.extensions.is_empty() {
        out.extend_from_slice(b",\"extensions\":");
        serde_json::to_writer(&mut out, &response.extensions)?;
    }
    if !response.errors.is_empty() {
        out.extend_from_slice(b",\"errors\":");
        serde_json::to_writer(&mut out, &response.errors)?;
    }
    out.push(b'}');
    Ok(out)
}

/// `value` at `depth` of the path, where `parts` are the parts whose path runs through it.
fn write_value(out: &mut Vec<u8>, value: &Value, depth: usize, parts: &[&Part]) -> serde_json::Result<()> {
    if parts.is_empty() {
        return serde_json::to_writer(&mut *out, value);
    }
    if let Some((_, json)) = parts.iter().find(|(path, _)| path.len() == depth) {
        out.extend_from_slice(json);
        return Ok(());
    }
    let under = |segment: &str| -> Vec<&Part> {
        parts
            .iter()
            .copied()
            .filter(|(path, _)| path.get(depth).is_some_and(|s| s == segment))
            .collect()
    };
    match value {
        Value::Object(map) => {
            out.push(b'{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key.as_str())?;
                out.push(b':');
                write_value(out, item, depth + 1, &under(key.as_str()))?;
            }
            out.push(b'}');
            Ok(())
        }
        Value::List(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item, depth + 1, &under(&i.to_string()))?;
            }
            out.push(b']');
            Ok(())
        }
        other => serde_json::to_writer(&mut *out, other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::{Name, ServerError};

    fn sample(charges: Value) -> Response {
        let mut data = async_graphql::indexmap::IndexMap::new();
        data.insert(Name::new("me"), Value::from("x\"y\n\u{1}é/"));
        data.insert(Name::new("charges"), charges);
        data.insert(
            Name::new("list"),
            Value::List(vec![
                Value::Null,
                Value::from(1),
                Value::List(vec![]),
                Value::Object(Default::default()),
            ]),
        );
        let mut response = Response::new(Value::Object(data));
        response.errors.push(ServerError::new("boom", None));
        response
            .extensions
            .insert("trace".into(), Value::from(vec![Value::from(true)]));
        response
    }

    #[test]
    fn without_parts_it_is_serde_json() {
        let response = sample(Value::from(2.5));
        let expected = serde_json::to_vec(&response).unwrap();
        assert_eq!(response_json(&response, &[], 16).unwrap(), expected);
        // Through the part writer too (a part nowhere in the data is left out).
        let stray = (vec!["nowhere".to_string(), "0".to_string()], b"1".to_vec());
        assert_eq!(response_json(&response, &[stray], 16).unwrap(), expected);
        let plain = Response::new(Value::Null);
        assert_eq!(
            response_json(&plain, &[], 0).unwrap(),
            serde_json::to_vec(&plain).unwrap()
        );
    }

    #[test]
    fn a_part_stands_in_its_placeholder() {
        let real = Value::from_json(serde_json::json!({ "edges": [{ "cursor": "ab" }], "n": null })).unwrap();
        let expected = serde_json::to_vec(&sample(real.clone())).unwrap();
        let part = (vec!["charges".to_string()], serde_json::to_vec(&real).unwrap());
        assert_eq!(response_json(&sample(Value::Null), &[part], 0).unwrap(), expected);
        // A part inside a list, by index.
        let inner = (vec!["list".to_string(), "0".to_string()], b"{\"a\":1}".to_vec());
        let mut with_inner = sample(Value::from(3));
        let out = response_json(&with_inner, &[inner], 0).unwrap();
        if let Value::Object(map) = &mut with_inner.data {
            if let Some(Value::List(items)) = map.get_mut("list") {
                items[0] = Value::from_json(serde_json::json!({ "a": 1 })).unwrap();
            }
        }
        assert_eq!(out, serde_json::to_vec(&with_inner).unwrap());
    }
}
