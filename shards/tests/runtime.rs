//! Tests for the thread-per-core runtime with real executors, real sockets and the real mesh.

use std::net::TcpStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatd_shards::{Acceptor, ListenError, ShardSet, ShardSetConfig, ShutdownHandle, StartError};

const WAIT: Duration = Duration::from_secs(20);

fn config(shards: usize, mesh_capacity: usize) -> ShardSetConfig {
    ShardSetConfig {
        shards,
        mesh_capacity,
        pin_cores: false,
        ..ShardSetConfig::default()
    }
}

#[test]
fn mesh_routes_every_message_to_its_destination_in_order() {
    let (done_tx, done_rx) = mpsc::channel::<(usize, Vec<(usize, u32)>)>();
    let done_tx = Arc::new(Mutex::new(done_tx));
    const PER_PEER: u32 = 500;
    let set = ShardSet::start(&config(3, 16), ShutdownHandle::new(), move |ctx| {
        let done_tx = done_tx.clone();
        async move {
            let me = ctx.id;
            let nr = ctx.nr_shards;
            let receivers = ctx.receivers;
            let collector = glommio::spawn_local(async move {
                let mut got = Vec::new();
                for r in &receivers {
                    for _ in 0..PER_PEER {
                        if let Some(msg) = r.recv().await {
                            got.push((r.source(), msg));
                        }
                    }
                }
                got
            });
            for seq in 0..PER_PEER {
                for to in 0..nr {
                    ctx.mesh.send_to(to, seq).await.map_err(|f| f.msg).unwrap();
                }
            }
            let got = collector.await;
            done_tx.lock().unwrap().send((me, got)).unwrap();
            ctx.shutdown.wait().await;
        }
    })
    .unwrap();
    for _ in 0..3 {
        let (_shard, got) = done_rx.recv_timeout(WAIT).unwrap();
        assert_eq!(got.len(), 3 * PER_PEER as usize);
        for source in 0..3 {
            let from_source: Vec<u32> = got.iter().filter(|(s, _)| *s == source).map(|(_, m)| *m).collect();
            assert_eq!(
                from_source,
                (0..PER_PEER).collect::<Vec<_>>(),
                "messages from shard {source} out of order or lost"
            );
        }
    }
    let stats = set.stats();
    assert!(stats.iter().all(|s| s.snapshot().mesh_sent == 3 * PER_PEER as u64));
    set.stop().unwrap();
}

#[test]
fn full_queue_hands_the_message_back() {
    let (report_tx, report_rx) = mpsc::channel::<Result<(u32, u32, Vec<u32>), String>>();
    let report_tx = Arc::new(Mutex::new(report_tx));
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Arc::new(Mutex::new(Some(go_rx)));
    let set = ShardSet::start(&config(2, 4), ShutdownHandle::new(), move |ctx| {
        let report_tx = report_tx.clone();
        let go_rx = go_rx.clone();
        async move {
            if ctx.id == 0 {
                // Fill shard 1's queue from shard 0 without it reading.
                let mut accepted = 0u32;
                let mut handed_back = None;
                for seq in 0..1000u32 {
                    match ctx.mesh.try_send_to(1, seq) {
                        Ok(()) => accepted += 1,
                        Err(full) => {
                            handed_back = Some((full.msg, full.closed));
                            break;
                        }
                    }
                }
                let res = match handed_back {
                    Some((msg, false)) => Ok((accepted, msg, Vec::new())),
                    other => Err(format!("queue never filled: {other:?}")),
                };
                report_tx.lock().unwrap().send(res).unwrap();
            } else {
                // Wait (off the executor) until the test says the queue was filled, then drain.
                let rx = go_rx.lock().unwrap().take().unwrap();
                glommio::executor()
                    .spawn_blocking(move || rx.recv_timeout(WAIT))
                    .await
                    .unwrap();
                let mut got = Vec::new();
                let from0 = &ctx.receivers[0];
                while let Some(Some(m)) = futures_lite::future::or(async { Some(from0.recv().await) }, async {
                    glommio::timer::sleep(Duration::from_millis(300)).await;
                    None
                })
                .await
                {
                    got.push(m);
                }
                report_tx.lock().unwrap().send(Ok((0, 0, got))).unwrap();
            }
            ctx.shutdown.wait().await;
        }
    })
    .unwrap();
    let (accepted, handed_back, _) = report_rx.recv_timeout(WAIT).unwrap().unwrap();
    assert!(accepted >= 4, "a queue of capacity 4 took only {accepted}");
    assert_eq!(
        handed_back, accepted,
        "the rejected message must be the one just offered"
    );
    go_tx.send(()).unwrap();
    let (_, _, drained) = report_rx.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!(drained, (0..accepted).collect::<Vec<_>>());
    assert!(set.stats()[0].snapshot().mesh_full >= 1);
    set.stop().unwrap();
}

#[test]
fn shutdown_stops_accepting_and_waits_for_every_shard() {
    let events = Arc::new(Mutex::new(Vec::<String>::new()));
    let ev = events.clone();
    let set = ShardSet::start(
        &config(2, 8),
        ShutdownHandle::new(),
        move |ctx: chatd_shards::ShardContext<()>| {
            let ev = ev.clone();
            async move {
                ev.lock().unwrap().push(format!("start {}", ctx.id));
                let acceptor = Acceptor::new(ctx.listener, ctx.stats.clone(), ctx.shutdown.clone());
                while let Some(conn) = acceptor.next().await {
                    drop(conn);
                }
                // Simulated drain work after the listener stopped.
                glommio::timer::sleep(Duration::from_millis(50)).await;
                ev.lock().unwrap().push(format!("stop {}", ctx.id));
            }
        },
    )
    .unwrap();
    let addr = set.local_addr();
    for _ in 0..20 {
        TcpStream::connect_timeout(&addr, WAIT).unwrap();
    }
    let stats = set.stats();
    // Every connection lands on exactly one shard's listener.
    let deadline = std::time::Instant::now() + WAIT;
    while stats.iter().map(|s| s.snapshot().accepted).sum::<u64>() < 20 {
        assert!(std::time::Instant::now() < deadline, "connections were not accepted");
        std::thread::yield_now();
    }
    set.stop().unwrap();
    let events = events.lock().unwrap().clone();
    for id in 0..2 {
        assert!(events.contains(&format!("start {id}")));
        assert!(
            events.contains(&format!("stop {id}")),
            "shard {id} did not finish before stop returned: {events:?}"
        );
    }
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "listener still open after stop"
    );
}

#[test]
fn second_set_on_the_same_port_is_refused() {
    let first = ShardSet::start(
        &config(2, 8),
        ShutdownHandle::new(),
        |ctx: chatd_shards::ShardContext<()>| async move {
            // Hold the whole context (and so the listener) until shutdown: an async block that
            // named only `ctx.shutdown` would capture just that field and close the listener.
            let ctx = ctx;
            ctx.shutdown.wait().await;
        },
    )
    .unwrap();
    let cfg = ShardSetConfig {
        listen: first.local_addr(),
        ..config(2, 8)
    };
    let second = ShardSet::start(
        &cfg,
        ShutdownHandle::new(),
        |ctx: chatd_shards::ShardContext<()>| async move {
            ctx.shutdown.wait().await;
        },
    );
    assert!(
        matches!(second, Err(StartError::Listen(ListenError::InUse { .. }))),
        "second bind was not refused: {:?}",
        second.as_ref().err()
    );
    first.stop().unwrap();
}

#[test]
fn a_full_ephemeral_lane_never_holds_up_the_main_mesh() {
    let (report_tx, report_rx) = mpsc::channel::<Result<String, String>>();
    let report_tx = Arc::new(Mutex::new(report_tx));
    let cfg = ShardSetConfig {
        ephemeral_capacity: 2,
        ..config(2, 4)
    };
    let shard_main = move |ctx: chatd_shards::ShardContext<u32>| {
        let report_tx = report_tx.clone();
        async move {
            // Keep the ephemeral receivers alive (an async block captures only the fields it
            // names; dropping them would close the lane instead of leaving it unread).
            let _lane = &ctx.ephemeral_receivers;
            let res = if ctx.id == 0 {
                // Once shard 1 is up (it says so over the main mesh), it never reads its
                // ephemeral lane: the lane (connected by one waiting send) fills and hands
                // messages back, while the main mesh still delivers.
                let _ = ctx.receivers[1].recv().await;
                let connected = ctx.ephemeral.send_to(1, 0).await.is_ok();
                let handed_back = (1..=10u32)
                    .filter(|seq| ctx.ephemeral.try_send_to(1, *seq).is_err())
                    .count();
                let sent = ctx.mesh.send_to(1, 7777).await.is_ok();
                if connected && handed_back >= 8 && sent {
                    Ok("lane full".to_owned())
                } else {
                    Err(format!(
                        "connected {connected}, handed back {handed_back} of 10, main send ok: {sent}"
                    ))
                }
            } else {
                let _ = ctx.mesh.send_to(0, 1).await;
                match ctx.receivers[0].recv().await {
                    Some(7777) => Ok("main mesh delivered".to_owned()),
                    other => Err(format!("unexpected {other:?}")),
                }
            };
            report_tx.lock().unwrap().send(res).unwrap();
            ctx.shutdown.wait().await;
        }
    };
    let set = ShardSet::start(&cfg, ShutdownHandle::new(), shard_main).unwrap();
    let mut reports = vec![
        report_rx.recv_timeout(WAIT).unwrap(),
        report_rx.recv_timeout(WAIT).unwrap(),
    ];
    set.stop().unwrap();
    reports.sort();
    assert_eq!(
        reports,
        [Ok("lane full".to_owned()), Ok("main mesh delivered".to_owned())]
    );
}
