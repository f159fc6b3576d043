//! Kurento room methods and events as typed values (docs/protocol.md §3, §4).
//!
//! Owns parameter names, the order in which the original read them (which decides which
//! "missing" error a client sees first), Gson's lenient coercions (numbers read as strings,
//! `"true"` read as a boolean, numeric strings read as integers), and the JSON shape of every
//! result and notification. Does not own who receives what (that is [`crate::room`]).

use serde_json::{json, Map, Value};

use crate::error::RoomError;
use crate::jsonrpc::Params;

/// The only stream id Kurento rooms know.
pub const STREAM_ID: &str = "webcam";

/// An ICE candidate as it travels in `onIceCandidate` and `iceCandidate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The `candidate:` attribute value (may be empty: end-of-candidates).
    pub candidate: String,
    /// The media id, if the client gave one.
    pub sdp_mid: Option<String>,
    /// The m-line index.
    pub sdp_m_line_index: Option<u16>,
}

/// A room method sent by a client.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientRequest {
    /// `joinRoom {room, user, dataChannels?}`.
    JoinRoom {
        /// The room name (any string, case-sensitive).
        room: String,
        /// The user name.
        user: String,
        /// Whether the publisher endpoint accepts an SCTP data channel.
        data_channels: bool,
    },
    /// `publishVideo {sdpOffer, doLoopback}`.
    PublishVideo {
        /// The client's offer.
        sdp_offer: String,
        /// Echo the publisher's own media back on the same peer connection.
        do_loopback: bool,
    },
    /// `unpublishVideo`.
    UnpublishVideo,
    /// `receiveVideoFrom {sender, sdpOffer}`; `sender` is already reduced to the user name.
    ReceiveVideoFrom {
        /// The publisher's user name.
        sender: String,
        /// The subscriber's offer.
        sdp_offer: String,
    },
    /// `unsubscribeFromVideo {sender}`; `sender` is already reduced to the user name.
    UnsubscribeFromVideo {
        /// The publisher's user name.
        sender: String,
    },
    /// `onIceCandidate {endpointName, candidate, sdpMid, sdpMLineIndex}`.
    OnIceCandidate {
        /// Own name for the publisher endpoint, the publisher's name for a subscription.
        endpoint_name: String,
        /// The candidate.
        candidate: Candidate,
    },
    /// `leaveRoom`.
    LeaveRoom,
    /// `sendMessage {userMessage, roomMessage, message}`.
    SendMessage {
        /// Must equal the sender's name.
        user_message: String,
        /// Must equal the sender's room.
        room_message: String,
        /// The text.
        message: String,
    },
    /// `customRequest` with free-form params.
    CustomRequest,
}

impl ClientRequest {
    /// The JSON-RPC method name of this request.
    pub fn method(&self) -> &'static str {
        match self {
            Self::JoinRoom { .. } => "joinRoom",
            Self::PublishVideo { .. } => "publishVideo",
            Self::UnpublishVideo => "unpublishVideo",
            Self::ReceiveVideoFrom { .. } => "receiveVideoFrom",
            Self::UnsubscribeFromVideo { .. } => "unsubscribeFromVideo",
            Self::OnIceCandidate { .. } => "onIceCandidate",
            Self::LeaveRoom => "leaveRoom",
            Self::SendMessage { .. } => "sendMessage",
            Self::CustomRequest => "customRequest",
        }
    }
}

/// A method handled by the JSON-RPC transport itself, outside any room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportRequest {
    /// `ping {interval?}`: heartbeat; the first one fixes the watchdog interval (ms).
    Ping {
        /// The heartbeat interval in milliseconds, when given.
        interval_ms: Option<u64>,
    },
    /// `connect {sessionId?}`: rebind a session to a new WebSocket.
    Connect {
        /// The session to resume, if any.
        session_id: Option<String>,
    },
    /// `closeSession`: answer `"bye"`, then evict and close.
    CloseSession,
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Method {
    /// A transport built-in.
    Transport(TransportRequest),
    /// A room method.
    Room(ClientRequest),
}

/// Why a request could not be turned into a [`Method`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// No such method: JSON-RPC -32601 (DEVIATION: the original never answered).
    UnknownMethod,
    /// `params` is an array or a primitive: JSON-RPC -32602.
    ParamsNotAnObject,
    /// A parameter is missing or unusable: a Kurento error.
    Room(RoomError),
}

impl From<RoomError> for ParseError {
    fn from(e: RoomError) -> Self {
        Self::Room(e)
    }
}

/// Reads a request's method and parameters, in the order the original read them.
pub fn parse(method: &str, params: &Params) -> Result<Method, ParseError> {
    let transport = match method {
        "ping" => Some(TransportRequest::Ping {
            interval_ms: params
                .get("interval")
                .and_then(|v| int_of(v).ok())
                .and_then(|i| u64::try_from(i).ok()),
        }),
        "connect" => Some(TransportRequest::Connect {
            session_id: params.session_id().map(str::to_owned),
        }),
        "closeSession" => Some(TransportRequest::CloseSession),
        _ => None,
    };
    if let Some(t) = transport {
        return Ok(Method::Transport(t));
    }
    if !is_room_method(method) {
        return Err(ParseError::UnknownMethod);
    }
    if params.is_not_an_object() {
        return Err(ParseError::ParamsNotAnObject);
    }
    let request = match method {
        "joinRoom" => {
            let room = string(params, "room")?;
            let user = string(params, "user")?;
            let data_channels = opt_bool(params, "dataChannels")?.unwrap_or(false);
            ClientRequest::JoinRoom {
                room,
                user,
                data_channels,
            }
        }
        "publishVideo" => ClientRequest::PublishVideo {
            sdp_offer: string(params, "sdpOffer")?,
            // DEVIATION (docs/protocol.md §3.2, checklist 25): a missing doLoopback means false.
            do_loopback: opt_bool(params, "doLoopback")?.unwrap_or(false),
        },
        "unpublishVideo" => ClientRequest::UnpublishVideo,
        "receiveVideoFrom" => ClientRequest::ReceiveVideoFrom {
            sender: sender_user(&string(params, "sender")?).to_owned(),
            sdp_offer: string(params, "sdpOffer")?,
        },
        "unsubscribeFromVideo" => ClientRequest::UnsubscribeFromVideo {
            sender: sender_user(&string(params, "sender")?).to_owned(),
        },
        "onIceCandidate" => {
            let endpoint_name = string(params, "endpointName")?;
            let candidate = string(params, "candidate")?;
            // SHOULD accept `sdpMid: null` (§3.6); an absent one is still an error as original.
            let sdp_mid = match params.get("sdpMid") {
                None => return Err(RoomError::MissingParam("sdpMid").into()),
                Some(Value::Null) => None,
                Some(v) => Some(string_of(v).ok_or(RoomError::InvalidParam("sdpMid"))?),
            };
            let index = match params.get("sdpMLineIndex") {
                None | Some(Value::Null) => {
                    return Err(RoomError::MissingParam("sdpMLineIndex").into())
                }
                Some(v) => int_of(v).map_err(|()| RoomError::InvalidParam("sdpMLineIndex"))?,
            };
            let sdp_m_line_index =
                Some(u16::try_from(index).map_err(|_| RoomError::InvalidParam("sdpMLineIndex"))?);
            ClientRequest::OnIceCandidate {
                endpoint_name,
                candidate: Candidate {
                    candidate,
                    sdp_mid,
                    sdp_m_line_index,
                },
            }
        }
        "leaveRoom" => ClientRequest::LeaveRoom,
        "sendMessage" => {
            let user_message = string(params, "userMessage")?;
            let room_message = string(params, "roomMessage")?;
            let message = string(params, "message")?;
            ClientRequest::SendMessage {
                user_message,
                room_message,
                message,
            }
        }
        "customRequest" => ClientRequest::CustomRequest,
        _ => return Err(ParseError::UnknownMethod),
    };
    Ok(Method::Room(request))
}

fn is_room_method(method: &str) -> bool {
    matches!(
        method,
        "joinRoom"
            | "publishVideo"
            | "unpublishVideo"
            | "receiveVideoFrom"
            | "unsubscribeFromVideo"
            | "onIceCandidate"
            | "leaveRoom"
            | "sendMessage"
            | "customRequest"
    )
}

/// The user part of a `sender` (`"<user>_<stream>"`).
///
/// DEVIATION (docs/protocol.md §3.4, checklist 37): the original cut at the *first* `_`, so a user
/// named `john_doe` could never be subscribed to. We cut at the *last* `_`, which is identical
/// for names without one, and accept a bare `<user>` (the original answered -1).
pub fn sender_user(sender: &str) -> &str {
    match sender.rfind('_') {
        Some(i) => &sender[..i],
        None => sender,
    }
}

/// Gson's `getAsString`: strings as they are, numbers and booleans as their text.
fn string_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Gson's `getAsInt`: integral numbers and strings holding one.
fn int_of(v: &Value) -> Result<i64, ()> {
    match v {
        Value::Number(n) => n.as_i64().ok_or(()),
        Value::String(s) => s.trim().parse().map_err(|_| ()),
        _ => Err(()),
    }
}

fn string(params: &Params, key: &'static str) -> Result<String, RoomError> {
    match params.get(key) {
        None | Some(Value::Null) => Err(RoomError::MissingParam(key)),
        Some(v) => string_of(v).ok_or(RoomError::InvalidParam(key)),
    }
}

/// Gson's `getAsBoolean`: booleans, and `Boolean.parseBoolean` of a string or number.
fn opt_bool(params: &Params, key: &'static str) -> Result<Option<bool>, RoomError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) => Ok(Some(s.eq_ignore_ascii_case("true"))),
        Some(Value::Number(_)) => Ok(Some(false)),
        Some(_) => Err(RoomError::InvalidParam(key)),
    }
}

/// One entry of the `joinRoom` result: a participant already in the room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its user name.
    pub name: String,
    /// Whether it is publishing (then `streams:[{"id":"webcam"}]` is listed).
    pub publishing: bool,
}

/// A successful result of a room method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `joinRoom`: the participants already present, wrapped in `value` on the wire.
    Joined(Vec<Peer>),
    /// `publishVideo` / `receiveVideoFrom`.
    SdpAnswer(String),
    /// Every other method: `{}` (plus `sessionId`).
    Empty,
}

impl Reply {
    /// The result before `sessionId` is added by [`crate::jsonrpc::encode_result`].
    pub fn to_value(&self) -> Value {
        match self {
            Self::Joined(peers) => Value::Array(
                peers
                    .iter()
                    .map(|p| {
                        if p.publishing {
                            json!({ "id": p.name, "streams": [{ "id": STREAM_ID }] })
                        } else {
                            json!({ "id": p.name })
                        }
                    })
                    .collect(),
            ),
            Self::SdpAnswer(sdp) => json!({ "sdpAnswer": sdp }),
            Self::Empty => Value::Object(Map::new()),
        }
    }
}

/// A server-to-client event (docs/protocol.md §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notification {
    /// `participantJoined {id}`.
    ParticipantJoined {
        /// The joiner.
        id: String,
    },
    /// `participantPublished {id, streams:[{id:"webcam"}]}`.
    ParticipantPublished {
        /// The publisher.
        id: String,
    },
    /// `participantUnpublished {name}`.
    ParticipantUnpublished {
        /// The unpublisher.
        name: String,
    },
    /// `participantLeft {name}`.
    ParticipantLeft {
        /// The participant that left or was evicted.
        name: String,
    },
    /// `participantEvicted {}`.
    ParticipantEvicted,
    /// `sendMessage {room, user, message}`.
    SendMessage {
        /// The room.
        room: String,
        /// The sender.
        user: String,
        /// The text.
        message: String,
    },
    /// `iceCandidate {endpointName, sdpMLineIndex, sdpMid, candidate}`.
    IceCandidate {
        /// Own name for the publisher endpoint, the publisher's bare name for a subscription.
        endpoint_name: String,
        /// The server's candidate.
        candidate: Candidate,
    },
    /// `mediaError {error}` with the text `"<TYPE>: <description>(errCode=<n>)"`.
    MediaError {
        /// The formatted error.
        error: String,
    },
    /// `roomClosed {room}` (admin close only).
    RoomClosed {
        /// The room.
        room: String,
    },
    /// `custonNotification` (sic: the typo is part of the protocol).
    CustomNotification(Map<String, Value>),
}

impl Notification {
    /// The method name on the wire.
    pub fn method(&self) -> &'static str {
        match self {
            Self::ParticipantJoined { .. } => "participantJoined",
            Self::ParticipantPublished { .. } => "participantPublished",
            Self::ParticipantUnpublished { .. } => "participantUnpublished",
            Self::ParticipantLeft { .. } => "participantLeft",
            Self::ParticipantEvicted => "participantEvicted",
            Self::SendMessage { .. } => "sendMessage",
            Self::IceCandidate { .. } => "iceCandidate",
            Self::MediaError { .. } => "mediaError",
            Self::RoomClosed { .. } => "roomClosed",
            Self::CustomNotification(_) => "custonNotification",
        }
    }

    /// The `params` object on the wire.
    pub fn params(&self) -> Value {
        match self {
            Self::ParticipantJoined { id } => json!({ "id": id }),
            Self::ParticipantPublished { id } => {
                json!({ "id": id, "streams": [{ "id": STREAM_ID }] })
            }
            Self::ParticipantUnpublished { name } | Self::ParticipantLeft { name } => {
                json!({ "name": name })
            }
            Self::ParticipantEvicted => Value::Object(Map::new()),
            Self::SendMessage {
                room,
                user,
                message,
            } => json!({ "room": room, "user": user, "message": message }),
            Self::IceCandidate {
                endpoint_name,
                candidate,
            } => json!({
                "endpointName": endpoint_name,
                // The Java client requires an integer index and a non-null string mid.
                "sdpMLineIndex": candidate.sdp_m_line_index.unwrap_or(0),
                "sdpMid": candidate.sdp_mid.clone().unwrap_or_default(),
                "candidate": candidate.candidate,
            }),
            Self::MediaError { error } => json!({ "error": error }),
            Self::RoomClosed { room } => json!({ "room": room }),
            Self::CustomNotification(map) => Value::Object(map.clone()),
        }
    }

    /// The whole frame.
    pub fn encode(&self) -> String {
        crate::jsonrpc::encode_notification(self.method(), self.params())
    }
}

/// Formats a `mediaError` text the way Kurento did: `"<TYPE>: <description>(errCode=<n>)"`.
pub fn media_error_text(kind: &str, description: &str, code: i64) -> String {
    format!("{kind}: {description}(errCode={code})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: Value) -> Params {
        match v {
            Value::Object(m) => Params::from_map(m),
            _ => panic!("test params must be an object"),
        }
    }

    fn room(method: &str, v: Value) -> Result<ClientRequest, ParseError> {
        parse(method, &params(v)).map(|m| match m {
            Method::Room(r) => r,
            Method::Transport(t) => panic!("unexpected transport {t:?}"),
        })
    }

    #[test]
    fn join_room_reads_room_before_user() {
        assert_eq!(
            room("joinRoom", json!({})),
            Err(ParseError::Room(RoomError::MissingParam("room")))
        );
        assert_eq!(
            room("joinRoom", json!({"room":"r"})),
            Err(ParseError::Room(RoomError::MissingParam("user")))
        );
    }

    #[test]
    fn join_room_coerces_numbers_and_string_booleans_like_gson() {
        assert_eq!(
            room(
                "joinRoom",
                json!({"room":"r","user":7,"dataChannels":"true","token":"t"})
            ),
            Ok(ClientRequest::JoinRoom {
                room: "r".into(),
                user: "7".into(),
                data_channels: true
            })
        );
    }

    #[test]
    fn wrong_parameter_types_are_kurento_minus_one_errors() {
        let err = room("joinRoom", json!({"room":{"a":1},"user":"u"})).unwrap_err();
        let ParseError::Room(e) = err else {
            panic!("expected a room error")
        };
        assert_eq!(e.code(), -1);
        assert!(e.to_string().contains("'room'"));
    }

    #[test]
    fn publish_without_do_loopback_defaults_to_false() {
        assert_eq!(
            room("publishVideo", json!({"sdpOffer":"v=0"})),
            Ok(ClientRequest::PublishVideo {
                sdp_offer: "v=0".into(),
                do_loopback: false
            })
        );
    }

    #[test]
    fn sender_is_split_at_the_last_underscore_and_bare_names_are_accepted() {
        assert_eq!(sender_user("bob_webcam"), "bob");
        assert_eq!(sender_user("bob_foo"), "bob");
        assert_eq!(sender_user("a_b_webcam"), "a_b");
        assert_eq!(sender_user("bob"), "bob");
    }

    #[test]
    fn ice_candidate_accepts_string_index_and_null_mid() {
        assert_eq!(
            room(
                "onIceCandidate",
                json!({"endpointName":"a","candidate":"","sdpMid":null,"sdpMLineIndex":"0"})
            ),
            Ok(ClientRequest::OnIceCandidate {
                endpoint_name: "a".into(),
                candidate: Candidate {
                    candidate: String::new(),
                    sdp_mid: None,
                    sdp_m_line_index: Some(0)
                }
            })
        );
        assert_eq!(
            room(
                "onIceCandidate",
                json!({"endpointName":"a","candidate":"c","sdpMid":"0","sdpMLineIndex":"x"})
            ),
            Err(ParseError::Room(RoomError::InvalidParam("sdpMLineIndex")))
        );
    }

    #[test]
    fn unknown_methods_and_non_object_params_are_envelope_errors() {
        assert_eq!(
            parse("frobnicate", &Params::default()),
            Err(ParseError::UnknownMethod)
        );
        let p = match crate::jsonrpc::decode(r#"{"method":"joinRoom","params":[1],"id":1}"#) {
            crate::jsonrpc::Decoded::Request(r) => r.params,
            other => panic!("{other:?}"),
        };
        assert_eq!(parse("joinRoom", &p), Err(ParseError::ParamsNotAnObject));
    }

    #[test]
    fn ping_reads_interval_and_connect_reads_session_id() {
        assert_eq!(
            parse("ping", &params(json!({"interval":3000}))),
            Ok(Method::Transport(TransportRequest::Ping {
                interval_ms: Some(3000)
            }))
        );
        assert_eq!(
            parse("connect", &params(json!({"sessionId":"s"}))),
            Ok(Method::Transport(TransportRequest::Connect {
                session_id: Some("s".into())
            }))
        );
    }

    #[test]
    fn notifications_have_the_original_param_names() {
        assert_eq!(
            Notification::ParticipantPublished { id: "a".into() }.params(),
            json!({"id":"a","streams":[{"id":"webcam"}]})
        );
        assert_eq!(
            Notification::ParticipantLeft { name: "a".into() }.params(),
            json!({"name":"a"})
        );
        assert_eq!(
            Notification::CustomNotification(Map::new()).method(),
            "custonNotification"
        );
        assert_eq!(
            media_error_text("TEST_ERR", "Fake media error", 101),
            "TEST_ERR: Fake media error(errCode=101)"
        );
    }

    #[test]
    fn join_reply_lists_streams_only_for_publishers() {
        let r = Reply::Joined(vec![
            Peer {
                name: "bob".into(),
                publishing: true,
            },
            Peer {
                name: "carol".into(),
                publishing: false,
            },
        ]);
        assert_eq!(
            r.to_value(),
            json!([{"id":"bob","streams":[{"id":"webcam"}]},{"id":"carol"}])
        );
    }
}
