//! Parsed GraphQL documents by query text, so that a client asking the same query again (a
//! page after page, a dashboard's poll) is not parsed again.
//!
//! Only the parse is remembered: the document is a pure function of the query's text (no
//! tenant, no variables, no data), and the library still runs every check on it for each
//! request (recursive depth and directive count on the document, then validation with the
//! request's variables, complexity and depth limits). A query the parser refuses is not
//! remembered, so its error comes from the library's own parse, as before. The cache is
//! bounded in entries and in the length of a query it keeps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_graphql::parser::types::{ExecutableDocument, Selection};

/// Entries kept at most; a full cache forgets an arbitrary entry for a new one.
pub const MAX_ENTRIES: usize = 512;
/// Longer queries are parsed every time (they are rare, and would make the cache large).
pub const MAX_QUERY_BYTES: usize = 16 * 1024;

/// A parsed document, and whether every operation's root fields are plain fields with
/// distinct response keys (then a root field's answer is never merged with another's, and
/// its resolver may write it as JSON text: `raw_json.rs`).
pub struct Parsed {
    pub document: ExecutableDocument,
    pub distinct_root_fields: bool,
}

type Entries = HashMap<Arc<str>, Arc<Parsed>>;

#[derive(Default)]
pub struct DocumentCache {
    documents: Mutex<Entries>,
}

impl DocumentCache {
    /// The parsed document of `query`, parsed now if it was not remembered; `None` when the
    /// query is not kept here (too long) or does not parse (the library reports the error).
    pub fn document(&self, query: &str) -> Option<Parsed> {
        if query.len() > MAX_QUERY_BYTES {
            return None;
        }
        // The lock is not held while parsing (and the guard of the lookup is gone before
        // the insert takes it again).
        let remembered = self.lock().get(query).cloned();
        let parsed = match remembered {
            Some(parsed) => parsed,
            None => {
                let document = async_graphql::parser::parse_query(query).ok()?;
                let parsed = Arc::new(Parsed {
                    distinct_root_fields: distinct_root_fields(&document),
                    document,
                });
                let mut documents = self.lock();
                if documents.len() >= MAX_ENTRIES {
                    if let Some(victim) = documents.keys().next().cloned() {
                        documents.remove(&victim);
                    }
                }
                documents.insert(Arc::from(query), parsed.clone());
                parsed
            }
        };
        // The library takes the document by value (it removes skipped fields from it).
        Some(Parsed {
            document: parsed.document.clone(),
            distinct_root_fields: parsed.distinct_root_fields,
        })
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.documents.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn distinct_root_fields(document: &ExecutableDocument) -> bool {
    document.operations.iter().all(|(_, operation)| {
        let mut keys = std::collections::HashSet::new();
        operation
            .node
            .selection_set
            .node
            .items
            .iter()
            .all(|selection| match &selection.node {
                Selection::Field(field) => keys.insert(field.node.response_key().node.as_str()),
                _ => false,
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_what_parses_and_is_bounded() {
        let cache = DocumentCache::default();
        let q = "query($a: UUID!) { charges(filter: { accountId: $a }) { edges { cursor } } }";
        let first = cache.document(q).expect("parses");
        let again = cache.document(q).expect("remembered");
        assert_eq!(format!("{:?}", first.document), format!("{:?}", again.document));
        assert!(first.distinct_root_fields && again.distinct_root_fields);
        assert_eq!(cache.len(), 1);
        assert!(cache.document("{ charges(").is_none());
        assert_eq!(cache.len(), 1, "a parse error is not remembered");
        let long = format!("{{ me {{ tenantId }} }} #{}", "x".repeat(MAX_QUERY_BYTES));
        assert!(cache.document(&long).is_none());
        for i in 0..(MAX_ENTRIES + 10) {
            assert!(cache.document(&format!("query Q{i} {{ me {{ tenantId }} }}")).is_some());
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
    }

    #[test]
    fn root_fields_that_would_merge_are_told() {
        let cache = DocumentCache::default();
        let distinct = |q: &str| cache.document(q).expect("parses").distinct_root_fields;
        assert!(distinct("{ a: me { tenantId } me { tenantId } }"));
        assert!(!distinct("{ me { tenantId } me { role } }"));
        assert!(!distinct("{ a: me { tenantId } a: me { role } }"));
        assert!(!distinct("{ ... on Query { me { tenantId } } }"));
        assert!(!distinct("{ ...F } fragment F on Query { me { tenantId } }"));
        assert!(!distinct(
            "query A { me { tenantId } } query B { x: me { role } x: me { role } }"
        ));
    }
}
