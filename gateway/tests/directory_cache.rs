//! The SIP node's directory cache against a real Postgres: extension misses are read in
//! batches by one loader, and each caller gets its own answer.

use std::time::Duration;

use commands::testing::TestDb;
use gateway::directory_cache::DirectoryCache;
use uuid::Uuid;

async fn add_extension(db: &TestDb, tenant: Uuid, number: &str, enabled: bool) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO rm_extensions (tenant_id, extension_id, number, display_name, realm, ha1_md5, ha1_sha256, \
         enabled, created_at, last_position) VALUES ($1, $2, $3, $3, 'acme.test', $4, $5, $6, now(), 1)",
    )
    .bind(tenant)
    .bind(id)
    .bind(number)
    .bind(format!("md5-{number}"))
    .bind(format!("sha-{number}"))
    .bind(enabled)
    .execute(&db.pool)
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn concurrent_misses_each_get_their_own_extension() {
    let db = TestDb::new().await.unwrap();
    let (acme, other) = (Uuid::new_v4(), Uuid::new_v4());
    let mut expected = Vec::new();
    for n in 0..300 {
        let number = format!("{}", 1000 + n);
        let id = add_extension(&db, acme, &number, n % 7 != 0).await;
        expected.push((acme, number, Some((id, n % 7 != 0))));
    }
    // The same numbers in another tenant are other extensions; some numbers exist nowhere.
    let theirs = add_extension(&db, other, "1000", true).await;
    expected.push((other, "1000".into(), Some((theirs, true))));
    expected.push((other, "1001".into(), None));
    expected.push((acme, "999".into(), None));
    expected.push((acme, "1000;x".into(), None));

    let cache = DirectoryCache::new(Duration::from_secs(60), 10_000);
    let lookups = expected.iter().cloned().map(|(tenant, number, want)| {
        let (cache, pool) = (cache.clone(), db.pool.clone());
        tokio::spawn(async move {
            let got = cache.extension(&pool, tenant, &number).await.unwrap();
            (tenant, number, want, got)
        })
    });
    let lookups: Vec<_> = lookups.collect();
    for lookup in lookups {
        let (tenant, number, want, got) = lookup.await.unwrap();
        let got = got.map(|e| {
            assert_eq!(e.number, number);
            assert_eq!(e.ha1.md5, format!("md5-{number}"));
            (e.extension_id, e.enabled)
        });
        assert_eq!(got, want, "tenant {tenant} number {number}");
    }

    // Cached: a disabled extension stays as read until its entry lapses.
    sqlx::query("UPDATE rm_extensions SET enabled = false WHERE tenant_id = $1 AND number = '1001'")
        .bind(acme)
        .execute(&db.pool)
        .await
        .unwrap();
    let cached = cache.extension(&db.pool, acme, "1001").await.unwrap().unwrap();
    assert!(cached.enabled);
    let fresh = DirectoryCache::new(Duration::from_secs(60), 10_000);
    assert!(!fresh.extension(&db.pool, acme, "1001").await.unwrap().unwrap().enabled);
}

/// A loader whose database went away answers every caller with an error, and the next
/// miss after the database is back is answered.
#[tokio::test]
async fn a_failed_batch_is_an_error_for_its_callers_and_the_loader_recovers() {
    use sqlx::{Connection, PgConnection};
    let db = TestDb::new().await.unwrap();
    let tenant = Uuid::new_v4();
    let id = add_extension(&db, tenant, "2000", true).await;
    let cache = DirectoryCache::new(Duration::from_secs(60), 10_000);
    assert_eq!(
        cache
            .extension(&db.pool, tenant, "2000")
            .await
            .unwrap()
            .map(|e| e.extension_id),
        Some(id)
    );
    let mut admin = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("ALTER TABLE rm_extensions RENAME TO rm_extensions_away")
        .execute(&mut admin)
        .await
        .unwrap();
    assert!(cache.extension(&db.pool, tenant, "2001").await.is_err());
    sqlx::query("ALTER TABLE rm_extensions_away RENAME TO rm_extensions")
        .execute(&mut admin)
        .await
        .unwrap();
    add_extension(&db, tenant, "2001", true).await;
    assert!(cache.extension(&db.pool, tenant, "2001").await.unwrap().is_some());
}

/// The cache-only reads never query: they answer from fresh entries or say they cannot.
#[tokio::test]
async fn cached_reads_answer_only_from_fresh_entries() {
    let db = TestDb::new().await.unwrap();
    let tenant = Uuid::new_v4();
    let id = add_extension(&db, tenant, "3000", true).await;
    let cache = DirectoryCache::new(Duration::from_secs(60), 10_000);
    assert!(cache.cached_extension(tenant, "3000").is_none());
    assert_eq!(cache.cached_tenant("nowhere.test"), None);
    cache.extension(&db.pool, tenant, "3000").await.unwrap();
    cache.extension(&db.pool, tenant, "3001").await.unwrap();
    assert!(cache.tenant(&db.pool, "nowhere.test").await.unwrap().is_none());
    assert_eq!(
        cache
            .cached_extension(tenant, "3000")
            .map(|e| e.map(|e| e.extension_id)),
        Some(Some(id))
    );
    assert!(
        matches!(cache.cached_extension(tenant, "3001"), Some(None)),
        "a fresh miss is an answer"
    );
    assert_eq!(
        cache.cached_tenant("NOWHERE.test"),
        Some(None),
        "domains are case-folded"
    );
    // With no time to live, nothing cached is fresh.
    let lapsed = DirectoryCache::new(Duration::ZERO, 10_000);
    lapsed.extension(&db.pool, tenant, "3000").await.unwrap();
    assert!(lapsed.cached_extension(tenant, "3000").is_none());
}
