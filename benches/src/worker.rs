//! One worker process of `chatd-load run`: its connections, its send schedule, and what it
//! measured.
//!
//! How it keeps its own delay out of the latencies it reports (each point was a measured fault of
//! an earlier version; `chatd-load ref-relay` is the reference that shows the floor):
//! - **One thread, shared histograms.** A worker runs on a current-thread runtime and records into
//!   one histogram per figure. Histograms of 1 µs..1 h at 3 digits are ~240 KiB each: one per
//!   connection meant 2.4 GB zeroed at the start of sending for 5,000 connections, which held the
//!   first messages for seconds (a p99 of 4 s at 1,000 deliveries/s against a trivial relay).
//! - **Nanosecond send schedule.** A schedule thread sleeps to absolute `CLOCK_MONOTONIC`
//!   deadlines and hands each due send to its connection; tokio's timer rounds every deadline up
//!   to the next millisecond, which alone put up to 1 ms into every latency.
//! - **Coordinated omission.** Every message carries its *intended* send time, not the time it
//!   was written: when the client falls behind, or a write waits on the server's back-pressure,
//!   the wait counts in the latency (the correction wrk2 makes). How late the sends actually went
//!   out is reported beside it as `send_lag_us`, so the client's own lateness is visible.
//! - **Even spread.** Senders' schedules are spread evenly over one period, so the offered load
//!   has no bursts the scenario did not ask for.
//! - **No Nagle, no JSON on the hot path.** Connections set `TCP_NODELAY`; deliveries are
//!   recognised by their payload without parsing the frame.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{BufRead, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use hdrhistogram::Histogram;
use rustix::time::{ClockId, Timespec};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::proto::{Conn, Event};
use crate::{encode_hist, new_hist, now_ns, seed, Mode, Proto, RunArgs};

/// What a worker reports.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub connections: usize,
    pub setup_secs: f64,
    pub sent: u64,
    pub acked: u64,
    pub deliveries: u64,
    pub expected: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub errors: u64,
    pub latency: String,
    pub ack_latency: String,
    /// How late sends went out after their intended time.
    pub send_lag: String,
    /// This worker's CPU seconds from GO to its result.
    pub cpu_s: f64,
}

/// One connection's part in the workload.
#[derive(Clone)]
struct Role {
    /// Index of the room in the plan / synthetic room number.
    room: usize,
    /// Room id (chatd) or name (peers).
    room_key: String,
    /// Global sender number when this connection sends.
    sender: Option<u32>,
    receives: bool,
    /// chatd: the login token.
    token: Option<String>,
}

/// What every connection of a worker records into (one thread: no locks, no atomics).
struct Shared {
    sent: Vec<Cell<u64>>,
    deliveries: Cell<u64>,
    acked: Cell<u64>,
    errors: Cell<u64>,
    latency: RefCell<Histogram<u64>>,
    ack_latency: RefCell<Histogram<u64>>,
    send_lag: RefCell<Histogram<u64>>,
}

impl Shared {
    fn bump(c: &Cell<u64>) {
        c.set(c.get() + 1);
    }

    fn record(h: &RefCell<Histogram<u64>>, us: u64) {
        let _ = h.borrow_mut().record(us.max(1));
    }
}

fn plan_roles(args: &RunArgs, index: usize) -> anyhow::Result<(Vec<Role>, usize, Vec<usize>)> {
    let procs = args.procs.max(1);
    let plan = match &args.plan {
        Some(p) => Some(serde_json::from_str::<seed::Plan>(&std::fs::read_to_string(p)?)?),
        None => None,
    };
    let mut roles = Vec::new();
    // Sender number → room, over the whole run.
    let mut sender_rooms = Vec::new();
    match args.mode {
        Mode::Idle => {
            let n = args.connections;
            for c in (0..n).filter(|c| c % procs == index) {
                let token = plan.as_ref().and_then(|p| p.users.get(c)).map(|u| u.token.clone());
                if args.proto == Proto::Chatd && token.is_none() {
                    bail!("the plan has fewer than {n} users");
                }
                roles.push(Role {
                    room: 0,
                    room_key: String::new(),
                    sender: None,
                    receives: false,
                    token,
                });
            }
        }
        Mode::Fanout | Mode::Acks => {
            let rooms: Vec<(String, Vec<Option<String>>)> = match (&plan, args.proto) {
                (Some(p), Proto::Chatd) => p
                    .rooms
                    .iter()
                    .map(|r| {
                        let tokens = r
                            .members
                            .iter()
                            .map(|i| p.users.get(*i).map(|u| u.token.clone()))
                            .collect();
                        (r.rid.clone(), tokens)
                    })
                    .collect(),
                (None, Proto::Chatd) => bail!("--plan is required for chatd"),
                _ => (0..args.rooms)
                    .map(|r| (format!("r{r}"), vec![None; args.members]))
                    .collect(),
            };
            let per_room = if args.mode == Mode::Acks {
                // Acks: `senders` in all, spread over the rooms; nobody receives.
                args.senders.div_ceil(rooms.len().max(1))
            } else {
                args.senders
            };
            let cap_total = if args.mode == Mode::Acks {
                args.senders
            } else {
                usize::MAX
            };
            let mut next_sender = 0u32;
            for (r, (key, members)) in rooms.iter().enumerate() {
                let senders_here = per_room.min(members.len());
                for (k, token) in members.iter().enumerate() {
                    let sender = if k < senders_here && (next_sender as usize) < cap_total {
                        let s = next_sender;
                        next_sender += 1;
                        sender_rooms.push(r);
                        Some(s)
                    } else {
                        None
                    };
                    let receives = args.mode == Mode::Fanout;
                    if args.mode == Mode::Acks && sender.is_none() {
                        continue;
                    }
                    if r % procs == index {
                        roles.push(Role {
                            room: r,
                            room_key: key.clone(),
                            sender,
                            receives,
                            token: token.clone(),
                        });
                    }
                }
            }
        }
    }
    let total_senders = sender_rooms.len();
    Ok((roles, total_senders, sender_rooms))
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock the send schedule's timerfd runs on.
fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(ClockId::Monotonic);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
}

/// Maps monotonic instants to wall-clock nanoseconds, the stamp every process on the host compares.
#[derive(Clone, Copy)]
struct Clocks {
    mono0: u64,
    wall0: u64,
}

impl Clocks {
    fn now() -> Self {
        Self {
            mono0: mono_ns(),
            wall0: now_ns(),
        }
    }

    fn wall_of(&self, mono: u64) -> u64 {
        self.wall0.saturating_add(mono.saturating_sub(self.mono0))
    }
}

/// One sender's schedule (its first due time travels beside it): the period, and where to hand
/// each due time.
struct Schedule {
    period_ns: u64,
    tx: mpsc::UnboundedSender<u64>,
}

/// Hands each sender its intended send times (as wall-clock ns) when they fall due, until `end`.
/// Runs on its own thread, sleeping to absolute `CLOCK_MONOTONIC` deadlines (tokio's timer would
/// round each one up to the next millisecond); handing a due time over wakes the runtime at once.
/// Returning drops the channels, which tells the senders that sending is over.
fn run_schedule(senders: Vec<(u64, Schedule)>, end_mono: u64, clocks: Clocks) {
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = senders
        .iter()
        .enumerate()
        .map(|(i, (first, _))| Reverse((*first, i)))
        .collect();
    while let Some(&Reverse((due, i))) = heap.peek() {
        if due >= end_mono {
            break;
        }
        if mono_ns() < due {
            let at = Timespec {
                tv_sec: i64::try_from(due / 1_000_000_000).unwrap_or(i64::MAX),
                tv_nsec: i64::try_from(due % 1_000_000_000).unwrap_or(0),
            };
            // Interrupted or not, the loop checks the clock again.
            let _ = rustix::thread::clock_nanosleep_absolute(ClockId::Monotonic, &at);
            continue;
        }
        heap.pop();
        if let Some((_, s)) = senders.get(i) {
            // A sender that has stopped (its connection failed) is dropped from the schedule.
            if s.tx.send(clocks.wall_of(due)).is_ok() {
                heap.push(Reverse((due.saturating_add(s.period_ns), i)));
            }
        }
    }
}

pub fn worker(index: usize, args: RunArgs) -> anyhow::Result<()> {
    chatd::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let res = local.block_on(&rt, worker_async(index, args))?;
    println!("{}", serde_json::to_string(&res)?);
    Ok(())
}

/// Per-connection outcome: how often each (sender, seq) arrived.
#[derive(Default)]
struct ConnReport {
    received: HashMap<u32, Vec<u8>>,
    /// Distinct messages received per sender.
    distinct: HashMap<u32, u64>,
}

fn own_cpu_secs() -> f64 {
    crate::cpu_secs(&[std::process::id()]).unwrap_or(0.0)
}

async fn worker_async(index: usize, args: RunArgs) -> anyhow::Result<WorkerResult> {
    let (roles, total_senders, sender_rooms) = plan_roles(&args, index)?;
    let shared = Rc::new(Shared {
        sent: (0..total_senders).map(|_| Cell::new(0)).collect(),
        deliveries: Cell::new(0),
        acked: Cell::new(0),
        errors: Cell::new(0),
        latency: RefCell::new(new_hist()),
        ack_latency: RefCell::new(new_hist()),
        send_lag: RefCell::new(new_hist()),
    });
    // Setup: connect everyone, bounded concurrency.
    let started = Instant::now();
    let sem = Rc::new(tokio::sync::Semaphore::new(args.connect_concurrency.max(1)));
    let mut setups = Vec::with_capacity(roles.len());
    for role in roles.iter().cloned() {
        let sem = sem.clone();
        let url = args.url.clone();
        let proto = args.proto;
        setups.push(tokio::task::spawn_local(async move {
            let _permit = sem.acquire().await;
            Conn::open(
                proto,
                &url,
                role.token.as_deref(),
                role.receives.then_some(role.room_key.as_str()),
            )
            .await
        }));
    }
    let mut conns = Vec::with_capacity(roles.len());
    for (s, role) in setups.into_iter().zip(roles.iter().cloned()) {
        let conn = s.await.map_err(|e| anyhow!("setup task: {e}"))??;
        conns.push((conn, role));
    }
    let setup_secs = started.elapsed().as_secs_f64();
    // Tell the parent, wait for GO.
    println!("READY");
    std::io::stdout().flush()?;
    let mut go = String::new();
    tokio::task::spawn_blocking(move || std::io::stdin().lock().read_line(&mut go)).await??;
    let cpu0 = own_cpu_secs();

    let period_ns = if total_senders > 0 && args.rate > 0.0 {
        (1e9 * total_senders as f64 / args.rate) as u64
    } else {
        u64::MAX / 4
    };
    let duration = Duration::from_secs_f64(args.duration);
    let drain = Duration::from_secs_f64(args.drain);
    let clocks = Clocks::now();
    let lead = Duration::from_millis(50);
    let start = tokio::time::Instant::now() + lead;
    let start_mono = clocks.mono0 + lead.as_nanos() as u64;
    let send_end = start + duration;
    let end_mono = start_mono.saturating_add(duration.as_nanos() as u64);
    // Progress line (worker 0 only).
    let progress = (index == 0).then(|| {
        let shared = shared.clone();
        tokio::task::spawn_local(async move {
            let t = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let sent: u64 = shared.sent.iter().map(Cell::get).sum();
                eprintln!(
                    "[{:5.1}s] worker 0: sent {sent}, acked {}, deliveries {}",
                    t.elapsed().as_secs_f64(),
                    shared.acked.get(),
                    shared.deliveries.get()
                );
            }
        })
    });
    let mut schedules = Vec::new();
    let mut tasks = Vec::with_capacity(conns.len());
    let connections = conns.len();
    for (conn, role) in conns {
        let room_senders: Vec<u32> = sender_rooms
            .iter()
            .enumerate()
            .filter(|(_, r)| **r == role.room)
            .map(|(s, _)| s as u32)
            .collect();
        // Fan-out senders are open-loop: spread evenly over one period, then every period.
        let schedule = match (args.mode, role.sender) {
            (Mode::Fanout, Some(s)) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let offset = (period_ns as u128 * u128::from(s) / total_senders.max(1) as u128) as u64;
                schedules.push((start_mono.saturating_add(offset), Schedule { period_ns, tx }));
                Some(rx)
            }
            _ => None,
        };
        let d = Drive {
            role,
            room_senders,
            shared: shared.clone(),
            mode: args.mode,
            schedule,
            send_end,
            hard_end: send_end + drain,
        };
        tasks.push(tokio::task::spawn_local(d.run(conn)));
    }
    let scheduler = std::thread::Builder::new()
        .name("schedule".into())
        .spawn(move || run_schedule(schedules, end_mono, clocks))?;
    let mut reports = Vec::with_capacity(tasks.len());
    for t in tasks {
        match t.await {
            Ok(done) => reports.push(done),
            Err(_) => Shared::bump(&shared.errors),
        }
    }
    scheduler
        .join()
        .map_err(|_| anyhow!("the send schedule's thread failed"))?;
    if let Some(p) = progress {
        p.abort();
    }
    let cpu_s = own_cpu_secs() - cpu0;
    // Loss and duplicates: every receiving member should get every message of its room's senders.
    let (mut expected, mut lost, mut dup) = (0u64, 0u64, 0u64);
    for (rep, role) in &reports {
        if !role.receives {
            continue;
        }
        for (s, room) in sender_rooms.iter().enumerate() {
            if *room != role.room {
                continue;
            }
            let sent = shared.sent.get(s).map_or(0, Cell::get);
            expected += sent;
            let got = rep.received.get(&(s as u32));
            for seq in 0..sent as usize {
                match got.and_then(|g| g.get(seq)).copied().unwrap_or(0) {
                    0 => lost += 1,
                    1 => {}
                    n => dup += u64::from(n) - 1,
                }
            }
        }
    }
    let res = WorkerResult {
        connections,
        setup_secs,
        sent: shared.sent.iter().map(Cell::get).sum(),
        acked: shared.acked.get(),
        deliveries: shared.deliveries.get(),
        expected,
        lost,
        duplicated: dup,
        errors: shared.errors.get(),
        latency: encode_hist(&shared.latency.borrow()),
        ack_latency: encode_hist(&shared.ack_latency.borrow()),
        send_lag: encode_hist(&shared.send_lag.borrow()),
        cpu_s,
    };
    Ok(res)
}

/// One connection through the send window and the drain.
struct Drive {
    role: Role,
    room_senders: Vec<u32>,
    shared: Rc<Shared>,
    mode: Mode,
    /// Fan-out senders: intended send times, as they fall due.
    schedule: Option<mpsc::UnboundedReceiver<u64>>,
    send_end: tokio::time::Instant,
    hard_end: tokio::time::Instant,
}

/// The next due send time, or never when there is no schedule.
async fn next_due(s: &mut Option<mpsc::UnboundedReceiver<u64>>) -> Option<u64> {
    match s {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Drive {
    async fn run(mut self, mut conn: Conn) -> (ConnReport, Role) {
        let mut report = ConnReport::default();
        if self.mode == Mode::Idle {
            let _ = tokio::time::timeout_at(self.send_end, conn.idle()).await;
            return (report, self.role);
        }
        let mut seq: u32 = 0;
        let mut pending_acks: HashMap<u64, u64> = HashMap::new();
        // One timer for the connection's life, moved only when its deadline changes.
        let timer = tokio::time::sleep_until(self.send_end);
        tokio::pin!(timer);
        loop {
            let now = tokio::time::Instant::now();
            // Acks mode is closed-loop: each sender sends its next message once the previous one
            // is acknowledged.
            let acks_turn = self.mode == Mode::Acks && self.role.sender.is_some() && now < self.send_end;
            if acks_turn && pending_acks.is_empty() {
                if !self.send(&mut conn, &mut seq, now_ns(), &mut pending_acks).await {
                    break;
                }
                continue;
            }
            if now >= self.send_end && self.schedule.is_none() {
                // Drain: done once this connection has everything its room's senders sent (and
                // its acknowledgements), or at the hard end.
                let complete = !self.role.receives || self.room_complete(&report);
                if (complete && pending_acks.is_empty()) || now >= self.hard_end {
                    break;
                }
            }
            let wake = if now < self.send_end {
                self.send_end
            } else {
                self.hard_end
            };
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            tokio::select! {
                ev = conn.next_event() => {
                    if !self.on_event(ev, &mut report, &mut pending_acks) {
                        break;
                    }
                }
                due = next_due(&mut self.schedule), if self.schedule.is_some() => match due {
                    Some(intended) => {
                        if !self.send(&mut conn, &mut seq, intended, &mut pending_acks).await {
                            break;
                        }
                    }
                    None => self.schedule = None,
                },
                _ = &mut timer => {}
            }
        }
        conn.close().await;
        (report, self.role)
    }

    /// Sends the next message stamped with its intended send time; false when the connection
    /// failed.
    async fn send(&self, conn: &mut Conn, seq: &mut u32, intended: u64, pending: &mut HashMap<u64, u64>) -> bool {
        let Some(s) = self.role.sender else { return true };
        Shared::record(&self.shared.send_lag, now_ns().saturating_sub(intended) / 1000);
        match conn.send(&self.role.room_key, s, *seq, intended).await {
            Ok(ack_id) => {
                if let Some(id) = ack_id {
                    pending.insert(id, intended);
                }
                if let Some(c) = self.shared.sent.get(s as usize) {
                    Shared::bump(c);
                }
                *seq += 1;
                true
            }
            Err(_) => {
                Shared::bump(&self.shared.errors);
                false
            }
        }
    }

    /// Records one event; false when the connection failed.
    fn on_event(&self, ev: anyhow::Result<Event>, report: &mut ConnReport, pending: &mut HashMap<u64, u64>) -> bool {
        let sh = &self.shared;
        match ev {
            Ok(Event::Message { sender, seq, sent_ns }) => {
                Shared::record(&sh.latency, now_ns().saturating_sub(sent_ns) / 1000);
                Shared::bump(&sh.deliveries);
                let v = report.received.entry(sender).or_default();
                let i = seq as usize;
                if v.len() <= i {
                    v.resize(i + 1, 0);
                }
                if let Some(c) = v.get_mut(i) {
                    if *c == 0 {
                        *report.distinct.entry(sender).or_default() += 1;
                    }
                    *c = c.saturating_add(1);
                }
            }
            Ok(Event::Ack { id }) => {
                if let Some(t) = pending.remove(&id) {
                    Shared::record(&sh.ack_latency, now_ns().saturating_sub(t) / 1000);
                    Shared::bump(&sh.acked);
                }
            }
            Ok(Event::Refused { id }) => {
                if pending.remove(&id).is_some() {
                    Shared::bump(&sh.errors);
                }
            }
            Ok(Event::Other) => {}
            Err(_) => {
                Shared::bump(&sh.errors);
                return false;
            }
        }
        true
    }

    /// Whether this connection has heard every message its room's senders have sent so far.
    fn room_complete(&self, report: &ConnReport) -> bool {
        self.room_senders.iter().all(|s| {
            let sent = self.shared.sent.get(*s as usize).map_or(0, Cell::get);
            report.distinct.get(s).copied().unwrap_or(0) >= sent
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schedule hands out exact intended times (not the times it woke), evenly spaced, and
    /// ends at `end` by closing every channel.
    #[test]
    fn the_schedule_hands_out_exact_intended_times_and_ends() {
        let clocks = Clocks::now();
        let start = clocks.mono0 + 1_000_000;
        let mut rxs = Vec::new();
        let mut senders = Vec::new();
        for i in 0..2u64 {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push((
                start + i * 500_000,
                Schedule {
                    period_ns: 1_000_000,
                    tx,
                },
            ));
            rxs.push(rx);
        }
        run_schedule(senders, start + 10_000_000, clocks);
        for (i, mut rx) in rxs.into_iter().enumerate() {
            let mut got = Vec::new();
            while let Ok(t) = rx.try_recv() {
                got.push(t);
            }
            assert!(rx.try_recv().is_err());
            assert_eq!(got.len(), 10, "sender {i}: {got:?}");
            let first = clocks.wall_of(start + i as u64 * 500_000);
            for (k, t) in got.iter().enumerate() {
                assert_eq!(*t, first + k as u64 * 1_000_000, "sender {i}");
            }
        }
    }
}
