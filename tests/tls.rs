//! TLS on the client port with a generated self-signed certificate: WSS login and chat between
//! two clients, HTTPS REST, no plaintext on a TLS port, and a certificate reload on SIGHUP (a bad
//! file keeps the previous certificate).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A fresh self-signed certificate for localhost written to `dir`: (cert path, key path, DER).
fn certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key, ck.cert.der().clone())
}

/// A TLS connection to `addr` that trusts only `root`; `Err` when the handshake fails.
fn tls_connect(addr: SocketAddr, root: &CertificateDer<'static>) -> Result<Tls, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap();
    let tcp = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

fn wss_user(addr: SocketAddr, root: &CertificateDer<'static>, name: &str, register: bool) -> Ddp<Tls> {
    let tls = tls_connect(addr, root).unwrap();
    let (ws, _) = tungstenite::client::client("wss://localhost/websocket", tls).unwrap();
    let mut c = Ddp::open_on(ws);
    let pw = format!("{name}-pw");
    if register {
        c.register(name, &pw);
    }
    c.login(name, &pw);
    c
}

/// One HTTPS request (HTTP/1.1, connection closed after): (status, JSON body).
fn https(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, Value) {
    let mut tls = tls_connect(addr, root).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    tls.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    // A peer that closes without close_notify still ends the response here.
    let _ = tls.read_to_end(&mut raw);
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a full response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap())
}

#[test]
fn wss_login_and_chat_and_https_rest_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, root) = certificate(dir.path(), "chatd");
    let server = TestServer::with(|c| {
        c.tls.cert = Some(cert.clone());
        c.tls.key = Some(key.clone());
    });
    let addr = server.addr;

    let mut alice = wss_user(addr, &root, "alice", true);
    let mut bob = wss_user(addr, &root, "bob", true);
    let rid = alice.ok("createChannel", json!(["secure", ["bob"], false]))["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.sub("stream-room-messages", json!([rid, false])).unwrap();
    alice.send_message(&rid, "over wss");
    assert_eq!(bob.next_message()["msg"], "over wss");

    let (status, info) = https(addr, &root, "GET", "/api/info", &[], None);
    assert_eq!((status, info["success"].as_bool()), (200, Some(true)), "{info}");
    let (status, login) = https(
        addr,
        &root,
        "POST",
        "/api/v1/login",
        &[],
        Some(&json!({"username": "alice", "password": "alice-pw"})),
    );
    assert_eq!(status, 200, "{login}");
    let (uid, token) = (
        login["data"]["userId"].as_str().unwrap().to_owned(),
        login["data"]["authToken"].as_str().unwrap().to_owned(),
    );
    let auth = [("X-User-Id", uid.as_str()), ("X-Auth-Token", token.as_str())];
    let (status, posted) = https(
        addr,
        &root,
        "POST",
        "/api/v1/chat.postMessage",
        &auth,
        Some(&json!({"roomId": rid, "text": "over https"})),
    );
    assert_eq!(status, 200, "{posted}");
    assert_eq!(bob.next_message()["msg"], "over https");

    // A TLS port does not speak plaintext.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain.set_read_timeout(Some(WAIT)).unwrap();
    plain
        .write_all(b"GET /api/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("success"),
        "plaintext was served"
    );
}

#[test]
fn sighup_reloads_the_certificate_and_a_bad_file_keeps_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, old_root) = certificate(dir.path(), "chatd");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let p = ChatdProcess::serve_with(&dir.path().join("data"), &args).unwrap();
    assert!(tls_connect(p.addr, &old_root).is_ok());
    let pid = i32::try_from(p.child.id()).unwrap();
    let hup_and_wait = |marker: &str| {
        // SAFETY: signalling the child this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
        wait_until(marker, || p.log.lock().unwrap().contains(marker));
    };

    // A new certificate in the same files: new handshakes present it after SIGHUP.
    let (new_cert, new_key, new_root) = certificate(dir.path(), "next");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    hup_and_wait("TLS certificate reloaded");
    assert!(tls_connect(p.addr, &new_root).is_ok());
    assert!(tls_connect(p.addr, &old_root).is_err(), "the old certificate is gone");

    // A broken file: the reload fails loudly and the current certificate stays.
    std::fs::write(&cert, "garbage").unwrap();
    hup_and_wait("TLS reload failed");
    assert!(tls_connect(p.addr, &new_root).is_ok());
    drop(p);

    // A certificate that cannot be read fails the start as bad configuration (exit 2).
    let missing = dir.path().join("missing.crt");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        missing.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let (code, log) = ChatdProcess::serve_with(&dir.path().join("data2"), &args)
        .err()
        .unwrap();
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("missing.crt"), "{log}");
}
