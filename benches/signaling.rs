//! Signaling hot spots: decoding/encoding Kurento JSON-RPC frames and a room fanning a
//! `participantJoined` out to 100 peers. Run with `cargo bench --bench signaling`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use signaling::jsonrpc::{self, Decoded};
use signaling::protocol::{self, ClientRequest, Notification};
use signaling::room::{Input, Room, RoomConfig, SessionId};

const ICE: &str = r#"{"jsonrpc":"2.0","method":"onIceCandidate","params":{"endpointName":"alice","candidate":"candidate:842163049 1 udp 1677729535 203.0.113.7 54321 typ srflx raddr 10.0.0.2 rport 54321 generation 0","sdpMid":"audio","sdpMLineIndex":0},"id":8}"#;

fn decode_and_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("jsonrpc");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_parse/onIceCandidate", |b| {
        b.iter(|| {
            let Decoded::Request(r) = jsonrpc::decode(black_box(ICE)) else {
                panic!("fixture is a request")
            };
            black_box(protocol::parse(&r.method, &r.params).is_ok())
        })
    });
    let offer = format!(
        r#"{{"jsonrpc":"2.0","method":"publishVideo","params":{{"sdpOffer":"{}","doLoopback":false}},"id":3}}"#,
        "a=candidate:1 1 udp 2113937151 192.168.1.10 45678 typ host\\r\\n".repeat(60)
    );
    g.bench_function("decode_parse/publishVideo_4kB", |b| {
        b.iter(|| {
            let Decoded::Request(r) = jsonrpc::decode(black_box(&offer)) else {
                panic!("fixture is a request")
            };
            black_box(protocol::parse(&r.method, &r.params).is_ok())
        })
    });
    let note = Notification::IceCandidate {
        endpoint_name: "bob".into(),
        candidate: protocol::Candidate {
            candidate: "candidate:1 1 UDP 2013266431 192.168.1.10 45678 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
        },
    };
    g.bench_function("encode/iceCandidate", |b| {
        b.iter(|| black_box(note.encode()))
    });
    g.finish();
}

fn join_fan_out(c: &mut Criterion) {
    let mut g = c.benchmark_group("room");
    for peers in [10usize, 100] {
        g.throughput(Throughput::Elements(peers as u64));
        g.bench_with_input(
            BenchmarkId::new("join_fanout", peers),
            &peers,
            |b, &peers| {
                b.iter_batched(
                    || {
                        let mut room = Room::new("bench", 1, RoomConfig::default());
                        let now = Instant::now();
                        for i in 0..peers {
                            room.handle(now, join(i));
                        }
                        while room.poll_output().is_some() {}
                        room
                    },
                    |mut room| {
                        // One more joiner: `peers` participantJoined events plus the reply, each
                        // encoded to its wire text as the driver would.
                        room.handle(Instant::now(), join(peers));
                        let mut bytes = 0;
                        while let Some(out) = room.poll_output() {
                            if let signaling::room::Output::Notify { notification, .. } = out {
                                bytes += notification.encode().len();
                            }
                        }
                        black_box(bytes)
                    },
                    criterion::BatchSize::SmallInput,
                )
            },
        );
    }
    g.finish();
}

fn join(i: usize) -> Input {
    Input::Request {
        session: SessionId(format!("s{i}")),
        id: 1,
        request: ClientRequest::JoinRoom {
            room: "bench".into(),
            user: format!("user{i}"),
            data_channels: false,
        },
    }
}

criterion_group!(benches, decode_and_parse, join_fan_out);
criterion_main!(benches);
