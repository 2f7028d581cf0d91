//! Every client message goes through `protocol::decode_client`; libFuzzer searches for an
//! input that panics it, overflows its stack, or is accepted as something other than what
//! its JSON says (`check_accepted`). The protocol module is compiled in directly: it needs
//! only serde, so a fuzz build does not drag in GStreamer and the model.
#![no_main]

#[path = "../../streamer/src/protocol.rs"]
#[allow(dead_code)]
mod protocol;

use libfuzzer_sys::fuzz_target;
use protocol::{Incoming, check_accepted, decode_client};

const MAX: usize = 65_536;

fuzz_target!(|data: &[u8]| {
    let e = decode_client(Incoming::Binary(data), MAX).expect_err("binary messages are always refused");
    assert!(!e.message.is_empty());
    if let Ok(text) = std::str::from_utf8(data) {
        match decode_client(Incoming::Text(text), MAX) {
            Ok(m) => {
                if let Err(why) = check_accepted(text, &m) {
                    panic!("{text:?} accepted wrongly: {why}");
                }
            }
            Err(e) => {
                assert!(!e.message.is_empty() && e.message.chars().count() <= 260, "{:?}", e.message);
                assert!(e.close.is_none() || text.len() > MAX);
            }
        }
    }
});
