//! Finance's commands through the `ledgerline` binary, end to end on a simulated month:
//! closing a period freezes the projected invoice; a tariff correction re-rates its charges,
//! keeps closed invoices "as billed" and posts the differences in the first open period, and
//! replays identically; the projection lag view says how far each projection is behind.

// Tests stand in for the binary: they may read the clock (deadlines only).
#![allow(clippy::disallowed_methods)]

mod common;

use commands::testing::TestDb;
use common::{ledgerline, ok, stderr, stdout};
use rust_decimal::{Decimal, RoundingStrategy};
use sqlx::PgPool;
use uuid::Uuid;

async fn scalar_i64(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn decimal(pool: &PgPool, sql: &str) -> Decimal {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// One simulated tenant's day (`extra` adds simulate arguments), projected.
fn simulated(db: &TestDb, calls: &str, seed: &str, extra: &[&str]) {
    let mut args = vec!["simulate", "--tenants", "1", "--calls", calls, "--seed", seed];
    args.extend_from_slice(extra);
    ok(ledgerline(db, &args));
    ok(ledgerline(db, &["projector", "--once"]));
}

#[tokio::test]
async fn close_period_freezes_the_projected_invoice_and_refuses_bad_requests() {
    let db = TestDb::new().await.unwrap();
    // Mid-April: the simulator leaves April open.
    simulated(&db, "300", "8", &["--day", "2025-04-15"]);
    let (account, net): (Uuid, Decimal) = sqlx::query_as(
        "SELECT account_id, billed_net FROM rm_invoices WHERE period = '2025-04' AND status = 'draft' \
         ORDER BY billed_net DESC LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(net > Decimal::ZERO, "the draft holds the simulated charges");
    let account = account.to_string();
    let before = scalar_i64(&db.pool, "SELECT count(*) FROM events").await;

    // Bad input is refused with a clear message and changes nothing.
    for (args, says) in [
        (vec!["--period", "2025-13"], "is not YYYY-MM"),
        (vec!["--period", "2025-04", "--tax", "abc"], "is not a percentage"),
        (vec!["--period", "2025-04", "--tax", "101"], "tax rate 101%"),
        (
            vec!["--period", "2025-04", "--tax-mode", "sideways"],
            "neither exclusive nor inclusive",
        ),
        (vec!["--period", "2099-01"], "has not ended yet"),
        (
            vec![
                "--period",
                "2025-04",
                "--tenant",
                "00000000-0000-0000-0000-000000000001",
            ],
            "does not belong to tenant",
        ),
    ] {
        let mut full = vec!["account", "close-period", "--account", &account];
        full.extend(args.iter().copied());
        let out = ledgerline(&db, &full);
        assert!(!out.status.success(), "{args:?}: {}", stdout(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    let unknown = ledgerline(
        &db,
        &[
            "account",
            "close-period",
            "--account",
            &Uuid::nil().to_string(),
            "--period",
            "2025-04",
        ],
    );
    assert!(stderr(&unknown).contains("does not exist"), "{}", stderr(&unknown));
    assert_eq!(scalar_i64(&db.pool, "SELECT count(*) FROM events").await, before);

    // The close: one PeriodClosed, and the projected document is closed with 19 % added.
    let closing = [
        "account",
        "close-period",
        "--account",
        &account,
        "--period",
        "2025-04",
        "--tax",
        "19",
    ];
    let printed = ok(ledgerline(&db, &closing));
    assert!(printed.contains("closed 2025-04 for account"), "{printed}");
    assert!(
        printed.contains("(EUR, closed)") && printed.contains("(19% added)"),
        "{printed}"
    );
    assert_eq!(scalar_i64(&db.pool, "SELECT count(*) FROM events").await, before + 1);
    let (status, billed_net, billed_tax, billed_total, document): (String, Decimal, Decimal, Decimal, String) =
        sqlx::query_as(&format!(
            "SELECT status, billed_net, billed_tax, billed_total, document FROM rm_invoices \
             WHERE account_id = '{account}' AND period = '2025-04'"
        ))
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let tax = (net * Decimal::from(19) / Decimal::ONE_HUNDRED)
        .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    assert_eq!(
        (status.as_str(), billed_net, billed_tax, billed_total),
        ("closed", net, tax, net + tax)
    );
    assert!(
        printed.contains(document.trim_end()),
        "the CLI prints the projected document"
    );

    // The same request again is recognised; another tax on the closed period is refused.
    let again = ok(ledgerline(&db, &closing));
    assert!(again.contains("already closed by this request"), "{again}");
    let other_tax = ledgerline(
        &db,
        &[
            "account",
            "close-period",
            "--account",
            &account,
            "--period",
            "2025-04",
            "--tax",
            "7",
        ],
    );
    assert!(stderr(&other_tax).contains("already closed"), "{}", stderr(&other_tax));
    assert_eq!(scalar_i64(&db.pool, "SELECT count(*) FROM events").await, before + 1);
    let audit = ok(ledgerline(&db, &["audit", "replay"]));
    assert!(!audit.contains("DIFFERS"), "{audit}");
}

/// The simulator's deck (`simulate::sim_rates`) with Germany (49) at 0.040/min, off-peak 0.020.
const CORRECTED_DECK: &str = "\
prefix,first_interval_s,next_interval_s,price_per_min,next_price_per_min,connection_fee,free_seconds,grace_period_s,offpeak_price_per_min,post_call_surcharge_pct
1,6,6,0.010,,,,3,,
44,60,60,0.020,,,,,,
49,60,60,0.040,,,,,0.020,
4930,30,6,0.020,,,5,,0.010,
4915,60,60,0.120,,0.05,,,,
33,60,60,0.025,,,,,,
86,60,60,0.080,,,,,,5
";

#[tokio::test]
async fn a_tariff_correction_rerates_keeps_closed_invoices_as_billed_and_replays_identically() {
    let db = TestDb::new().await.unwrap();
    // 31 March: the simulator closes March the next morning.
    simulated(&db, "400", "21", &[]);
    let tariff: Uuid = sqlx::query_scalar("SELECT DISTINCT tariff_id FROM rm_rating_tariff_versions")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let march_billed = decimal(
        &db.pool,
        "SELECT sum(billed_total) FROM rm_invoices WHERE period = '2025-03' AND status = 'closed'",
    )
    .await;
    assert!(march_billed > Decimal::ZERO);
    let dir = std::env::temp_dir().join(format!("ledgerline-correction-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let deck = dir.join("corrected.csv");
    std::fs::write(&deck, CORRECTED_DECK).unwrap();
    let tariff_text = tariff.to_string();
    let deck_text = deck.to_string_lossy().to_string();
    let correct = [
        "tariff",
        "correct",
        "--tariff",
        &tariff_text,
        "--version",
        "1",
        "--deck",
        &deck_text,
        "--reason",
        "Germany was priced at 0.030",
    ];

    // Bad requests change nothing.
    let before = scalar_i64(&db.pool, "SELECT count(*) FROM events").await;
    let mut wrong_version = correct;
    wrong_version[5] = "9";
    let refused = ledgerline(&db, &wrong_version);
    assert!(stderr(&refused).contains("has no version 9"), "{}", stderr(&refused));
    let mut no_reason = correct;
    no_reason[9] = " ";
    let refused = ledgerline(&db, &no_reason);
    assert!(stderr(&refused).contains("needs a reason"), "{}", stderr(&refused));
    assert_eq!(scalar_i64(&db.pool, "SELECT count(*) FROM events").await, before);

    let adjusted_before = decimal(&db.pool, "SELECT coalesce(sum(adjustments), 0) FROM rm_balances").await;
    let printed = ok(ledgerline(&db, &correct));
    assert!(printed.contains("correction 1 recorded"), "{printed}");

    // Every charge billed with v1 is re-rated beside its billed amount; only Germany changes.
    let rated = scalar_i64(&db.pool, "SELECT count(*) FROM rm_charges WHERE tariff_version = 1").await;
    let rerated = scalar_i64(&db.pool, "SELECT count(*) FROM rm_charges WHERE corrected_revision = 1").await;
    assert!(rated > 100 && rerated == rated, "{rerated} of {rated}");
    assert!(printed.contains(&format!("re-rated {rated} charges")), "{printed}");
    let changed_elsewhere = scalar_i64(
        &db.pool,
        "SELECT count(*) FROM rm_charges WHERE corrected_amount IS DISTINCT FROM amount AND matched_prefix <> '49'",
    )
    .await;
    assert_eq!(changed_elsewhere, 0, "only prefix 49 changed");
    let dearer = scalar_i64(
        &db.pool,
        "SELECT count(*) FROM rm_charges WHERE matched_prefix = '49' AND corrected_amount > amount",
    )
    .await;
    assert!(dearer > 0, "Germany costs more as corrected");

    // Closed March keeps "as billed"; "as corrected" and April's adjustments show the difference.
    let delta = decimal(
        &db.pool,
        "SELECT sum(corrected_amount - amount) FROM rm_charges WHERE corrected_revision = 1",
    )
    .await;
    assert!(delta > Decimal::ZERO);
    assert_eq!(
        decimal(
            &db.pool,
            "SELECT sum(billed_total) FROM rm_invoices WHERE period = '2025-03'"
        )
        .await,
        march_billed,
        "a closed period is never edited"
    );
    let adjustments = decimal(
        &db.pool,
        "SELECT sum(amount) FROM rm_invoice_lines WHERE period = '2025-04' AND view = 'as_billed' \
         AND kind = 'adjustments'",
    )
    .await;
    assert_eq!(
        adjustments, delta,
        "every difference lands in April, the first open period"
    );
    assert!(printed.contains(&format!("total {delta}")), "{printed}");
    let march_corrected_net = decimal(
        &db.pool,
        "SELECT sum(corrected_net) - sum(billed_net) FROM rm_invoices WHERE period = '2025-03'",
    )
    .await;
    assert!(march_corrected_net > Decimal::ZERO, "as corrected exceeds as billed");
    // The balances follow the invoices: the accounts are adjusted by the same difference.
    ok(ledgerline(&db, &["tenant", "list"])); // a CLI read catches the projections up
    let adjusted_after = decimal(&db.pool, "SELECT coalesce(sum(adjustments), 0) FROM rm_balances").await;
    assert_eq!(
        adjusted_after - adjusted_before,
        -delta,
        "the customers were charged the difference"
    );

    // Running it again finds nothing left to do; the replay of every projection is identical.
    let after = scalar_i64(&db.pool, "SELECT count(*) FROM events").await;
    let rerun = ok(ledgerline(&db, &correct));
    assert!(
        rerun.contains("already has this deck") && rerun.contains("0 invoice adjustments"),
        "{rerun}"
    );
    assert_eq!(scalar_i64(&db.pool, "SELECT count(*) FROM events").await, after);
    let audit = ok(ledgerline(&db, &["audit", "replay"]));
    assert!(!audit.contains("DIFFERS"), "{audit}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn the_lag_view_counts_what_each_projection_has_still_to_apply() {
    let db = TestDb::new().await.unwrap();
    simulated(&db, "100", "4", &[]);
    let lag = |pool: PgPool| async move {
        let rows: Vec<(String, i64, i64, i64, Decimal)> = sqlx::query_as(
            "SELECT projection, checkpoint_position, head_position, events_behind, lag_s::numeric \
             FROM rm_projection_lag ORDER BY projection",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        rows
    };
    let head = scalar_i64(&db.pool, "SELECT max(global_position) FROM events").await;
    let caught_up = lag(db.pool.clone()).await;
    // directory, billing, invoices, webhooks, conferences
    assert_eq!(caught_up.len(), 5, "{caught_up:?}");
    for (name, _, at_head, behind, seconds) in &caught_up {
        assert_eq!((*at_head, *behind, *seconds), (head, 0, Decimal::ZERO), "{name}");
    }
    // More traffic, no projector: every projection is behind by exactly the new events.
    let events_before = scalar_i64(&db.pool, "SELECT count(*) FROM events").await;
    ok(ledgerline(
        &db,
        &["simulate", "--tenants", "1", "--calls", "50", "--seed", "5"],
    ));
    let added = scalar_i64(&db.pool, "SELECT count(*) FROM events").await - events_before;
    let new_head = scalar_i64(&db.pool, "SELECT max(global_position) FROM events").await;
    for (name, checkpoint, at_head, behind, seconds) in lag(db.pool.clone()).await {
        assert!(checkpoint <= head && at_head == new_head, "{name}");
        assert_eq!(behind, added, "{name}");
        assert!(seconds >= Decimal::ZERO, "{name}");
    }
    ok(ledgerline(&db, &["projector", "--once"]));
    for (name, _, _, behind, _) in lag(db.pool.clone()).await {
        assert_eq!(behind, 0, "{name}");
    }
}
