//! Commands: the Postgres event store, the command handler that runs the domain's
//! deciders against it, the embedded Postgres default and the migrations runner.
//!
//! No business rule lives here: what may happen is decided in `domain` and `billing`.

pub mod audit;
pub mod batching;
pub mod canonical;
pub mod db;
pub mod directory;
pub mod embedded;
pub mod handler;
pub mod store;
pub mod subscription;
pub mod testing;

pub use handler::{CommandContext, CommandError, CommandHandler, Outcome, StreamRef};
pub use store::{
    Appended, Cursor, EventFilter, EventStore, Expected, Metadata, NewEvent, RecordedEvent, StoreError, StreamWrite,
};
