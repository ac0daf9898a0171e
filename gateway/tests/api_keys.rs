//! The API remembers the keys it has authenticated; a revocation must still stop a key:
//! through `revokeApiKey` on this node, before the mutation returns; from another process
//! (the CLI), as soon as the node's follower reads the revocation from the log.

#![allow(clippy::disallowed_methods)] // Tests stamp their commands with the clock.

mod api_support;

use std::time::Duration;

use api_support::{code, gql, key_id_of, revoke_key, start};
use domain::apikey::Role;
use gateway::api::key_cache::Followed;
use serde_json::json;
use uuid::Uuid;

/// A bound on how long the follower may take before the test fails (not a synchronisation:
/// the waits below end on the follower's own signal).
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_although_the_node_remembered_it() {
    let env = start().await;
    let mut followed = env.keys.followed();
    tokio::time::timeout(PATIENCE, followed.wait_for(|f: &Followed| f.live))
        .await
        .expect("the key follower goes live")
        .unwrap();
    let tenant = Uuid::new_v4();
    let admin = env.key(tenant, Role::TenantAdmin).await;
    let mut http = env.client();

    // Revoked on this node: refused by the very next request.
    let victim = env.key(tenant, Role::Auditor).await;
    let (status, _) = gql(&mut http, &admin, "{ me { keyId } }", json!({})).await;
    assert_eq!(status, 200);
    for _ in 0..2 {
        let (status, body) = gql(&mut http, &victim, "{ me { keyId } }", json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    let remembered = env.keys.len();
    assert!(remembered >= 2, "both keys are remembered ({remembered})");
    let key_id = key_id_of(&mut http, &victim).await;
    revoke_key(&mut http, &admin, &key_id).await;
    let (status, body) = gql(&mut http, &victim, "{ me { keyId } }", json!({})).await;
    assert_eq!(
        (status, code(&body).as_deref()),
        (401, Some("UNAUTHENTICATED")),
        "{body}"
    );

    // Revoked by another process: refused once the follower has read the revocation, which
    // it does on the commit's notification.
    let other = env.key(tenant, Role::Finance).await;
    let other_id = key_id_of(&mut http, &other).await;
    let (status, _) = gql(&mut http, &other, "{ me { keyId } }", json!({})).await;
    assert_eq!(status, 200);
    env.ledgerline(&[
        "apikey",
        "revoke",
        "--tenant",
        &tenant.to_string(),
        "--key",
        &other_id,
        "--reason",
        "elsewhere",
    ]);
    let position: i64 = sqlx::query_scalar(
        "SELECT global_position FROM events WHERE event_type = 'ApiKeyRevoked' AND payload->>'key_id' = $1",
    )
    .bind(&other_id)
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    tokio::time::timeout(
        PATIENCE,
        followed.wait_for(|f: &Followed| f.revoked_position >= position),
    )
    .await
    .expect("the follower reads the revocation")
    .unwrap();
    let (status, body) = gql(&mut http, &other, "{ me { keyId } }", json!({})).await;
    assert_eq!(
        (status, code(&body).as_deref()),
        (401, Some("UNAUTHENTICATED")),
        "{body}"
    );

    // The admin key still works, from memory.
    let (status, _) = gql(&mut http, &admin, "{ me { keyId } }", json!({})).await;
    assert_eq!(status, 200);
}
