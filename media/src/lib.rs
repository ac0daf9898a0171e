//! Media: G.711 codecs, RTP/RTCP and RFC 4733 parsing, the RTP relay, the N−1 conference
//! mixer, recording and prompts: sans-IO cores (`handle_*` in, `poll_*` out, time as an
//! argument) plus the tokio shells that only move bytes and timers.

pub mod dtmf;
pub mod g711;
pub mod mixer;
pub mod rooms;
pub mod rtp;
pub mod stats;
