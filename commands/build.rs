//! Rebuild when a migration is added or changed: `sqlx::migrate!` embeds `schemas/migrations`
//! but cannot tell cargo about it on stable Rust.

fn main() {
    println!("cargo:rerun-if-changed=../schemas/migrations");
}
