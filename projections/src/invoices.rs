//! Read model `invoices`: the invoice document of every account and period, "as billed" and
//! "as corrected" side by side, projected from the invoice book streams (`invoice-{account}`).
//!
//! The book's own decider (`billing::invoice`) decides what a period holds; this projection
//! folds a book's events with `billing::invoice::evolve` and renders both views with
//! `as_billed` / `as_corrected`, so the projected document is the one billing defines. A touched
//! book is refolded whole from `rm_invoice_book_events` (its events, kept here), which costs
//! one query per batch and keeps the rendering in one place. Open periods are drafts at 0 %
//! tax: the tax policy arrives only with `ClosePeriod`.

use std::collections::BTreeSet;

use billing::invoice::{self, InvoiceEvent, InvoiceState, LineKind, TaxMode, TaxPolicy};
use commands::store::RecordedEvent;
use domain::DomainEvent;
use rust_decimal::Decimal;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::runner::{Projection, ProjectionError};

pub struct Invoices;

pub const TABLES: &[&str] = &["rm_invoice_book_events", "rm_invoices", "rm_invoice_lines"];

/// The tax a draft (open) period is shown with.
pub const DRAFT_TAX: TaxPolicy = TaxPolicy {
    rate_pct: Decimal::ZERO,
    mode: TaxMode::Exclusive,
};

impl Projection for Invoices {
    /// Registrations are the log's busiest events under load, and this projection has no
    /// use for them.
    fn skips_payloads(&self) -> &'static [&'static str] {
        <domain::registration::RegistrationEvent as domain::DomainEvent>::event_types()
    }

    fn name(&self) -> &'static str {
        "invoices"
    }

    fn version(&self) -> i32 {
        1
    }

    fn tables(&self) -> &'static [&'static str] {
        TABLES
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        let mut books: BTreeSet<(Uuid, Uuid)> = BTreeSet::new();
        let mut tenant_id = Vec::new();
        let mut account_id = Vec::new();
        let mut version = Vec::new();
        let mut event_type = Vec::new();
        let mut payload = Vec::new();
        for event in events {
            let Some(id) = event.stream_id.strip_prefix("invoice-") else {
                continue;
            };
            let account = id
                .parse::<Uuid>()
                .map_err(|e| ProjectionError::Decode(event.event_id, e.to_string()))?;
            books.insert((event.tenant_id, account));
            tenant_id.push(event.tenant_id);
            account_id.push(account);
            version.push(event.stream_version);
            event_type.push(event.event_type.clone());
            payload.push(event.payload.clone());
        }
        if books.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO rm_invoice_book_events (tenant_id, account_id, stream_version, event_type, payload) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::jsonb[])",
        )
        .bind(&tenant_id)
        .bind(&account_id)
        .bind(&version)
        .bind(&event_type)
        .bind(&payload)
        .execute(&mut *conn)
        .await?;
        let tenants: Vec<Uuid> = books.iter().map(|b| b.0).collect();
        let accounts: Vec<Uuid> = books.iter().map(|b| b.1).collect();
        let keyed = "(tenant_id, account_id) IN (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]))";
        for table in ["rm_invoices", "rm_invoice_lines"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE {keyed}"))
                .bind(&tenants)
                .bind(&accounts)
                .execute(&mut *conn)
                .await?;
        }
        let rows = sqlx::query(&format!(
            "SELECT tenant_id, account_id, event_type, payload FROM rm_invoice_book_events WHERE {keyed} \
             ORDER BY tenant_id, account_id, stream_version"
        ))
        .bind(&tenants)
        .bind(&accounts)
        .fetch_all(&mut *conn)
        .await?;
        let mut states: Vec<((Uuid, Uuid), InvoiceState)> = Vec::new();
        for row in rows {
            let key: (Uuid, Uuid) = (row.get("tenant_id"), row.get("account_id"));
            let event_type: String = row.get("event_type");
            let payload: serde_json::Value = row.get("payload");
            let event = InvoiceEvent::from_stored(&event_type, 1, &payload)
                .map_err(|e| ProjectionError::Decode(key.1, e.to_string()))?;
            match states.last_mut() {
                Some((last, state)) if *last == key => {
                    *state = invoice::evolve(std::mem::take(state), &event);
                }
                _ => states.push((key, invoice::evolve(InvoiceState::default(), &event))),
            }
        }
        let mut inv = InvoiceRows::default();
        for ((tenant, account), state) in &states {
            for period in state.periods.keys() {
                let (Some(billed), Some(corrected)) = (
                    invoice::as_billed(state, *period, DRAFT_TAX),
                    invoice::as_corrected(state, *period, DRAFT_TAX),
                ) else {
                    continue;
                };
                inv.push(*tenant, *account, &billed, &corrected);
            }
        }
        inv.write(conn).await?;
        Ok(())
    }
}

#[derive(Default)]
struct InvoiceRows {
    tenant_id: Vec<Uuid>,
    account_id: Vec<Uuid>,
    period: Vec<String>,
    currency: Vec<String>,
    status: Vec<String>,
    tax_rate_pct: Vec<Decimal>,
    tax_mode: Vec<String>,
    billed: [Vec<Decimal>; 3],
    corrected: [Vec<Decimal>; 3],
    document: Vec<String>,
    corrected_document: Vec<String>,
    lines: LineRows,
}

#[derive(Default)]
struct LineRows {
    tenant_id: Vec<Uuid>,
    account_id: Vec<Uuid>,
    period: Vec<String>,
    view: Vec<String>,
    line_no: Vec<i32>,
    service: Vec<String>,
    destination: Vec<String>,
    kind: Vec<String>,
    original_period: Vec<Option<String>>,
    count: Vec<i64>,
    amount: Vec<Decimal>,
}

impl InvoiceRows {
    fn push(&mut self, tenant: Uuid, account: Uuid, billed: &invoice::Invoice, corrected: &invoice::Invoice) {
        let period = billed.period.to_string();
        self.tenant_id.push(tenant);
        self.account_id.push(account);
        self.period.push(period.clone());
        self.currency.push(billed.currency.clone());
        self.status.push(
            match billed.status {
                invoice::InvoiceStatus::Open => "draft",
                invoice::InvoiceStatus::Closed => "closed",
            }
            .to_string(),
        );
        self.tax_rate_pct.push(billed.tax.rate_pct);
        self.tax_mode.push(
            match billed.tax.mode {
                TaxMode::Inclusive => "inclusive",
                TaxMode::Exclusive => "exclusive",
            }
            .to_string(),
        );
        for (i, v) in [billed.totals.net, billed.totals.tax, billed.totals.total]
            .into_iter()
            .enumerate()
        {
            self.billed[i].push(v);
        }
        for (i, v) in [corrected.totals.net, corrected.totals.tax, corrected.totals.total]
            .into_iter()
            .enumerate()
        {
            self.corrected[i].push(v);
        }
        self.document.push(billed.render());
        self.corrected_document.push(corrected.render());
        for (view, doc) in [("as_billed", billed), ("as_corrected", corrected)] {
            for (n, line) in doc.lines.iter().enumerate() {
                let l = &mut self.lines;
                l.tenant_id.push(tenant);
                l.account_id.push(account);
                l.period.push(period.clone());
                l.view.push(view.to_string());
                l.line_no.push(i32::try_from(n + 1).unwrap_or(i32::MAX));
                l.service.push(line.service.as_str().to_string());
                l.destination.push(line.destination.clone());
                let (kind, original) = match line.kind {
                    LineKind::Charges => ("charges", None),
                    LineKind::Adjustments { original_period } => ("adjustments", Some(original_period.to_string())),
                };
                l.kind.push(kind.to_string());
                l.original_period.push(original);
                l.count.push(i64::try_from(line.count).unwrap_or(i64::MAX));
                l.amount.push(line.amount);
            }
        }
    }

    async fn write(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.tenant_id.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO rm_invoices (tenant_id, account_id, period, currency, status, tax_rate_pct, tax_mode, \
             billed_net, billed_tax, billed_total, corrected_net, corrected_tax, corrected_total, document, \
             corrected_document) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::numeric[], \
             $7::text[], $8::numeric[], $9::numeric[], $10::numeric[], $11::numeric[], $12::numeric[], \
             $13::numeric[], $14::text[], $15::text[])",
        )
        .bind(&self.tenant_id)
        .bind(&self.account_id)
        .bind(&self.period)
        .bind(&self.currency)
        .bind(&self.status)
        .bind(&self.tax_rate_pct)
        .bind(&self.tax_mode)
        .bind(&self.billed[0])
        .bind(&self.billed[1])
        .bind(&self.billed[2])
        .bind(&self.corrected[0])
        .bind(&self.corrected[1])
        .bind(&self.corrected[2])
        .bind(&self.document)
        .bind(&self.corrected_document)
        .execute(&mut *conn)
        .await?;
        let l = &self.lines;
        if l.tenant_id.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO rm_invoice_lines (tenant_id, account_id, period, view, line_no, service, destination, kind, \
             original_period, count, amount) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int[], $6::text[], $7::text[], \
             $8::text[], $9::text[], $10::bigint[], $11::numeric[])",
        )
        .bind(&l.tenant_id)
        .bind(&l.account_id)
        .bind(&l.period)
        .bind(&l.view)
        .bind(&l.line_no)
        .bind(&l.service)
        .bind(&l.destination)
        .bind(&l.kind)
        .bind(&l.original_period)
        .bind(&l.count)
        .bind(&l.amount)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}
