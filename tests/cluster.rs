//! Host peering with real processes: three `chatd serve` on loopback (free ports), each with its
//! own data directory imported from one Rocket.Chat dump built here, linked over their cluster
//! ports. Typing crosses hosts, presence is cluster-wide and expires with a lost host, bad peers
//! are refused, a typing flood stays bounded, and a partition converges: once through a relay
//! between two hosts that stops passing bytes and then passes them again, and once between network
//! namespaces whose veth link goes down and up (skipped, loudly, where namespaces cannot be made).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::doc;
use chatd::peer::codec::{self, Frame, Hello, PeerActivity};
use chatd::peer::handshake::{self, Role};
use common::rcdump::*;
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "test-cluster-secret-0123456789";

/// The tests of this file run one at a time: each starts up to three chatd processes (six shards
/// and their store threads) on a machine that may have two cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
const ALICE: &str = "aliceId00000000001";
const BOB: &str = "bobId0000000000002";
const CAROL: &str = "carolId00000000003";
const OPS: &str = "opsRoom0000000001";

/// One dump: alice, bob and carol (passwords "<name>-pw"), all in the private group `ops`.
fn build_dump() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rocketchat");
    std::fs::create_dir(&db).unwrap();
    let t0 = now() - 10 * DAY;
    let users: Vec<_> = [(ALICE, "alice"), (BOB, "bob"), (CAROL, "carol")]
        .into_iter()
        .map(|(id, name)| user_doc(id, name, Some(&format!("{name}-pw")), true, vec![]))
        .collect();
    write_bson(&db.join("users.bson"), &users, false);
    let rooms =
        vec![doc! {"_id": OPS, "t": "p", "name": "ops", "u": {"_id": ALICE, "username": "alice"}, "ts": date(t0)}];
    write_bson(&db.join("rocketchat_room.bson"), &rooms, false);
    let subs: Vec<_> = [(ALICE, "alice"), (BOB, "bob"), (CAROL, "carol")]
        .into_iter()
        .map(|(id, name)| {
            doc! {"_id": format!("sub-{name}"), "rid": OPS, "u": {"_id": id, "username": name}, "t": "p",
            "name": "ops", "open": true, "ts": date(t0)}
        })
        .collect();
    write_bson(&db.join("rocketchat_subscription.bson"), &subs, false);
    write_bson(&db.join("rocketchat_message.bson"), &[], false);
    dir
}

/// A data directory imported from `dump`.
fn imported(dump: &Path, root: &Path, name: &str) -> PathBuf {
    let data = root.join(name);
    let out = import(&dump.join("rocketchat"), &data);
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    data
}

/// Starts a host with the cluster on (`cluster` = its cluster address, port 0 for a free one).
fn host(data: &Path, cluster: &str, peers: &[SocketAddr], secret: &str) -> ChatdProcess {
    host_with(data, cluster, peers, secret, &[])
}

fn host_with(data: &Path, cluster: &str, peers: &[SocketAddr], secret: &str, extra: &[&str]) -> ChatdProcess {
    let mut args = vec!["--listen", "127.0.0.1:0", "--cluster-listen", cluster];
    args.extend(extra);
    let peers: Vec<String> = peers.iter().map(ToString::to_string).collect();
    for p in &peers {
        args.extend(["--peer", p.as_str()]);
    }
    ChatdProcess::serve_env(data, &args, &[("CHATD_CLUSTER_SECRET", secret)]).expect("chatd starts")
}

fn cluster_addr(p: &ChatdProcess) -> SocketAddr {
    p.logged_value("cluster port listening", "addr")
        .expect("cluster port logged")
        .parse()
        .unwrap()
}

fn login(p: &ChatdProcess, name: &str) -> Ddp {
    let mut c = Ddp::open(p.addr);
    c.login(name, &format!("{name}-pw"));
    c
}

fn typing(c: &mut Ddp, who: &str) {
    c.ok(
        "stream-notify-room",
        json!([format!("{OPS}/user-activity"), who, ["user-typing"], {}]),
    );
}

/// The next `user-activity` notice's username.
fn next_activity(c: &mut Ddp) -> String {
    loop {
        let ev = c.next_event("stream-notify-room");
        if ev["fields"]["eventName"] == format!("{OPS}/user-activity") {
            return ev["fields"]["args"][0].as_str().unwrap().to_owned();
        }
    }
}

/// The next `user-status` code about `uid`.
fn next_status(c: &mut Ddp, uid: &str) -> u64 {
    loop {
        let ev = c.next_event("stream-notify-logged");
        let entry = &ev["fields"]["args"][0];
        if entry[0] == uid {
            return entry[2].as_u64().unwrap();
        }
    }
}

/// A user's status as one host reports it over REST (any logged-in caller).
fn presence_on(p: &ChatdProcess, caller: &Value, uid: &str) -> String {
    let text = ureq::get(&format!("http://{}/api/v1/users.getPresence?userId={uid}", p.addr))
        .set("X-User-Id", caller["id"].as_str().unwrap())
        .set("X-Auth-Token", caller["token"].as_str().unwrap())
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let resp: Value = serde_json::from_str(&text).unwrap();
    resp["presence"].as_str().unwrap_or_default().to_owned()
}

fn watch_status(p: &ChatdProcess, name: &str) -> Ddp {
    let mut c = login(p, name);
    c.sub("stream-notify-logged", json!(["user-status", false])).unwrap();
    c
}

#[test]
fn typing_and_presence_cross_hosts_and_survive_a_lost_host() {
    let _serial = serial();
    let dump = build_dump();
    let root = tempfile::tempdir().unwrap();
    let (da, db, dc) = (
        imported(dump.path(), root.path(), "a"),
        imported(dump.path(), root.path(), "b"),
        imported(dump.path(), root.path(), "c"),
    );
    let a = host(&da, "127.0.0.1:0", &[], SECRET);
    let a_cluster = cluster_addr(&a);
    let mut b = host(&db, "127.0.0.1:0", &[a_cluster], SECRET);
    let b_cluster = cluster_addr(&b);
    let c = host(&dc, "127.0.0.1:0", &[a_cluster, b_cluster], SECRET);
    assert!(a
        .log
        .lock()
        .unwrap()
        .contains("messages are not shared between hosts without MongoDB"));
    for p in [&a, &b, &c] {
        wait_until("every host linked to both others", || {
            metric(p, "chatd_peer_links_up") == 2
        });
    }

    // Typing from A reaches members on B and C, not the sender's own connection.
    let mut carol = login(&c, "carol");
    carol
        .sub("stream-notify-room", json!([format!("{OPS}/user-activity"), false]))
        .unwrap();
    let mut bob = login(&b, "bob");
    bob.sub("stream-notify-room", json!([format!("{OPS}/user-activity"), false]))
        .unwrap();
    let mut alice = login(&a, "alice");
    alice
        .sub("stream-notify-room", json!([format!("{OPS}/user-activity"), false]))
        .unwrap();
    typing(&mut alice, "alice");
    assert_eq!(next_activity(&mut carol), "alice");
    assert_eq!(next_activity(&mut bob), "alice");
    // A spoofed name is dropped at the door of A: carol's next notice is bob's, written later.
    let _ = alice.call(
        "stream-notify-room",
        json!([format!("{OPS}/user-activity"), "bob", ["user-typing"], {}]),
    );
    typing(&mut bob, "bob");
    assert_eq!(next_activity(&mut carol), "bob");
    // alice's own next notice is bob's too: she never got her own.
    assert_eq!(next_activity(&mut alice), "bob");

    // Presence: bob (connected only on B) is online on A and C.
    let a_caller = json!({"id": ALICE, "token": alice.login("alice", "alice-pw")["token"]});
    let c_caller = json!({"id": CAROL, "token": carol.login("carol", "carol-pw")["token"]});
    wait_until("bob online on A", || presence_on(&a, &a_caller, BOB) == "online");
    wait_until("bob online on C", || presence_on(&c, &c_caller, BOB) == "online");
    let mut watch_a = watch_status(&a, "alice");
    let mut watch_c = watch_status(&c, "carol");

    // kill -9 B: bob goes offline on A and C within 10 s.
    let killed = Instant::now();
    b.kill();
    assert_eq!(next_status(&mut watch_a, BOB), 0);
    assert_eq!(next_status(&mut watch_c, BOB), 0);
    let took = killed.elapsed();
    eprintln!("bob offline on A and C {took:?} after kill -9 of B");
    assert!(took <= Duration::from_secs(10), "bob went offline after {took:?}");
    assert_eq!(presence_on(&a, &a_caller, BOB), "offline");

    // B returns on the same cluster port: it rejoins, typing and presence flow again.
    let b = host(&db, &b_cluster.to_string(), &[a_cluster], SECRET);
    for p in [&a, &b, &c] {
        wait_until("links back after B restarted", || metric(p, "chatd_peer_links_up") == 2);
    }
    let mut bob = login(&b, "bob");
    assert_eq!(next_status(&mut watch_a, BOB), 1);
    assert_eq!(next_status(&mut watch_c, BOB), 1);
    typing(&mut bob, "bob");
    assert_eq!(next_activity(&mut carol), "bob");
    assert_eq!(next_activity(&mut alice), "bob");
    drop(dump);
}

/// Reads until the host closes the connection: `true` if it did (EOF or reset) within the wait.
fn closed_by_host(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match s.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

/// A raw peer connection from the test: connect and send `bytes`, then see the host close it.
fn closes_after(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    let _ = s.write_all(bytes);
    closed_by_host(&mut s)
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn read_body(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    body
}

/// The test as an authenticated peer (it knows the secret): returns the open link.
fn authenticated_peer(addr: SocketAddr, secret: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let me = Hello {
        host: 0xfeed,
        nonce: [7; 32],
        name: "test-peer".into(),
    };
    s.write_all(&codec::encode_hello(&me).unwrap()).unwrap();
    let theirs = codec::decode_hello(&read_body(&mut s)).unwrap();
    let proof = handshake::proof(secret.as_bytes(), Role::Dialer, &me, &theirs).unwrap();
    s.write_all(&codec::encode_proof(&proof)).unwrap();
    let got = read_body(&mut s);
    handshake::verify(secret.as_bytes(), Role::Acceptor, &theirs, &me, &got).unwrap();
    s
}

#[test]
fn bad_peers_are_refused_and_the_host_keeps_serving() {
    let _serial = serial();
    let dump = build_dump();
    let root = tempfile::tempdir().unwrap();
    let a = host(&imported(dump.path(), root.path(), "a"), "127.0.0.1:0", &[], SECRET);
    let a_cluster = cluster_addr(&a);

    // A host with the wrong secret dials A: refused on both sides, never linked.
    let x = host(
        &imported(dump.path(), root.path(), "x"),
        "127.0.0.1:0",
        &[a_cluster],
        "a-different-secret-987654321",
    );
    wait_until("A refuses the wrong secret", || {
        metric(&a, "chatd_peer_refused_total") >= 1
    });
    wait_until("A logs the wrong secret", || {
        a.log.lock().unwrap().contains("wrong cluster secret")
    });
    assert_eq!(metric(&a, "chatd_peer_links_up"), 0);
    assert_eq!(metric(&x, "chatd_peer_links_up"), 0);
    drop(x);

    // Garbage, a wrong version, an oversized frame: each connection is closed.
    let refused = metric(&a, "chatd_peer_refused_total");
    assert!(closes_after(a_cluster, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    let mut other_version = codec::MAGIC.to_vec();
    other_version.extend_from_slice(&99u16.to_be_bytes());
    other_version.extend_from_slice(&[0; 40]);
    assert!(closes_after(a_cluster, &framed(&other_version)));
    assert!(closes_after(a_cluster, &0x7fff_ffffu32.to_be_bytes()));
    wait_until("three more refusals counted", || {
        metric(&a, "chatd_peer_refused_total") >= refused + 3
    });
    wait_until("A logs the wrong version", || {
        a.log.lock().unwrap().contains("version 99")
    });
    // An authenticated peer that then sends an oversized frame is cut off too.
    let mut s = authenticated_peer(a_cluster, SECRET);
    s.write_all(&(64u32 << 20).to_be_bytes()).unwrap();
    let closed = closed_by_host(&mut s);
    assert!(closed, "oversized frame did not close the link");

    // A still serves chat.
    let mut alice = login(&a, "alice");
    let mut bob = login(&a, "bob");
    bob.sub("stream-room-messages", json!([OPS, false])).unwrap();
    alice.send_message(OPS, "still here");
    assert_eq!(bob.next_message()["msg"], "still here");
}

#[test]
fn a_typing_flood_over_a_link_stays_bounded_and_messages_keep_flowing() {
    let _serial = serial();
    let dump = build_dump();
    let root = tempfile::tempdir().unwrap();
    let a = host(&imported(dump.path(), root.path(), "a"), "127.0.0.1:0", &[], SECRET);
    let a_cluster = cluster_addr(&a);
    let mut alice = login(&a, "alice");
    // bob measures deliveries (messages only, so the flood's notices do not queue in front of
    // them in his client); carol shows that the flood reached A's sessions.
    let mut bob = login(&a, "bob");
    bob.sub("stream-room-messages", json!([OPS, false])).unwrap();
    let mut carol = login(&a, "carol");
    carol
        .sub("stream-notify-room", json!([format!("{OPS}/user-activity"), false]))
        .unwrap();
    let rss_before = a.rss_bytes();
    let (quiet_n, quiet_worst) = deliveries(&mut alice, &mut bob, Duration::from_secs(1));
    eprintln!("before the flood: {quiet_n} messages in 1 s, slowest send-to-receive {quiet_worst:?}");

    // The flood: a peer that knows the secret sends typing notices as fast as the link takes
    // them, for three seconds, from its own thread.
    let mut link = authenticated_peer(a_cluster, SECRET);
    link.set_write_timeout(Some(WAIT)).unwrap();
    let frame = codec::encode(&Frame::Typing(PeerActivity {
        rid: OPS.into(),
        username: "dave".into(),
        activities: vec!["user-typing".into()],
        extra: None,
    }))
    .unwrap();
    let batch: Vec<u8> = frame.iter().copied().cycle().take(frame.len() * 512).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(20) {
                if link.write_all(&batch).is_err() {
                    break;
                }
                sent += 512;
            }
            sent
        })
    };
    // Meanwhile messages on A keep being delivered (each within the usual bounded wait).
    let (n, worst) = deliveries(&mut alice, &mut bob, Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let flooded = flooder.join().unwrap();
    let rss_after = a.rss_bytes();
    eprintln!(
        "flood: {flooded} typing notices sent; {n} messages delivered meanwhile, slowest send-to-receive {worst:?}; \
         RSS {} MiB -> {} MiB; notices dropped on A: {}",
        rss_before >> 20,
        rss_after >> 20,
        metric(&a, "chatd_dropped_events_total")
    );
    assert!(n >= 3, "only {n} messages delivered during the flood");
    assert!(flooded > 0);
    assert!(
        rss_after < rss_before + (64 << 20),
        "memory grew from {rss_before} to {rss_after} bytes under a typing flood"
    );
    // The flood reached carol's session, so it was read and delivered, not just ignored.
    assert_eq!(next_activity(&mut carol), "dave");
}

/// Sends messages one after another for `span`, each awaited by `to`: (count, slowest).
fn deliveries(from: &mut Ddp, to: &mut Ddp, span: Duration) -> (u32, Duration) {
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut n = 0;
    while started.elapsed() < span {
        let sent = Instant::now();
        let want = format!("m{n}-{}", started.elapsed().as_nanos());
        from.send_message(OPS, &want);
        while to.next_message()["msg"] != want.as_str() {}
        worst = worst.max(sent.elapsed());
        n += 1;
    }
    (n, worst)
}

/// A relay between two hosts that can stop passing bytes (a partition) and pass them again.
struct Relay {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
}

impl Relay {
    fn start(to: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let gate = open.clone();
        std::thread::spawn(move || {
            for inbound in listener.incoming().take(64) {
                let Ok(inbound) = inbound else { break };
                let Ok(outbound) = TcpStream::connect(to) else { continue };
                for (mut from, mut into) in [
                    (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                    (outbound, inbound),
                ] {
                    let gate = gate.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        // Bounded: ends when either side closes or after a minute.
                        let _ = from.set_read_timeout(Some(Duration::from_secs(60)));
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            // Partitioned: bytes are swallowed, as a network that drops packets.
                            if gate.load(Ordering::Relaxed) && into.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = into.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self { addr, open }
    }
}

#[test]
fn a_partition_between_two_hosts_heals_and_presence_converges() {
    let _serial = serial();
    eprintln!(
        "partition test: no network namespaces are used; the partition is a relay on loopback between \
         the two hosts that stops passing bytes and then passes them again"
    );
    let dump = build_dump();
    let root = tempfile::tempdir().unwrap();
    // Short heartbeats so that the partition is noticed (and healed) well within a test wait.
    let config = root.path().join("fast.toml");
    std::fs::write(&config, "[cluster]\nheartbeat_ms = 200\npeer_timeout_ms = 1000\n").unwrap();
    let config = config.to_str().unwrap().to_owned();
    let fast = ["--config", config.as_str()];
    let a = host_with(
        &imported(dump.path(), root.path(), "a"),
        "127.0.0.1:0",
        &[],
        SECRET,
        &fast,
    );
    let relay = Relay::start(cluster_addr(&a));
    let b = host_with(
        &imported(dump.path(), root.path(), "b"),
        "127.0.0.1:0",
        &[relay.addr],
        SECRET,
        &fast,
    );
    for p in [&a, &b] {
        wait_until("A and B linked", || metric(p, "chatd_peer_links_up") == 1);
    }
    let mut watch = watch_status(&a, "alice");
    let _bob = login(&b, "bob");
    assert_eq!(next_status(&mut watch, BOB), 1);

    // Partition: A stops hearing B; after the peer timeout bob goes offline on A.
    relay.open.store(false, Ordering::Relaxed);
    assert_eq!(next_status(&mut watch, BOB), 0);
    // Heal: B dials again through the relay; the snapshot brings bob back online on A.
    relay.open.store(true, Ordering::Relaxed);
    assert_eq!(next_status(&mut watch, BOB), 1);
    wait_until("A and B linked again", || metric(&a, "chatd_peer_links_up") == 1);
}

/// A network namespace joined to this one by a veth pair (`10.213.N.1` here, `10.213.N.2` there),
/// removed on drop.
struct Netns {
    name: String,
    here: String,
    subnet: u32,
}

fn ip(args: &[&str]) -> Result<(), String> {
    match std::process::Command::new("ip").args(args).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("ip: {e}")),
    }
}

impl Netns {
    /// `Err` when namespaces cannot be made here (no `ip`, no privilege).
    fn create() -> Result<Self, String> {
        let id = std::process::id() % 10_000;
        let subnet = 1 + std::process::id() % 250;
        let ns = Self {
            name: format!("chatd-test-{id}"),
            here: format!("vch{id}"),
            subnet,
        };
        let there = format!("vcn{id}");
        ip(&["netns", "add", &ns.name])?;
        let addr_here = format!("{}/24", ns.addr(1));
        let addr_there = format!("{}/24", ns.addr(2));
        let steps: [&[&str]; 7] = [
            &["link", "add", &ns.here, "type", "veth", "peer", "name", &there],
            &["link", "set", &there, "netns", &ns.name],
            &["addr", "add", &addr_here, "dev", &ns.here],
            &["link", "set", &ns.here, "up"],
            &[
                "netns",
                "exec",
                &ns.name,
                "ip",
                "addr",
                "add",
                &addr_there,
                "dev",
                &there,
            ],
            &["netns", "exec", &ns.name, "ip", "link", "set", &there, "up"],
            &["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"],
        ];
        for step in steps {
            ip(step)?;
        }
        Ok(ns)
    }

    fn addr(&self, host: u32) -> String {
        format!("10.213.{}.{host}", self.subnet)
    }

    /// Cuts (`false`) or restores (`true`) the link between the namespaces.
    fn set_link(&self, up: bool) {
        ip(&["link", "set", &self.here, if up { "up" } else { "down" }]).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.here]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

#[test]
fn a_partition_between_network_namespaces_heals_and_presence_converges() {
    let _serial = serial();
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!(
                "\n*** SKIPPED: the network-namespace partition test needs `ip netns` and the privilege to \
                 create namespaces: {why}. (The relay partition test still ran.) ***\n"
            );
            return;
        }
    };
    let dump = build_dump();
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("fast.toml");
    std::fs::write(&config, "[cluster]\nheartbeat_ms = 200\npeer_timeout_ms = 1000\n").unwrap();
    let config = config.to_str().unwrap().to_owned();
    let secret = [("CHATD_CLUSTER_SECRET", SECRET)];
    // Host A here, its cluster port on the veth; host B inside the namespace.
    let a_cluster_listen = format!("{}:0", ns.addr(1));
    let a = ChatdProcess::serve_env(
        &imported(dump.path(), root.path(), "a"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--cluster-listen",
            &a_cluster_listen,
            "--config",
            &config,
        ],
        &secret,
    )
    .expect("A starts");
    let a_cluster = cluster_addr(&a).to_string();
    let b_listen = format!("{}:0", ns.addr(2));
    let b = ChatdProcess::serve_via(
        &["ip", "netns", "exec", &ns.name],
        &imported(dump.path(), root.path(), "b"),
        &["--listen", &b_listen, "--peer", &a_cluster, "--config", &config],
        &secret,
    )
    .expect("B starts in its namespace");
    wait_until("A and B linked across the namespaces", || {
        metric(&a, "chatd_peer_links_up") == 1
    });
    let mut watch = watch_status(&a, "alice");
    let _bob = login(&b, "bob");
    assert_eq!(next_status(&mut watch, BOB), 1);

    // Partition: the veth goes down; A stops hearing B and bob goes offline on A.
    ns.set_link(false);
    assert_eq!(next_status(&mut watch, BOB), 0);
    // Heal: B dials A again; its snapshot brings bob (still connected to B) back online on A.
    ns.set_link(true);
    assert_eq!(next_status(&mut watch, BOB), 1);
    wait_until("A and B linked again", || metric(&a, "chatd_peer_links_up") == 1);
    drop(b);
    drop(a);
}
