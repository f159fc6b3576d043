//! Scripted tests of the room state machine: inputs in, outputs asserted, no runtime.
//! Each test names the docs/protocol.md §11 checklist item(s) it pins.

use super::*;

const ROOM: &str = "room1";

struct Harness {
    room: Room,
    now: Instant,
    next_id: Id,
}

fn s(name: &str) -> SessionId {
    SessionId(format!("sess-{name}"))
}

fn cand(text: &str) -> Candidate {
    Candidate {
        candidate: text.into(),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
    }
}

impl Harness {
    fn new() -> Self {
        Self {
            room: Room::new(ROOM, 7, RoomConfig::default()),
            now: Instant::now(),
            next_id: 0,
        }
    }

    fn input(&mut self, input: Input) -> Vec<Output> {
        self.room.handle(self.now, input);
        std::iter::from_fn(|| self.room.poll_output()).collect()
    }

    /// Sends a request; returns its id and everything the room emitted.
    fn req(&mut self, who: &str, request: ClientRequest) -> (Id, Vec<Output>) {
        self.next_id += 1;
        let id = self.next_id;
        let out = self.input(Input::Request {
            session: s(who),
            id,
            request,
        });
        (id, out)
    }

    fn join(&mut self, who: &str) -> Vec<Output> {
        let (_, out) = self.req(
            who,
            ClientRequest::JoinRoom {
                room: ROOM.into(),
                user: who.into(),
                data_channels: false,
            },
        );
        out
    }

    /// Publishes and answers from "media"; returns the publisher endpoint and all outputs.
    fn publish(&mut self, who: &str) -> (EndpointId, Vec<Output>) {
        let (_, mut out) = self.req(
            who,
            ClientRequest::PublishVideo {
                sdp_offer: "offer".into(),
                do_loopback: false,
            },
        );
        let endpoint = media_endpoint(&out).expect("publish emits a media command");
        out.extend(self.input(Input::Media(MediaReport::Answered {
            endpoint,
            answer: "answer".into(),
        })));
        (endpoint, out)
    }

    fn subscribe(&mut self, who: &str, sender: &str) -> (EndpointId, Vec<Output>) {
        let (_, mut out) = self.req(
            who,
            ClientRequest::ReceiveVideoFrom {
                sender: crate::protocol::sender_user(sender).into(),
                sdp_offer: "offer".into(),
            },
        );
        let endpoint = media_endpoint(&out).expect("subscribe emits a media command");
        out.extend(self.input(Input::Media(MediaReport::Answered {
            endpoint,
            answer: "answer".into(),
        })));
        (endpoint, out)
    }
}

fn media_endpoint(out: &[Output]) -> Option<EndpointId> {
    out.iter().find_map(|o| match o {
        Output::Media(MediaCommand::Publish { endpoint, .. })
        | Output::Media(MediaCommand::Subscribe { endpoint, .. }) => Some(*endpoint),
        _ => None,
    })
}

fn replies(out: &[Output]) -> Vec<(&SessionId, &Result<Reply, RoomError>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Reply {
                session, result, ..
            } => Some((session, result)),
            _ => None,
        })
        .collect()
}

fn the_reply(out: &[Output]) -> &Result<Reply, RoomError> {
    let r = replies(out);
    assert_eq!(r.len(), 1, "exactly one reply expected in {out:?}");
    r[0].1
}

fn the_error(out: &[Output]) -> &RoomError {
    match the_reply(out) {
        Err(e) => e,
        Ok(r) => panic!("expected an error, got {r:?}"),
    }
}

fn notes_to<'a>(out: &'a [Output], who: &str) -> Vec<&'a Notification> {
    out.iter()
        .filter_map(|o| match o {
            Output::Notify {
                session,
                notification,
            } if *session == s(who) => Some(notification),
            _ => None,
        })
        .collect()
}

fn position(out: &[Output], pred: impl Fn(&Output) -> bool) -> usize {
    out.iter()
        .position(pred)
        .unwrap_or_else(|| panic!("output not found in {out:?}"))
}

fn is_reply_to(o: &Output, who: &str) -> bool {
    matches!(o, Output::Reply { session, .. } if *session == s(who))
}

/// Checklist 11: the first joiner of a room gets an empty list.
#[test]
fn join_into_new_room_returns_empty_value() {
    let mut h = Harness::new();
    let out = h.join("alice");
    assert_eq!(the_reply(&out), &Ok(Reply::Joined(vec![])));
    assert_eq!(h.room.participant_count(), 1);
}

/// Checklist 12 + 14: the second joiner lists the first without streams; the first gets
/// participantJoined before the joiner's response; the joiner gets none about itself.
#[test]
fn second_join_lists_first_without_streams_and_notifies_first_before_reply() {
    let mut h = Harness::new();
    h.join("alice");
    let out = h.join("bob");
    assert_eq!(
        the_reply(&out),
        &Ok(Reply::Joined(vec![Peer {
            name: "alice".into(),
            publishing: false
        }]))
    );
    assert_eq!(
        notes_to(&out, "alice"),
        vec![&Notification::ParticipantJoined { id: "bob".into() }]
    );
    assert!(notes_to(&out, "bob").is_empty());
    let note = position(&out, |o| matches!(o, Output::Notify { .. }));
    assert!(note < position(&out, |o| is_reply_to(o, "bob")));
}

/// Checklist 13: a publishing member is listed with streams.
#[test]
fn join_lists_publishing_member_with_streams() {
    let mut h = Harness::new();
    h.join("alice");
    h.publish("alice");
    let out = h.join("bob");
    assert_eq!(
        the_reply(&out),
        &Ok(Reply::Joined(vec![Peer {
            name: "alice".into(),
            publishing: true
        }]))
    );
}

/// Checklist 15: a duplicate name in the same room is 104 with the original's text.
#[test]
fn duplicate_user_name_is_rejected_with_104() {
    let mut h = Harness::new();
    h.join("bob");
    let (_, out) = h.req(
        "other",
        ClientRequest::JoinRoom {
            room: ROOM.into(),
            user: "bob".into(),
            data_channels: false,
        },
    );
    let e = the_error(&out);
    assert_eq!(e.code(), 104);
    assert_eq!(e.to_string(), "User 'bob' already exists in room 'room1'");
    assert!(
        notes_to(&out, "bob").is_empty(),
        "no participantJoined for a duplicate"
    );
    assert_eq!(h.room.participant_count(), 1);
}

/// Checklist 15 (case): names are compared case-sensitively.
#[test]
fn user_names_are_case_sensitive() {
    let mut h = Harness::new();
    h.join("bob");
    let (_, out) = h.req(
        "Bob",
        ClientRequest::JoinRoom {
            room: ROOM.into(),
            user: "Bob".into(),
            data_channels: false,
        },
    );
    assert!(the_reply(&out).is_ok());
}

/// Checklist 16: the same name may join another room (each room is its own machine).
#[test]
fn same_name_can_join_a_different_room() {
    let mut a = Harness::new();
    let mut b = Harness {
        room: Room::new("room2", 8, RoomConfig::default()),
        now: Instant::now(),
        next_id: 0,
    };
    assert!(the_reply(&a.join("bob")).is_ok());
    assert!(the_reply(&b.join("bob")).is_ok());
}

/// Checklist 17: an empty name is 999 and leaves the room empty (deviation: no leaked room).
#[test]
fn empty_user_name_is_999_and_leaves_room_empty() {
    let mut h = Harness::new();
    let (_, out) = h.req(
        "x",
        ClientRequest::JoinRoom {
            room: ROOM.into(),
            user: String::new(),
            data_channels: false,
        },
    );
    let e = the_error(&out);
    assert_eq!(
        (e.code(), e.to_string().as_str()),
        (999, "Empty user name is not allowed")
    );
    assert!(h.room.is_empty());
}

/// Checklist 19 (state part): `dataChannels` is accepted at join and changes nothing in the
/// room: the media engine negotiates a data channel whenever the offer carries one.
#[test]
fn data_channels_flag_is_accepted_and_the_publish_command_is_unchanged() {
    let mut h = Harness::new();
    h.req(
        "alice",
        ClientRequest::JoinRoom {
            room: ROOM.into(),
            user: "alice".into(),
            data_channels: true,
        },
    );
    let (_, out) = h.req(
        "alice",
        ClientRequest::PublishVideo {
            sdp_offer: "o".into(),
            do_loopback: true,
        },
    );
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Media(MediaCommand::Publish { loopback: true, .. })
    )));
}

/// The driver learns of a membership before anything is sent to the new participant, and
/// before the others hear of it, so that a join whose socket is already gone is caught.
#[test]
fn join_emits_admitted_before_the_reply_and_the_others_notifications() {
    let mut h = Harness::new();
    h.join("alice");
    let out = h.join("bob");
    let admitted = position(
        &out,
        |o| matches!(o, Output::Admitted { session, user } if *session == s("bob") && user == "bob"),
    );
    let joined_note = position(&out, |o| matches!(o, Output::Notify { .. }));
    let reply = position(&out, |o| is_reply_to(o, "bob"));
    assert!(admitted < joined_note && admitted < reply, "{out:?}");
    // A refused join admits nobody.
    let (_, out) = h.req(
        "carol",
        ClientRequest::JoinRoom {
            room: ROOM.into(),
            user: "bob".into(),
            data_channels: false,
        },
    );
    assert!(!out.iter().any(|o| matches!(o, Output::Admitted { .. })));
}

fn removed(out: &[Output]) -> Vec<(SessionId, Removal)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Removed { session, reason } => Some((session.clone(), *reason)),
            _ => None,
        })
        .collect()
}

/// Every way out of a room is reported once, with its reason.
#[test]
fn leave_evict_and_close_emit_removed_with_their_reason() {
    let mut h = Harness::new();
    for who in ["alice", "bob", "carol", "dave"] {
        h.join(who);
    }
    let (_, out) = h.req("alice", ClientRequest::LeaveRoom);
    assert_eq!(removed(&out), vec![(s("alice"), Removal::Left)]);
    let out = h.input(Input::Evict { session: s("bob") });
    assert_eq!(removed(&out), vec![(s("bob"), Removal::Evicted)]);
    h.input(Input::Disconnected {
        session: s("carol"),
    });
    h.now += RoomConfig::default().reconnection_grace;
    h.room.handle_timeout(h.now);
    let out: Vec<Output> = std::iter::from_fn(|| h.room.poll_output()).collect();
    assert_eq!(removed(&out), vec![(s("carol"), Removal::Evicted)]);
    let out = h.input(Input::Close);
    assert_eq!(removed(&out), vec![(s("dave"), Removal::RoomClosed)]);
    assert!(h.room.is_empty());
}

/// The cross-room rules: one room per session, customRequest always refused, and what a
/// session outside any room is answered.
#[test]
fn route_decides_the_rules_that_span_rooms() {
    let me = s("alice");
    let join = |room: &str| ClientRequest::JoinRoom {
        room: room.into(),
        user: "alice".into(),
        data_channels: false,
    };
    let inside = Membership::In {
        room: "r1",
        user: "alice",
    };
    assert_eq!(
        route(&me, Membership::None, &join("r1")),
        Route::Join("r1".into())
    );
    assert_eq!(route(&me, inside, &join("r1")), Route::Member);
    match route(&me, inside, &join("r2")) {
        Route::Answer(e) => assert_eq!(e.code(), 101),
        other => panic!("{other:?}"),
    }
    for m in [Membership::None, inside] {
        assert_eq!(
            route(&me, m, &ClientRequest::CustomRequest),
            Route::Answer(RoomError::UnsupportedMethod)
        );
    }
    assert_eq!(route(&me, inside, &ClientRequest::LeaveRoom), Route::Member);
    match route(&me, Membership::None, &ClientRequest::UnpublishVideo) {
        Route::Answer(e) => assert_eq!(e.code(), 102),
        other => panic!("{other:?}"),
    }
    let closed = Membership::Closed { room: "r1" };
    match route(&me, closed, &ClientRequest::LeaveRoom) {
        Route::Answer(e) => assert_eq!(
            e.to_string(),
            "org.kurento.room.exception.RoomException:Room 'r1' not found"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(route(&me, closed, &join("r1")), Route::Join("r1".into()));
}

/// Deviation §3.1: a second join on a session that is already a participant changes nothing.
#[test]
fn second_join_on_same_session_is_rejected_and_changes_nothing() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    let (_, out) = h.req(
        "alice",
        ClientRequest::JoinRoom {
            room: ROOM.into(),
            user: "alice2".into(),
            data_channels: false,
        },
    );
    assert_eq!(the_error(&out).code(), 101);
    assert!(notes_to(&out, "bob").is_empty());
    let (_, out) = h.req(
        "alice",
        ClientRequest::JoinRoom {
            room: ROOM.into(),
            user: "bob".into(),
            data_channels: false,
        },
    );
    assert_eq!(the_error(&out).code(), 104);
    assert_eq!(h.room.participant_count(), 2);
}

/// Checklist 20, 43, 15 of §5: room methods from a non-participant answer 102.
#[test]
fn requests_before_join_answer_102_with_session_id() {
    let mut h = Harness::new();
    for request in [
        ClientRequest::PublishVideo {
            sdp_offer: "o".into(),
            do_loopback: false,
        },
        ClientRequest::UnpublishVideo,
        ClientRequest::ReceiveVideoFrom {
            sender: "x".into(),
            sdp_offer: "o".into(),
        },
        ClientRequest::UnsubscribeFromVideo { sender: "x".into() },
        ClientRequest::OnIceCandidate {
            endpoint_name: "x".into(),
            candidate: cand("c"),
        },
        ClientRequest::SendMessage {
            user_message: "x".into(),
            room_message: ROOM.into(),
            message: "m".into(),
        },
        ClientRequest::LeaveRoom,
    ] {
        let (_, out) = h.req("ghost", request.clone());
        let e = the_error(&out);
        assert_eq!(e.code(), 102, "{request:?}");
        assert_eq!(
            e.to_string(),
            "No participant with id 'sess-ghost' was found"
        );
        assert!(
            !out.iter().any(|o| matches!(o, Output::Media(_))),
            "{request:?}"
        );
    }
}

/// Checklist 22: participantPublished goes to every other participant after the publisher's
/// response; the publisher gets none.
#[test]
fn publish_notifies_others_after_the_reply_and_not_the_publisher() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    h.join("carol");
    let (_, out) = h.publish("alice");
    assert_eq!(the_reply(&out), &Ok(Reply::SdpAnswer("answer".into())));
    for who in ["bob", "carol"] {
        assert_eq!(
            notes_to(&out, who),
            vec![&Notification::ParticipantPublished { id: "alice".into() }]
        );
    }
    assert!(notes_to(&out, "alice").is_empty());
    let reply = position(&out, |o| is_reply_to(o, "alice"));
    let note = position(&out, |o| matches!(o, Output::Notify { .. }));
    assert!(reply < note);
}

/// Checklist 23 (state part) + 31: server candidates gathered before the answer are held and
/// sent after the reply, with the publisher's own name / the sender's bare name.
#[test]
fn server_candidates_are_held_until_the_answer_is_replied() {
    let mut h = Harness::new();
    h.join("alice");
    let (_, out) = h.req(
        "alice",
        ClientRequest::PublishVideo {
            sdp_offer: "o".into(),
            do_loopback: false,
        },
    );
    let ep = media_endpoint(&out).expect("publish command");
    let out = h.input(Input::Media(MediaReport::LocalCandidate {
        endpoint: ep,
        candidate: cand("early"),
    }));
    assert!(out.is_empty(), "held before the answer: {out:?}");
    let out = h.input(Input::Media(MediaReport::Answered {
        endpoint: ep,
        answer: "a".into(),
    }));
    let reply = position(&out, |o| is_reply_to(o, "alice"));
    let ice = position(
        &out,
        |o| matches!(o, Output::Notify { notification: Notification::IceCandidate { endpoint_name, .. }, .. } if endpoint_name == "alice"),
    );
    assert!(reply < ice);
    // Later candidates go straight out.
    let out = h.input(Input::Media(MediaReport::LocalCandidate {
        endpoint: ep,
        candidate: cand("late"),
    }));
    assert_eq!(
        notes_to(&out, "alice"),
        vec![&Notification::IceCandidate {
            endpoint_name: "alice".into(),
            candidate: cand("late")
        }]
    );

    h.join("bob");
    let (_, out) = h.req(
        "bob",
        ClientRequest::ReceiveVideoFrom {
            sender: "alice".into(),
            sdp_offer: "o".into(),
        },
    );
    let sub = media_endpoint(&out).expect("subscribe command");
    h.input(Input::Media(MediaReport::LocalCandidate {
        endpoint: sub,
        candidate: cand("s"),
    }));
    let out = h.input(Input::Media(MediaReport::Answered {
        endpoint: sub,
        answer: "a".into(),
    }));
    assert_eq!(
        notes_to(&out, "bob"),
        vec![&Notification::IceCandidate {
            endpoint_name: "alice".into(),
            candidate: cand("s")
        }]
    );
}

/// Checklist 26: a second publish while publishing is an error; the publication stays.
#[test]
fn second_publish_is_rejected_and_keeps_the_publication() {
    let mut h = Harness::new();
    h.join("alice");
    h.publish("alice");
    let (_, out) = h.req(
        "alice",
        ClientRequest::PublishVideo {
            sdp_offer: "o".into(),
            do_loopback: false,
        },
    );
    assert!(the_reply(&out).is_err());
    assert!(!out.iter().any(|o| matches!(o, Output::Media(_))));
    h.join("bob");
    let (_, out) = h.subscribe("bob", "alice_webcam");
    assert!(the_reply(&out).is_ok());
}

/// Checklist 27: unpublish while not publishing is 105.
#[test]
fn unpublish_while_not_publishing_is_105() {
    let mut h = Harness::new();
    h.join("alice");
    let (_, out) = h.req("alice", ClientRequest::UnpublishVideo);
    let e = the_error(&out);
    assert_eq!(
        (e.code(), e.to_string().as_str()),
        (105, "Participant 'alice' is not streaming media")
    );
}

/// Checklist 28 + 29 + §5.9: unpublish answers {}, notifies the others only, releases every
/// subscription to it; a later unsubscribe succeeds; republishing notifies again.
#[test]
fn unpublish_releases_subscribers_and_republish_notifies_again() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    let (pub_ep, _) = h.publish("alice");
    let (sub_ep, _) = h.subscribe("bob", "alice_webcam");
    let (_, out) = h.req("alice", ClientRequest::UnpublishVideo);
    assert_eq!(the_reply(&out), &Ok(Reply::Empty));
    assert_eq!(
        notes_to(&out, "bob"),
        vec![&Notification::ParticipantUnpublished {
            name: "alice".into()
        }]
    );
    assert!(notes_to(&out, "alice").is_empty());
    for ep in [pub_ep, sub_ep] {
        assert!(out.contains(&Output::Media(MediaCommand::Release { endpoint: ep })));
    }
    let (_, out) = h.req(
        "bob",
        ClientRequest::UnsubscribeFromVideo {
            sender: "alice".into(),
        },
    );
    assert_eq!(the_reply(&out), &Ok(Reply::Empty));
    let (_, out) = h.publish("alice");
    assert_eq!(
        notes_to(&out, "bob"),
        vec![&Notification::ParticipantPublished { id: "alice".into() }]
    );
    // And bob can subscribe afresh.
    let (_, out) = h.subscribe("bob", "alice_webcam");
    assert!(the_reply(&out).is_ok());
}

/// Checklist 30: a subscription answers sdpAnswer and notifies nobody.
#[test]
fn subscribe_answers_and_notifies_nobody() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    h.join("carol");
    let (pub_ep, _) = h.publish("alice");
    let (_, out) = h.subscribe("bob", "alice_webcam");
    assert_eq!(the_reply(&out), &Ok(Reply::SdpAnswer("answer".into())));
    assert!(!out.iter().any(|o| matches!(o, Output::Notify { .. })));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Media(MediaCommand::Subscribe { publisher, .. }) if *publisher == pub_ep
    )));
}

/// A join tells the media layer which publishers the joiner's client is about to subscribe
/// to (those it lists as publishing, before the reply), and no others.
#[test]
fn a_join_expects_subscribers_of_the_answered_publishers_only() {
    let mut h = Harness::new();
    let expected = |out: &[Output]| -> Vec<EndpointId> {
        out.iter()
            .filter_map(|o| match o {
                Output::Media(MediaCommand::ExpectSubscriber { publisher }) => Some(*publisher),
                _ => None,
            })
            .collect()
    };
    assert!(expected(&h.join("alice")).is_empty(), "nobody publishes");
    h.join("bob");
    h.join("carol");
    let (alice_ep, _) = h.publish("alice");
    let (bob_ep, _) = h.publish("bob");
    // Carol's offer is still being answered: not publishing yet.
    h.req(
        "carol",
        ClientRequest::PublishVideo {
            sdp_offer: "offer".into(),
            do_loopback: false,
        },
    );
    let out = h.join("dave");
    let mut got = expected(&out);
    got.sort();
    assert_eq!(got, [alice_ep, bob_ep]);
    let first_media = out.iter().position(|o| matches!(o, Output::Media(_)));
    let reply = out.iter().position(|o| matches!(o, Output::Reply { .. }));
    assert!(
        first_media < reply,
        "asked before the joiner can subscribe: {out:?}"
    );
    // A refused join expects nothing.
    let (_, out) = h.req(
        "eve",
        ClientRequest::JoinRoom {
            room: ROOM.into(),
            user: "dave".into(),
            data_channels: false,
        },
    );
    assert!(the_reply(&out).is_err());
    assert!(expected(&out).is_empty());
}

/// Checklist 32: subscribing to someone not in the room is 102 with the original's text.
#[test]
fn subscribe_to_unknown_user_is_102() {
    let mut h = Harness::new();
    h.join("bob");
    let (_, out) = h.req(
        "bob",
        ClientRequest::ReceiveVideoFrom {
            sender: "zed".into(),
            sdp_offer: "o".into(),
        },
    );
    let e = the_error(&out);
    assert_eq!(
        (e.code(), e.to_string().as_str()),
        (102, "User 'zed not found in room 'room1'")
    );
}

/// Checklist 33 + §5.6: subscribing to a member (or oneself) that is not publishing is 105.
#[test]
fn subscribe_to_non_publisher_or_self_not_publishing_is_105_not_streaming() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    for target in ["alice", "bob"] {
        let (_, out) = h.req(
            "bob",
            ClientRequest::ReceiveVideoFrom {
                sender: target.into(),
                sdp_offer: "o".into(),
            },
        );
        let e = the_error(&out);
        assert_eq!(
            (e.code(), e.to_string()),
            (
                105,
                format!("User '{target} not streaming media in room 'room1'")
            )
        );
    }
}

/// A publisher that is still negotiating does not count as streaming yet.
#[test]
fn subscribe_to_publisher_still_negotiating_is_105() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    h.req(
        "alice",
        ClientRequest::PublishVideo {
            sdp_offer: "o".into(),
            do_loopback: false,
        },
    );
    let (_, out) = h.req(
        "bob",
        ClientRequest::ReceiveVideoFrom {
            sender: "alice".into(),
            sdp_offer: "o".into(),
        },
    );
    assert_eq!(the_error(&out).code(), 105);
}

/// Checklist 34: subscribing to oneself while publishing is 105 "Can loopback only…".
#[test]
fn subscribe_to_self_while_publishing_is_105_loopback() {
    let mut h = Harness::new();
    h.join("alice");
    h.publish("alice");
    let (_, out) = h.req(
        "alice",
        ClientRequest::ReceiveVideoFrom {
            sender: "alice".into(),
            sdp_offer: "o".into(),
        },
    );
    let e = the_error(&out);
    assert_eq!(
        (e.code(), e.to_string().as_str()),
        (105, "Can loopback only when publishing media")
    );
}

/// Checklist 35 (state part): a duplicate subscription is 302.
#[test]
fn duplicate_subscription_is_302() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    h.publish("alice");
    h.subscribe("bob", "alice_webcam");
    let (_, out) = h.req(
        "bob",
        ClientRequest::ReceiveVideoFrom {
            sender: "alice".into(),
            sdp_offer: "o".into(),
        },
    );
    let e = the_error(&out);
    assert_eq!(
        (e.code(), e.to_string().as_str()),
        (
            302,
            "Unable to generate SDP answer when subscribing 'bob' to 'alice'"
        )
    );
    assert!(!out.iter().any(|o| matches!(o, Output::Media(_))));
}

/// Checklist 36 + 37: `X_foo` behaves like `X_webcam`, and `a_b_webcam` reaches user `a_b`.
#[test]
fn sender_suffix_is_ignored_and_underscored_names_can_be_subscribed() {
    let mut h = Harness::new();
    h.join("a_b");
    h.join("carol");
    h.publish("a_b");
    let (_, out) = h.subscribe("carol", "a_b_webcam");
    assert!(the_reply(&out).is_ok());
    h.join("x");
    h.publish("x");
    let (_, out) = h.subscribe("carol", "x_foo");
    assert!(the_reply(&out).is_ok());
}

/// Checklist 38: unsubscribe from a stranger is 102 (no quotes); from a non-subscribed member
/// it succeeds and releases nothing.
#[test]
fn unsubscribe_unknown_is_102_and_not_subscribed_succeeds() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    let (_, out) = h.req(
        "bob",
        ClientRequest::UnsubscribeFromVideo {
            sender: "zed".into(),
        },
    );
    let e = the_error(&out);
    assert_eq!(
        (e.code(), e.to_string().as_str()),
        (102, "User zed not found in room room1")
    );
    let (_, out) = h.req(
        "bob",
        ClientRequest::UnsubscribeFromVideo {
            sender: "alice".into(),
        },
    );
    assert_eq!(the_reply(&out), &Ok(Reply::Empty));
    assert!(!out.iter().any(|o| matches!(o, Output::Media(_))));
    // Unsubscribing from oneself succeeds as well.
    let (_, out) = h.req(
        "bob",
        ClientRequest::UnsubscribeFromVideo {
            sender: "bob".into(),
        },
    );
    assert_eq!(the_reply(&out), &Ok(Reply::Empty));
}

/// Unsubscribing releases exactly the subscription's endpoint.
#[test]
fn unsubscribe_releases_the_subscription_endpoint() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    h.publish("alice");
    let (sub, _) = h.subscribe("bob", "alice_webcam");
    let (_, out) = h.req(
        "bob",
        ClientRequest::UnsubscribeFromVideo {
            sender: "alice".into(),
        },
    );
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Output::Media(_)))
            .collect::<Vec<_>>(),
        vec![&Output::Media(MediaCommand::Release { endpoint: sub })]
    );
}

/// Checklist 39 + 41 + 16 of §5: early candidates (own name before publish, a sender name
/// before subscribe, an unknown name) answer success and are applied after the endpoint's
/// creation command.
#[test]
fn early_candidates_are_buffered_and_applied_after_creation() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    let (_, out) = h.req(
        "alice",
        ClientRequest::OnIceCandidate {
            endpoint_name: "alice".into(),
            candidate: cand("c1"),
        },
    );
    assert_eq!(the_reply(&out), &Ok(Reply::Empty));
    assert!(!out.iter().any(|o| matches!(o, Output::Media(_))));
    let (_, out) = h.req(
        "alice",
        ClientRequest::OnIceCandidate {
            endpoint_name: "nobody".into(),
            candidate: cand("c2"),
        },
    );
    assert_eq!(the_reply(&out), &Ok(Reply::Empty));
    let (_, out) = h.req(
        "alice",
        ClientRequest::PublishVideo {
            sdp_offer: "o".into(),
            do_loopback: false,
        },
    );
    let ep = media_endpoint(&out).expect("publish");
    let publish = position(&out, |o| {
        matches!(o, Output::Media(MediaCommand::Publish { .. }))
    });
    let add = position(&out, |o| {
        *o == Output::Media(MediaCommand::AddCandidate {
            endpoint: ep,
            candidate: cand("c1"),
        })
    });
    assert!(publish < add);
}

/// Checklist 42: the empty end-of-candidates marker answers success and reaches no endpoint.
#[test]
fn empty_candidate_is_accepted_and_ignored() {
    let mut h = Harness::new();
    h.join("alice");
    h.publish("alice");
    let (_, out) = h.req(
        "alice",
        ClientRequest::OnIceCandidate {
            endpoint_name: "alice".into(),
            candidate: cand(""),
        },
    );
    assert_eq!(the_reply(&out), &Ok(Reply::Empty));
    assert!(!out.iter().any(|o| matches!(o, Output::Media(_))));
}

/// Candidates for live endpoints go straight to the media layer.
#[test]
fn candidates_for_existing_endpoints_go_to_media() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    let (pub_ep, _) = h.publish("alice");
    let (sub_ep, _) = h.subscribe("bob", "alice_webcam");
    let (_, out) = h.req(
        "alice",
        ClientRequest::OnIceCandidate {
            endpoint_name: "alice".into(),
            candidate: cand("p"),
        },
    );
    assert!(out.contains(&Output::Media(MediaCommand::AddCandidate {
        endpoint: pub_ep,
        candidate: cand("p")
    })));
    let (_, out) = h.req(
        "bob",
        ClientRequest::OnIceCandidate {
            endpoint_name: "alice".into(),
            candidate: cand("s"),
        },
    );
    assert!(out.contains(&Output::Media(MediaCommand::AddCandidate {
        endpoint: sub_ep,
        candidate: cand("s")
    })));
}

/// Checklist 44: sendMessage answers first, then everyone (sender included) gets the event.
#[test]
fn send_message_replies_then_echoes_to_everyone_including_sender() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    let (_, out) = h.req(
        "alice",
        ClientRequest::SendMessage {
            user_message: "alice".into(),
            room_message: ROOM.into(),
            message: "hello".into(),
        },
    );
    assert_eq!(the_reply(&out), &Ok(Reply::Empty));
    let expected = Notification::SendMessage {
        room: ROOM.into(),
        user: "alice".into(),
        message: "hello".into(),
    };
    for who in ["alice", "bob"] {
        assert_eq!(notes_to(&out, who), vec![&expected]);
    }
    assert_eq!(position(&out, |o| is_reply_to(o, "alice")), 0);
}

/// Checklist 45 + 46: wrong userMessage is 102, wrong roomMessage is 202; nothing is sent.
#[test]
fn send_message_with_wrong_user_or_room_is_rejected() {
    let mut h = Harness::new();
    h.join("alice");
    let (_, out) = h.req(
        "alice",
        ClientRequest::SendMessage {
            user_message: "mallory".into(),
            room_message: ROOM.into(),
            message: "m".into(),
        },
    );
    let e = the_error(&out);
    assert_eq!(
        (e.code(), e.to_string().as_str()),
        (
            102,
            "Provided username 'mallory' differs from the participant's name"
        )
    );
    let (_, out) = h.req(
        "alice",
        ClientRequest::SendMessage {
            user_message: "alice".into(),
            room_message: "r2".into(),
            message: "m".into(),
        },
    );
    let e = the_error(&out);
    assert_eq!(
        (e.code(), e.to_string().as_str()),
        (
            202,
            "Provided room name 'r2' differs from the participant's room"
        )
    );
    assert!(!out.iter().any(|o| matches!(o, Output::Notify { .. })));
}

/// Checklist 47: customRequest is always -1 "Unsupported method".
#[test]
fn custom_request_is_unsupported() {
    let mut h = Harness::new();
    h.join("alice");
    for who in ["alice", "stranger"] {
        let (_, out) = h.req(who, ClientRequest::CustomRequest);
        let e = the_error(&out);
        assert_eq!(e.code(), -1);
        assert!(e.to_string().contains("Unsupported method"));
    }
}

/// Checklist 48: leave sends participantLeft to the others, then the reply, then closes.
#[test]
fn leave_notifies_others_then_replies_then_closes_the_session() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    let (_, out) = h.req("alice", ClientRequest::LeaveRoom);
    let left = position(
        &out,
        |o| matches!(o, Output::Notify { session, notification: Notification::ParticipantLeft { name } } if *session == s("bob") && name == "alice"),
    );
    let reply = position(&out, |o| is_reply_to(o, "alice"));
    let close = position(&out, |o| {
        *o == Output::CloseSession {
            session: s("alice"),
        }
    });
    assert!(left < reply && reply < close);
    assert_eq!(the_reply(&out), &Ok(Reply::Empty));
    assert!(notes_to(&out, "alice").is_empty());
}

/// Checklist 49 + 50: the last leaver empties the room with no roomClosed; the same name can
/// join again right away.
#[test]
fn last_leave_empties_room_without_room_closed_and_name_is_free_again() {
    let mut h = Harness::new();
    h.join("alice");
    let (_, out) = h.req("alice", ClientRequest::LeaveRoom);
    assert!(h.room.is_empty());
    assert!(!out.iter().any(|o| matches!(
        o,
        Output::Notify {
            notification: Notification::RoomClosed { .. },
            ..
        }
    )));
    let (_, out) = h.req(
        "alice-again",
        ClientRequest::JoinRoom {
            room: ROOM.into(),
            user: "alice".into(),
            data_channels: false,
        },
    );
    assert_eq!(the_reply(&out), &Ok(Reply::Joined(vec![])));
}

/// Checklist 51 + §5.10: a publisher leaving releases its subscribers' endpoints and they get
/// only participantLeft.
#[test]
fn publisher_leaving_sends_only_participant_left_and_releases_subscriptions() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    let (pub_ep, _) = h.publish("alice");
    let (sub_ep, _) = h.subscribe("bob", "alice_webcam");
    let (_, out) = h.req("alice", ClientRequest::LeaveRoom);
    assert_eq!(
        notes_to(&out, "bob"),
        vec![&Notification::ParticipantLeft {
            name: "alice".into()
        }]
    );
    for ep in [pub_ep, sub_ep] {
        assert!(out.contains(&Output::Media(MediaCommand::Release { endpoint: ep })));
    }
    // Bob's subscription is gone: subscribing to a re-joined alice works without 302.
    h.join("alice");
    h.publish("alice");
    let (_, out) = h.subscribe("bob", "alice_webcam");
    assert!(the_reply(&out).is_ok());
}

/// A leaver's own subscriptions and publication are released too.
#[test]
fn leaving_releases_own_publication_and_subscriptions() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    h.publish("alice");
    let (bob_pub, _) = h.publish("bob");
    let (bob_sub, _) = h.subscribe("bob", "alice_webcam");
    let (_, out) = h.req("bob", ClientRequest::LeaveRoom);
    for ep in [bob_pub, bob_sub] {
        assert!(out.contains(&Output::Media(MediaCommand::Release { endpoint: ep })));
    }
}

/// Checklist 53: after a disconnect, participantLeft goes out exactly when the grace period
/// ends, not before; the evicted session is addressed participantEvicted after it.
#[test]
fn disconnected_participant_is_evicted_exactly_after_the_grace_period() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    let t0 = h.now;
    h.input(Input::Disconnected {
        session: s("alice"),
    });
    assert_eq!(h.room.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    h.room.handle_timeout(t0 + Duration::from_millis(9_999));
    assert!(h.room.poll_output().is_none());
    assert_eq!(h.room.participant_count(), 2);
    h.room.handle_timeout(t0 + Duration::from_secs(10));
    let out: Vec<Output> = std::iter::from_fn(|| h.room.poll_output()).collect();
    assert_eq!(
        notes_to(&out, "bob"),
        vec![&Notification::ParticipantLeft {
            name: "alice".into()
        }]
    );
    let left = position(
        &out,
        |o| matches!(o, Output::Notify { session, .. } if *session == s("bob")),
    );
    let evicted = position(
        &out,
        |o| matches!(o, Output::Notify { session, notification: Notification::ParticipantEvicted } if *session == s("alice")),
    );
    assert!(left < evicted);
    assert!(h.room.poll_timeout().is_none());
}

/// Checklist 54 + §5.11: during the grace period the user still counts as present.
#[test]
fn name_is_taken_and_listed_during_grace_period() {
    let mut h = Harness::new();
    h.join("alice");
    h.input(Input::Disconnected {
        session: s("alice"),
    });
    let (_, out) = h.req(
        "alice2",
        ClientRequest::JoinRoom {
            room: ROOM.into(),
            user: "alice".into(),
            data_channels: false,
        },
    );
    assert_eq!(the_error(&out).code(), 104);
    let out = h.join("bob");
    assert_eq!(
        the_reply(&out),
        &Ok(Reply::Joined(vec![Peer {
            name: "alice".into(),
            publishing: false
        }]))
    );
}

/// Checklist 55 (state part): a reconnection within the grace period cancels the eviction.
#[test]
fn reconnection_within_grace_cancels_eviction() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    let t0 = h.now;
    h.input(Input::Disconnected {
        session: s("alice"),
    });
    h.room.handle(
        t0 + Duration::from_secs(5),
        Input::Reconnected {
            session: s("alice"),
        },
    );
    h.room.handle_timeout(t0 + Duration::from_secs(20));
    assert!(h.room.poll_output().is_none());
    assert_eq!(h.room.participant_count(), 2);
}

/// Checklist 57 (state part) + §5.12: an explicit eviction is immediate.
#[test]
fn evict_removes_immediately_with_participant_left_then_evicted() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    let out = h.input(Input::Evict {
        session: s("alice"),
    });
    assert_eq!(
        notes_to(&out, "bob"),
        vec![&Notification::ParticipantLeft {
            name: "alice".into()
        }]
    );
    assert_eq!(
        notes_to(&out, "alice"),
        vec![&Notification::ParticipantEvicted]
    );
    assert_eq!(h.room.participant_count(), 1);
}

/// Checklist 63 (state part): requests queued behind a publish waiting for media are answered
/// in arrival order once it completes.
#[test]
fn requests_behind_a_pending_publish_are_answered_in_order() {
    let mut h = Harness::new();
    h.join("alice");
    let (pub_id, out) = h.req(
        "alice",
        ClientRequest::PublishVideo {
            sdp_offer: "o".into(),
            do_loopback: false,
        },
    );
    let ep = media_endpoint(&out).expect("publish");
    let mut ids = vec![pub_id];
    for i in 0..3 {
        let (id, out) = h.req(
            "alice",
            ClientRequest::OnIceCandidate {
                endpoint_name: "alice".into(),
                candidate: cand(&format!("c{i}")),
            },
        );
        assert!(replies(&out).is_empty(), "queued behind the publish");
        ids.push(id);
    }
    let out = h.input(Input::Media(MediaReport::Answered {
        endpoint: ep,
        answer: "a".into(),
    }));
    let answered: Vec<Id> = out
        .iter()
        .filter_map(|o| match o {
            Output::Reply { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(answered, ids);
}

/// Checklist 64 + §5.14: ten joiners each learn of the nine others exactly once.
#[test]
fn every_pair_of_joiners_learns_of_each_other_exactly_once() {
    let mut h = Harness::new();
    let names: Vec<String> = (0..10).map(|i| format!("user{i}")).collect();
    let mut all = Vec::new();
    for n in &names {
        all.extend(h.join(n));
    }
    for n in &names {
        let mut known: Vec<String> = notes_to(&all, n)
            .into_iter()
            .filter_map(|note| match note {
                Notification::ParticipantJoined { id } => Some(id.clone()),
                _ => None,
            })
            .collect();
        for o in &all {
            if let Output::Reply {
                session,
                result: Ok(Reply::Joined(peers)),
                ..
            } = o
            {
                if *session == s(n) {
                    known.extend(peers.iter().map(|p| p.name.clone()));
                }
            }
        }
        known.sort();
        let mut expected: Vec<String> = names.iter().filter(|m| *m != n).cloned().collect();
        expected.sort();
        assert_eq!(known, expected, "{n}");
    }
}

/// Checklist 65 + §5.14: joiners during a publish learn of the publication exactly once.
#[test]
fn joiners_during_a_publish_learn_of_it_exactly_once() {
    let mut h = Harness::new();
    h.join("pub");
    let (_, mut all) = h.req(
        "pub",
        ClientRequest::PublishVideo {
            sdp_offer: "o".into(),
            do_loopback: false,
        },
    );
    let ep = media_endpoint(&all).expect("publish");
    all.extend(h.join("j0"));
    all.extend(h.join("j1"));
    all.extend(h.input(Input::Media(MediaReport::Answered {
        endpoint: ep,
        answer: "a".into(),
    })));
    all.extend(h.join("j2"));
    for j in ["j0", "j1", "j2"] {
        let via_event = notes_to(&all, j)
            .iter()
            .filter(|n| matches!(n, Notification::ParticipantPublished { id } if id == "pub"))
            .count();
        let via_value = all
            .iter()
            .filter(|o| {
                matches!(o, Output::Reply { session, result: Ok(Reply::Joined(peers)), .. }
                    if *session == s(j) && peers.iter().any(|p| p.name == "pub" && p.publishing))
            })
            .count();
        assert_eq!(via_event + via_value, 1, "{j}");
    }
}

/// A failed publish negotiation answers the mapped Kurento error and frees the slot.
#[test]
fn rejected_publish_answers_error_and_allows_retry() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    let (_, out) = h.req(
        "alice",
        ClientRequest::PublishVideo {
            sdp_offer: "garbage".into(),
            do_loopback: false,
        },
    );
    let ep = media_endpoint(&out).expect("publish");
    let out = h.input(Input::Media(MediaReport::Rejected {
        endpoint: ep,
        failure: NegotiationFailure::OfferRejected("bad sdp".into()),
    }));
    let e = the_error(&out);
    assert_eq!(e.code(), -1);
    assert!(e.to_string().ends_with(":bad sdp"));
    assert!(notes_to(&out, "bob").is_empty());
    let out = h.input(Input::Media(MediaReport::Rejected {
        endpoint: ep,
        failure: NegotiationFailure::Unavailable,
    }));
    assert!(
        out.is_empty(),
        "a second report for the same endpoint is ignored"
    );
    let (_, out) = h.publish("alice");
    assert!(the_reply(&out).is_ok());
}

/// Media unavailable maps to 301.
#[test]
fn unavailable_media_maps_to_301() {
    let mut h = Harness::new();
    h.join("alice");
    let (_, out) = h.req(
        "alice",
        ClientRequest::PublishVideo {
            sdp_offer: "o".into(),
            do_loopback: false,
        },
    );
    let ep = media_endpoint(&out).expect("publish");
    let out = h.input(Input::Media(MediaReport::Rejected {
        endpoint: ep,
        failure: NegotiationFailure::Unavailable,
    }));
    assert_eq!(the_error(&out).code(), 301);
}

/// An unpublish while a subscription to it is still negotiating answers that subscription 302
/// and releases it.
#[test]
fn unpublish_during_subscription_negotiation_answers_302() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    h.publish("alice");
    let (_, out) = h.req(
        "bob",
        ClientRequest::ReceiveVideoFrom {
            sender: "alice".into(),
            sdp_offer: "o".into(),
        },
    );
    let sub = media_endpoint(&out).expect("subscribe");
    let (_, out) = h.req("alice", ClientRequest::UnpublishVideo);
    let bob_reply = replies(&out)
        .into_iter()
        .find(|(who, _)| **who == s("bob"))
        .expect("bob's pending subscription is answered");
    assert_eq!(bob_reply.1.as_ref().map_err(RoomError::code), Err(302));
    assert!(out.contains(&Output::Media(MediaCommand::Release { endpoint: sub })));
    // A late answer for the released endpoint only releases again.
    let out = h.input(Input::Media(MediaReport::Answered {
        endpoint: sub,
        answer: "a".into(),
    }));
    assert_eq!(
        out,
        vec![Output::Media(MediaCommand::Release { endpoint: sub })]
    );
}

/// mediaError reaches the owner of the failing endpoint in Kurento's text format.
#[test]
fn endpoint_failure_sends_media_error_to_its_owner() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    let (ep, _) = h.publish("alice");
    let out = h.input(Input::Media(MediaReport::Failed {
        endpoint: ep,
        description: "ICE failed".into(),
    }));
    assert_eq!(
        notes_to(&out, "alice"),
        vec![&Notification::MediaError {
            error: "MEDIA_ERROR: ICE failed(errCode=304)".into()
        }]
    );
    assert!(notes_to(&out, "bob").is_empty());
}

/// Checklist 71: an admin close sends roomClosed to everyone, no participantLeft, and
/// releases every endpoint.
#[test]
fn admin_close_sends_room_closed_and_no_participant_left() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    let (ep, _) = h.publish("alice");
    let out = h.input(Input::Close);
    for who in ["alice", "bob"] {
        assert_eq!(
            notes_to(&out, who),
            vec![&Notification::RoomClosed { room: ROOM.into() }]
        );
    }
    assert!(out.contains(&Output::Media(MediaCommand::Release { endpoint: ep })));
    assert!(h.room.is_empty());
}

/// Endpoint ids carry the room prefix so that rooms never collide.
#[test]
fn endpoint_ids_carry_the_room_prefix() {
    let mut h = Harness::new();
    h.join("alice");
    let (ep, _) = h.publish("alice");
    assert_eq!(ep.0 >> 32, 7);
}

fn limited(config: RoomConfig) -> Harness {
    Harness {
        room: Room::new(ROOM, 7, config),
        ..Harness::new()
    }
}

/// LIMIT: a full room refuses the next joiner with 201 and tells nobody.
#[test]
fn a_full_room_refuses_the_next_joiner() {
    let mut h = limited(RoomConfig {
        max_participants: 2,
        ..RoomConfig::default()
    });
    h.join("alice");
    h.join("bob");
    let out = h.join("carol");
    assert_eq!(the_error(&out).code(), 201);
    assert!(notes_to(&out, "alice").is_empty());
    assert_eq!(h.room.participant_count(), 2);
}

/// LIMIT: publishers per room count negotiating publications too; the next is refused (303)
/// without a media command, and a freed place can be taken again.
#[test]
fn publishers_per_room_are_capped() {
    let mut h = limited(RoomConfig {
        max_publishers: 1,
        ..RoomConfig::default()
    });
    h.join("alice");
    h.join("bob");
    let (_, out) = h.req(
        "alice",
        ClientRequest::PublishVideo {
            sdp_offer: "o".into(),
            do_loopback: false,
        },
    );
    assert!(media_endpoint(&out).is_some());
    let (_, out) = h.req(
        "bob",
        ClientRequest::PublishVideo {
            sdp_offer: "o".into(),
            do_loopback: false,
        },
    );
    assert_eq!(the_error(&out).code(), 303);
    assert!(media_endpoint(&out).is_none());
    h.input(Input::Evict {
        session: s("alice"),
    });
    let (_, out) = h.publish("bob");
    assert!(matches!(the_reply(&out), Ok(Reply::SdpAnswer(_))));
}

/// LIMIT: an oversized offer is refused (-1) before any endpoint exists, for publish and
/// subscribe alike.
#[test]
fn oversized_offers_are_refused_before_media() {
    let mut h = limited(RoomConfig {
        max_sdp_bytes: 10,
        ..RoomConfig::default()
    });
    h.join("alice");
    h.join("bob");
    let (_, out) = h.req(
        "alice",
        ClientRequest::PublishVideo {
            sdp_offer: "x".repeat(11),
            do_loopback: false,
        },
    );
    assert_eq!(the_error(&out).code(), -1);
    assert!(media_endpoint(&out).is_none());
    h.publish("alice");
    let (_, out) = h.req(
        "bob",
        ClientRequest::ReceiveVideoFrom {
            sender: "alice".into(),
            sdp_offer: "x".repeat(11),
        },
    );
    assert_eq!(the_error(&out).code(), -1);
    assert!(media_endpoint(&out).is_none());
}

/// LIMIT: client candidates per endpoint, early ones included; past it 999 and no command.
#[test]
fn candidates_per_endpoint_are_capped() {
    let mut h = limited(RoomConfig {
        max_candidates_per_endpoint: 2,
        ..RoomConfig::default()
    });
    h.join("alice");
    let add = |h: &mut Harness| {
        h.req(
            "alice",
            ClientRequest::OnIceCandidate {
                endpoint_name: "alice".into(),
                candidate: cand("candidate:1 1 udp 1 127.0.0.1 9 typ host"),
            },
        )
        .1
    };
    add(&mut h); // early, buffered
    h.publish("alice");
    let out = add(&mut h);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Media(MediaCommand::AddCandidate { .. }))));
    let out = add(&mut h);
    assert_eq!(the_error(&out).code(), 999);
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Media(MediaCommand::AddCandidate { .. }))));
}

/// Admin force-unpublish: the publication and the subscriptions to it are released and
/// everyone, the publisher included, hears participantUnpublished; the participant stays and
/// may publish again. A publication still negotiating is left alone.
#[test]
fn force_unpublish_releases_the_publication_and_tells_everyone() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    let (publisher, _) = h.publish("alice");
    let (subscription, _) = h.subscribe("bob", "alice");
    let out = h.input(Input::ForceUnpublish {
        session: s("alice"),
    });
    for endpoint in [publisher, subscription] {
        assert!(out.contains(&Output::Media(MediaCommand::Release { endpoint })));
    }
    for who in ["alice", "bob"] {
        assert_eq!(
            notes_to(&out, who),
            vec![&Notification::ParticipantUnpublished {
                name: "alice".into()
            }]
        );
    }
    let view = h.room.participants();
    assert_eq!(view[0].publication, None);
    assert!(view[1].subscriptions.is_empty());
    let (_, out) = h.publish("alice");
    assert!(matches!(the_reply(&out), Ok(Reply::SdpAnswer(_))));
    // Negotiating: nothing happens.
    h.join("carol");
    h.req(
        "carol",
        ClientRequest::PublishVideo {
            sdp_offer: "o".into(),
            do_loopback: false,
        },
    );
    let out = h.input(Input::ForceUnpublish {
        session: s("carol"),
    });
    assert!(out.is_empty(), "{out:?}");
}

/// The administrator's view lists participants in join order with their state.
#[test]
fn participants_view_reflects_publications_subscriptions_and_connections() {
    let mut h = Harness::new();
    h.join("alice");
    h.join("bob");
    h.publish("alice");
    h.subscribe("bob", "alice");
    h.input(Input::Disconnected { session: s("bob") });
    let view = h.room.participants();
    assert_eq!(view.len(), 2);
    assert_eq!(view[0].name, "alice");
    assert_eq!(view[0].publication, Some(PublicationState::Streaming));
    assert!(view[0].connected);
    assert_eq!(view[1].subscriptions, vec!["alice".to_owned()]);
    assert!(!view[1].connected);
}
