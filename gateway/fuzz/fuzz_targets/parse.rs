//! Fuzzes the SIP parser: no bytes from the network may panic the node.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gateway::sip::fuzzing::exercise_parser(data);
});
