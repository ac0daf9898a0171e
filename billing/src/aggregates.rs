//! Billing's aggregates as the spine sees them: `domain::Aggregate` and `DomainEvent` for
//! accounts, tariffs and invoice books, and a validator the event store runs at append.
//!
//! `domain` is pure too, so depending on it keeps `billing` free of IO.

use domain::{Aggregate, DomainEvent, SchemaError};
use serde_json::Value;

use crate::account::{self, AccountEvent, AccountState};
use crate::events::PayloadError;
use crate::invoice::{self, InvoiceEvent, InvoiceState};
use crate::tariff::{self, TariffEvent, TariffState};

/// An account (`account-{id}`): balance, reservations, settled charges.
pub struct Account;
/// A tariff (`tariff-{id}`): its versions and rates.
pub struct Tariff;
/// An account's invoice book (`invoice-{account_id}`): periods, lines, closings.
pub struct InvoiceBook;

fn schema_error(event_type: &str, version: u32, e: PayloadError) -> SchemaError {
    match e {
        PayloadError::UnknownSchemaVersion { .. } => SchemaError::UnknownVersion {
            event_type: event_type.to_string(),
            version,
        },
        other => SchemaError::InvalidPayload {
            event_type: event_type.to_string(),
            version,
            detail: other.to_string(),
        },
    }
}

macro_rules! bridge {
    ($aggregate:ty, $event:ty, $state:ty, $prefix:literal, $evolve:path, [$($name:literal),+ $(,)?]) => {
        impl DomainEvent for $event {
            fn event_type(&self) -> &'static str {
                <$event>::event_type(self)
            }
            fn schema_version(&self) -> u32 {
                <$event>::schema_version(self)
            }
            fn to_payload(&self) -> Value {
                // These enums are plain serde structs of strings, ids, decimals and times:
                // encoding them as a tagged object cannot fail.
                <$event>::to_payload(self).expect("a billing event encodes")
            }
            fn from_stored(event_type: &str, schema_version: u32, payload: &Value) -> Result<Self, SchemaError> {
                if !Self::event_types().contains(&event_type) {
                    return Err(SchemaError::UnknownType(event_type.to_string()));
                }
                <$event>::from_payload(event_type, schema_version, payload.clone())
                    .map_err(|e| schema_error(event_type, schema_version, e))
            }
            fn event_types() -> &'static [&'static str] {
                &[$($name),+]
            }
        }

        impl Aggregate for $aggregate {
            type Event = $event;
            type State = $state;
            const STREAM_PREFIX: &'static str = $prefix;

            fn evolve(state: $state, event: &$event) -> $state {
                $evolve(state, event)
            }
        }
    };
}

bridge!(
    Account,
    AccountEvent,
    AccountState,
    "account",
    account::evolve,
    [
        "AccountOpened",
        "FundsToppedUp",
        "AccountAdjusted",
        "FundsReserved",
        "ReservationReleased",
        "ChargeSettled",
        "TariffAssigned"
    ]
);
bridge!(
    Tariff,
    TariffEvent,
    TariffState,
    "tariff",
    tariff::evolve,
    ["TariffCreated", "TariffVersionPublished", "TariffVersionCorrected"]
);
bridge!(
    InvoiceBook,
    InvoiceEvent,
    InvoiceState,
    "invoice",
    invoice::evolve,
    [
        "InvoiceBookOpened",
        "ChargeInvoiced",
        "AdjustmentInvoiced",
        "PeriodClosed"
    ]
);

/// The store's validator for billing events: the payload must decode into its struct.
pub fn validate(event_type: &str, schema_version: u32, payload: &Value) -> Result<(), SchemaError> {
    if AccountEvent::event_types().contains(&event_type) {
        return AccountEvent::from_stored(event_type, schema_version, payload).map(drop);
    }
    if TariffEvent::event_types().contains(&event_type) {
        return TariffEvent::from_stored(event_type, schema_version, payload).map(drop);
    }
    if InvoiceEvent::event_types().contains(&event_type) {
        return InvoiceEvent::from_stored(event_type, schema_version, payload).map(drop);
    }
    Err(SchemaError::UnknownType(event_type.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use uuid::Uuid;

    #[test]
    fn the_type_lists_match_the_enums_and_payloads_round_trip() {
        let event = AccountEvent::ToppedUp(account::FundsToppedUp {
            payment_id: Uuid::from_u128(1),
            amount: Decimal::new(500, 2),
        });
        let name = DomainEvent::event_type(&event);
        assert!(AccountEvent::event_types().contains(&name));
        let payload = DomainEvent::to_payload(&event);
        assert_eq!(AccountEvent::from_stored(name, 1, &payload), Ok(event));
        assert_eq!(validate(name, 1, &payload), Ok(()));
        assert!(matches!(
            validate(name, 2, &payload),
            Err(SchemaError::UnknownVersion { .. })
        ));
        assert!(matches!(
            validate(name, 1, &serde_json::json!({"amount": "x"})),
            Err(SchemaError::InvalidPayload { .. })
        ));
        assert!(matches!(
            validate("Nope", 1, &payload),
            Err(SchemaError::UnknownType(_))
        ));
        assert_eq!(
            Account::stream_id(&Uuid::from_u128(2)),
            account::stream_id(Uuid::from_u128(2))
        );
    }
}
