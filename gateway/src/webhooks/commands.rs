//! Webhook commands: load the `webhook-{id}` stream, decide (pure, in `domain::webhook`),
//! and append, writing or deleting the signing secret in the same transaction as the
//! event that names it, so every key id in the log has its secret and no secret outlives
//! its webhook.

use commands::handler::MAX_ATTEMPTS;
use commands::store::{Expected, NewEvent, StoreError, StreamWrite};
use commands::{CommandContext, CommandError, CommandHandler, Outcome, StreamRef};
use domain::webhook::{self, NewSecret, Webhook, WebhookCommand, WebhookEvent, WebhookRejection, WebhookSecret};
use domain::DomainEvent;
use uuid::Uuid;

pub type WebhookError = CommandError<WebhookRejection>;

/// What registering did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub webhook_id: Uuid,
    /// The secret in clear when this call generated it: show it once, it is never shown again.
    pub generated_secret: Option<String>,
    /// True when this command id had been handled before (nothing new was written).
    pub replayed: bool,
}

/// Every event type the store accepts, for validating a webhook's filter.
pub fn known_event_types() -> Vec<String> {
    let mut all: Vec<String> = domain::registry::json_schemas()
        .into_iter()
        .map(|(name, _, _)| name.to_string())
        .collect();
    for names in [
        billing::account::AccountEvent::event_types(),
        billing::tariff::TariffEvent::event_types(),
        billing::invoice::InvoiceEvent::event_types(),
    ] {
        all.extend(names.iter().map(|n| n.to_string()));
    }
    all.sort();
    all.dedup();
    all
}

/// A fresh secret: `whsec_` and 64 hex digits from two random v4 UUIDs (244 random bits).
pub fn generate_secret() -> String {
    format!("whsec_{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

/// Register a webhook for `tenant_id`. Its id derives from the command id (a retried
/// command names the same webhook); a missing secret is generated and returned once.
pub async fn register(
    handler: &CommandHandler,
    ctx: &CommandContext,
    tenant_id: Uuid,
    url: &str,
    event_types: &[String],
    secret: Option<String>,
) -> Result<Registered, WebhookError> {
    let webhook_id = Uuid::new_v5(&ctx.command_id, b"webhook");
    let generated = secret.is_none();
    let secret = secret.unwrap_or_else(generate_secret);
    let command = WebhookCommand::Register {
        webhook_id,
        tenant_id,
        url: url.to_string(),
        event_types: event_types.to_vec(),
        secret: NewSecret {
            key_id: Uuid::new_v5(&ctx.command_id, b"webhook-secret"),
            secret: WebhookSecret(secret.clone()),
        },
        known_event_types: known_event_types(),
    };
    let outcome = execute(handler, ctx, tenant_id, webhook_id, &command).await?;
    Ok(Registered {
        webhook_id,
        generated_secret: (generated && !outcome.replayed).then_some(secret),
        replayed: outcome.replayed,
    })
}

/// Change the URL, the filter, or the secret (a new key id, derived from the command id).
pub async fn update(
    handler: &CommandHandler,
    ctx: &CommandContext,
    tenant_id: Uuid,
    webhook_id: Uuid,
    url: Option<String>,
    event_types: Option<Vec<String>>,
    secret: Option<String>,
) -> Result<Outcome, WebhookError> {
    let command = WebhookCommand::Update {
        url,
        event_types,
        secret: secret.map(|s| NewSecret {
            key_id: Uuid::new_v5(&ctx.command_id, b"webhook-secret"),
            secret: WebhookSecret(s),
        }),
        known_event_types: known_event_types(),
    };
    execute(handler, ctx, tenant_id, webhook_id, &command).await
}

/// Disable, enable or remove (the commands without a secret).
pub async fn command(
    handler: &CommandHandler,
    ctx: &CommandContext,
    tenant_id: Uuid,
    webhook_id: Uuid,
    command: WebhookCommand,
) -> Result<Outcome, WebhookError> {
    execute(handler, ctx, tenant_id, webhook_id, &command).await
}

/// Load → decide → append with the secret table's change, in one transaction; retried when
/// the stream moved; a command id already handled returns its original positions.
async fn execute(
    handler: &CommandHandler,
    ctx: &CommandContext,
    tenant_id: Uuid,
    webhook_id: Uuid,
    command: &WebhookCommand,
) -> Result<Outcome, WebhookError> {
    let stream = StreamRef::of::<Webhook>(tenant_id, &webhook_id);
    let pool = handler.store().pool();
    for _ in 0..MAX_ATTEMPTS {
        if let Some(outcome) = handler.replay(ctx).await? {
            return Ok(outcome);
        }
        let loaded = handler
            .load::<Webhook>(&stream)
            .await
            .map_err(commands::handler::LoadError::into_command)?;
        let events = webhook::decide(command, &loaded.state).map_err(CommandError::Rejected)?;
        if events.is_empty() {
            return Ok(Outcome {
                positions: vec![],
                replayed: false,
            });
        }
        let metadata = ctx.metadata();
        let write = StreamWrite {
            tenant_id,
            stream_id: stream.stream_id.clone(),
            expected: if loaded.version == 0 {
                Expected::NoStream
            } else {
                Expected::Exact(loaded.version)
            },
            events: events
                .iter()
                .enumerate()
                .map(|(n, event)| NewEvent::from_domain(ctx.event_id(n), event, metadata.clone(), ctx.now))
                .collect(),
        };
        let mut tx = pool.begin().await.map_err(StoreError::from)?;
        let appended = match handler.store().append_in(&mut tx, &[write]).await {
            Ok(appended) => appended,
            Err(e) if e.is_conflict() || is_unique_violation(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        for event in &events {
            write_secret(&mut tx, tenant_id, webhook_id, command, event)
                .await
                .map_err(StoreError::from)?;
        }
        match tx.commit().await {
            Ok(()) => {
                return Ok(Outcome {
                    positions: appended.positions,
                    replayed: false,
                })
            }
            Err(e) if is_sql_unique_violation(&e) => continue,
            Err(e) => return Err(StoreError::from(e).into()),
        }
    }
    Err(CommandError::Conflict)
}

/// The secret table follows the events: a registration or rotation stores the new secret
/// under its key id; a removal deletes every secret of the webhook.
async fn write_secret(
    tx: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    webhook_id: Uuid,
    command: &WebhookCommand,
    event: &WebhookEvent,
) -> Result<(), sqlx::Error> {
    let new_secret = match command {
        WebhookCommand::Register { secret, .. } => Some(secret),
        WebhookCommand::Update { secret, .. } => secret.as_ref(),
        _ => None,
    };
    match event {
        WebhookEvent::WebhookRegistered(e) => {
            insert_secret(tx, tenant_id, webhook_id, e.secret_key_id, new_secret).await
        }
        WebhookEvent::WebhookSecretRotated(e) => {
            insert_secret(tx, tenant_id, webhook_id, e.secret_key_id, new_secret).await
        }
        WebhookEvent::WebhookRemoved(_) => {
            sqlx::query("DELETE FROM webhook_secrets WHERE tenant_id = $1 AND webhook_id = $2")
                .bind(tenant_id)
                .bind(webhook_id)
                .execute(tx)
                .await?;
            Ok(())
        }
        _ => Ok(()),
    }
}

async fn insert_secret(
    tx: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    webhook_id: Uuid,
    key_id: Uuid,
    secret: Option<&NewSecret>,
) -> Result<(), sqlx::Error> {
    // The decider only emits these events from a command that carries the secret.
    let Some(secret) = secret.filter(|s| s.key_id == key_id) else {
        return Err(sqlx::Error::Protocol(
            "a webhook secret event without its secret".into(),
        ));
    };
    sqlx::query(
        "INSERT INTO webhook_secrets (tenant_id, webhook_id, key_id, secret) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (tenant_id, webhook_id, key_id) DO NOTHING",
    )
    .bind(tenant_id)
    .bind(webhook_id)
    .bind(key_id)
    .bind(&secret.secret.0)
    .execute(tx)
    .await?;
    Ok(())
}

fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Database(db) if is_sql_unique_violation(db))
}

fn is_sql_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}
