//! Abusive and malformed input: every class gets a DDP error or a clean close with a reason, and
//! another session on the same server keeps working throughout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::TcpStream;

use common::*;
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// Reads until the server closes; returns the close code (None if the socket just ended).
fn close_code(ws: &mut WebSocket<TcpStream>) -> Option<CloseCode> {
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame.map(|f| f.code),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("server never closed")
            }
            Err(_) => return None,
        }
    }
}

fn still_serves(bystander: &mut Ddp, text: &str) {
    bystander.send_message("GENERAL", text);
    // Earlier GENERAL traffic may come first; the bounded read timeout fails the test otherwise.
    while bystander.next_message()["msg"] != text {}
}

#[test]
fn malformed_frames_get_errors_and_the_server_keeps_serving() {
    let server = TestServer::with(|c| c.limits.max_frame_bytes = 64 * 1024);
    let mut bystander = user(server.addr, "bystander");
    bystander
        .sub("stream-room-messages", json!(["GENERAL", false]))
        .unwrap();

    let mut c = Ddp::open(server.addr);
    let cases: [(&str, &str); 6] = [
        ("{not json", "Parse error"),
        ("[1,2,3]", "Bad request"),
        (r#"{"no":"msg"}"#, "Bad request"),
        (r#"{"msg":"bogus"}"#, "Bad request"),
        (r#"{"msg":"method","method":7,"id":"1"}"#, "Malformed method invocation"),
        (
            r#"{"msg":"method","method":"sendMessage","id":"1","params":"x"}"#,
            "Malformed method invocation",
        ),
    ];
    for (frame, reason) in cases {
        c.send_text(frame);
        let err = c.wait_frame(|f| f["msg"] == "error");
        assert_eq!(err["reason"], reason, "for {frame}");
    }
    c.send_text(r#"{"msg":"connect","version":"1","support":["1"]}"#);
    assert_eq!(c.wait_frame(|f| f["msg"] == "error")["reason"], "Already connected");
    c.ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(c.wait_frame(|f| f["msg"] == "error")["reason"], "Bad request");

    // Unknown methods and publications, wrong parameter types: errors tied to the call.
    let err = c.call("noSuchMethod", json!([])).unwrap_err();
    assert_eq!(
        (err["error"].clone(), err["reason"].clone()),
        (json!(404), json!("Method 'noSuchMethod' not found"))
    );
    assert_eq!(c.sub("no-such-stream", json!(["x"])).unwrap_err()["error"], 404);
    c.login("bystander", "bystander-pw");
    assert_eq!(
        c.call("sendMessage", json!([{"rid": 42, "msg": "x"}])).unwrap_err()["error"],
        400
    );
    assert_eq!(
        c.call("sendMessage", json!(["not an object"])).unwrap_err()["error"],
        400
    );
    assert_eq!(c.call("loadHistory", json!([{"rid": "x"}])).unwrap_err()["error"], 400);
    assert_eq!(
        c.call("login", json!([{"user": {"username": 5}, "password": "x"}]))
            .unwrap_err()["error"],
        400
    );
    assert_eq!(c.call("createChannel", json!([["array"]])).unwrap_err()["error"], 400);
    assert_eq!(c.sub("stream-room-messages", json!([7])).unwrap_err()["error"], 400);
    let long = "x".repeat(5001);
    assert_eq!(
        c.call("sendMessage", json!([{"rid": "GENERAL", "msg": long}]))
            .unwrap_err()["error"],
        "error-message-size-exceeded"
    );
    // The same connection still works after all of that.
    c.send_message("GENERAL", "still fine");
    still_serves(&mut bystander, "after errors");

    // Before connect: an error, and a bad version: failed + close.
    let mut raw = ws_connect(server.addr);
    raw.send(Message::text(
        r#"{"msg":"method","method":"login","id":"1","params":[]}"#,
    ))
    .unwrap();
    let mut saw_error = false;
    while !saw_error {
        let Message::Text(t) = raw.read().unwrap() else {
            continue;
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        saw_error = v["msg"] == "error" && v["reason"] == "Must connect first";
    }
    let mut raw = ws_connect(server.addr);
    raw.send(Message::text(r#"{"msg":"connect","version":"9","support":["9"]}"#))
        .unwrap();
    let mut failed = false;
    while !failed {
        let Message::Text(t) = raw.read().unwrap() else {
            continue;
        };
        failed = serde_json::from_str::<Value>(&t).unwrap()["msg"] == "failed";
    }
    assert_eq!(close_code(&mut raw), Some(CloseCode::Protocol));

    // An oversized frame closes that connection with 1009, nothing else.
    let mut big = Ddp::open(server.addr);
    big.send_text(&format!(
        r#"{{"msg":"method","method":"x","id":"1","params":["{}"]}}"#,
        "y".repeat(100 * 1024)
    ));
    assert_eq!(close_code(&mut big.ws), Some(CloseCode::Size));

    // A flood of garbage ends in a policy close.
    let mut flood = Ddp::open(server.addr);
    for _ in 0..60 {
        if flood.ws.send(Message::text("garbage")).is_err() {
            break;
        }
    }
    assert_eq!(close_code(&mut flood.ws), Some(CloseCode::Policy));

    // Not a WebSocket at all: plain HTTP gets an HTTP answer.
    let mut http = TcpStream::connect(server.addr).unwrap();
    use std::io::{Read, Write};
    http.set_read_timeout(Some(WAIT)).unwrap();
    http.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    http.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    let mut junk = TcpStream::connect(server.addr).unwrap();
    junk.set_read_timeout(Some(WAIT)).unwrap();
    junk.write_all(b"\x00\x01\x02 definitely not http\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = junk.read_to_end(&mut buf);
    assert!(
        buf.is_empty() || buf.starts_with(b"HTTP/1.1 4"),
        "{}",
        String::from_utf8_lossy(&buf)
    );

    still_serves(&mut bystander, "at the end");
}

#[test]
fn idle_and_unauthenticated_connections_are_closed() {
    let server = TestServer::with(|c| {
        c.limits.auth_timeout_secs = 1;
        c.limits.ping_interval_secs = 1;
    });
    // Never logs in: closed with 4001 after the auth timeout.
    let mut lazy = Ddp::open(server.addr);
    assert_eq!(close_code(&mut lazy.ws), Some(CloseCode::from(4001)));

    // Logged in but never answers pings: pinged, then closed with 4000.
    let mut ws = ws_connect(server.addr);
    user(server.addr, "quiet");
    ws.send(Message::text(
        json!({"msg": "connect", "version": "1", "support": ["1"]}).to_string(),
    ))
    .unwrap();
    let login = json!({"msg": "method", "method": "login", "id": "1", "params": [{"user": {"username": "quiet"}, "password": {"digest": sha256_hex("quiet-pw"), "algorithm": "sha-256"}}]});
    ws.send(Message::text(login.to_string())).unwrap();
    let mut pinged = false;
    let code = loop {
        match ws.read() {
            Ok(Message::Text(t)) => pinged |= serde_json::from_str::<Value>(&t).unwrap()["msg"] == "ping",
            Ok(Message::Close(f)) => break f.map(|f| f.code),
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    assert!(pinged, "the server pings an idle connection before closing it");
    assert_eq!(code, Some(CloseCode::from(4000)));

    // A client that answers pings stays connected across several intervals.
    let mut alive = user(server.addr, "alive");
    alive.answer_pings(4);
    alive.send(json!({"msg": "ping", "id": "p"}));
    alive.wait_frame(|f| f["msg"] == "pong" && f["id"] == "p");
}

#[test]
fn a_slow_consumer_is_closed_and_others_keep_receiving() {
    let server = TestServer::with(|c| {
        c.limits.max_frame_bytes = 16 * 1024;
        c.limits.outbound_queue_frames = 16;
        c.limits.outbound_queue_bytes = 16 * 1024;
    });
    let mut sender = user(server.addr, "sender");
    let mut reader = user(server.addr, "reader");
    reader.sub("stream-room-messages", json!(["GENERAL", false])).unwrap();
    // The slow one subscribes and then never reads again.
    let mut slow = user(server.addr, "slow");
    slow.sub("stream-room-messages", json!(["GENERAL", false])).unwrap();
    let text = "z".repeat(4000);
    let mut sent = 0;
    while server.stats().iter().map(|s| s.slow_closed).sum::<u64>() == 0 {
        assert!(sent < 20_000, "the slow consumer was never closed");
        sender.send_message("GENERAL", &text);
        sent += 1;
        // The healthy reader keeps up.
        assert_eq!(reader.next_message()["msg"].as_str().map(str::len), Some(4000));
    }
    sender.send_message("GENERAL", "after");
    assert_eq!(reader.next_message()["msg"], "after");
    drop(slow);
}
