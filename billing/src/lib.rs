//! Billing: tariffs, rating, accounts and invoices, pure and exact (see ARCHITECTURE.md).
