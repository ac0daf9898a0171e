//! Tidy checks on the workspace itself: the pure crates stay pure, every source file says
//! why it exists, the committed event schemas match the code.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Crates that do IO or belong to the network and async world.
const FORBIDDEN_IN_PURE: &[&str] = &[
    "tokio",
    "sqlx",
    "sqlx-core",
    "sqlx-postgres",
    "axum",
    "hyper",
    "async-graphql",
    "rsip",
    "mio",
    "reqwest",
    "futures",
    "async-std",
];

#[test]
fn domain_and_billing_have_no_io_dependencies() {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1"])
        .current_dir(root())
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: HashMap<&str, Vec<(&str, bool)>> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    // Only normal and build dependencies count; dev-dependencies are test tools.
                    let normal = d["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["kind"].is_null() || k["kind"] == "build");
                    (d["pkg"].as_str().unwrap(), normal)
                })
                .collect();
            (n["id"].as_str().unwrap(), deps)
        })
        .collect();
    for pure in ["domain", "billing"] {
        let start = names
            .iter()
            .find(|(_, n)| **n == pure)
            .map(|(id, _)| *id)
            .expect("crate exists");
        let mut seen = HashSet::new();
        let mut stack = vec![start];
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            for (dep, normal) in &nodes[id] {
                if *normal {
                    stack.push(dep);
                }
            }
        }
        let bad: Vec<&str> = seen
            .iter()
            .map(|id| names[id])
            .filter(|n| FORBIDDEN_IN_PURE.contains(n))
            .collect();
        assert!(bad.is_empty(), "{pure} must stay free of IO, but depends on {bad:?}");
    }
}

#[test]
fn every_rust_file_starts_with_a_why_line() {
    let mut missing = Vec::new();
    let mut stack = vec![root()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "ledgerline-data" {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                if !text.starts_with("//!") {
                    missing.push(path.display().to_string());
                }
            }
        }
    }
    assert!(missing.is_empty(), "files without a leading //! line: {missing:?}");
}

#[test]
fn committed_event_schemas_match_the_code() {
    let dir = root().join("schemas/events");
    let mut expected: HashMap<String, String> = HashMap::new();
    for (event_type, version, schema) in domain::registry::json_schemas() {
        let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        expected.insert(format!("{event_type}.v{version}.json"), text);
    }
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in &expected {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
    let mut on_disk: HashMap<String, String> = HashMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            on_disk.insert(
                path.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read_to_string(&path).unwrap(),
            );
        }
    }
    let mut names: Vec<&String> = expected.keys().chain(on_disk.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        assert_eq!(
            on_disk.get(name),
            expected.get(name),
            "schemas/events/{name} differs from the code; run `UPDATE_SCHEMAS=1 cargo test -p ledgerline-tests --test tidy` and commit"
        );
    }
}
