//! Deterministic fuzzing of the client message decoder, the one function every byte a client
//! sends over the WebSocket goes through (`protocol::decode_client`): 240,000 seeded inputs —
//! random bytes, mutated valid messages, random JSON with right and wrong field types, deep
//! nesting, huge numbers, oversized text. It must never panic, refuse everything invalid by
//! construction with a clear error, accept everything valid by construction, and anything it
//! accepts must be exactly what the JSON says (`protocol::check_accepted`).
//!
//! `fuzz/` runs the same decoder and property under libFuzzer for open-ended searches.

use endless_streamer::protocol::{
    ClientMessage, Codec, Create, Incoming, ProtocolError, check_accepted, decode_client,
};
use serde_json::{Value, json};

const MAX: usize = 65_536;
const KINDS: [&str; 9] = ["create", "watch", "steer", "pause", "resume", "record", "fork", "close", "ping"];

/// splitmix64: a small, seedable generator, so every run fuzzes the same inputs and a failure
/// names an input that reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn string(&mut self, max: usize) -> String {
        let n = self.below(max + 1);
        (0..n)
            .map(|_| match self.below(6) {
                0 => char::from_u32(self.below(0x11_0000) as u32).unwrap_or('\u{fffd}'),
                1 => *self.pick(&['"', '\\', '\n', '\0', '\u{202e}', '€', '😀']),
                _ => (b' ' + self.below(95) as u8) as char,
            })
            .collect()
    }
}

/// A random message that is valid by construction. Its floats have at most 16 significant
/// digits, which serde_json parses exactly, so it decodes to itself.
fn valid_message(r: &mut Rng) -> ClientMessage {
    let opt = |r: &mut Rng, s: String| if r.chance(2) { Some(s) } else { None };
    match r.below(9) {
        0 => {
            let size = format!("{}x{}", r.below(5000), r.below(5000));
            let key = r.string(40);
            ClientMessage::Create(Create {
                prompt: r.string(40),
                seed: if r.chance(2) { Some(r.next()) } else { None },
                size: opt(r, size),
                fps: if r.chance(2) { Some(r.below(12_000) as f64 / 100.0) } else { None },
                api_key: opt(r, key),
            })
        }
        1 => ClientMessage::Watch {
            session: r.string(40),
            token: {
                let t = r.string(40);
                opt(r, t)
            },
            codec: if r.chance(2) { Codec::H264 } else { Codec::Fmp4 },
        },
        2 => ClientMessage::Steer {
            prompt: r.string(80),
            transition_secs: if r.chance(2) { Some((r.next() as i64 >> 20) as f64 / 1e3) } else { None },
        },
        3 => ClientMessage::Pause {},
        4 => ClientMessage::Resume {},
        5 => ClientMessage::Record { on: r.chance(2) },
        6 => ClientMessage::Fork {},
        7 => ClientMessage::Close {},
        _ => ClientMessage::Ping { t: (r.next() >> 14) as f64 / 1000.0 },
    }
}

/// `m` as JSON with its keys shuffled, optional fields sometimes spelled out as `null`.
fn encode_shuffled(r: &mut Rng, m: &ClientMessage) -> String {
    let Value::Object(obj) = serde_json::to_value(m).unwrap() else { unreachable!() };
    let mut fields: Vec<(String, Value)> = obj.into_iter().filter(|(_, v)| !v.is_null() || r.chance(2)).collect();
    for i in (1..fields.len()).rev() {
        fields.swap(i, r.below(i + 1));
    }
    let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{}:{}", json!(k), v)).collect();
    let ws = *r.pick(&["", " ", "\n\t "]);
    format!("{{{ws}{}{ws}}}", parts.join(&format!(",{ws}")))
}

/// A JSON value of a random kind, sometimes nested.
fn random_value(r: &mut Rng, depth: usize) -> Value {
    match r.below(if depth > 3 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(r.chance(2)),
        2 => json!(r.next()),
        3 => json!(-(r.below(1 << 20) as i64)),
        4 => json!((r.next() >> 11) as f64 * 1e-3),
        5 => json!(r.string(20)),
        6 => Value::Array((0..r.below(4)).map(|_| random_value(r, depth + 1)).collect()),
        _ => Value::Object((0..r.below(4)).map(|_| (r.string(6), random_value(r, depth + 1))).collect()),
    }
}

/// A value of the wrong type for a required field: (field, value). `None` for messages
/// with no required field.
fn wrong_type(r: &mut Rng, kind: &str) -> Option<(&'static str, Value)> {
    let not_string = [json!(null), json!(1), json!(true), json!([]), json!({}), json!(-2.5)];
    let not_bool = [json!(null), json!(1), json!("true"), json!([true]), json!({})];
    let not_number = [json!(null), json!("1"), json!(true), json!([1]), json!({})];
    Some(match kind {
        "create" => ("prompt", r.pick(&not_string).clone()),
        "watch" => ("session", r.pick(&not_string).clone()),
        "steer" => ("prompt", r.pick(&not_string).clone()),
        "record" => ("on", r.pick(&not_bool).clone()),
        "ping" => ("t", r.pick(&not_number).clone()),
        _ => return None,
    })
}

/// Tokens mutations splice in: JSON's syntax and the protocol's words.
const TOKENS: [&str; 24] = [
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "null",
    "true",
    "1e400",
    "-0",
    "18446744073709551616",
    "\"type\"",
    "\"create\"",
    "\"steer\"",
    "\"prompt\"",
    "\"\\ud800\"",
    "\"\\u0000\"",
    "NaN",
    "Infinity",
    "0x10",
    "\u{feff}",
    "/*",
];

fn mutate(r: &mut Rng, s: &str) -> String {
    let mut b = s.as_bytes().to_vec();
    for _ in 0..1 + r.below(4) {
        let at = r.below(b.len() + 1);
        match r.below(6) {
            0 if !b.is_empty() => {
                let i = r.below(b.len());
                b[i] ^= 1 << r.below(8);
            }
            1 => b.insert(at, r.next() as u8),
            2 if !b.is_empty() => {
                let end = (at + 1 + r.below(8)).min(b.len());
                b.drain(at.min(end)..end);
            }
            3 if at < b.len() => {
                let end = (at + 1 + r.below(16)).min(b.len());
                let dup = b[at..end].to_vec();
                b.splice(at..at, dup);
            }
            _ => {
                let t = r.pick(&TOKENS).as_bytes().to_vec();
                b.splice(at..at, t);
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// What every refusal must look like.
fn check_refusal(input: &str, e: &ProtocolError) {
    assert!(!e.message.is_empty(), "an empty error for {input:?}");
    assert!(e.message.chars().count() <= 260, "an error reply echoing too much: {:?}", e.message);
    assert!(KINDS.contains(&e.request) || e.request == "unknown", "request {:?} for {input:?}", e.request);
    match e.close {
        None => assert!(input.len() <= MAX),
        Some(code) => assert_eq!((code, input.len() > MAX), (1009, true), "close {code} for {input:?}"),
    }
}

#[derive(PartialEq, Debug, Clone, Copy)]
enum Expect {
    Valid,
    Invalid,
    Either,
}

/// Decodes `text`, checks the outcome against what the generator knows; returns whether it
/// was accepted.
fn run(text: &str, expect: Expect) -> bool {
    match decode_client(Incoming::Text(text), MAX) {
        Ok(m) => {
            assert_ne!(expect, Expect::Invalid, "accepted an invalid input {text:?} as {m:?}");
            if let Err(why) = check_accepted(text, &m) {
                panic!("accepted {text:?} wrongly: {why}");
            }
            true
        }
        Err(e) => {
            assert_ne!(expect, Expect::Valid, "refused a valid input {text:?}: {}", e.message);
            check_refusal(text, &e);
            false
        }
    }
}

#[test]
fn the_decoder_survives_240k_hostile_inputs_and_refuses_exactly_the_invalid_ones() {
    let mut r = Rng(0x5eed_e4d1_e550_0009);
    let (mut total, mut accepted) = (0usize, 0usize);
    let mut count = |ok: bool| {
        total += 1;
        accepted += ok as usize;
    };

    // Random bytes: as a binary message always refused; as text, anything goes but the
    // properties hold (and almost none of it is a message).
    for _ in 0..40_000 {
        let limit = if r.chance(50) { 4096 } else { 200 };
        let n = r.below(limit);
        let b = r.bytes(n);
        let e = decode_client(Incoming::Binary(&b), MAX).unwrap_err();
        assert_eq!((e.request, e.close), ("binary", None));
        let big = decode_client(Incoming::Binary(&vec![0; MAX + 1 + n]), MAX).unwrap_err();
        assert_eq!((big.request, big.close), ("binary", Some(1009)));
        count(run(&String::from_utf8_lossy(&b), Expect::Either));
    }
    // Valid messages, keys in any order: always accepted, as themselves.
    for _ in 0..40_000 {
        let m = valid_message(&mut r);
        let text = encode_shuffled(&mut r, &m);
        assert_eq!(decode_client(Incoming::Text(&text), MAX).as_ref(), Ok(&m), "{text}");
        count(run(&text, Expect::Valid));
    }
    // Valid messages mutated: byte flips, insertions, deletions, duplications, tokens.
    for _ in 0..80_000 {
        let m = valid_message(&mut r);
        let valid = encode_shuffled(&mut r, &m);
        let text = mutate(&mut r, &valid);
        count(run(&text, Expect::Either));
    }
    // Structurally wrong: unknown types, unknown fields, wrong field types, non-objects.
    for i in 0..40_000 {
        let m = valid_message(&mut r);
        let Value::Object(mut obj) = serde_json::to_value(&m).unwrap() else { unreachable!() };
        let text = match i % 5 {
            0 => {
                obj.insert("type".into(), json!(r.string(10) + "_x"));
                Value::Object(obj).to_string()
            }
            1 => {
                obj.insert(format!("{}extra", r.string(5)), random_value(&mut r, 0));
                Value::Object(obj).to_string()
            }
            2 => match wrong_type(&mut r, m.kind()) {
                Some((field, v)) => {
                    obj.insert(field.into(), v);
                    Value::Object(obj).to_string()
                }
                None => {
                    obj.remove("type");
                    Value::Object(obj).to_string()
                }
            },
            3 => Value::Array(vec![Value::Object(obj)]).to_string(),
            _ => {
                let mut v = random_value(&mut r, 0);
                if let Value::Object(o) = &mut v {
                    o.insert("type".into(), json!(r.pick(&KINDS)));
                    o.insert("zz_unknown".into(), json!(1));
                }
                v.to_string()
            }
        };
        count(run(&text, Expect::Invalid));
    }
    // Huge and odd numbers where integers and floats go.
    for i in 0..20_000 {
        let number = *r.pick(&[
            "1e400",
            "-1e400",
            "18446744073709551616",
            "-1",
            "1.5",
            "1e19",
            "99999999999999999999999999999",
            "-0",
            "0.0000000000000000000000001",
            "1E2",
        ]);
        let text = match i % 3 {
            0 => format!(r#"{{"type":"create","prompt":"hills","seed":{number}}}"#),
            1 => format!(r#"{{"type":"ping","t":{number}}}"#),
            _ => format!(r#"{{"type":"steer","prompt":"snow","transition_secs":{number}}}"#),
        };
        count(run(&text, Expect::Either));
    }
    // Deep nesting, in a field and at the top level: refused without exhausting the stack.
    for i in 0..10_000 {
        let depth = 100 + r.below(20_000);
        let (open, shut) = if i % 2 == 0 { ("[", "]") } else { (r#"{"a":"#, "}") };
        let nested = format!("{}1{}", open.repeat(depth), shut.repeat(depth));
        let text = if i % 3 == 0 { nested } else { format!(r#"{{"type":"create","prompt":"x","seed":{nested}}}"#) };
        count(run(&text, Expect::Invalid));
    }
    // Oversized text: refused with close code 1009 even when the WebSocket layer let it by.
    for _ in 0..10_000 {
        let text = format!(r#"{{"type":"steer","prompt":"{}"}}"#, "a".repeat(MAX - 60 + r.below(64)));
        let ok = run(&text, if text.len() > MAX { Expect::Invalid } else { Expect::Valid });
        count(ok);
    }
    assert_eq!(total, 240_000);
    // Sanity of the generators: a fair share is accepted, most is not.
    assert!((45_000..120_000).contains(&accepted), "{accepted} of {total} accepted");
}

#[test]
fn refusals_name_the_request_and_what_was_wrong() {
    let e = decode_client(Incoming::Text(r#"{"type":"steer","prompt":7}"#), MAX).unwrap_err();
    assert_eq!((e.request, e.close), ("steer", None));
    assert!(e.message.starts_with("not a valid request: invalid type: integer `7`, expected a string"), "{e:?}");
    let e = decode_client(Incoming::Text(r#"{"type":"launch"}"#), MAX).unwrap_err();
    assert_eq!(e.request, "unknown");
    assert!(e.message.contains("unknown variant `launch`"), "{e:?}");
    let long = format!(r#"{{"type":"{}"}}"#, "x".repeat(10_000));
    let e = decode_client(Incoming::Text(&long), MAX).unwrap_err();
    assert!(e.message.ends_with('…') && e.message.len() < 300, "the error quotes 10,000 characters back: {e:?}");
    let e = decode_client(Incoming::Binary(b"\x01\x01garbage"), MAX).unwrap_err();
    assert_eq!(e.request, "binary");
    let e = decode_client(Incoming::Text(&" ".repeat(MAX + 1)), MAX).unwrap_err();
    assert_eq!(e.close, Some(1009));
}
