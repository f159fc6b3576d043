//! JSON-RPC 2.0 envelope with the kurento-jsonrpc transport habits (docs/protocol.md §1).
//!
//! Owns turning one inbound text frame into a [`Decoded`] value and turning replies,
//! errors and notifications into outbound text. Does not know what the methods mean
//! (that is [`crate::protocol`]) nor who the recipients are (that is [`crate::room`]).
//!
//! Inbound habits reproduced: `jsonrpc` optional; ids are integers or numeric strings
//! (answered as integers); `params` may be absent or null; `params.sessionId` is removed
//! before anything reads the parameters; requests without an id are notifications and are
//! not executed; batches, non-objects, malformed JSON and client-sent responses are ignored.
//!
//! Outbound habits reproduced: `"jsonrpc":"2.0"` on every message; successful results are
//! objects with `sessionId` added, non-object results wrapped as `{"value":..,"sessionId":..}`;
//! room errors carry `error.sessionId`; `-1` exception errors carry none; notifications carry
//! neither `id` nor `sessionId`.

use serde_json::{json, Map, Value};

/// A JSON-RPC request id. Kurento reads ids with `getAsInt()`: numbers and numeric strings.
pub type Id = i64;

/// The parameters of a request, with `sessionId` already taken out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params {
    map: Map<String, Value>,
    session_id: Option<String>,
    not_an_object: bool,
}

impl Params {
    /// Builds parameters from a JSON object (used by tests and benches).
    pub fn from_map(mut map: Map<String, Value>) -> Self {
        let session_id = match map.remove("sessionId") {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        Self {
            map,
            session_id,
            not_an_object: false,
        }
    }

    /// The value of one parameter, if present (a JSON `null` counts as present here).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    /// All parameters except `sessionId`.
    pub fn map(&self) -> &Map<String, Value> {
        &self.map
    }

    /// The `sessionId` the client put into `params`, if any.
    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }

    /// True when `params` was present but not an object (an array or a primitive).
    pub fn is_not_an_object(&self) -> bool {
        self.not_an_object
    }
}

/// One inbound request that carries an id and therefore expects an answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The request id, echoed in the answer.
    pub id: Id,
    /// The method name.
    pub method: String,
    /// The parameters.
    pub params: Params,
}

/// Why an inbound frame was ignored without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// Not JSON at all.
    Malformed,
    /// JSON, but not an object (a batch array, a number, ...). Batches are not supported.
    NotAnObject,
    /// An object without `method`: a response sent by the client (the Java client does this
    /// for notifications it does not know).
    Response,
    /// A request whose id is not an integer or a numeric string (Kurento drops these).
    BadId,
}

/// The result of decoding one inbound text frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// A request with an id.
    Request(Request),
    /// A request without an id: a JSON-RPC notification. Never executed (DEVIATION: the
    /// original executed nothing either but answered a NullPointerException error).
    Notification {
        /// The method it named.
        method: String,
    },
    /// Nothing to answer.
    Ignored(Ignored),
}

/// Decodes one inbound text frame.
pub fn decode(text: &str) -> Decoded {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => return Decoded::Ignored(Ignored::Malformed),
    };
    let Value::Object(mut obj) = value else {
        return Decoded::Ignored(Ignored::NotAnObject);
    };
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        // A `method` of the wrong type is as useless as none: nothing to dispatch on.
        _ => return Decoded::Ignored(Ignored::Response),
    };
    let id = match obj.remove("id") {
        None | Some(Value::Null) => None,
        Some(v) => match id_of(&v) {
            Some(id) => Some(id),
            None => return Decoded::Ignored(Ignored::BadId),
        },
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Params::default(),
        Some(Value::Object(map)) => Params::from_map(map),
        Some(_) => Params {
            not_an_object: true,
            ..Params::default()
        },
    };
    match id {
        Some(id) => Decoded::Request(Request { id, method, params }),
        None => Decoded::Notification { method },
    }
}

/// Kurento's `getAsInt()`: an integral number or a string holding one; anything else fails.
fn id_of(v: &Value) -> Option<Id> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<Id>().ok(),
        _ => None,
    }
}

/// A successful result. Objects get `sessionId` appended; anything else is wrapped as
/// `{"value":<result>,"sessionId":S}` (this is how `joinRoom`'s array travels).
pub fn encode_result(id: Id, result: Value, session_id: &str) -> String {
    let result = match result {
        Value::Object(mut map) => {
            map.insert("sessionId".into(), Value::String(session_id.into()));
            Value::Object(map)
        }
        other => json!({ "value": other, "sessionId": session_id }),
    };
    json!({ "id": id, "result": result, "jsonrpc": "2.0" }).to_string()
}

/// A result sent verbatim, without `sessionId` (the `closeSession` `"bye"`).
pub fn encode_plain_result(id: Id, result: Value) -> String {
    json!({ "id": id, "result": result, "jsonrpc": "2.0" }).to_string()
}

/// The `ping` answer: `{"value":"pong"}`, echoing a `sessionId` the client put in params.
pub fn encode_pong(id: Id, echoed_session_id: Option<&str>) -> String {
    let mut result = Map::new();
    result.insert("value".into(), Value::String("pong".into()));
    if let Some(s) = echoed_session_id {
        result.insert("sessionId".into(), Value::String(s.into()));
    }
    encode_plain_result(id, Value::Object(result))
}

/// An error answer. `session_id` is `Some` for Kurento room errors (sent through the
/// transaction, which injects `error.sessionId`) and `None` for the `-1` exception path and
/// the transport/envelope errors.
pub fn encode_error(id: Id, code: i64, message: &str, session_id: Option<&str>) -> String {
    let mut error = Map::new();
    error.insert("code".into(), Value::from(code));
    error.insert("message".into(), Value::String(message.into()));
    if let Some(s) = session_id {
        error.insert("sessionId".into(), Value::String(s.into()));
    }
    json!({ "id": id, "error": error, "jsonrpc": "2.0" }).to_string()
}

/// A server-to-client notification: no id, no sessionId.
pub fn encode_notification(method: &str, params: Value) -> String {
    json!({ "method": method, "params": params, "jsonrpc": "2.0" }).to_string()
}

/// JSON-RPC "method not found" (DEVIATION: the original never answered unknown methods).
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC "invalid params", for `params` that is not an object.
pub const INVALID_PARAMS: i64 = -32602;
/// kurento-jsonrpc's code for `connect` with an unknown session id.
pub const RECONNECTION_ERROR: i64 = 40007;

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Request {
        match decode(text) {
            Decoded::Request(r) => r,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    #[test]
    fn request_without_jsonrpc_member_is_accepted() {
        let r = req(r#"{"method":"ping","id":3}"#);
        assert_eq!((r.id, r.method.as_str()), (3, "ping"));
    }

    #[test]
    fn numeric_string_id_is_read_as_integer() {
        assert_eq!(req(r#"{"method":"ping","id":"5"}"#).id, 5);
    }

    #[test]
    fn non_numeric_fractional_and_null_ids_are_dropped() {
        for text in [
            r#"{"method":"ping","id":"x"}"#,
            r#"{"method":"ping","id":1.5}"#,
            r#"{"method":"ping","id":true}"#,
        ] {
            assert_eq!(decode(text), Decoded::Ignored(Ignored::BadId), "{text}");
        }
        // An explicit null id is the same as no id: a notification.
        assert_eq!(
            decode(r#"{"method":"joinRoom","id":null}"#),
            Decoded::Notification {
                method: "joinRoom".into()
            }
        );
    }

    #[test]
    fn params_session_id_is_stripped_before_validation() {
        let r = req(r#"{"method":"leaveRoom","params":{"sessionId":"abc","x":1},"id":1}"#);
        assert_eq!(r.params.session_id(), Some("abc"));
        assert!(r.params.get("sessionId").is_none());
        assert_eq!(r.params.get("x"), Some(&json!(1)));
    }

    #[test]
    fn absent_and_null_params_are_empty() {
        assert!(req(r#"{"method":"leaveRoom","id":1}"#)
            .params
            .map()
            .is_empty());
        assert!(req(r#"{"method":"leaveRoom","params":null,"id":1}"#)
            .params
            .map()
            .is_empty());
        assert!(req(r#"{"method":"leaveRoom","params":[1],"id":1}"#)
            .params
            .is_not_an_object());
    }

    #[test]
    fn malformed_batch_and_responses_are_ignored() {
        assert_eq!(decode("{nope"), Decoded::Ignored(Ignored::Malformed));
        assert_eq!(
            decode(r#"[{"method":"ping","id":1}]"#),
            Decoded::Ignored(Ignored::NotAnObject)
        );
        assert_eq!(
            decode(r#"{"jsonrpc":"2.0","error":{"code":1}}"#),
            Decoded::Ignored(Ignored::Response)
        );
    }

    #[test]
    fn object_result_gets_session_id_and_array_is_wrapped_in_value() {
        let v: Value = serde_json::from_str(&encode_result(3, json!({"sdpAnswer":"x"}), "s1"))
            .expect("encoder output is JSON");
        assert_eq!(
            v,
            json!({"id":3,"result":{"sdpAnswer":"x","sessionId":"s1"},"jsonrpc":"2.0"})
        );
        let v: Value =
            serde_json::from_str(&encode_result(1, json!([]), "s1")).expect("encoder output");
        assert_eq!(
            v,
            json!({"id":1,"result":{"value":[],"sessionId":"s1"},"jsonrpc":"2.0"})
        );
    }

    #[test]
    fn pong_carries_no_session_id_unless_echoed() {
        let v: Value = serde_json::from_str(&encode_pong(0, None)).expect("encoder output");
        assert_eq!(v, json!({"id":0,"result":{"value":"pong"},"jsonrpc":"2.0"}));
        let v: Value = serde_json::from_str(&encode_pong(0, Some("s"))).expect("encoder output");
        assert_eq!(v["result"]["sessionId"], "s");
    }

    #[test]
    fn room_error_has_session_id_inside_error_and_exception_error_has_none() {
        let v: Value =
            serde_json::from_str(&encode_error(4, 104, "m", Some("s"))).expect("encoder output");
        assert_eq!(
            v,
            json!({"id":4,"error":{"code":104,"message":"m","sessionId":"s"},"jsonrpc":"2.0"})
        );
        let v: Value =
            serde_json::from_str(&encode_error(5, -1, "m", None)).expect("encoder output");
        assert!(v["error"].get("sessionId").is_none());
    }

    #[test]
    fn notification_has_no_id_and_no_session_id() {
        let v: Value =
            serde_json::from_str(&encode_notification("participantJoined", json!({"id":"a"})))
                .expect("encoder output");
        assert_eq!(
            v,
            json!({"method":"participantJoined","params":{"id":"a"},"jsonrpc":"2.0"})
        );
    }
}
