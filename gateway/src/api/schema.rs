//! The schema: one query, mutation and subscription object per area, merged. A new area
//! adds its objects here.

use async_graphql::{MergedObject, MergedSubscription, Schema, SchemaBuilder};

use super::billing::{BillingMutation, BillingQuery};
use super::calls::CallsMutation;
use super::conferences::{ConferencesMutation, ConferencesQuery};
use super::directory::{DirectoryMutation, DirectoryQuery};
use super::events::{EventsQuery, EventsSubscription};
use super::keys::KeysMutation;
use super::routing::{RoutingMutation, RoutingQuery};
use super::webhooks::{WebhooksMutation, WebhooksQuery};
use super::{ApiConfig, ApiState};

#[derive(MergedObject, Default)]
pub struct Query(
    DirectoryQuery,
    BillingQuery,
    EventsQuery,
    RoutingQuery,
    WebhooksQuery,
    ConferencesQuery,
);

#[derive(MergedObject, Default)]
pub struct Mutation(
    DirectoryMutation,
    BillingMutation,
    KeysMutation,
    RoutingMutation,
    WebhooksMutation,
    ConferencesMutation,
    CallsMutation,
);

#[derive(MergedSubscription, Default)]
pub struct Subscription(EventsSubscription);

pub type ApiSchema = Schema<Query, Mutation, Subscription>;

fn builder(config: &ApiConfig) -> SchemaBuilder<Query, Mutation, Subscription> {
    Schema::build(Query::default(), Mutation::default(), Subscription::default())
        .limit_depth(config.max_depth)
        .limit_complexity(config.max_complexity)
        .limit_recursive_depth(config.max_depth.max(8) * 4)
        .limit_directives(20)
}

pub fn build(state: ApiState) -> ApiSchema {
    let config = state.config.clone();
    builder(&config).data(state).finish()
}

/// The SDL committed as `schemas/graphql/schema.graphql`.
pub fn sdl() -> String {
    builder(&ApiConfig::default()).finish().sdl()
}
