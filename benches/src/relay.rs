//! `chatd-load typing-relay`: how long a typing notice takes from a sender's connection to a
//! receiver's, on one host and across two peered hosts. The sender writes `user-activity` notices
//! at a fixed interval, each carrying its send time (on this tool's clock) in the client's extra
//! object; the receiver, subscribed to the room's activity stream, takes the difference. Run once
//! with both users on one host and once with the receiver on a peer host: the difference is the
//! link's own overhead (encode, one TCP hop on loopback, decode, the peer host's fan-out).

use std::time::{Duration, Instant};

use anyhow::anyhow;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::stall::Ddp;

#[derive(Clone, Debug, clap::Args)]
pub struct RelayArgs {
    /// The sender's chatd (host:port).
    #[arg(long)]
    pub sender_addr: String,
    /// The receiver's chatd: the same host, or a peer of it.
    #[arg(long)]
    pub receiver_addr: String,
    #[arg(long, default_value = "pw-user0")]
    pub password: String,
    #[arg(long, default_value = "user0")]
    pub sender: String,
    #[arg(long, default_value = "user1")]
    pub receiver: String,
    /// A room both are members of.
    #[arg(long, default_value = "GENERAL")]
    pub room: String,
    /// Notices to send (after 200 of warm-up).
    #[arg(long, default_value_t = 5_000)]
    pub count: u64,
    #[arg(long, default_value_t = 2)]
    pub interval_ms: u64,
}

pub async fn run(args: RelayArgs) -> anyhow::Result<Value> {
    let (mut tx, _, _) = Ddp::login(&args.sender_addr, &args.sender, &args.password).await?;
    let (mut rx, _, _) = Ddp::login(&args.receiver_addr, &args.receiver, &args.password).await?;
    let event = format!("{}/user-activity", args.room);
    rx.send(json!({"msg": "sub", "id": "s", "name": "stream-notify-room", "params": [event, false]}))
        .await?;
    loop {
        let f = rx.frame().await?;
        if f["msg"] == "ready" {
            break;
        }
        if f["msg"] == "nosub" {
            return Err(anyhow!("the receiver cannot subscribe to {event}: {f}"));
        }
    }
    let warmup = 200u64;
    let total = warmup + args.count;
    let interval = Duration::from_millis(args.interval_ms.max(1));
    let epoch = Instant::now();
    let mut hist = Histogram::<u64>::new(3)?;
    let mut next_send = epoch;
    let (mut sent, mut received) = (0u64, 0u64);
    let deadline = epoch + interval * u32::try_from(total).unwrap_or(u32::MAX) + Duration::from_secs(5);
    while received < total && Instant::now() < deadline {
        tokio::select! {
            _ = tokio::time::sleep_until(next_send.into()), if sent < total => {
                sent += 1;
                let at = epoch.elapsed().as_micros() as u64;
                tx.send(json!({"msg": "method", "method": "stream-notify-room", "id": format!("t{sent}"),
                    "params": [event, args.sender, ["user-typing"], {"sentUs": at, "n": sent}]})).await?;
                next_send += interval;
            }
            f = tx.frame() => { f?; }
            f = rx.frame() => {
                let f = f?;
                let a = &f["fields"]["args"];
                if f["collection"] == "stream-notify-room" {
                    if let (Some(at), Some(n)) = (a[2]["sentUs"].as_u64(), a[2]["n"].as_u64()) {
                        received += 1;
                        if n > warmup {
                            let now = epoch.elapsed().as_micros() as u64;
                            hist.record(now.saturating_sub(at).max(1))?;
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => break,
        }
    }
    Ok(json!({
        "sender_addr": args.sender_addr, "receiver_addr": args.receiver_addr,
        "sent": sent, "received": received, "lost": sent.saturating_sub(received),
        "p50_us": hist.value_at_quantile(0.5), "p99_us": hist.value_at_quantile(0.99),
        "p999_us": hist.value_at_quantile(0.999), "max_us": hist.max(),
    }))
}
