//! The command handler: load the streams a decision needs, decide (pure), append;
//! retry on a version conflict; the same command id twice has one effect.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::{Appended, EventStore, Expected, Metadata, NewEvent, RecordedEvent, StoreError, StreamWrite};
use domain::{Aggregate, DomainEvent, SchemaError};

/// How often a command is re-decided after losing a race for a stream version.
pub const MAX_ATTEMPTS: u32 = 8;

/// Who asks, and when; the caller chooses `command_id` and it is the idempotency key.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub command_id: Uuid,
    pub actor: String,
    pub node_id: String,
    pub correlation_id: Option<Uuid>,
    pub now: DateTime<Utc>,
}

impl CommandContext {
    pub fn new(command_id: Uuid, actor: &str, node_id: &str, now: DateTime<Utc>) -> Self {
        CommandContext {
            command_id,
            actor: actor.to_string(),
            node_id: node_id.to_string(),
            correlation_id: None,
            now,
        }
    }

    pub fn metadata(&self) -> Metadata {
        Metadata {
            command_id: Some(self.command_id),
            correlation_id: Some(self.correlation_id.unwrap_or(self.command_id)),
            causation_id: Some(self.command_id),
            node_id: Some(self.node_id.clone()),
            actor: Some(self.actor.clone()),
        }
    }

    /// The id of the n-th event a command produces: the same command, the same ids.
    pub fn event_id(&self, n: usize) -> Uuid {
        let mut name = *self.command_id.as_bytes();
        let n = (n as u32).to_be_bytes();
        for (i, b) in n.iter().enumerate() {
            name[12 + i] ^= b;
        }
        Uuid::new_v5(&Uuid::from_u128(0x6c65_6467_6572_6c69_6e65_2d65_7665_6e74), &name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError<R: std::error::Error> {
    #[error("rejected: {0}")]
    Rejected(R),
    #[error("the stream kept changing under this command; try again")]
    Conflict,
    #[error("a stored event cannot be read: {0}")]
    Corrupt(#[from] SchemaError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a handled command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub positions: Vec<i64>,
    /// True when this command id had been handled before and nothing new was written.
    pub replayed: bool,
}

/// A stream to load, and its state and version once loaded.
pub struct Loaded<A: Aggregate> {
    pub state: A::State,
    pub version: u64,
}

#[derive(Debug, Clone)]
pub struct StreamRef {
    pub tenant_id: Uuid,
    pub stream_id: String,
}

impl StreamRef {
    pub fn of<A: Aggregate>(tenant_id: Uuid, id: &Uuid) -> Self {
        StreamRef {
            tenant_id,
            stream_id: A::stream_id(id),
        }
    }
}

#[derive(Clone)]
pub struct CommandHandler {
    store: EventStore,
}

impl CommandHandler {
    pub fn new(store: EventStore) -> Self {
        CommandHandler { store }
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    pub async fn load<A: Aggregate>(&self, stream: &StreamRef) -> Result<Loaded<A>, LoadError> {
        let events = self.store.read_stream(stream.tenant_id, &stream.stream_id).await?;
        fold::<A>(&events)
    }

    /// Decide on one stream.
    pub async fn execute<A, R>(
        &self,
        ctx: &CommandContext,
        stream: StreamRef,
        decide: impl Fn(&A::State) -> Result<Vec<A::Event>, R>,
    ) -> Result<Outcome, CommandError<R>>
    where
        A: Aggregate,
        R: std::error::Error,
    {
        if let Some(outcome) = self.replay(ctx).await? {
            return Ok(outcome);
        }
        for _ in 0..MAX_ATTEMPTS {
            let loaded = self.load::<A>(&stream).await.map_err(LoadError::into_command)?;
            let events = decide(&loaded.state).map_err(CommandError::Rejected)?;
            let mut writes = Vec::new();
            let mut n = 0;
            push_write(ctx, &mut writes, &mut n, &stream, loaded.version, &events);
            match self.append(writes).await {
                Ok(outcome) => return Ok(outcome),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommandError::Conflict)
    }

    /// Decide on two streams at once (an extension against its tenant; a tenant
    /// against the system-wide claim of its SIP domain); both append in one transaction.
    pub async fn execute2<A, B, R>(
        &self,
        ctx: &CommandContext,
        first: StreamRef,
        second: StreamRef,
        decide: impl Fn(&A::State, &B::State) -> Result<(Vec<A::Event>, Vec<B::Event>), R>,
    ) -> Result<Outcome, CommandError<R>>
    where
        A: Aggregate,
        B: Aggregate,
        R: std::error::Error,
    {
        if let Some(outcome) = self.replay(ctx).await? {
            return Ok(outcome);
        }
        for _ in 0..MAX_ATTEMPTS {
            let a = self.load::<A>(&first).await.map_err(LoadError::into_command)?;
            let b = self.load::<B>(&second).await.map_err(LoadError::into_command)?;
            let (a_events, b_events) = decide(&a.state, &b.state).map_err(CommandError::Rejected)?;
            let mut writes = Vec::new();
            let mut n = 0;
            push_write(ctx, &mut writes, &mut n, &first, a.version, &a_events);
            push_write(ctx, &mut writes, &mut n, &second, b.version, &b_events);
            match self.append(writes).await {
                Ok(outcome) => return Ok(outcome),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommandError::Conflict)
    }

    async fn append(&self, writes: Vec<StreamWrite>) -> Result<Outcome, StoreError> {
        if writes.is_empty() {
            return Ok(Outcome {
                positions: vec![],
                replayed: false,
            });
        }
        let Appended {
            positions,
            already_stored,
            ..
        } = self.store.append(&writes).await?;
        Ok(Outcome {
            positions,
            replayed: already_stored,
        })
    }

    /// A command already handled has its first event stored under a known id.
    pub async fn replay<R: std::error::Error>(&self, ctx: &CommandContext) -> Result<Option<Outcome>, CommandError<R>> {
        let ids: Vec<Uuid> = (0..64).map(|n| ctx.event_id(n)).collect();
        let positions: Vec<i64> =
            sqlx::query_scalar("SELECT global_position FROM events WHERE event_id = ANY($1) ORDER BY 1")
                .bind(&ids)
                .fetch_all(self.store.pool())
                .await
                .map_err(StoreError::from)?;
        if positions.is_empty() {
            return Ok(None);
        }
        Ok(Some(Outcome {
            positions,
            replayed: true,
        }))
    }
}

fn push_write<E: DomainEvent>(
    ctx: &CommandContext,
    writes: &mut Vec<StreamWrite>,
    n: &mut usize,
    stream: &StreamRef,
    version: u64,
    events: &[E],
) {
    if events.is_empty() {
        return;
    }
    let events = events
        .iter()
        .map(|event| {
            let id = ctx.event_id(*n);
            *n += 1;
            NewEvent::from_domain(id, event, ctx.metadata(), ctx.now)
        })
        .collect();
    writes.push(StreamWrite {
        tenant_id: stream.tenant_id,
        stream_id: stream.stream_id.clone(),
        expected: if version == 0 {
            Expected::NoStream
        } else {
            Expected::Exact(version)
        },
        events,
    });
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Corrupt(#[from] SchemaError),
}

impl LoadError {
    pub fn into_command<R: std::error::Error>(self) -> CommandError<R> {
        match self {
            LoadError::Store(e) => CommandError::Store(e),
            LoadError::Corrupt(e) => CommandError::Corrupt(e),
        }
    }
}

pub fn fold<A: Aggregate>(events: &[RecordedEvent]) -> Result<Loaded<A>, LoadError> {
    let mut state = A::State::default();
    let mut version = 0;
    for recorded in events {
        let event: A::Event = recorded.decode()?;
        state = A::evolve(state, &event);
        version = recorded.stream_version as u64;
    }
    Ok(Loaded { state, version })
}
