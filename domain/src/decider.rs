//! The shape every aggregate shares, so `commands` can load any of them generically.

use crate::event::DomainEvent;

/// An event-sourced aggregate: a stream name, its events, and how its state folds.
///
/// Deciding is done by plain functions next to each aggregate (`tenant::decide`),
/// because some decisions read more than one aggregate (an extension is provisioned
/// against its tenant's limits).
pub trait Aggregate {
    type Event: DomainEvent;
    type State: Default + Clone;

    /// Stream name prefix; the stream id is `{PREFIX}-{id}`.
    const STREAM_PREFIX: &'static str;

    /// Fold one event into the state. Must be total: unknown transitions keep the state.
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;

    fn stream_id(id: &uuid::Uuid) -> String {
        format!("{}-{}", Self::STREAM_PREFIX, id)
    }

    fn fold<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self::State
    where
        Self::Event: 'a,
    {
        let mut state = Self::State::default();
        for event in events {
            state = Self::evolve(state, event);
        }
        state
    }
}
