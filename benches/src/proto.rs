//! The three wire protocols the load generator speaks: chatd's DDP (Rocket.Chat realtime API),
//! socket.io (Engine.IO v4 over WebSocket, against the relay in `benches/peers`), and NATS over
//! WebSocket. Each message carries `b|<sender>|<seq>|<send time ns>` so loss, duplicates and
//! latency can be told apart on receipt.

use std::collections::VecDeque;

use anyhow::{anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::Proto;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub enum Event {
    Message {
        sender: u32,
        seq: u32,
        sent_ns: u64,
    },
    Ack {
        id: u64,
    },
    /// The server answered a send with an error (e.g. a rate limit): not acknowledged.
    Refused {
        id: u64,
    },
    Other,
}

pub struct Conn {
    proto: Proto,
    ws: Ws,
    next_id: u64,
    /// NATS: bytes not parsed yet, and events parsed but not returned yet.
    buf: Vec<u8>,
    queue: VecDeque<Event>,
}

fn payload(sender: u32, seq: u32, t: u64) -> String {
    format!("b|{sender}|{seq}|{t}")
}

fn parse_payload(s: &str) -> Option<Event> {
    let mut it = s.strip_prefix("b|")?.split('|');
    Some(Event::Message {
        sender: it.next()?.parse().ok()?,
        seq: it.next()?.parse().ok()?,
        sent_ns: it.next()?.parse().ok()?,
    })
}

/// Queues the deliveries of every complete NATS command in the buffer; true when the server
/// asked for a PONG.
fn parse_nats(buf: &mut Vec<u8>, queue: &mut VecDeque<Event>) -> bool {
    let (mut pos, mut ping) = (0, false);
    while let Some(eol) = find_crlf(buf.get(pos..).unwrap_or_default()) {
        let line = buf.get(pos..pos + eol).unwrap_or_default();
        if let Some(rest) = line.strip_prefix(b"MSG ") {
            let len: usize = std::str::from_utf8(rest)
                .ok()
                .and_then(|r| r.split_ascii_whitespace().last())
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            let start = pos + eol + 2;
            let Some(body) = buf.get(start..start + len) else { break };
            if buf.len() < start + len + 2 {
                break;
            }
            if let Some(e) = std::str::from_utf8(body).ok().and_then(parse_payload) {
                queue.push_back(e);
            }
            pos = start + len + 2;
        } else {
            ping |= line == b"PING";
            pos += eol + 2;
        }
    }
    buf.drain(..pos.min(buf.len()));
    ping
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// A 4 KiB read buffer instead of tungstenite's 128 KiB: thousands of connections would otherwise
/// fault in hundreds of megabytes on their first reads, which delayed the first deliveries of a
/// run by tens of milliseconds (larger frames still work).
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

/// The first `"b|…"` string of a frame, parsed.
pub(crate) fn find_payload(frame: &str) -> Option<Event> {
    let at = frame.find("\"b|")?;
    let rest = frame.get(at + 1..)?;
    parse_payload(rest.get(..rest.find('"')?)?)
}

impl Conn {
    /// Connects, logs in (chatd: resume token), and subscribes to `room` when given; returns once
    /// the subscription is confirmed by the server.
    pub async fn open(proto: Proto, url: &str, token: Option<&str>, room: Option<&str>) -> anyhow::Result<Self> {
        // TCP_NODELAY: a small frame must not wait for the acknowledgement of the previous one.
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true).await?;
        let mut c = Self {
            proto,
            ws,
            next_id: 0,
            buf: Vec::new(),
            queue: VecDeque::new(),
        };
        match proto {
            Proto::Chatd => c.open_chatd(token, room).await?,
            Proto::Socketio => c.open_socketio(room).await?,
            Proto::Nats => c.open_nats(room).await?,
        }
        Ok(c)
    }

    async fn text(&mut self, s: String) -> anyhow::Result<()> {
        self.ws.send(Message::text(s)).await?;
        Ok(())
    }

    /// The next text (or binary) frame as a string, answering protocol pings on the way.
    async fn frame(&mut self) -> anyhow::Result<String> {
        Ok(self.frame_bytes().await?.to_string())
    }

    async fn open_chatd(&mut self, token: Option<&str>, room: Option<&str>) -> anyhow::Result<()> {
        let token = token.ok_or_else(|| anyhow!("chatd needs a token"))?;
        self.text(json!({"msg": "connect", "version": "1", "support": ["1"]}).to_string())
            .await?;
        self.text(
            json!({"msg": "method", "method": "login", "id": "login", "params": [{"resume": token}]}).to_string(),
        )
        .await?;
        loop {
            let f: Value = serde_json::from_str(&self.frame().await?)?;
            if f["msg"] == "ping" {
                self.text(r#"{"msg":"pong"}"#.into()).await?;
            } else if f["msg"] == "result" && f["id"] == "login" {
                if f.get("error").is_some() {
                    bail!("login failed: {f}");
                }
                break;
            }
        }
        if let Some(rid) = room {
            self.text(
                json!({"msg": "sub", "id": "room", "name": "stream-room-messages", "params": [rid, false]}).to_string(),
            )
            .await?;
            loop {
                let f: Value = serde_json::from_str(&self.frame().await?)?;
                if f["msg"] == "ready" {
                    break;
                }
                if f["msg"] == "nosub" {
                    bail!("subscription refused: {f}");
                }
            }
        }
        Ok(())
    }

    async fn open_socketio(&mut self, room: Option<&str>) -> anyhow::Result<()> {
        let open = self.frame().await?;
        if !open.starts_with('0') {
            bail!("unexpected Engine.IO open: {open}");
        }
        self.text("40".into()).await?;
        loop {
            let f = self.frame().await?;
            if f.starts_with("40") {
                break;
            }
            if f == "2" {
                self.text("3".into()).await?;
            }
        }
        if let Some(room) = room {
            self.text(format!("420{}", json!(["join", room]))).await?;
            loop {
                let f = self.frame().await?;
                if f.starts_with("430") {
                    break;
                }
                if f == "2" {
                    self.text("3".into()).await?;
                }
            }
        }
        Ok(())
    }

    async fn open_nats(&mut self, room: Option<&str>) -> anyhow::Result<()> {
        let info = self.frame().await?;
        if !info.starts_with("INFO") {
            bail!("unexpected NATS greeting: {info}");
        }
        let mut cmd = String::from("CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\n");
        if let Some(room) = room {
            cmd.push_str(&format!("SUB room.{room} 1\r\n"));
        }
        cmd.push_str("PING\r\n");
        self.text(cmd).await?;
        // PONG means everything before it (the subscription) was processed.
        loop {
            let f = self.frame().await?;
            if f.contains("PONG") {
                break;
            }
            if f.starts_with("-ERR") {
                bail!("NATS error: {f}");
            }
        }
        Ok(())
    }

    /// Sends one message; returns the id to match its acknowledgment with (chatd only).
    pub async fn send(&mut self, room: &str, sender: u32, seq: u32, t: u64) -> anyhow::Result<Option<u64>> {
        let body = payload(sender, seq, t);
        match self.proto {
            Proto::Chatd => {
                self.next_id += 1;
                let id = self.next_id;
                self.text(format!(
                    r#"{{"msg":"method","method":"sendMessage","id":"{id}","params":[{{"rid":{},"msg":"{body}"}}]}}"#,
                    json!(room)
                ))
                .await?;
                Ok(Some(id))
            }
            Proto::Socketio => {
                self.text(format!("42{}", json!(["msg", room, body]))).await?;
                Ok(None)
            }
            Proto::Nats => {
                self.text(format!("PUB room.{room} {}\r\n{body}\r\n", body.len()))
                    .await?;
                Ok(None)
            }
        }
    }

    /// The next text (or binary) frame, answering protocol pings on the way, without copying it.
    async fn frame_bytes(&mut self) -> anyhow::Result<Utf8Bytes> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t),
                Some(Ok(Message::Binary(b))) => return Ok(String::from_utf8_lossy(&b).into_owned().into()),
                Some(Ok(Message::Close(_))) | None => bail!("connection closed"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    pub async fn next_event(&mut self) -> anyhow::Result<Event> {
        if let Some(e) = self.queue.pop_front() {
            return Ok(e);
        }
        let f = self.frame_bytes().await?;
        let f = f.as_str();
        match self.proto {
            Proto::Chatd => {
                if f.starts_with(r#"{"msg":"changed""#) {
                    // A delivery: its text is the first JSON string starting with "b|" (the
                    // frame is not parsed, which would cost the client more than the server).
                    return Ok(find_payload(f).unwrap_or(Event::Other));
                }
                let v: Value = serde_json::from_str(f)?;
                match v["msg"].as_str() {
                    Some("ping") => {
                        self.text(r#"{"msg":"pong"}"#.into()).await?;
                        Ok(Event::Other)
                    }
                    Some("result") => Ok(v["id"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .map_or(Event::Other, |id| {
                            if v.get("error").is_some() {
                                Event::Refused { id }
                            } else {
                                Event::Ack { id }
                            }
                        })),
                    _ => Ok(Event::Other),
                }
            }
            Proto::Socketio => {
                if f == "2" {
                    self.text("3".into()).await?;
                    return Ok(Event::Other);
                }
                if f.starts_with(r#"42["msg""#) {
                    return Ok(find_payload(f).unwrap_or(Event::Other));
                }
                Ok(Event::Other)
            }
            Proto::Nats => {
                self.buf.extend_from_slice(f.as_bytes());
                if parse_nats(&mut self.buf, &mut self.queue) {
                    self.text("PONG\r\n".into()).await?;
                }
                Ok(self.queue.pop_front().unwrap_or(Event::Other))
            }
        }
    }

    /// Holds the connection, answering pings, until the caller stops waiting.
    pub async fn idle(&mut self) {
        while self.next_event().await.is_ok() {}
    }

    pub async fn close(&mut self) {
        let _ = self.ws.close(None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_found_without_parsing_the_frame() {
        let chatd = r#"{"msg":"changed","collection":"stream-room-messages","id":"id","fields":{"eventName":"r","args":[{"_id":"x","rid":"r","msg":"b|3|7|123456","ts":{"$date":1}}]}}"#;
        assert!(matches!(
            find_payload(chatd),
            Some(Event::Message {
                sender: 3,
                seq: 7,
                sent_ns: 123456
            })
        ));
        assert!(matches!(
            find_payload(r#"42["msg","b|1|2|3"]"#),
            Some(Event::Message {
                sender: 1,
                seq: 2,
                sent_ns: 3
            })
        ));
        assert!(find_payload(r#"{"msg":"changed","fields":{"args":[{"msg":"hello"}]}}"#).is_none());
        assert!(find_payload(r#"{"msg":"b|x|2|3"}"#).is_none());
    }

    #[test]
    fn nats_commands_split_across_frames_are_parsed_once_complete() {
        let mut buf = Vec::new();
        let mut queue = VecDeque::new();
        buf.extend_from_slice(b"PING\r\nMSG room.r0 1 9\r\nb|1|2|");
        assert!(parse_nats(&mut buf, &mut queue));
        assert!(queue.is_empty());
        buf.extend_from_slice(b"345\r\nMSG room.r0 1 7\r\nb|4|5|6\r\n+OK\r\n");
        assert!(!parse_nats(&mut buf, &mut queue));
        assert!(buf.is_empty());
        assert!(matches!(
            queue.pop_front(),
            Some(Event::Message {
                sender: 1,
                seq: 2,
                sent_ns: 345
            })
        ));
        assert!(matches!(
            queue.pop_front(),
            Some(Event::Message {
                sender: 4,
                seq: 5,
                sent_ns: 6
            })
        ));
    }
}
