//! Leak check: 200 publish/subscribe/connect/release cycles (in concurrent batches) leave no
//! growing number of endpoints, shard peer connections or file descriptors. Its own test binary,
//! so the fd count is not disturbed by other tests.

mod common;

use std::time::{Duration, Instant};

use common::*;
use media::EndpointKey;

const CYCLES: u64 = 200;
const BATCH: u64 = 10;

async fn cycle(router: &media::MediaRouter, i: u64) {
    let (ev_tx, _ev_rx) = events();
    let pub_key = EndpointKey(i * 2);
    let sub_key = EndpointKey(i * 2 + 1);
    let opts = PublishOpts {
        audio: true,
        ..Default::default()
    };
    let (publ, _) = publish(router, pub_key, opts, ev_tx.clone()).await;
    let (sub, _, _) = subscribe(router, sub_key, pub_key, CHROME, false, ev_tx).await;
    send_packets(
        &publ.video,
        VIDEO_SSRC,
        CHROME.vp8,
        0,
        3,
        Duration::from_millis(1),
    )
    .await;
    if i % 2 == 0 {
        router.release(sub_key).await;
    }
    router.release(pub_key).await;
    publ.client.close().await;
    sub.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_no_leaks() {
    let router = router();
    let t0 = Instant::now();
    let mut baseline_fds = 0;
    for b in 0..CYCLES / BATCH {
        let mut set = tokio::task::JoinSet::new();
        for j in 0..BATCH {
            let r = router.clone();
            set.spawn(async move { cycle(&r, b * BATCH + j).await });
        }
        while let Some(res) = set.join_next().await {
            res.expect("cycle completed without panic");
        }
        assert_idle(&router);
        if b == 0 {
            baseline_fds = open_fds();
        }
    }
    let fds = open_fds();
    let s = router.stats();
    eprintln!(
        "{CYCLES} cycles in {:?}; fds after first batch {baseline_fds}, at end {fds}; {s:?}",
        t0.elapsed()
    );
    assert_idle(&router);
    assert!(
        fds <= baseline_fds + 8,
        "file descriptors grew: {baseline_fds} -> {fds}"
    );
}
