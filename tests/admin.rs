//! The admin API over real sockets (see src/admin.rs for the table): the room list shows
//! participants with their publication, subscriptions and connection; evict sends
//! participantEvicted to the evicted and participantLeft to the others; force-unpublish
//! releases the publication (and the subscriptions to it) and tells everyone; close sends
//! roomClosed; every route needs the bearer token, and actions need POST.

mod common;

use common::peer::{publish, subscribe};
use common::{http_request, start_server_with, Server};
use serde_json::{json, Value};

const TOKEN: &str = "adm1n";

async fn server() -> Server {
    start_server_with(roomd::Config {
        admin_token: Some(TOKEN.into()),
        ..roomd::Config::default()
    })
    .await
}

async fn admin(server: &Server, method: &str, path: &str) -> (u16, Value) {
    let auth = format!("Bearer {TOKEN}");
    let (status, body) = http_request(server.addr, method, path, &[("Authorization", &auth)]).await;
    let value = serde_json::from_str(&body).unwrap_or(Value::Null);
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_evict_unpublish_and_close() {
    let server = server().await;
    let (mut alice, mut bob) = server.pair("r1", "alice", "bob").await;
    let _pub = publish(&mut alice, "alice", false, false).await;
    bob.notification("participantPublished").await;
    let _sub = subscribe(&mut bob, "alice").await;
    let mut carol = server.client().await;
    carol.join("r1", "carol").await;

    // Reads need the token; actions need POST.
    assert_eq!(
        http_request(server.addr, "GET", "/admin/rooms", &[])
            .await
            .0,
        401
    );
    assert_eq!(admin(&server, "GET", "/admin/rooms/r1/close").await.0, 405);
    let (status, list) = admin(&server, "GET", "/admin/rooms").await;
    assert_eq!(status, 200);
    let rooms = list["rooms"].as_array().expect("rooms array");
    assert_eq!(rooms.len(), 1);
    let people = rooms[0]["participants"].as_array().expect("participants");
    let names: Vec<&str> = people.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    assert_eq!(people[0]["publishing"], json!("streaming"));
    assert_eq!(people[1]["subscriptions"], json!(["alice"]));
    assert_eq!(people[1]["publishing"], Value::Null);
    assert!(people.iter().all(|p| p["connected"] == json!(true)));

    // Force-unpublish alice: everyone, alice included, hears it; bob's subscription goes.
    let (status, _) = admin(
        &server,
        "POST",
        "/admin/rooms/r1/participants/alice/unpublish",
    )
    .await;
    assert_eq!(status, 200);
    for c in [&mut alice, &mut bob, &mut carol] {
        let n = c.notification("participantUnpublished").await;
        assert_eq!(n["params"]["name"], json!("alice"));
    }
    let (_, list) = admin(&server, "GET", "/admin/rooms").await;
    let people = &list["rooms"][0]["participants"];
    assert_eq!(people[0]["publishing"], Value::Null);
    assert_eq!(people[1]["subscriptions"], json!([]));
    assert_eq!(
        admin(
            &server,
            "POST",
            "/admin/rooms/r1/participants/alice/unpublish"
        )
        .await
        .0,
        404,
        "not streaming any more"
    );

    // Evict carol: she gets participantEvicted, the others participantLeft.
    assert_eq!(
        admin(&server, "POST", "/admin/rooms/r1/participants/nobody/evict")
            .await
            .0,
        404
    );
    let (status, _) = admin(&server, "POST", "/admin/rooms/r1/participants/carol/evict").await;
    assert_eq!(status, 200);
    carol.notification("participantEvicted").await;
    for c in [&mut alice, &mut bob] {
        let n = c.notification("participantLeft").await;
        assert_eq!(n["params"]["name"], json!("carol"));
    }

    // Close the room.
    assert_eq!(
        admin(&server, "POST", "/admin/rooms/nope/close").await.0,
        404
    );
    assert_eq!(admin(&server, "POST", "/admin/rooms/r1/close").await.0, 200);
    for c in [&mut alice, &mut bob] {
        c.notification("roomClosed").await;
    }
    let (_, list) = admin(&server, "GET", "/admin/rooms").await;
    assert_eq!(list["rooms"], json!([]));
}

#[tokio::test]
async fn the_admin_api_is_off_without_a_token() {
    let server = start_server_with(roomd::Config::default()).await;
    let mut a = server.client().await;
    a.join("r", "a").await;
    for (method, path) in [
        ("GET", "/admin/rooms"),
        ("POST", "/admin/rooms/r/close"),
        ("POST", "/admin/rooms/r/participants/a/evict"),
    ] {
        let auth = "Bearer anything";
        let status = http_request(server.addr, method, path, &[("Authorization", auth)])
            .await
            .0;
        assert_eq!(status, 403, "{method} {path}");
    }
    assert_eq!(server.get("/getAllRooms").await.1, json!(["r"]));
}
