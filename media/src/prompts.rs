//! The prompts shipped in `media/prompts/` (8 kHz 16-bit mono WAV, generated once with
//! `media/prompts/generate.py` and committed), embedded in the binary.

use crate::wav;

/// Every prompt by name.
pub const NAMES: [&str; 4] = ["enter-code", "wrong-code", "waiting-for-host", "joined"];

pub fn bytes(name: &str) -> Option<&'static [u8]> {
    match name {
        "enter-code" => Some(include_bytes!("../prompts/enter-code.wav")),
        "wrong-code" => Some(include_bytes!("../prompts/wrong-code.wav")),
        "waiting-for-host" => Some(include_bytes!("../prompts/waiting-for-host.wav")),
        "joined" => Some(include_bytes!("../prompts/joined.wav")),
        _ => None,
    }
}

/// A prompt's samples; `None` for an unknown name.
pub fn samples(name: &str) -> Option<Vec<i16>> {
    // The shipped files are checked by a test, so a parse failure means an unknown name.
    bytes(name).and_then(|b| wav::parse(b).ok())
}
