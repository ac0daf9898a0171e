//! The finance flow over HTTP: a top-up through the API (idempotent), simulated calls through
//! the real deciders and projector, then the charges query, the charges CSV, the balance and
//! the invoices agree to the cent.

#![allow(clippy::disallowed_methods)] // Tests stamp their commands with the clock.

mod api_support;

use std::collections::BTreeMap;
use std::str::FromStr;

use api_support::{gql, start};
use domain::apikey::Role;
use rust_decimal::Decimal;
use serde_json::json;
use uuid::Uuid;

fn dec(v: &serde_json::Value) -> Decimal {
    Decimal::from_str(v.as_str().unwrap_or("0")).unwrap()
}

/// A CSV line's fields (quoted fields may hold commas and doubled quotes).
fn fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

const CHARGES: &str = "query($a: UUID!, $after: String) { charges(filter: { accountId: $a, status: \"rated\" }, first: 500, after: $after) { \
   edges { node { callId legId amount currency answeredAt explanation } } pageInfo { hasNextPage endCursor } } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_query_csv_balance_and_invoice_agree() {
    let env = start().await;
    env.simulate(1, 400, 5);
    let tenant = env.tenants().await[0];
    let finance = env.key(tenant, Role::Finance).await;
    let mut http = env.client();
    let accounts: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT account_id, kind FROM rm_balances WHERE tenant_id = $1 ORDER BY kind")
            .bind(tenant)
            .fetch_all(&env.db.pool)
            .await
            .unwrap();
    assert_eq!(accounts.len(), 2);
    let prepaid = accounts.iter().find(|(_, k)| k == "prepaid").unwrap().0;

    // A top-up, sent twice with one idempotency key: one payment.
    let (_, before) = gql(
        &mut http,
        &finance,
        "query($a: UUID!) { balances(accountId: $a) { payments } }",
        json!({ "a": prepaid }),
    )
    .await;
    let payments_before = dec(&before["data"]["balances"][0]["payments"]);
    let idem = Uuid::new_v4();
    let top_up = "mutation($a: UUID!, $k: UUID!) { topUp(idempotencyKey: $k, accountId: $a, amount: \"12.34\") { id replayed positions } }";
    let (_, first) = gql(&mut http, &finance, top_up, json!({ "a": prepaid, "k": idem })).await;
    assert_eq!(first["data"]["topUp"]["replayed"], false, "{first}");
    let (_, again) = gql(&mut http, &finance, top_up, json!({ "a": prepaid, "k": idem })).await;
    assert_eq!(again["data"]["topUp"]["replayed"], true, "{again}");
    assert_eq!(again["data"]["topUp"]["positions"], first["data"]["topUp"]["positions"]);
    env.catch_up();

    // A page of charges answered in one pass (plain fields) is, byte for byte, what the
    // library's own path answers (an inline fragment takes it): every field, an alias and a
    // field selected twice included, on edges and on nodes.
    let selected = "callId legId accountId answeredAt durationS destination status unratedReason tariffId \
                  tariffVersion matchedPrefix billedS currency amount amountExact explanation at: answeredAt callId";
    for (account, _) in &accounts {
        let plain = format!(
            "query($a: UUID!) {{ charges(filter: {{ accountId: $a }}, first: 50) {{ \
             edges {{ cursor node {{ {selected} }} }} nodes {{ {selected} }} pageInfo {{ endCursor }} }} }}"
        );
        let library = format!(
            "query($a: UUID!) {{ charges(filter: {{ accountId: $a }}, first: 50) {{ \
             edges {{ cursor node {{ ... on Charge {{ {selected} }} }} }} nodes {{ ... on Charge {{ {selected} }} }} \
             pageInfo {{ endCursor }} }} }}"
        );
        let plain = http.graphql(&finance, &plain, json!({ "a": account })).await.unwrap();
        let library = http.graphql(&finance, &library, json!({ "a": account })).await.unwrap();
        assert_eq!((plain.status, library.status), (200, 200));
        assert!(plain.json()["errors"].is_null(), "{}", plain.text());
        assert!(plain.json()["data"]["charges"]["nodes"]
            .as_array()
            .is_some_and(|n| !n.is_empty()));
        assert_eq!(plain.text(), library.text());
    }

    for (account, kind) in &accounts {
        // Every rated charge of the account, page by page.
        let mut graphql: BTreeMap<String, Decimal> = BTreeMap::new();
        // Charges per billing period (months in the account's zone, Europe/Berlin).
        let mut by_period: BTreeMap<String, Decimal> = BTreeMap::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let (_, body) = gql(&mut http, &finance, CHARGES, json!({ "a": account, "after": after })).await;
            assert!(body["errors"].is_null(), "{body}");
            let conn = &body["data"]["charges"];
            for edge in conn["edges"].as_array().unwrap() {
                let node = &edge["node"];
                assert!(
                    node["explanation"].as_str().is_some_and(|e| !e.is_empty()),
                    "each charge explains itself"
                );
                graphql.insert(
                    format!(
                        "{}/{}",
                        node["callId"].as_str().unwrap(),
                        node["legId"].as_str().unwrap()
                    ),
                    dec(&node["amount"]),
                );
                let answered: chrono::DateTime<chrono::Utc> = node["answeredAt"].as_str().unwrap().parse().unwrap();
                let period = answered
                    .with_timezone(&chrono_tz::Europe::Berlin)
                    .format("%Y-%m")
                    .to_string();
                *by_period.entry(period).or_default() += dec(&node["amount"]);
            }
            pages += 1;
            if conn["pageInfo"]["hasNextPage"] != true {
                break;
            }
            after = conn["pageInfo"]["endCursor"].as_str().map(str::to_string);
            assert!(pages < 100);
        }
        assert!(!graphql.is_empty(), "{kind} account has charges");

        // The CSV export of the same filter: the same charges, the same amounts.
        let csv = http
            .get(
                &finance,
                &format!("/api/v1/charges.csv?account_id={account}&status=rated"),
            )
            .await
            .unwrap();
        assert_eq!(csv.status, 200);
        assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
        let text = csv.text();
        let mut lines = text.lines();
        let header = fields(lines.next().unwrap());
        let col = |name: &str| header.iter().position(|h| h == name).unwrap();
        let mut exported: BTreeMap<String, Decimal> = BTreeMap::new();
        for line in lines {
            let f = fields(line);
            exported.insert(
                format!("{}/{}", f[col("call_id")], f[col("leg_id")]),
                Decimal::from_str(&f[col("amount")]).unwrap(),
            );
        }
        assert_eq!(graphql, exported, "{kind}: query and CSV list the same charges");
        let total: Decimal = graphql.values().sum();

        // The balance settled exactly these charges; the top-up shows once.
        let (_, body) = gql(
            &mut http,
            &finance,
            "query($a: UUID!) { balances(accountId: $a) { balance payments adjustments settledCharges openReservations } }",
            json!({ "a": account }),
        )
        .await;
        let b = &body["data"]["balances"][0];
        assert_eq!(
            dec(&b["settledCharges"]),
            total,
            "{kind}: settled charges = sum of charges ({body})"
        );
        assert_eq!(
            dec(&b["balance"]),
            dec(&b["payments"]) + dec(&b["adjustments"]) - total,
            "{kind}: {body}"
        );
        if account == &prepaid {
            assert_eq!(
                dec(&b["payments"]) - payments_before,
                Decimal::from_str("12.34").unwrap()
            );
            assert!(dec(&b["balance"]) >= Decimal::ZERO, "prepaid never below zero");
        }

        // The invoices (closed March, open April in Berlin time) bill the same total, to the cent.
        let (_, body) = gql(
            &mut http,
            &finance,
            "query($a: UUID!) { invoices(accountId: $a) { id period status billedNet lines(view: \"as_billed\") { amount } } }",
            json!({ "a": account }),
        )
        .await;
        let invoices = body["data"]["invoices"].as_array().unwrap().clone();
        assert!(!invoices.is_empty(), "{body}");
        assert!(
            invoices.iter().any(|i| i["status"] == "closed"),
            "the simulated period was closed: {body}"
        );
        for invoice in &invoices {
            let period = invoice["period"].as_str().unwrap();
            let charged = by_period.get(period).copied().unwrap_or_default();
            let net = dec(&invoice["billedNet"]);
            let to_the_cent = charged.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
            assert_eq!(net, to_the_cent, "{kind} {period}: invoice {net} vs charges {charged}");
        }
        assert_eq!(
            invoices.len(),
            by_period.len(),
            "{kind}: one invoice per period with charges"
        );
        for invoice in &invoices {
            let lines: Decimal = invoice["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| dec(&l["amount"]))
                .sum();
            let cents = lines.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
            assert_eq!(cents, dec(&invoice["billedNet"]), "{invoice}");
            // The REST document says the same, as JSON and as CSV.
            let id = invoice["id"].as_str().unwrap();
            let r = http.get(&finance, &format!("/api/v1/invoices/{id}")).await.unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(dec(&r.json()["billed_net"]), dec(&invoice["billedNet"]));
            let r = http.get(&finance, &format!("/api/v1/invoices/{id}.csv")).await.unwrap();
            assert_eq!(r.status, 200);
            let text = r.text();
            let mut rows = text.lines();
            let header = fields(rows.next().unwrap());
            let (view, amount) = (
                header.iter().position(|h| h == "view").unwrap(),
                header.iter().position(|h| h == "amount").unwrap(),
            );
            let csv_total: Decimal = rows
                .map(fields)
                .filter(|f| f[view] == "as_billed")
                .map(|f| Decimal::from_str(&f[amount]).unwrap())
                .sum();
            assert_eq!(csv_total, lines, "{id}");
        }
    }
}

/// Every shape of a charges page the one-pass writer answers (`ChargePage`: aliases at each
/// level, `pageInfo`'s four fields, `nodes` beside `edges`, a field twice, a later page, an
/// empty page, nulls, text that JSON must escape) is byte for byte what the library answers
/// for the same selection (an inline fragment on the node takes the library's path), and
/// what a second root field (merging is the library's) or a directive gives is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pass_charge_pages_are_the_library_answer() {
    let env = start().await;
    let tenant = Uuid::new_v4();
    let other = Uuid::new_v4();
    let account = Uuid::new_v4();
    let finance = env.key(tenant, Role::Finance).await;
    // 120 charges of the tenant (and one of another tenant, never shown), some unrated with
    // nulls, explanations and destinations with quotes, backslashes, control characters,
    // non-ASCII and a line separator.
    sqlx::query(
        "INSERT INTO rm_charges (tenant_id, call_id, leg_id, account_id, answered_at, duration_s, destination, \
           status, unrated_reason, tariff_id, tariff_version, matched_prefix, billed_s, currency, amount, \
           amount_exact, explanation, position) \
         SELECT $1, md5(i::text || 'c')::uuid, md5(i::text || 'l')::uuid, $2, \
           timestamptz '2025-03-01 00:00:00.123456+00' + i * interval '37 seconds 250 milliseconds', i % 600, \
           CASE WHEN i % 7 = 0 THEN '49\"x\\y' ELSE '4930' || i END, \
           CASE WHEN i % 5 = 0 THEN 'unrated' ELSE 'rated' END, \
           CASE WHEN i % 5 = 0 THEN 'no tariff: \"é\" ' || chr(1) || chr(10) || chr(8232) || ' 📞' END, \
           CASE WHEN i % 5 <> 0 THEN md5('t')::uuid END, CASE WHEN i % 5 <> 0 THEN 3 END, \
           CASE WHEN i % 5 <> 0 THEN '49' END, CASE WHEN i % 5 <> 0 THEN 60 * i END, \
           CASE WHEN i % 5 <> 0 THEN 'EUR' END, CASE WHEN i % 5 <> 0 THEN round(i * 0.0123, 4) END, \
           CASE WHEN i % 5 <> 0 THEN i * 0.012345678901234 END, \
           CASE WHEN i % 3 = 0 THEN 'prefix 49 \\ tab' || chr(9) || '</script> \"q\"' END, i \
         FROM generate_series(1, 120) AS i",
    )
    .bind(tenant)
    .bind(account)
    .execute(&env.db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO rm_charges (tenant_id, call_id, leg_id, account_id, answered_at, duration_s, destination, \
           status, position) VALUES ($1, $2, $2, $3, '2025-03-01T00:00:01Z', 1, '49', 'rated', 1)",
    )
    .bind(other)
    .bind(Uuid::new_v4())
    .bind(account)
    .execute(&env.db.pool)
    .await
    .unwrap();
    let mut http = env.client();

    let all = "callId legId accountId answeredAt durationS destination status unratedReason tariffId \
               tariffVersion matchedPrefix billedS currency amount amountExact explanation";
    // (selection of the connection with NODE where a node's fields go, whether to expect errors)
    let shapes = [
        "edges { cursor node { NODE } } pageInfo { hasNextPage endCursor }",
        "pageInfo { endCursor startCursor hasPreviousPage hasNextPage } nodes { NODE } edges { node { NODE } cursor }",
        "e: edges { c: cursor n: node { NODE } } p: pageInfo { more: hasNextPage end: endCursor } n: nodes { NODE }",
        "edges { cursor }",
        "pageInfo { hasPreviousPage }",
        "nodes { at: answeredAt callId callId at: answeredAt NODE }",
    ];
    let pages: [(&str, i32); 4] = [("first: 50", 50), ("first: 7", 7), ("", 50), ("first: 500", 500)];
    let mut compared = 0;
    for shape in shapes {
        for (args, _) in pages {
            for filter in [
                "{ accountId: $a }",
                "{ accountId: $a, status: \"unrated\" }",
                "{ accountId: $a, from: \"2030-01-01T00:00:00Z\" }",
            ] {
                let plain = shape.replace("NODE", all);
                let library = shape.replace("NODE", &format!("... on Charge {{ {all} }}"));
                let q = |sel: &str, after: bool| {
                    format!(
                        "query($a: UUID!{}) {{ charges(filter: {filter}, {args} {}) {{ {sel} }} }}",
                        if after { ", $after: String" } else { "" },
                        if after { "after: $after" } else { "" }
                    )
                };
                // The first page, then the page after its end.
                let first = http
                    .graphql(&finance, &q(&plain, false), json!({ "a": account }))
                    .await
                    .unwrap();
                assert_eq!(first.status, 200);
                assert!(first.json()["errors"].is_null(), "{}", first.text());
                let lib = http
                    .graphql(&finance, &q(&library, false), json!({ "a": account }))
                    .await
                    .unwrap();
                if shape.contains("NODE") {
                    assert_eq!(first.text(), lib.text(), "{shape} {args} {filter}");
                    compared += 1;
                }
                let end = http
                    .graphql(&finance, &q("pageInfo { endCursor }", false), json!({ "a": account }))
                    .await
                    .unwrap()
                    .json()["data"]["charges"]["pageInfo"]["endCursor"]
                    .clone();
                let vars = json!({ "a": account, "after": end });
                let next = http.graphql(&finance, &q(&plain, true), vars.clone()).await.unwrap();
                assert!(next.json()["errors"].is_null(), "{}", next.text());
                let lib_next = http.graphql(&finance, &q(&library, true), vars).await.unwrap();
                if shape.contains("NODE") {
                    assert_eq!(next.text(), lib_next.text(), "after: {shape} {args} {filter}");
                    compared += 1;
                }
                assert!(!first.text().contains(&other.to_string()), "another tenant's charge");
            }
        }
    }
    assert_eq!(compared, 4 * 4 * 3 * 2);

    // The library's own connection (a `__typename`, so not one pass), against the one-pass
    // answer for the selections without NODE (cursor and pageInfo only).
    for shape in ["edges { cursor }", "pageInfo { hasPreviousPage }"] {
        let plain = format!("query($a: UUID!) {{ charges(filter: {{ accountId: $a }}, first: 9) {{ {shape} }} }}");
        let library =
            format!("query($a: UUID!) {{ charges(filter: {{ accountId: $a }}, first: 9) {{ {shape} __typename }} }}");
        let plain = http
            .graphql(&finance, &plain, json!({ "a": account }))
            .await
            .unwrap()
            .json();
        let mut library = http
            .graphql(&finance, &library, json!({ "a": account }))
            .await
            .unwrap()
            .json();
        assert_eq!(library["data"]["charges"]["__typename"], "ChargeConnection");
        library["data"]["charges"].as_object_mut().unwrap().remove("__typename");
        assert_eq!(plain, library);
    }

    // The same root field twice (merged by the library), with a directive, beside another
    // field: answered as before, by the library.
    let twice = "query($a: UUID!) { charges(filter: { accountId: $a }, first: 3) { edges { cursor } } \
                 charges(filter: { accountId: $a }, first: 3) { pageInfo { endCursor } } me { tenantId } }";
    let body = http
        .graphql(&finance, twice, json!({ "a": account }))
        .await
        .unwrap()
        .json();
    assert!(body["errors"].is_null(), "{body}");
    let charges = &body["data"]["charges"];
    assert_eq!(charges["edges"].as_array().unwrap().len(), 3);
    assert_eq!(charges["pageInfo"]["endCursor"], charges["edges"][2]["cursor"]);
    assert_eq!(body["data"]["me"]["tenantId"], tenant.to_string());
    let skipped = "query($a: UUID!, $no: Boolean!) { charges(filter: { accountId: $a }, first: 3) { \
                   edges { cursor @skip(if: $no) node { callId @include(if: $no) } } } }";
    let body = http
        .graphql(&finance, skipped, json!({ "a": account, "no": true }))
        .await
        .unwrap()
        .json();
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(
        body["data"]["charges"]["edges"][0]["node"]["callId"]
            .as_str()
            .map(str::len),
        Some(36)
    );
    assert!(body["data"]["charges"]["edges"][0]["cursor"].is_null());
    // Limits still apply to a query the server has parsed before.
    let big = "query($a: UUID!) { charges(filter: { accountId: $a }, first: 501) { edges { cursor } } }";
    for _ in 0..2 {
        let body = http
            .graphql(&finance, big, json!({ "a": account }))
            .await
            .unwrap()
            .json();
        assert_eq!(body["errors"][0]["extensions"]["code"], "INVALID_INPUT", "{body}");
    }
}

/// The simulator's deck (`simulate::sim_rates`) with Germany (49) dearer: 0.040/min.
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

const CORRECT: &str = "mutation($k: UUID!, $t: UUID!, $v: Int!, $d: String!, $r: String!) { \
    correctTariffVersion(idempotencyKey: $k, tariffId: $t, version: $v, deck: $d, reason: $r) { \
    tariffId revision newlyCorrected charges unrated adjustments adjustmentTotal } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tariff_correction_through_the_api_rerates_once_within_the_tenant() {
    let env = start().await;
    env.simulate(2, 300, 21);
    let tenants = env.tenants().await;
    let (a, b) = (tenants[0], tenants[1]);
    let tariff_of = |t: Uuid| {
        let pool = env.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT DISTINCT tariff_id FROM rm_rating_tariff_versions WHERE tenant_id = $1",
            )
            .bind(t)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let (a_tariff, b_tariff) = (tariff_of(a).await, tariff_of(b).await);
    let finance = env.key(a, Role::Finance).await;
    let auditor = env.key(a, Role::Auditor).await;
    let mut http = env.client();
    let vars = |t: Uuid, v: i32, k: Uuid| json!({ "k": k, "t": t, "v": v, "d": CORRECTED_DECK, "r": "Germany was priced at 0.030" });
    let head = env.head().await;

    // Refused, writing nothing: another tenant's tariff, a version that does not exist, a
    // broken deck, a role that may not write billing.
    let (_, other) = gql(&mut http, &finance, CORRECT, vars(b_tariff, 1, Uuid::new_v4())).await;
    assert_eq!(other["errors"][0]["extensions"]["code"], "NOT_FOUND", "{other}");
    let (_, missing) = gql(&mut http, &finance, CORRECT, vars(a_tariff, 9, Uuid::new_v4())).await;
    assert_eq!(missing["errors"][0]["extensions"]["code"], "NOT_FOUND", "{missing}");
    let mut broken = vars(a_tariff, 1, Uuid::new_v4());
    broken["d"] = json!("prefix,price\n49,abc\n");
    let (_, broken) = gql(&mut http, &finance, CORRECT, broken).await;
    assert_eq!(broken["errors"][0]["extensions"]["code"], "INVALID_INPUT", "{broken}");
    let (_, forbidden) = gql(&mut http, &auditor, CORRECT, vars(a_tariff, 1, Uuid::new_v4())).await;
    assert_eq!(forbidden["errors"][0]["extensions"]["code"], "FORBIDDEN", "{forbidden}");
    assert_eq!(env.head().await, head, "refused corrections wrote nothing");

    // The correction: A's charges with the version are re-rated, B's are untouched.
    let key = Uuid::new_v4();
    let (_, done) = gql(&mut http, &finance, CORRECT, vars(a_tariff, 1, key)).await;
    assert!(done["errors"].is_null(), "{done}");
    let result = &done["data"]["correctTariffVersion"];
    assert_eq!(result["revision"], 1, "{done}");
    assert_eq!(result["newlyCorrected"], true, "{done}");
    let rerated: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm_charges WHERE tenant_id = $1 AND corrected_revision = 1")
            .bind(a)
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
    assert!(rerated > 0);
    assert_eq!(result["charges"], rerated, "{done}");
    let difference: Decimal = sqlx::query_scalar(
        "SELECT coalesce(sum(corrected_amount - amount), 0) FROM rm_charges WHERE tenant_id = $1 AND corrected_revision = 1",
    )
    .bind(a)
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert!(difference > Decimal::ZERO, "Germany costs more as corrected");
    assert_eq!(dec(&result["adjustmentTotal"]), difference, "{done}");
    let b_touched: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm_charges WHERE tenant_id = $1 AND corrected_revision IS NOT NULL")
            .bind(b)
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
    assert_eq!(b_touched, 0, "B's charges are untouched");

    // The same key again, or the same deck under a new key: nothing new is written.
    let head = env.head().await;
    let (_, again) = gql(&mut http, &finance, CORRECT, vars(a_tariff, 1, key)).await;
    assert!(again["errors"].is_null(), "{again}");
    let (_, rerun) = gql(&mut http, &finance, CORRECT, vars(a_tariff, 1, Uuid::new_v4())).await;
    assert_eq!(
        rerun["data"]["correctTariffVersion"]["newlyCorrected"], false,
        "{rerun}"
    );
    assert_eq!(rerun["data"]["correctTariffVersion"]["adjustments"], 0, "{rerun}");
    assert_eq!(env.head().await, head, "a retried correction writes nothing");
}
