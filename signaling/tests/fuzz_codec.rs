//! Fuzzing of the signaling input path: arbitrary text and structure-aware mutations of Kurento
//! room JSON-RPC frames through `jsonrpc::decode` → `protocol::parse` → `room::route` → real
//! `room::Room`s (four sessions; the harness plays the transport, the room directory and the
//! media layer), with every reply and notification encoded and read back.
//!
//! Inputs: lossy UTF-8 of random bytes, random valid strings, and frames of every room-protocol
//! method (joinRoom, publishVideo, receiveVideoFrom, onIceCandidate, unpublishVideo,
//! unsubscribeFromVideo, leaveRoom, sendMessage, customRequest, ping, connect, closeSession)
//! mutated at the parameter level (JSON type changes, deletions, unknown and duplicate keys, huge
//! strings and numbers, deep nesting, invalid escapes), at the envelope level (id of every JSON
//! type, missing `jsonrpc`/`method`/`params`, batches) and at the byte level (truncation, flips,
//! insertions). A deterministic prelude truncates every canonical frame at every byte and flips
//! every byte of it.
//!
//! Properties checked besides "nothing panics": every decoded request with an id is answered
//! exactly once (by the envelope, the transport or the room), unless its session was removed
//! from the room while the request waited; a session's room replies come in request order; every
//! encoded frame is a JSON object with `"jsonrpc":"2.0"` whose id, result/error and params match
//! what was emitted, and decodes back as a response or a notification; the room drives the media
//! layer consistently (endpoints never reused, candidates only for live endpoints, subscriptions
//! only to answered, unreleased publishers); a server ICE candidate reaches only its endpoint's
//! owner and never before the reply carrying that endpoint's answer.
//!
//! `ROOMD_FUZZ_INPUTS` sets the number of inputs (default 150 000, the CI slice) and
//! `ROOMD_FUZZ_SEED` the seed (default fixed). A failure prints the seed, the input number and
//! the frame; the same seed and count replay the run exactly. The documented long run:
//! `ROOMD_FUZZ_INPUTS=10000000 cargo test --release -p signaling --test fuzz_codec -- --nocapture`

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use signaling::jsonrpc::{self, Decoded, Id, Ignored};
use signaling::protocol::{
    self, Candidate, ClientRequest, Method, Notification, ParseError, Reply,
};
use signaling::room::{
    route, EndpointId, Input, MediaCommand, MediaReport, Membership, NegotiationFailure, Output,
    Removal, Room, RoomConfig, Route, SessionId,
};
use signaling::RoomError;

const DEFAULT_INPUTS: u64 = 150_000;
const DEFAULT_SEED: u64 = 0x5EED_C0DE_C0DE_C0DE;
/// Frames per room lifetime; kept below the room's per-participant backlog limit (256) so that
/// the in-order property holds for every reply.
const EPISODE: u64 = 200;
const SESSIONS: usize = 4;
const ROOM: &str = "room1";

const METHODS: &[&str] = &[
    "joinRoom",
    "publishVideo",
    "receiveVideoFrom",
    "onIceCandidate",
    "unpublishVideo",
    "unsubscribeFromVideo",
    "leaveRoom",
    "sendMessage",
    "customRequest",
    "ping",
    "connect",
    "closeSession",
];
const WEIRD_METHODS: &[&str] = &[
    "JoinRoom",
    "joinroom",
    " ping",
    "ping ",
    "",
    "rpc.discover",
    "participantJoined",
    "iceCandidate",
    "joinRoom\u{0}",
    "publishVideö",
];
const USERS: &[&str] = &[
    "alice",
    "bob",
    "carol",
    "dave",
    "john_doe",
    "",
    "Alice",
    "a b",
    "ünï😀",
    "_",
];
const SENDERS: &[&str] = &[
    "alice_webcam",
    "bob_webcam",
    "carol_webcam",
    "john_doe_webcam",
    "bob",
    "alice",
    "_",
    "",
    "zed_webcam",
    "bob_",
    "_webcam",
];
const ROOMS: &[&str] = &["room1", "room2", "", "ROOM1", "room1 "];
const CANDIDATES: &[&str] = &[
    "candidate:1 1 udp 2122260223 192.168.1.2 54321 typ host generation 0",
    "candidate:2 1 udp 1686052607 203.0.113.9 40000 typ srflx raddr 10.0.0.2 rport 40000",
    "candidate:3 1 udp 2122260223 4a2e1c5e-0000-4000-8000-000000000000.local 5000 typ host",
    "",
    "candidate:",
    "a=candidate:1 1 UDP 1 1.2.3.4 5 typ host",
];
const OFFERS: &[&str] = &[
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=rtpmap:96 VP8/90000\r\n",
    "",
    "offer",
    "v=0",
];
const SESSION_IDS: &[&str] = &["sess-0", "sess-1", "sess-3", "sess-9", "", "SESS-0"];
/// Raw JSON (and not-quite-JSON) literals substituted into frames as text: invalid and lone
/// surrogate escapes, out-of-range and non-JSON numbers, truncated structures, raw control
/// characters.
const RAW_LITERALS: &[&str] = &[
    r#""\ud800""#,
    r#""\udc00""#,
    r#""\ud800\u0041""#,
    r#""\ud83d\ude00""#,
    r#""\u00""#,
    r#""\uZZZZ""#,
    r#""\x41""#,
    r#""\""#,
    r#""\u0000""#,
    r#""\/""#,
    "\"\u{0}\"",
    "\"tab\there\"",
    "\"nl\nhere\"",
    "\"\u{7f}\u{80}\u{ffff}\"",
    "1e400",
    "-1e400",
    "1e-400",
    "-0",
    "-0.0",
    "00",
    "01",
    "1.",
    ".5",
    "+1",
    "NaN",
    "Infinity",
    "-Infinity",
    "0x10",
    "18446744073709551616",
    "-9223372036854775809",
    "9223372036854775807",
    "-9223372036854775808",
    "123456789012345678901234567890123456789",
    "nul",
    "tru",
    "[",
    "{",
    "]",
    "[1,]",
    r#"{"a":}"#,
    "'str'",
    "",
];

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim().replace('_', "");
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            };
            parsed.unwrap_or_else(|| panic!("{name}={v:?} is not a number"))
        }
        Err(_) => default,
    }
}

// ---------------------------------------------------------------------------------------------
// Input generation
// ---------------------------------------------------------------------------------------------

struct Gen {
    rng: StdRng,
}

impl Gen {
    fn below(&mut self, n: usize) -> usize {
        self.rng.gen_range(0..n)
    }

    fn one_in(&mut self, n: u32) -> bool {
        self.rng.gen_ratio(1, n)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn random_string(&mut self, max: usize) -> String {
        const ALPHABET: &[char] = &[
            'a', 'b', 'z', 'A', '0', '9', '_', '-', ' ', '"', '\\', '{', '}', '[', ']', ':', ',',
            '.', 'e', '+', '\n', '\r', '\t', '\u{0}', '\u{1f}', 'é', '€', '😀', '\u{feff}',
            '\u{fffd}', '\u{2028}', '/', 'u',
        ];
        let len = self.below(max + 1);
        (0..len)
            .map(|_| {
                if self.one_in(8) {
                    char::from_u32(self.rng.gen_range(0..0x11_0000)).unwrap_or('x')
                } else {
                    ALPHABET[self.below(ALPHABET.len())]
                }
            })
            .collect()
    }

    fn random_bytes(&mut self) -> Vec<u8> {
        const JSONISH: &[u8] = br#"{}[]":,0123456789.eE+-truefalsnl\ /"#;
        let len = if self.one_in(20) {
            self.below(2048)
        } else {
            self.below(96)
        };
        let jsonish = self.one_in(2);
        (0..len)
            .map(|_| {
                if jsonish && !self.one_in(10) {
                    JSONISH[self.below(JSONISH.len())]
                } else {
                    self.rng.gen()
                }
            })
            .collect()
    }

    /// A JSON value of any type, biased towards the values parameter readers care about.
    fn value(&mut self, depth: usize) -> Value {
        match self.below(if depth > 3 { 9 } else { 12 }) {
            0 => Value::Null,
            1 => Value::Bool(self.one_in(2)),
            2 => json!(self.rng.gen_range(-3i64..100)),
            3 => {
                let n: [Value; 9] = [
                    json!(i64::MAX),
                    json!(i64::MIN),
                    json!(u64::MAX),
                    json!(-1),
                    json!(0),
                    json!(65535),
                    json!(65536),
                    json!(u32::MAX),
                    json!(i64::from(i32::MIN)),
                ];
                n[self.below(n.len())].clone()
            }
            4 => {
                let f: [f64; 6] = [1.5, -0.0, 1e300, 5e-324, -2.5, 0.1];
                json!(f[self.below(f.len())])
            }
            5 => {
                let pools: [&[&str]; 5] = [USERS, SENDERS, ROOMS, CANDIDATES, SESSION_IDS];
                let pool = pools[self.below(pools.len())];
                Value::String(self.pick(pool).to_owned())
            }
            6 => Value::String(self.random_string(24)),
            7 => {
                const NUMERIC: &[&str] = &[
                    " 5 ",
                    "+5",
                    "0x10",
                    "1e3",
                    "-1",
                    "65536",
                    "9223372036854775808",
                    "true",
                    "TRUE",
                    "false",
                    "0",
                    "",
                    " ",
                ];
                Value::String(self.pick(NUMERIC).to_owned())
            }
            8 => Value::String(if self.one_in(2) { "true" } else { "0" }.to_owned()),
            9 => Value::Array((0..self.below(4)).map(|_| self.value(depth + 1)).collect()),
            10 => {
                let mut m = Map::new();
                for _ in 0..self.below(4) {
                    let k = self.random_string(6);
                    m.insert(k, self.value(depth + 1));
                }
                Value::Object(m)
            }
            _ => Value::String(self.random_string(4)),
        }
    }

    /// Raw text of an arbitrary parameter value: a JSON value, or a raw literal.
    fn raw_value(&mut self) -> String {
        match self.below(20) {
            0..=2 => self.pick(RAW_LITERALS).to_owned(),
            3 if self.one_in(8) => self.huge_string(),
            4 if self.one_in(4) => self.deep_nesting(),
            _ => self.value(0).to_string(),
        }
    }

    fn huge_string(&mut self) -> String {
        let len = self.rng.gen_range(1_000..100_000);
        let c = ['a', 'é', '😀', '"'][self.below(4)];
        Value::String(std::iter::repeat_n(c, len).collect()).to_string()
    }

    fn deep_nesting(&mut self) -> String {
        let depth = self.rng.gen_range(1..400);
        let (open, close) = if self.one_in(2) {
            ("[", "]")
        } else {
            (r#"{"a":"#, "}")
        };
        let mut s = open.repeat(depth);
        s.push('1');
        if !self.one_in(10) {
            s.push_str(&close.repeat(depth));
        }
        s
    }

    /// A wire id: mostly an increasing integer, sometimes any JSON type.
    fn id_raw(&mut self, seq: u64) -> String {
        const ODD: &[&str] = &[
            "null",
            "true",
            r#""x""#,
            "1.5",
            "[1]",
            "{}",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
            r#"" 7 ""#,
            r#""-3""#,
            "-1",
            r#""""#,
            "1e2",
            "0",
            r#""9223372036854775808""#,
            "1.0",
        ];
        if self.one_in(6) {
            self.pick(ODD).to_owned()
        } else {
            seq.to_string()
        }
    }

    /// Valid parameters of `method`, drawn from a small vocabulary so that joins, publications
    /// and subscriptions succeed often enough to reach the deep states of the room.
    fn params(&mut self, method: &str, me: usize) -> Vec<(String, String)> {
        let s = |v: &str| Value::String(v.to_owned()).to_string();
        let own = if self.one_in(5) {
            self.pick(&USERS[..5])
        } else {
            USERS[me]
        };
        let mut p: Vec<(String, String)> = Vec::new();
        match method {
            "joinRoom" => {
                p.push((
                    "room".into(),
                    s(if self.one_in(10) { "room2" } else { ROOM }),
                ));
                p.push(("user".into(), s(own)));
                if self.one_in(2) {
                    p.push(("dataChannels".into(), self.one_in(2).to_string()));
                }
            }
            "publishVideo" => {
                p.push(("sdpOffer".into(), s(self.pick(OFFERS))));
                p.push(("doLoopback".into(), self.one_in(4).to_string()));
            }
            "receiveVideoFrom" => {
                p.push(("sender".into(), s(self.pick(&SENDERS[..6]))));
                p.push(("sdpOffer".into(), s(self.pick(OFFERS))));
            }
            "unsubscribeFromVideo" => p.push(("sender".into(), s(self.pick(&SENDERS[..6])))),
            "onIceCandidate" => {
                let name = if self.one_in(2) {
                    own
                } else {
                    self.pick(&USERS[..5])
                };
                p.push(("endpointName".into(), s(name)));
                p.push(("candidate".into(), s(self.pick(CANDIDATES))));
                p.push(("sdpMid".into(), s("0")));
                p.push(("sdpMLineIndex".into(), "0".into()));
            }
            "sendMessage" => {
                p.push(("userMessage".into(), s(own)));
                p.push(("roomMessage".into(), s(ROOM)));
                p.push(("message".into(), s("hi")));
            }
            "ping" if self.one_in(2) => p.push(("interval".into(), "3000".into())),
            "connect" if self.one_in(2) => {
                p.push(("sessionId".into(), s(self.pick(SESSION_IDS))));
            }
            "customRequest" => p.push(("anything".into(), "1".into())),
            _ => {}
        }
        if self.one_in(8) {
            p.push(("sessionId".into(), s(self.pick(SESSION_IDS))));
        }
        p
    }

    /// A value from the vocabulary a parameter of this name expects.
    fn vocab_for(&mut self, key: &str) -> String {
        let pool = match key {
            "user" | "endpointName" | "userMessage" => USERS,
            "sender" => SENDERS,
            "room" | "roomMessage" => ROOMS,
            "candidate" => CANDIDATES,
            "sdpOffer" => OFFERS,
            "sessionId" => SESSION_IDS,
            "sdpMLineIndex" | "interval" => &["0", "1", "-1", "65535", "65536", "x", " 2 "][..],
            "sdpMid" | "doLoopback" | "dataChannels" => &["0", "true", "TRUE", "1", ""][..],
            _ => USERS,
        };
        Value::String(self.pick(pool).to_owned()).to_string()
    }

    fn mutate_params(&mut self, p: &mut Vec<(String, String)>) {
        const KEYS: &[&str] = &[
            "room",
            "user",
            "dataChannels",
            "sdpOffer",
            "doLoopback",
            "sender",
            "endpointName",
            "candidate",
            "sdpMid",
            "sdpMLineIndex",
            "userMessage",
            "roomMessage",
            "message",
            "interval",
            "sessionId",
            "token",
            "",
            "__proto__",
        ];
        match self.below(8) {
            0 | 1 if !p.is_empty() => {
                let i = self.below(p.len());
                p[i].1 = self.raw_value();
            }
            2 if !p.is_empty() => {
                let i = self.below(p.len());
                p.remove(i);
            }
            3 => {
                let key = if self.one_in(4) {
                    self.random_string(8)
                } else {
                    self.pick(KEYS).to_owned()
                };
                let key = Value::String(key).to_string();
                let key = key[1..key.len() - 1].to_owned();
                let v = self.raw_value();
                let at = self.below(p.len() + 1);
                p.insert(at, (key, v));
            }
            4 if !p.is_empty() => {
                let i = self.below(p.len());
                let dup = (p[i].0.clone(), self.raw_value());
                let at = self.below(p.len() + 1);
                p.insert(at, dup);
            }
            5 if !p.is_empty() => {
                let i = self.below(p.len());
                p[i].1 = self.vocab_for(&p[i].0.clone());
            }
            6 if !p.is_empty() => {
                let i = self.below(p.len());
                p[i].0 = r"\ud800".to_owned();
            }
            _ => {
                let key = self.pick(KEYS).to_owned();
                let v = self.vocab_for(&key);
                p.push((key, v));
            }
        }
    }

    fn mutate_envelope(&mut self, f: &mut Vec<(String, String)>) {
        let remove = |f: &mut Vec<(String, String)>, key: &str| f.retain(|(k, _)| k != key);
        let set = |f: &mut Vec<(String, String)>, key: &str, v: String| match f
            .iter_mut()
            .find(|(k, _)| k == key)
        {
            Some(e) => e.1 = v,
            None => f.push((key.to_owned(), v)),
        };
        match self.below(12) {
            0 => remove(f, "id"),
            1 => remove(f, "method"),
            2 => remove(f, "params"),
            3 => remove(f, "jsonrpc"),
            4 => {
                let v = ["\"1.0\"", "2", "2.0", "null", "\"\"", "[\"2.0\"]"][self.below(6)];
                set(f, "jsonrpc", v.to_owned());
            }
            5 => {
                let v = ["1", "null", "[]", "{}", "true", "[\"ping\"]"][self.below(6)];
                set(f, "method", v.to_owned());
            }
            6 => {
                let m = if self.one_in(3) {
                    self.random_string(10)
                } else {
                    self.pick(WEIRD_METHODS).to_owned()
                };
                set(f, "method", Value::String(m).to_string());
            }
            7 => {
                let v = [
                    "[]",
                    "[1,2]",
                    "\"x\"",
                    "7",
                    "true",
                    "null",
                    "[{\"user\":\"a\"}]",
                ][self.below(7)];
                set(f, "params", v.to_owned());
            }
            8 if !f.is_empty() => {
                let i = self.below(f.len());
                let dup = if self.one_in(2) {
                    f[i].clone()
                } else {
                    (f[i].0.clone(), self.raw_value())
                };
                let at = self.below(f.len() + 1);
                f.insert(at, dup);
            }
            9 => {
                let key = ["result", "error", "sessionId", "extra", "ID", ""][self.below(6)];
                let v = self.raw_value();
                f.push((key.to_owned(), v));
            }
            10 => {
                for i in (1..f.len()).rev() {
                    let j = self.below(i + 1);
                    f.swap(i, j);
                }
            }
            _ => {
                let inner = self.deep_nesting();
                set(f, "params", format!("{{\"room\":{inner}}}"));
            }
        }
    }

    /// Byte-level damage to a rendered frame.
    fn mutate_text(&mut self, text: String) -> String {
        let mut b = text.into_bytes();
        match self.below(8) {
            0 => {
                let at = self.below(b.len() + 1);
                b.truncate(at);
            }
            1 => {
                for _ in 0..=self.below(4) {
                    if !b.is_empty() {
                        let i = self.below(b.len());
                        b[i] ^= 1u8 << self.below(8);
                    }
                }
            }
            2 => {
                let at = self.below(b.len() + 1);
                let ins = self.random_bytes();
                b.splice(at..at, ins);
            }
            3 if !b.is_empty() => {
                let from = self.below(b.len());
                let to = (from + self.below(16) + 1).min(b.len());
                b.drain(from..to);
            }
            4 if !b.is_empty() => {
                let from = self.below(b.len());
                let to = (from + self.below(32) + 1).min(b.len());
                let copy = b[from..to].to_vec();
                let at = self.below(b.len() + 1);
                b.splice(at..at, copy);
            }
            5 => {
                let t = String::from_utf8_lossy(&b).into_owned();
                let wrapped = match self.below(4) {
                    0 => format!("[{t}]"),
                    1 => format!("[{t},{t}]"),
                    2 => "[]".to_owned(),
                    _ => format!("[{t},1,null]"),
                };
                b = wrapped.into_bytes();
            }
            6 => {
                let t = String::from_utf8_lossy(&b).into_owned();
                let wrapped = match self.below(5) {
                    0 => format!("\u{feff}{t}"),
                    1 => format!(" \t\r\n{t}\n "),
                    2 => format!("{t} x"),
                    3 => format!("{t}{t}"),
                    _ => format!("{t}\u{0}"),
                };
                b = wrapped.into_bytes();
            }
            _ => {
                let t = String::from_utf8_lossy(&b).into_owned();
                let depth = self.below(200);
                b = format!("{}{t}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes();
            }
        }
        match String::from_utf8(b) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// One inbound text frame.
    ///
    /// `me` is the sending session's number (its usual user name is `USERS[me]`) and `member`
    /// whether it is in a room: the method mix leans on both so that rooms fill up, publish
    /// and subscribe instead of answering "no participant" to almost everything.
    fn frame(&mut self, seq: u64, me: usize, member: bool) -> String {
        match self.below(40) {
            0..=3 => return String::from_utf8_lossy(&self.random_bytes()).into_owned(),
            4 | 5 => return self.random_string(64),
            _ => {}
        }
        let method = if self.one_in(30) {
            self.pick(WEIRD_METHODS)
        } else if self.one_in(10) {
            self.pick(METHODS)
        } else if !member && self.one_in(2) {
            "joinRoom"
        } else {
            // Weighted: negotiation methods often, the ones that end membership rarely.
            const MIX: &[&str] = &[
                "joinRoom",
                "publishVideo",
                "publishVideo",
                "publishVideo",
                "receiveVideoFrom",
                "receiveVideoFrom",
                "receiveVideoFrom",
                "receiveVideoFrom",
                "onIceCandidate",
                "onIceCandidate",
                "onIceCandidate",
                "unpublishVideo",
                "unsubscribeFromVideo",
                "unsubscribeFromVideo",
                "sendMessage",
                "sendMessage",
                "customRequest",
                "ping",
                "connect",
            ];
            if self.one_in(25) {
                self.pick(&["leaveRoom", "closeSession"])
            } else {
                self.pick(MIX)
            }
        };
        let mut params = self.params(method, me);
        // Most frames are valid, so the room gets far; the rest carry one to four mutations.
        if self.one_in(2) {
            for _ in 0..=self.below(4) {
                self.mutate_params(&mut params);
            }
        }
        let mut fields = vec![
            ("id".to_owned(), self.id_raw(seq)),
            (
                "method".to_owned(),
                Value::String(method.to_owned()).to_string(),
            ),
            ("params".to_owned(), render(&params)),
            ("jsonrpc".to_owned(), r#""2.0""#.to_owned()),
        ];
        if self.one_in(5) {
            for _ in 0..=self.below(2) {
                self.mutate_envelope(&mut fields);
            }
        }
        let text = render(&fields);
        if self.one_in(8) {
            self.mutate_text(text)
        } else {
            text
        }
    }
}

/// A JSON object from (key, raw value text) pairs; duplicates and invalid values are kept.
fn render(fields: &[(String, String)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push('"');
        s.push_str(k);
        s.push_str("\":");
        s.push_str(v);
    }
    s.push('}');
    s
}

/// One valid frame per method, for the deterministic truncation and byte-flip prelude.
fn canonical_frames() -> Vec<String> {
    let cand = CANDIDATES[0];
    [
        json!({"id":1,"method":"joinRoom","params":{"room":ROOM,"user":"alice","dataChannels":true},"jsonrpc":"2.0"}),
        json!({"id":2,"method":"publishVideo","params":{"sdpOffer":OFFERS[0],"doLoopback":false},"jsonrpc":"2.0"}),
        json!({"id":3,"method":"receiveVideoFrom","params":{"sender":"bob_webcam","sdpOffer":OFFERS[0]},"jsonrpc":"2.0"}),
        json!({"id":4,"method":"onIceCandidate","params":{"endpointName":"alice","candidate":cand,"sdpMid":"0","sdpMLineIndex":0},"jsonrpc":"2.0"}),
        json!({"id":5,"method":"unpublishVideo","params":{},"jsonrpc":"2.0"}),
        json!({"id":6,"method":"unsubscribeFromVideo","params":{"sender":"bob_webcam"},"jsonrpc":"2.0"}),
        json!({"id":7,"method":"leaveRoom","params":{},"jsonrpc":"2.0"}),
        json!({"id":8,"method":"sendMessage","params":{"userMessage":"alice","roomMessage":ROOM,"message":"hé 😀"},"jsonrpc":"2.0"}),
        json!({"id":9,"method":"customRequest","params":{"x":[1,{"y":null}]},"jsonrpc":"2.0"}),
        json!({"id":10,"method":"ping","params":{"interval":3000,"sessionId":"sess-0"},"jsonrpc":"2.0"}),
        json!({"id":11,"method":"connect","params":{"sessionId":"sess-1"},"jsonrpc":"2.0"}),
        json!({"id":12,"method":"closeSession","jsonrpc":"2.0"}),
    ]
    .iter()
    .map(Value::to_string)
    .collect()
}

// ---------------------------------------------------------------------------------------------
// The harness: transport, room directory and media layer around real rooms
// ---------------------------------------------------------------------------------------------

/// A room request still waiting for its reply.
struct Open {
    session: SessionId,
    wire: Id,
}

#[derive(Default, Debug)]
struct Stats {
    inputs: u64,
    malformed: u64,
    ignored_other: u64,
    notifications_in: u64,
    parse_errors: u64,
    transport: u64,
    routed_answers: u64,
    room_requests: u64,
    ok_replies: u64,
    error_replies: u64,
    joined: u64,
    rooms_created: u64,
    sdp_answers: u64,
    subscriptions: u64,
    server_candidates: u64,
    notifications_out: u64,
    excused: u64,
}

#[derive(Default)]
struct MediaModel {
    // Ordered containers: the harness picks from them, and a run must replay from its seed.
    created: BTreeSet<EndpointId>,
    answered: BTreeSet<EndpointId>,
    released: BTreeSet<EndpointId>,
    /// Publish/Subscribe commands not yet answered by the "media layer", with their room.
    pending: Vec<(String, EndpointId)>,
    /// Endpoints whose answer has reached this session.
    answer_delivered: HashMap<EndpointId, SessionId>,
    next_candidate: u64,
}

/// What the server knows of a session's room (recorded from `Admitted` / `Removed`).
#[derive(Clone, Debug)]
enum Member {
    In { room: String, user: String },
    Closed { room: String },
}

struct Harness {
    gen: Gen,
    /// The room directory: created by the first join, dropped when empty.
    rooms: BTreeMap<String, Room>,
    next_serial: u32,
    now: Instant,
    sessions: Vec<SessionId>,
    membership: HashMap<SessionId, Member>,
    next_internal: Id,
    open: BTreeMap<Id, Open>,
    /// Requests of a session with an internal id below this were made before the session was
    /// removed from its room; they may legitimately stay unanswered.
    removed_before: HashMap<SessionId, Id>,
    last_reply: HashMap<SessionId, Id>,
    media: MediaModel,
    stats: Stats,
}

impl Harness {
    fn new(seed: u64) -> Self {
        Self {
            gen: Gen {
                rng: StdRng::seed_from_u64(seed),
            },
            rooms: BTreeMap::new(),
            next_serial: 1,
            now: Instant::now(),
            sessions: (0..SESSIONS)
                .map(|i| SessionId(format!("sess-{i}")))
                .collect(),
            membership: HashMap::new(),
            next_internal: 0,
            open: BTreeMap::new(),
            removed_before: HashMap::new(),
            last_reply: HashMap::new(),
            media: MediaModel::default(),
            stats: Stats::default(),
        }
    }

    /// One inbound frame from session `from`, then whatever the "media layer" does.
    fn feed(&mut self, from: usize, text: &str) {
        self.stats.inputs += 1;
        match jsonrpc::decode(text) {
            Decoded::Request(req) => self.request(from, req),
            Decoded::Notification { .. } => self.stats.notifications_in += 1,
            Decoded::Ignored(Ignored::Malformed) => self.stats.malformed += 1,
            Decoded::Ignored(_) => self.stats.ignored_other += 1,
        }
        self.media_step();
    }

    fn request(&mut self, from: usize, req: jsonrpc::Request) {
        let session = self.sessions[from].clone();
        let wire = req.id;
        match protocol::parse(&req.method, &req.params) {
            Err(e) => {
                self.stats.parse_errors += 1;
                let (code, message, sid) = match &e {
                    ParseError::UnknownMethod => (
                        jsonrpc::METHOD_NOT_FOUND,
                        "Method not found".to_owned(),
                        None,
                    ),
                    ParseError::ParamsNotAnObject => {
                        (jsonrpc::INVALID_PARAMS, "Invalid params".to_owned(), None)
                    }
                    ParseError::Room(err) => (
                        err.code(),
                        err.to_string(),
                        err.carries_session_id().then_some(session.0.as_str()),
                    ),
                };
                let text = jsonrpc::encode_error(wire, code, &message, sid);
                check_error_frame(&text, wire, code, &message, sid);
            }
            Ok(Method::Transport(t)) => {
                self.stats.transport += 1;
                self.transport(&session, wire, t, &req.params);
            }
            Ok(Method::Room(request)) => self.room_request(session, wire, request),
        }
    }

    /// What `roomd`'s connection does with a room method: `room::route` decides, then the
    /// request goes to the session's room, to the room it joins, or is answered at once.
    fn room_request(&mut self, session: SessionId, wire: Id, request: ClientRequest) {
        let view = match self.membership.get(&session) {
            None => Membership::None,
            Some(Member::In { room, user }) => Membership::In { room, user },
            Some(Member::Closed { room }) => Membership::Closed { room },
        };
        let target = match route(&session, view, &request) {
            Route::Answer(err) => {
                self.stats.routed_answers += 1;
                let sid = err.carries_session_id().then_some(session.0.as_str());
                let text = jsonrpc::encode_error(wire, err.code(), &err.to_string(), sid);
                check_error_frame(&text, wire, err.code(), &err.to_string(), sid);
                return;
            }
            Route::Member => match self.membership.get(&session) {
                Some(Member::In { room, .. }) => room.clone(),
                other => panic!("route sent a non-member to a room: {other:?}"),
            },
            Route::Join(name) => {
                if !self.rooms.contains_key(&name) {
                    self.stats.rooms_created += 1;
                    let room = Room::new(name.clone(), self.next_serial, RoomConfig::default());
                    self.next_serial += 1;
                    self.rooms.insert(name.clone(), room);
                }
                name
            }
        };
        self.stats.room_requests += 1;
        let id = self.next_internal;
        self.next_internal += 1;
        self.open.insert(
            id,
            Open {
                session: session.clone(),
                wire,
            },
        );
        let input = Input::Request {
            session,
            id,
            request,
        };
        self.input(&target, input);
    }

    /// Feeds one input to a room (if it still exists) and executes everything it emits.
    fn input(&mut self, room: &str, input: Input) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        r.handle(self.now, input);
        self.drain(room);
    }

    fn drain(&mut self, room: &str) {
        while let Some(out) = self.rooms.get_mut(room).and_then(Room::poll_output) {
            self.output(room, out);
        }
        // The driver drops a room once it is empty.
        if self.rooms.get(room).is_some_and(Room::is_empty) {
            self.rooms.remove(room);
        }
    }

    /// The room a session is a member of.
    fn room_of(&self, session: &SessionId) -> Option<String> {
        match self.membership.get(session) {
            Some(Member::In { room, .. }) => Some(room.clone()),
            _ => None,
        }
    }

    /// What `roomd`'s connection does with the transport built-ins.
    fn transport(
        &mut self,
        session: &SessionId,
        wire: Id,
        t: protocol::TransportRequest,
        params: &jsonrpc::Params,
    ) {
        use protocol::TransportRequest as T;
        match t {
            T::Ping { .. } => {
                let echoed = params.session_id();
                let text = jsonrpc::encode_pong(wire, echoed);
                let v = check_result_frame(&text, wire);
                assert_eq!(v["result"]["value"], "pong", "{text}");
                assert_eq!(v["result"].get("sessionId").and_then(Value::as_str), echoed);
            }
            T::Connect { session_id } => match session_id {
                Some(sid) => match self.sessions.iter().find(|s| s.0 == sid).cloned() {
                    Some(known) => {
                        let text = jsonrpc::encode_result(
                            wire,
                            Value::from("reconnection successful"),
                            &sid,
                        );
                        let v = check_result_frame(&text, wire);
                        assert_eq!(v["result"]["sessionId"], sid.as_str(), "{text}");
                        if let Some(room) = self.room_of(&known) {
                            self.input(&room, Input::Reconnected { session: known });
                        }
                    }
                    None => {
                        let text = jsonrpc::encode_error(
                            wire,
                            jsonrpc::RECONNECTION_ERROR,
                            "reconnection error",
                            None,
                        );
                        check_error_frame(
                            &text,
                            wire,
                            jsonrpc::RECONNECTION_ERROR,
                            "reconnection error",
                            None,
                        );
                    }
                },
                None => {
                    let text = jsonrpc::encode_result(wire, Value::from("OK"), &session.0);
                    let v = check_result_frame(&text, wire);
                    assert_eq!(v["result"]["value"], "OK", "{text}");
                }
            },
            T::CloseSession => {
                let text = jsonrpc::encode_plain_result(wire, Value::from("bye"));
                let v = check_result_frame(&text, wire);
                assert_eq!(v["result"], "bye", "{text}");
                if let Some(room) = self.room_of(session) {
                    let input = Input::Evict {
                        session: session.clone(),
                    };
                    self.input(&room, input);
                }
            }
        }
    }

    fn output(&mut self, room: &str, out: Output) {
        match out {
            Output::Reply {
                session,
                id,
                result,
            } => self.reply(session, id, result),
            Output::Notify {
                session,
                notification,
            } => self.notification(&session, &notification),
            Output::Media(cmd) => self.media_command(room, cmd),
            Output::CloseSession { .. } => {}
            Output::Admitted { session, user } => {
                let before = self.membership.get(&session);
                assert!(
                    !matches!(before, Some(Member::In { .. })),
                    "{session} admitted to {room} while {before:?}"
                );
                let room = room.to_owned();
                self.membership.insert(session, Member::In { room, user });
            }
            Output::Removed { session, reason } => {
                match self.membership.get(&session) {
                    Some(Member::In { room: r, .. }) if r == room => {}
                    other => panic!("{session} removed from {room} while {other:?}"),
                }
                if reason == Removal::RoomClosed {
                    let room = room.to_owned();
                    self.membership
                        .insert(session.clone(), Member::Closed { room });
                } else {
                    self.membership.remove(&session);
                }
                self.removed_before.insert(session, self.next_internal);
            }
        }
    }

    fn reply(&mut self, session: SessionId, id: Id, result: Result<Reply, RoomError>) {
        let open = self
            .open
            .remove(&id)
            .unwrap_or_else(|| panic!("reply to request {id} that is unknown or already answered"));
        assert_eq!(open.session, session, "reply to the wrong session");
        if let Some(last) = self.last_reply.insert(session.clone(), id) {
            assert!(last < id, "{session}: reply to {id} after reply to {last}");
        }
        match result {
            Ok(reply) => {
                self.stats.ok_replies += 1;
                let text = jsonrpc::encode_result(open.wire, reply.to_value(), &session.0);
                let v = check_result_frame(&text, open.wire);
                assert_eq!(v["result"]["sessionId"], session.0.as_str(), "{text}");
                match &reply {
                    Reply::Joined(peers) => {
                        self.stats.joined += 1;
                        let listed = v["result"]["value"].as_array().map(Vec::len);
                        assert_eq!(listed, Some(peers.len()), "{text}");
                    }
                    Reply::SdpAnswer(answer) => {
                        self.stats.sdp_answers += 1;
                        assert_eq!(v["result"]["sdpAnswer"], answer.as_str(), "{text}");
                        let endpoint = answer
                            .strip_prefix("answer-")
                            .and_then(|n| n.parse().ok())
                            .map(EndpointId)
                            .unwrap_or_else(|| panic!("answer {answer:?} not ours"));
                        self.media.answer_delivered.insert(endpoint, session);
                    }
                    Reply::Empty => {}
                }
            }
            Err(err) => {
                self.stats.error_replies += 1;
                let sid = err.carries_session_id().then_some(session.0.as_str());
                let text = jsonrpc::encode_error(open.wire, err.code(), &err.to_string(), sid);
                check_error_frame(&text, open.wire, err.code(), &err.to_string(), sid);
            }
        }
    }

    fn notification(&mut self, session: &SessionId, n: &Notification) {
        self.stats.notifications_out += 1;
        let text = n.encode();
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("notification is not JSON ({e}): {text}"));
        assert_eq!(v["jsonrpc"], "2.0", "{text}");
        assert_eq!(v["method"], n.method(), "{text}");
        assert_eq!(v["params"], n.params(), "{text}");
        assert!(v.get("id").is_none(), "notification with an id: {text}");
        assert_eq!(
            jsonrpc::decode(&text),
            Decoded::Notification {
                method: n.method().to_owned()
            },
            "{text}"
        );
        if let Notification::IceCandidate { candidate, .. } = n {
            self.stats.server_candidates += 1;
            let endpoint = candidate
                .candidate
                .strip_prefix("srv-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|n| n.parse().ok())
                .map(EndpointId)
                .unwrap_or_else(|| panic!("candidate {candidate:?} not ours"));
            match self.media.answer_delivered.get(&endpoint) {
                Some(owner) => assert_eq!(owner, session, "candidate to a non-owner"),
                None => panic!("server candidate of {endpoint:?} before its answer"),
            }
        }
    }

    fn media_command(&mut self, room: &str, cmd: MediaCommand) {
        let m = &mut self.media;
        match cmd {
            MediaCommand::Publish { endpoint, .. } => {
                assert!(m.created.insert(endpoint), "{endpoint:?} reused");
                m.pending.push((room.to_owned(), endpoint));
            }
            MediaCommand::Subscribe {
                endpoint,
                publisher,
                ..
            } => {
                assert!(
                    m.answered.contains(&publisher) && !m.released.contains(&publisher),
                    "subscription to {publisher:?}, which is not a live answered publisher"
                );
                assert!(m.created.insert(endpoint), "{endpoint:?} reused");
                m.pending.push((room.to_owned(), endpoint));
                self.stats.subscriptions += 1;
            }
            MediaCommand::AddCandidate { endpoint, .. } => {
                assert!(
                    m.created.contains(&endpoint) && !m.released.contains(&endpoint),
                    "candidate for {endpoint:?}, which is not live"
                );
            }
            MediaCommand::ExpectSubscriber { publisher } => {
                assert!(
                    m.answered.contains(&publisher) && !m.released.contains(&publisher),
                    "subscriber expected for {publisher:?}, which is not a live answered publisher"
                );
            }
            MediaCommand::Release { endpoint } => {
                assert!(
                    m.created.contains(&endpoint),
                    "release of unknown {endpoint:?}"
                );
                m.released.insert(endpoint);
            }
        }
    }

    /// The "media layer": answers most negotiations at once and some later, and reports local
    /// candidates and failures now and then; the transport reports disconnections and time
    /// passes.
    fn media_step(&mut self) {
        loop {
            let pending = std::mem::take(&mut self.media.pending);
            let (ready, later): (Vec<_>, Vec<_>) =
                pending.into_iter().partition(|_| !self.gen.one_in(6));
            self.media.pending = later;
            if ready.is_empty() {
                break;
            }
            for (room, endpoint) in ready {
                if self.gen.one_in(2) {
                    self.local_candidate(&room, endpoint);
                }
                self.negotiated(&room, endpoint);
            }
        }
        let session = self.sessions[self.gen.below(SESSIONS)].clone();
        let room_of_session = self.room_of(&session);
        let any_room = if self.rooms.is_empty() {
            None
        } else {
            let i = self.gen.below(self.rooms.len());
            self.rooms.keys().nth(i).cloned()
        };
        match self.gen.below(40) {
            0 | 1 => {
                // A local candidate for any endpoint ever created in a live room (answered,
                // negotiating or released).
                let n = self.media.created.len();
                if n > 0 {
                    let e = *self
                        .media
                        .created
                        .iter()
                        .nth(self.gen.below(n))
                        .expect("n > 0");
                    if let Some(room) = any_room {
                        self.local_candidate(&room, e);
                    }
                }
            }
            2 => {
                if let (Some(&e), Some(room)) = (self.media.created.iter().next_back(), any_room) {
                    let report = MediaReport::Failed {
                        endpoint: e,
                        description: self.gen.random_string(12),
                    };
                    self.input(&room, Input::Media(report));
                }
            }
            3 => {
                if let Some(room) = room_of_session {
                    self.input(&room, Input::Disconnected { session });
                }
            }
            4 => {
                if let Some(room) = room_of_session {
                    self.input(&room, Input::Reconnected { session });
                }
            }
            5 => {
                self.now += Duration::from_millis(self.gen.rng.gen_range(0..15_000));
                let names: Vec<String> = self.rooms.keys().cloned().collect();
                for name in names {
                    if let Some(r) = self.rooms.get_mut(&name) {
                        r.handle_timeout(self.now);
                    }
                    self.drain(&name);
                }
            }
            6 if self.gen.one_in(20) => {
                if let Some(room) = any_room {
                    self.input(&room, Input::Close);
                }
            }
            7 if !self.media.pending.is_empty() => {
                // A deferred negotiation finishes now.
                let i = self.gen.below(self.media.pending.len());
                let (room, e) = self.media.pending.swap_remove(i);
                self.negotiated(&room, e);
            }
            _ => {}
        }
    }

    fn local_candidate(&mut self, room: &str, endpoint: EndpointId) {
        self.media.next_candidate += 1;
        let report = MediaReport::LocalCandidate {
            endpoint,
            candidate: Candidate {
                candidate: format!("srv-{}-{}", endpoint.0, self.media.next_candidate),
                sdp_mid: Some("0".into()),
                sdp_m_line_index: Some(0),
            },
        };
        self.input(room, Input::Media(report));
    }

    fn negotiated(&mut self, room: &str, endpoint: EndpointId) {
        let report = if self.gen.one_in(5) {
            let failure = match self.gen.below(5) {
                0 => NegotiationFailure::Unavailable,
                1 => NegotiationFailure::OfferRejected(self.gen.random_string(16)),
                2 => NegotiationFailure::EndpointCreation,
                3 => NegotiationFailure::NoAnswer,
                _ => NegotiationFailure::PublisherGone,
            };
            MediaReport::Rejected { endpoint, failure }
        } else {
            if !self.media.released.contains(&endpoint) && self.rooms.contains_key(room) {
                self.media.answered.insert(endpoint);
            }
            MediaReport::Answered {
                endpoint,
                answer: format!("answer-{}", endpoint.0),
            }
        };
        self.input(room, Input::Media(report));
    }

    /// Ends an episode: every negotiation finishes, every request must have been answered (or
    /// its session removed from its room meanwhile); then every room and session starts fresh.
    fn end_episode(&mut self) {
        while !self.media.pending.is_empty() {
            for (room, e) in std::mem::take(&mut self.media.pending) {
                self.negotiated(&room, e);
            }
        }
        for (id, open) in std::mem::take(&mut self.open) {
            let excused = self
                .removed_before
                .get(&open.session)
                .is_some_and(|&before| id < before);
            assert!(
                excused,
                "request {id} (wire id {}) of {} never answered",
                open.wire, open.session
            );
            self.stats.excused += 1;
        }
        self.rooms.clear();
        self.membership.clear();
        self.media = MediaModel::default();
        self.removed_before.clear();
        self.last_reply.clear();
    }
}

fn check_envelope(text: &str, wire: Id) -> Value {
    let v: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {text}"));
    assert!(v.is_object(), "{text}");
    assert_eq!(v["jsonrpc"], "2.0", "{text}");
    assert_eq!(v["id"].as_i64(), Some(wire), "{text}");
    assert_eq!(
        jsonrpc::decode(text),
        Decoded::Ignored(Ignored::Response),
        "a reply must read back as a response: {text}"
    );
    v
}

fn check_result_frame(text: &str, wire: Id) -> Value {
    let v = check_envelope(text, wire);
    assert!(
        v.get("result").is_some() && v.get("error").is_none(),
        "{text}"
    );
    v
}

fn check_error_frame(text: &str, wire: Id, code: i64, message: &str, sid: Option<&str>) {
    let v = check_envelope(text, wire);
    assert!(v.get("result").is_none(), "{text}");
    let e = &v["error"];
    assert_eq!(e["code"].as_i64(), Some(code), "{text}");
    assert_eq!(e["message"].as_str(), Some(message), "{text}");
    assert_eq!(e.get("sessionId").and_then(Value::as_str), sid, "{text}");
}

/// Prints how to reproduce when the current input makes the test fail.
struct Context<'a> {
    seed: u64,
    index: u64,
    total: u64,
    frame: &'a str,
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let shown: String = self.frame.chars().take(2000).collect();
            eprintln!(
                "fuzz_codec failed: ROOMD_FUZZ_SEED={} ROOMD_FUZZ_INPUTS={} (input #{}, {} bytes): {shown:?}",
                self.seed,
                self.total,
                self.index,
                self.frame.len()
            );
        }
    }
}

fn run(seed: u64, total: u64) -> Stats {
    let mut h = Harness::new(seed);
    let mut index = 0u64;
    // Deterministic prelude: every canonical frame truncated at every byte and with every byte
    // flipped, sent by a fresh session after a successful join so the room is populated.
    let mut prelude = Vec::new();
    for frame in canonical_frames() {
        let bytes = frame.as_bytes();
        for cut in 0..=bytes.len() {
            prelude.push(String::from_utf8_lossy(&bytes[..cut]).into_owned());
        }
        for i in 0..bytes.len() {
            for mask in [0x01u8, 0x80] {
                let mut b = bytes.to_vec();
                b[i] ^= mask;
                prelude.push(String::from_utf8_lossy(&b).into_owned());
            }
        }
    }
    for frame in prelude
        .iter()
        .take(usize::try_from(total).unwrap_or(usize::MAX))
    {
        let _ctx = Context {
            seed,
            index,
            total,
            frame,
        };
        let from = (index % SESSIONS as u64) as usize;
        h.feed(from, frame);
        index += 1;
        if index % EPISODE == 0 {
            h.end_episode();
        }
    }
    while index < total {
        let from = h.gen.below(SESSIONS);
        let member = h.room_of(&h.sessions[from]).is_some();
        let frame = h.gen.frame(index, from, member);
        let _ctx = Context {
            seed,
            index,
            total,
            frame: &frame,
        };
        h.feed(from, &frame);
        index += 1;
        if index % EPISODE == 0 {
            h.end_episode();
        }
    }
    let _ctx = Context {
        seed,
        index,
        total,
        frame: "<end of run>",
    };
    h.end_episode();
    h.stats
}

#[test]
fn fuzz_jsonrpc_frames_through_decode_parse_and_room() {
    let total = env_u64("ROOMD_FUZZ_INPUTS", DEFAULT_INPUTS);
    let seed = env_u64("ROOMD_FUZZ_SEED", DEFAULT_SEED);
    let t0 = Instant::now();
    let stats = run(seed, total);
    let elapsed = t0.elapsed();
    println!(
        "fuzz_codec: {} inputs, seed {seed}, {:.1} s ({:.0} inputs/s): {stats:?}",
        stats.inputs,
        elapsed.as_secs_f64(),
        stats.inputs as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    assert_eq!(stats.inputs, total);
    // The generator must keep reaching the deep states, or the properties above test little.
    if total >= DEFAULT_INPUTS {
        for (what, n) in [
            ("malformed frames", stats.malformed),
            ("parse errors", stats.parse_errors),
            ("transport requests", stats.transport),
            ("joins", stats.joined),
            ("SDP answers", stats.sdp_answers),
            ("subscriptions", stats.subscriptions),
            ("server candidates", stats.server_candidates),
            ("error replies", stats.error_replies),
        ] {
            assert!(n >= 50, "only {n} {what} in {total} inputs: {stats:?}");
        }
    }
}
