//! The gateway's library half: the sans-IO SIP core lives here so it can be tested without sockets.

pub mod sip;
