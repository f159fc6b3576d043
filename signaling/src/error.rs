//! Every error a client can reach through `/room`, with its Kurento code and exact text.
//!
//! Owns the mapping from an error to the numeric code of Kurento's `RoomException.Code`
//! (docs/protocol.md §2.1) and to the message the original server produced (§2.3, unbalanced
//! quotes included). Errors with code `-1` imitate the original's uncaught-exception path:
//! their message is `<java class>:<text>` and they carry no `sessionId`.

/// A room-level error answered to a client request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    /// A required parameter is absent or JSON `null`.
    #[error("java.lang.RuntimeException:Request element '{0}' is missing")]
    MissingParam(&'static str),
    /// A parameter has a JSON type that cannot be read as the expected one.
    #[error("java.lang.RuntimeException:Request element '{0}' has an invalid type")]
    InvalidParam(&'static str),
    /// `customRequest`: the stock server supports none.
    #[error("java.lang.RuntimeException:Unsupported method")]
    UnsupportedMethod,
    /// The session is not a participant of any room.
    #[error("No participant with id '{session}' was found")]
    NoParticipant {
        /// The requester's session id.
        session: String,
    },
    /// `joinRoom` with `user: ""`.
    #[error("Empty user name is not allowed")]
    EmptyUserName,
    /// `joinRoom` with a name already present in the room.
    #[error("User '{user}' already exists in room '{room}'")]
    UserExists {
        /// The requested user name.
        user: String,
        /// The room.
        room: String,
    },
    /// DEVIATION: a second `joinRoom` on a session that already is a participant.
    #[error("Session '{session}' already joined room '{room}' as '{user}'")]
    AlreadyJoined {
        /// The requester's session id.
        session: String,
        /// The room it is in.
        room: String,
        /// The name it has there.
        user: String,
    },
    /// `unpublishVideo` while not publishing.
    #[error("Participant '{user}' is not streaming media")]
    NotStreaming {
        /// The requester's name.
        user: String,
    },
    /// `publishVideo` while already publishing (the original's media server rejected the offer).
    #[error(
        "org.kurento.client.internal.server.KurentoServerException:Participant '{user}' is already publishing"
    )]
    AlreadyPublishing {
        /// The requester's name.
        user: String,
    },
    /// `receiveVideoFrom` naming a user who is not in the room (the quote is unbalanced in
    /// the original too).
    #[error("User '{sender} not found in room '{room}'")]
    SenderNotFound {
        /// The sender's user name.
        sender: String,
        /// The room.
        room: String,
    },
    /// `receiveVideoFrom` naming a member who is not publishing (also oneself when not
    /// publishing).
    #[error("User '{sender} not streaming media in room '{room}'")]
    SenderNotStreaming {
        /// The sender's user name.
        sender: String,
        /// The room.
        room: String,
    },
    /// `receiveVideoFrom` naming oneself while publishing: loopback only via `doLoopback`.
    #[error("Can loopback only when publishing media")]
    LoopbackOnlyWhenPublishing,
    /// `receiveVideoFrom` while already subscribed to that sender, or the publisher endpoint
    /// was released while the subscription was negotiated.
    #[error("Unable to generate SDP answer when subscribing '{user}' to '{sender}'")]
    SubscribeSdp {
        /// The subscriber's name.
        user: String,
        /// The publisher's name.
        sender: String,
    },
    /// `unsubscribeFromVideo` naming a user who is not in the room (no quotes, as original).
    #[error("User {sender} not found in room {room}")]
    UnsubscribeSenderNotFound {
        /// The sender's user name.
        sender: String,
        /// The room.
        room: String,
    },
    /// `sendMessage` with a `userMessage` other than the sender's own name.
    #[error("Provided username '{given}' differs from the participant's name")]
    UserMessageMismatch {
        /// The name given.
        given: String,
    },
    /// `sendMessage` with a `roomMessage` other than the sender's room.
    #[error("Provided room name '{given}' differs from the participant's room")]
    RoomMessageMismatch {
        /// The room given.
        given: String,
    },
    /// `joinRoom` raced with the room closing and no live room could take the join.
    #[error("'{user}' is trying to join room '{room}' but it is closing")]
    RoomClosing {
        /// The joiner's name.
        user: String,
        /// The room.
        room: String,
    },
    /// `leaveRoom` when the room recorded for the session no longer exists (admin close).
    #[error("org.kurento.room.exception.RoomException:Room '{room}' not found")]
    RoomNotFound {
        /// The room.
        room: String,
    },
    /// The media engine is not available at all.
    #[error("Media not available")]
    MediaUnavailable,
    /// The media engine could not produce an answer for a publisher.
    #[error("Error generating SDP response for publishing user {user}")]
    PublishSdp {
        /// The publisher's name.
        user: String,
    },
    /// The publisher endpoint could not be created (no port, engine failure).
    #[error("Unable to create publisher endpoint")]
    PublisherEndpoint,
    /// The subscriber endpoint could not be created (no port, engine failure).
    #[error("Unable to create subscriber endpoint")]
    SubscriberEndpoint,
    /// The media engine rejected the offer (invalid SDP, no common codec, ...).
    #[error("org.kurento.client.internal.server.KurentoServerException:{detail}")]
    OfferRejected {
        /// A short, client-safe reason.
        detail: String,
    },
    /// LIMIT: `joinRoom` of a new room when the server holds its maximum number of rooms (the
    /// original's text for a demo server without resources).
    #[error("No resources left to create new room")]
    TooManyRooms,
    /// `joinRoom` of a new room while the server drains before shutting down (existing rooms
    /// still take joins).
    #[error("Server is shutting down: no new rooms")]
    Draining,
    /// LIMIT: `joinRoom` of a room that holds its maximum number of participants.
    #[error("Room '{room}' is full ({max} participants)")]
    RoomFull {
        /// The room.
        room: String,
        /// The configured maximum.
        max: usize,
    },
    /// LIMIT: `publishVideo` when the room holds its maximum number of publishers.
    #[error(
        "Unable to create publisher endpoint: room '{room}' has its maximum of {max} publishers"
    )]
    TooManyPublishers {
        /// The room.
        room: String,
        /// The configured maximum.
        max: usize,
    },
    /// LIMIT: an SDP offer larger than configured (refused like an invalid offer).
    #[error("org.kurento.client.internal.server.KurentoServerException:SDP offer of {size} bytes exceeds the limit of {max}")]
    OfferTooLarge {
        /// The offer's size in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// LIMIT: `onIceCandidate` beyond the configured number per endpoint.
    #[error("Too many ICE candidates for endpoint '{endpoint}' (limit {max})")]
    TooManyCandidates {
        /// The endpoint name.
        endpoint: String,
        /// The configured maximum.
        max: usize,
    },
}

impl RoomError {
    /// Numeric code as defined by Kurento's `RoomException.Code`, or `-1` for the original's
    /// uncaught-exception path.
    pub fn code(&self) -> i64 {
        match self {
            Self::MissingParam(_)
            | Self::InvalidParam(_)
            | Self::UnsupportedMethod
            | Self::AlreadyPublishing { .. }
            | Self::RoomNotFound { .. }
            | Self::OfferRejected { .. }
            | Self::OfferTooLarge { .. } => -1,
            Self::AlreadyJoined { .. } => 101,
            Self::NoParticipant { .. }
            | Self::SenderNotFound { .. }
            | Self::UnsubscribeSenderNotFound { .. }
            | Self::UserMessageMismatch { .. } => 102,
            Self::UserExists { .. } => 104,
            Self::NotStreaming { .. }
            | Self::SenderNotStreaming { .. }
            | Self::LoopbackOnlyWhenPublishing => 105,
            Self::RoomFull { .. } => 201,
            Self::RoomMessageMismatch { .. } => 202,
            Self::RoomClosing { .. } => 203,
            Self::TooManyRooms | Self::Draining => 204,
            Self::MediaUnavailable => 301,
            Self::PublishSdp { .. } | Self::SubscribeSdp { .. } => 302,
            Self::PublisherEndpoint | Self::SubscriberEndpoint | Self::TooManyPublishers { .. } => {
                303
            }
            Self::EmptyUserName | Self::TooManyCandidates { .. } => 999,
        }
    }

    /// True when the original sent this error through the request's transaction, which puts
    /// `sessionId` inside `error`; false for the `-1` exception path, which bypasses it.
    pub fn carries_session_id(&self) -> bool {
        self.code() != -1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_the_original_texts() {
        let cases: [(RoomError, i64, &str); 9] = [
            (
                RoomError::RoomClosing {
                    user: "u".into(),
                    room: "r".into(),
                },
                203,
                "'u' is trying to join room 'r' but it is closing",
            ),
            (
                RoomError::MissingParam("doLoopback"),
                -1,
                "java.lang.RuntimeException:Request element 'doLoopback' is missing",
            ),
            (
                RoomError::UserExists {
                    user: "u".into(),
                    room: "r".into(),
                },
                104,
                "User 'u' already exists in room 'r'",
            ),
            (
                RoomError::SenderNotFound {
                    sender: "x".into(),
                    room: "r".into(),
                },
                102,
                "User 'x not found in room 'r'",
            ),
            (
                RoomError::SenderNotStreaming {
                    sender: "x".into(),
                    room: "r".into(),
                },
                105,
                "User 'x not streaming media in room 'r'",
            ),
            (
                RoomError::UnsubscribeSenderNotFound {
                    sender: "x".into(),
                    room: "r".into(),
                },
                102,
                "User x not found in room r",
            ),
            (
                RoomError::EmptyUserName,
                999,
                "Empty user name is not allowed",
            ),
            (
                RoomError::RoomMessageMismatch { given: "r2".into() },
                202,
                "Provided room name 'r2' differs from the participant's room",
            ),
            (
                RoomError::UnsupportedMethod,
                -1,
                "java.lang.RuntimeException:Unsupported method",
            ),
        ];
        for (err, code, text) in cases {
            assert_eq!(err.code(), code, "{err:?}");
            assert_eq!(err.to_string(), text);
        }
    }

    #[test]
    fn only_exception_errors_omit_session_id() {
        assert!(!RoomError::UnsupportedMethod.carries_session_id());
        assert!(RoomError::EmptyUserName.carries_session_id());
    }
}
