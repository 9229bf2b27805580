//! `chatd-load ref-relay`: the calibration reference. A minimal WebSocket fan-out relay that
//! speaks the part of the NATS client protocol `chatd-load --proto nats` uses (`CONNECT`, `SUB`,
//! `PUB`, `PING`/`PONG`, `MSG`), on one thread, doing as little as a relay can: a published
//! message is formatted once and the same bytes are queued to every subscriber; each connection's
//! writer flushes once per batch of queued frames. Whatever latency `chatd-load` reports against
//! it is the instrument's own floor (client, kernel, loopback), not a server's.
//!
//! It is a bench tool, not a server: loopback only, no authentication, a full subscriber queue
//! drops the message for that subscriber (counted and printed at exit, like NATS's slow-consumer
//! protection).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::bail;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[derive(Clone, Debug, clap::Args)]
pub struct RefRelayArgs {
    /// Where to listen (loopback only).
    #[arg(long, default_value = "127.0.0.1:4300")]
    pub listen: String,
    /// Frames queued per connection before further messages to it are dropped.
    #[arg(long, default_value_t = 4096)]
    pub queue: usize,
}

type Subscribers = Rc<RefCell<HashMap<String, Vec<(u64, mpsc::Sender<Utf8Bytes>)>>>>;

pub fn serve(args: RefRelayArgs) -> anyhow::Result<()> {
    let ip = args.listen.rsplit_once(':').map_or("", |(h, _)| h);
    if !(ip.starts_with("127.") || ip == "[::1]" || ip == "localhost") {
        bail!("ref-relay listens on loopback only");
    }
    chatd::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let dropped = Arc::new(AtomicU64::new(0));
    let d = dropped.clone();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(&args.listen).await?;
        eprintln!("ref-relay listening on {}", listener.local_addr()?);
        let subs: Subscribers = Rc::default();
        let mut next_id = 0u64;
        let stop = tokio::signal::ctrl_c();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                a = listener.accept() => {
                    let Ok((stream, _)) = a else { continue };
                    next_id += 1;
                    tokio::task::spawn_local(connection(stream, next_id, subs.clone(), args.queue, d.clone()));
                }
                _ = &mut stop => break,
            }
        }
        anyhow::Ok(())
    })?;
    eprintln!(
        "ref-relay: dropped {} frames to full queues",
        dropped.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn connection(stream: TcpStream, id: u64, subs: Subscribers, queue: usize, dropped: Arc<AtomicU64>) {
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(crate::proto::ws_config())).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(queue.max(1));
    // Writer: everything queued since the last flush goes out with one flush.
    let writer = tokio::task::spawn_local(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(Message::Text(first)).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if sink.feed(Message::Text(more)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let _ = tx.try_send(Utf8Bytes::from_static("INFO {\"server_name\":\"ref-relay\"}\r\n"));
    let mut subjects: Vec<String> = Vec::new();
    let mut pending = String::new();
    while let Some(Ok(msg)) = source.next().await {
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => break,
            _ => continue,
        };
        pending.push_str(&text);
        if !commands(&mut pending, id, &tx, &subs, &mut subjects, &dropped) {
            break;
        }
    }
    {
        let mut map = subs.borrow_mut();
        for s in subjects {
            if let Some(v) = map.get_mut(&s) {
                v.retain(|(i, _)| *i != id);
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Handles every complete command in `buf`; false on a protocol error.
fn commands(
    buf: &mut String,
    id: u64,
    tx: &mpsc::Sender<Utf8Bytes>,
    subs: &Subscribers,
    subjects: &mut Vec<String>,
    dropped: &AtomicU64,
) -> bool {
    loop {
        let Some(eol) = buf.find("\r\n") else { return true };
        let line = &buf[..eol];
        let mut words = line.split_ascii_whitespace();
        let consumed = match words.next() {
            Some("PUB") => {
                let (Some(subject), Some(len)) = (words.next(), words.last().and_then(|l| l.parse::<usize>().ok()))
                else {
                    return false;
                };
                let start = eol + 2;
                if buf.len() < start + len + 2 {
                    return true; // the payload has not all arrived
                }
                let Some(payload) = buf.get(start..start + len) else {
                    return false;
                };
                let frame = Utf8Bytes::from(format!("MSG {subject} 1 {len}\r\n{payload}\r\n"));
                if let Some(list) = subs.borrow().get(subject) {
                    for (_, s) in list {
                        if s.try_send(frame.clone()).is_err() {
                            dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                start + len + 2
            }
            Some("SUB") => {
                let Some(subject) = words.next() else { return false };
                subs.borrow_mut()
                    .entry(subject.to_owned())
                    .or_default()
                    .push((id, tx.clone()));
                subjects.push(subject.to_owned());
                eol + 2
            }
            Some("PING") => {
                let _ = tx.try_send(Utf8Bytes::from_static("PONG\r\n"));
                eol + 2
            }
            Some("PONG" | "CONNECT") | None => eol + 2,
            Some(_) => return false,
        };
        buf.drain(..consumed);
    }
}
