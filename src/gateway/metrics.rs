//! `/metrics`: the host's figures in the OpenMetrics text format, encoded by `prometheus-client`
//! (runs on the connection's shard). Whichever shard answers, the answer is host-wide: every
//! shard's lock-free counters are read here, per-shard values carry a `shard` label.
//!
//! The figures are read into a plain [`Snapshot`] first, then encoded by a custom collector, so
//! the hot paths keep writing relaxed atomics and never touch the exposition library.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chatd_shards::{Histogram, ShardStats};
use http_body_util::Full;
use hyper::{Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::ctx::ShardCtx;
use crate::peer::PeerStats;
use crate::store::{BackendStatus, WRITER_STATS};

/// The exposition's content type (OpenMetrics 1.0 text; Prometheus reads it natively).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Response header naming the shard that answered.
const SHARD_HEADER: &str = "x-chatd-shard";

/// A histogram's reading: (sum, count, per-bucket counts with their upper bounds).
type HistogramRead = (f64, u64, Vec<(f64, u64)>);

/// One shard's figures.
#[derive(Debug)]
struct ShardFigures {
    counters: Vec<u64>,
    gauges: Vec<f64>,
    histograms: Vec<HistogramRead>,
}

/// Everything one scrape reports.
#[derive(Debug)]
struct Snapshot {
    shards: Vec<ShardFigures>,
    store: BackendStatus,
    feed: [f64; 3],
    queues: (usize, usize),
    commit_seconds: HistogramRead,
    group_size: HistogramRead,
    peers: Vec<u64>,
    host: Vec<f64>,
}

/// Name, help text and reader of the per-shard counters (each name gets `_total` appended).
type CounterReader = (&'static str, &'static str, fn(&ShardStats) -> &AtomicU64);
type GaugeReader = (&'static str, &'static str, fn(&ShardStats) -> f64);

const SHARD_COUNTERS: &[CounterReader] = &[
    (
        "chatd_connections_accepted",
        "Connections accepted by the shard's listener.",
        |s| &s.accepted,
    ),
    (
        "chatd_accept_fd_exhausted",
        "Accepts that failed for lack of file descriptors (EMFILE/ENFILE); accept backs off.",
        |s| &s.accept_fd_exhausted,
    ),
    (
        "chatd_connections_refused",
        "Connections closed at accept because the shard held limits.max_connections_per_shard.",
        |s| &s.refused_connections,
    ),
    ("chatd_accept_errors", "Accepts that failed for other reasons.", |s| {
        &s.accept_errors
    }),
    ("chatd_deliveries", "Frames queued to sessions by fan-out.", |s| {
        &s.deliveries
    }),
    (
        "chatd_dropped_events",
        "Events dropped: ephemeral events (typing) under overload, undecodable change records, change backlogs of a shard too far behind (its clients are told to reload).",
        |s| &s.dropped,
    ),
    (
        "chatd_slow_consumers_closed",
        "Sessions closed because their outbound queue overflowed (too slow to read).",
        |s| &s.slow_closed,
    ),
    (
        "chatd_mesh_sent",
        "Messages this shard sent to shards over the in-process mesh.",
        |s| &s.mesh_sent,
    ),
    (
        "chatd_mesh_full",
        "Mesh sends that found the destination queue full (retried or dropped).",
        |s| &s.mesh_full,
    ),
];

const SHARD_GAUGES: &[GaugeReader] = &[
    (
        "chatd_connections_open",
        "Open client connections, counted from accept: HTTP, handshakes in progress and WebSocket.",
        |s| load(&s.open_connections),
    ),
    (
        "chatd_websocket_sessions",
        "Open WebSocket sessions (logged in or not).",
        |s| load(&s.websockets),
    ),
    ("chatd_sessions_authenticated", "Logged-in WebSocket sessions.", |s| {
        load(&s.sessions)
    }),
    ("chatd_subscriptions", "Open DDP stream subscriptions.", |s| {
        load(&s.subscriptions)
    }),
    (
        "chatd_change_feed_applied",
        "Change-log position (mark) this shard has applied.",
        |s| load(&s.applied),
    ),
    (
        "chatd_event_loop_stall_max_seconds",
        "Longest time the shard's event loop went without returning to its timers, since start.",
        |s| load(&s.loop_stall_max_us) / 1e6,
    ),
    (
        "chatd_event_loop_stall_recent_seconds",
        "The same over the last 10 to 20 seconds.",
        |s| load(&s.loop_stall_recent_us) / 1e6,
    ),
];

/// A per-shard histogram family: name, help, and its members (the `api` label's value when
/// the family is split by it, and the reader).
struct HistogramFamily {
    name: &'static str,
    help: &'static str,
    members: &'static [HistogramMember],
}

/// The `api` label's value (when the family is split by it) and the reader of one histogram.
type HistogramMember = (Option<&'static str>, fn(&ShardStats) -> &Histogram);

const SHARD_HISTOGRAMS: &[HistogramFamily] = &[
    HistogramFamily {
        name: "chatd_method_duration_seconds",
        help: "Time to answer a DDP method call or a REST request.",
        members: &[
            (Some("ddp"), |s| &s.method_seconds),
            (Some("rest"), |s| &s.rest_seconds),
        ],
    },
    HistogramFamily {
        name: "chatd_delivery_latency_seconds",
        help: "From a new message's commit (its server timestamp) to its frames queued on this shard's sessions.",
        members: &[(None, |s| &s.delivery_seconds)],
    },
    HistogramFamily {
        name: "chatd_event_loop_lateness_seconds",
        help: "How late the shard's 10 ms probe timer fired: the length of event-loop polls.",
        members: &[(None, |s| &s.loop_lateness)],
    },
];

type PeerReader = (&'static str, &'static str, MetricType, fn(&PeerStats) -> &AtomicU64);

const PEER_SERIES: &[PeerReader] = &[
    (
        "chatd_peer_links_up",
        "Host-peering links up now.",
        MetricType::Gauge,
        |p| &p.links_up,
    ),
    (
        "chatd_peer_links_established",
        "Host-peering links established since start.",
        MetricType::Counter,
        |p| &p.links_established,
    ),
    (
        "chatd_peer_refused",
        "Peer connections refused (bad secret, version, framing).",
        MetricType::Counter,
        |p| &p.refused,
    ),
    (
        "chatd_peer_frames_sent",
        "Frames sent to peers.",
        MetricType::Counter,
        |p| &p.frames_sent,
    ),
    (
        "chatd_peer_frames_received",
        "Frames received from peers.",
        MetricType::Counter,
        |p| &p.frames_received,
    ),
    (
        "chatd_peer_dropped",
        "Frames to peers dropped because a link's send queue was full.",
        MetricType::Counter,
        |p| &p.dropped,
    ),
    (
        "chatd_peer_expired",
        "Remote presence entries expired with their link.",
        MetricType::Counter,
        |p| &p.expired,
    ),
];

const HOST_GAUGES: &[(&str, &str)] = &[
    ("chatd_uptime_seconds", "Seconds since this process started serving."),
    (
        "chatd_draining",
        "1 while the server drains after SIGTERM (/health/ready answers 503).",
    ),
    ("process_open_fds", "Open file descriptors of the process."),
    ("process_max_fds", "The process's open-file limit."),
    ("process_resident_memory_bytes", "Resident memory of the process."),
];

fn load(c: &AtomicU64) -> f64 {
    c.load(Ordering::Relaxed) as f64
}

/// Reads every figure of the host.
fn snapshot(ctx: &ShardCtx) -> Snapshot {
    let shards = ctx
        .all_stats
        .iter()
        .map(|s| ShardFigures {
            counters: SHARD_COUNTERS
                .iter()
                .map(|(_, _, get)| get(s).load(Ordering::Relaxed))
                .collect(),
            gauges: SHARD_GAUGES.iter().map(|(_, _, get)| get(s)).collect(),
            histograms: SHARD_HISTOGRAMS
                .iter()
                .flat_map(|f| f.members.iter().map(|(_, get)| get(s).read()))
                .collect(),
        })
        .collect();
    let tailer = ctx.all_stats.get(crate::chat::TAILER_SHARD);
    let store = &ctx.hub.store;
    let feed = [
        store.head() as f64,
        tailer.map_or(0.0, |s| load(&s.feed_delivered)),
        tailer.map_or(0.0, |s| load(&s.feed_stalled_ms) / 1000.0),
    ];
    let p = &ctx.peer_stats;
    Snapshot {
        shards,
        store: store.status(),
        feed,
        queues: store.queue_depths(),
        commit_seconds: WRITER_STATS.commit_seconds.read(),
        group_size: WRITER_STATS.group_size.read(),
        peers: PEER_SERIES
            .iter()
            .map(|(_, _, _, get)| PeerStats::get(get(p)))
            .collect(),
        host: vec![
            ctx.started_at.elapsed().as_secs_f64(),
            f64::from(u8::from(ctx.draining.load(Ordering::Acquire))),
            open_fds() as f64,
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0.0, |(soft, _)| soft as f64),
            resident_bytes() as f64,
        ],
    }
}

/// Entries in `/proc/self/fd`.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Resident set size from `/proc/self/statm` (pages × page size).
fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

type Fmt = Result<(), std::fmt::Error>;

fn one<V: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    value: V,
) -> Fmt {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    if labels.is_empty() {
        return m.encode_gauge(&value);
    }
    m.encode_family(&labels)?.encode_gauge(&value)
}

fn one_counter(enc: &mut DescriptorEncoder, name: &str, help: &str, labels: &[(&str, &str)], value: u64) -> Fmt {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    if labels.is_empty() {
        return m.encode_counter::<NoLabelSet, _, u64>(&value, None);
    }
    m.encode_family(&labels)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn histogram(
    m: &mut prometheus_client::encoding::MetricEncoder,
    labels: &[(&str, &str)],
    (sum, count, buckets): &HistogramRead,
) -> Fmt {
    m.encode_family(&labels)?
        .encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Fmt {
        let labels: Vec<String> = (0..self.shards.len()).map(|i| i.to_string()).collect();
        for (i, (name, help, _)) in SHARD_COUNTERS.iter().enumerate() {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (shard, f) in self.shards.iter().enumerate() {
                let v = f.counters.get(i).copied().unwrap_or(0);
                let l = [("shard", labels.get(shard).map_or("", String::as_str))];
                m.encode_family(&l)?.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        for (i, (name, help, _)) in SHARD_GAUGES.iter().enumerate() {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (shard, f) in self.shards.iter().enumerate() {
                let v = f.gauges.get(i).copied().unwrap_or(0.0);
                let l = [("shard", labels.get(shard).map_or("", String::as_str))];
                m.encode_family(&l)?.encode_gauge(&v)?;
            }
        }
        // Readings are flattened in family and member order.
        let mut index = 0;
        for family in SHARD_HISTOGRAMS {
            let mut m = enc.encode_descriptor(family.name, family.help, None, MetricType::Histogram)?;
            for (api, _) in family.members {
                for (shard, f) in self.shards.iter().enumerate() {
                    let Some(h) = f.histograms.get(index) else { continue };
                    let shard = labels.get(shard).map_or("", String::as_str);
                    match api {
                        Some(api) => histogram(&mut m, &[("shard", shard), ("api", api)], h)?,
                        None => histogram(&mut m, &[("shard", shard)], h)?,
                    }
                }
                index += 1;
            }
        }
        self.encode_host(&mut enc)
    }
}

impl Snapshot {
    fn encode_host(&self, enc: &mut DescriptorEncoder) -> Fmt {
        let [head, delivered, stalled] = self.feed;
        one(
            enc,
            "chatd_change_feed_head",
            "Newest change-log position (mark) in the store.",
            &[],
            head,
        )?;
        one(
            enc,
            "chatd_change_feed_delivered",
            "Change-log position the tailer has handed to the shards.",
            &[],
            delivered,
        )?;
        one(
            enc,
            "chatd_change_feed_stalled_seconds",
            "How long the change feed has had changes pending without the tailer moving (0 when it moves).",
            &[],
            stalled,
        )?;
        let st = &self.store;
        let store = [("store", st.backend)];
        let flags = [
            ("chatd_store_reachable", "1 when the store answers.", st.reachable),
            (
                "chatd_change_feed_open",
                "1 while the change feed is open.",
                st.feed_open,
            ),
        ];
        for (name, help, v) in flags {
            one(enc, name, help, &store, f64::from(u8::from(v)))?;
        }
        one(
            enc,
            "chatd_change_feed_lag_seconds",
            "Between the last change's commit and its arrival at the tailer (MongoDB; 0 for the embedded store).",
            &store,
            st.feed_lag_ms as f64 / 1000.0,
        )?;
        let feed_counters = [
            (
                "chatd_change_feed_events",
                "Change events read from the store.",
                st.feed_events,
            ),
            (
                "chatd_change_feed_bad_events",
                "Change events that failed to decode (skipped, logged with their position).",
                st.feed_bad_events,
            ),
            (
                "chatd_change_feed_history_lost",
                "Times the feed could not resume and clients were asked to reload.",
                st.feed_history_lost,
            ),
            (
                "chatd_change_feed_resumes",
                "Times the feed re-opened after an error.",
                st.feed_resumes,
            ),
        ];
        for (name, help, v) in feed_counters {
            one_counter(enc, name, help, &store, v)?;
        }
        let (writer, readers) = self.queues;
        one(
            enc,
            "chatd_store_writer_queue_depth",
            "Writes waiting for the store's writer.",
            &[],
            writer as f64,
        )?;
        one(
            enc,
            "chatd_store_reader_queue_depth",
            "Reads waiting for a store reader thread.",
            &[],
            readers as f64,
        )?;
        let mut m = enc.encode_descriptor(
            "chatd_store_commit_duration_seconds",
            "Time to commit one group of writes durably (fsync; MongoDB: majority, journaled).",
            None,
            MetricType::Histogram,
        )?;
        histogram(&mut m, &store, &self.commit_seconds)?;
        let mut m = enc.encode_descriptor(
            "chatd_store_commit_group_size",
            "Writes committed together in one group.",
            None,
            MetricType::Histogram,
        )?;
        histogram(&mut m, &store, &self.group_size)?;
        for ((name, help, kind, _), v) in PEER_SERIES.iter().zip(&self.peers) {
            match kind {
                MetricType::Counter => one_counter(enc, name, help, &[], *v)?,
                _ => one(enc, name, help, &[], *v as f64)?,
            }
        }
        for ((name, help), v) in HOST_GAUGES.iter().zip(&self.host) {
            one(enc, name, help, &[], *v)?;
        }
        Ok(())
    }
}

/// `GET /metrics`.
pub fn metrics(ctx: &ShardCtx) -> Response<Full<Bytes>> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot(ctx)));
    let mut text = String::with_capacity(16 * 1024);
    let (status, body) = match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => (StatusCode::OK, text),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics encoding failed\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    // Which shard answered (the figures are the whole host's either way).
    resp.headers_mut()
        .insert(SHARD_HEADER, hyper::header::HeaderValue::from(ctx.hub.shard));
    resp
}
