//! The reader pool: a few named threads ("chatd-reader-N") that run the store's reads, so a scan
//! or a decode never runs on a shard's event loop. Jobs arrive over one bounded crossbeam queue;
//! each answers its caller over a oneshot. A shard whose job finds the queue full waits
//! asynchronously (back-pressure) and retries; it never blocks its event loop.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use futures::channel::oneshot;

use super::{Backend, StoreError, StoreResult};

type Job = Box<dyn FnOnce(&dyn Backend) + Send>;

enum Msg {
    /// A job and when it was queued.
    Run(Job, Instant),
    Stop,
}

/// Under [`ReaderPriority::Idle`], a reader that picks up a job which waited this long (the CPU
/// has had no idle time for it) runs at nice 10 until the queue is prompt again, so a saturated
/// host slows reads down instead of starving them.
const STARVED_AFTER: Duration = Duration::from_millis(20);
/// ... and goes back to idle scheduling once jobs wait less than this.
const PROMPT_UNDER: Duration = Duration::from_millis(1);

/// How reader threads yield to the shards on a core they share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReaderPriority {
    /// `SCHED_IDLE`: a reader runs only when no shard (or other normal thread) wants the core,
    /// and a shard that wakes takes the core back at once. Measured: another session's p99
    /// delivery latency stays within 0.2 ms while a client pages through history (with nice 10
    /// it rose by 0.4–5 ms). When the CPU has no idle time for reads (jobs wait 20 ms), a reader
    /// runs at nice 10 until jobs are prompt again, so reads slow down but never starve.
    #[default]
    Idle,
    /// Nice 10: readers get a smaller share of a busy core but are never starved; a waking shard
    /// can wait up to a scheduler slice behind a running reader.
    Nice,
}

/// Switches the calling thread to `SCHED_IDLE` (`idle`) or back to normal scheduling at nice
/// 10. Returns whether the switch took effect.
fn set_idle(idle: bool) -> bool {
    // SAFETY: plain syscalls on the calling thread only; `param` outlives the call.
    let rc = unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if idle {
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
        } else {
            let rc = libc::sched_setscheduler(0, libc::SCHED_OTHER, &param);
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            rc | libc::setpriority(libc::PRIO_PROCESS, tid, READER_NICE)
        }
    };
    rc == 0
}

/// Nice value of reader threads under [`ReaderPriority::Nice`].
const READER_NICE: libc::c_int = 10;

/// Lowers the calling thread's scheduling priority. Best effort: a failure leaves the default
/// priority (and says so once per thread).
fn lower_priority(priority: ReaderPriority) {
    if !set_idle(priority == ReaderPriority::Idle) {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            ?priority,
            "could not lower a reader thread's priority"
        );
    }
}

#[derive(Clone)]
pub(super) struct ReadPool {
    tx: Sender<Msg>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl ReadPool {
    /// Reads waiting for a reader thread.
    pub fn queue_len(&self) -> usize {
        self.tx.len()
    }

    pub(super) fn start(
        backend: Arc<dyn Backend>,
        threads: usize,
        capacity: usize,
        priority: ReaderPriority,
    ) -> StoreResult<Self> {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx: Receiver<Msg> = rx.clone();
            let backend = backend.clone();
            let handle = std::thread::Builder::new()
                .name(format!("chatd-reader-{i}"))
                .spawn(move || {
                    lower_priority(priority);
                    let mut idle = priority == ReaderPriority::Idle;
                    while let Ok(Msg::Run(job, queued)) = rx.recv() {
                        if priority == ReaderPriority::Idle {
                            let waited = queued.elapsed();
                            if idle && waited >= STARVED_AFTER {
                                idle = !set_idle(false);
                                tracing::debug!(?waited, "store reads starved of idle CPU: reader at nice 10");
                            } else if !idle && waited < PROMPT_UNDER {
                                idle = set_idle(true);
                            }
                        }
                        job(&*backend);
                    }
                })
                .map_err(|e| StoreError::Failed(format!("cannot start a reader thread: {e}")))?;
            handles.push(handle);
        }
        Ok(Self {
            tx,
            threads: Arc::new(Mutex::new(handles)),
        })
    }

    /// Runs `f` on a reader thread. On a shard: waits asynchronously while the queue is full.
    pub(super) async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Backend) -> StoreResult<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let mut msg = Msg::Run(
            Box::new(move |b: &dyn Backend| {
                let _ = reply.send(f(b));
            }),
            Instant::now(),
        );
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) => {
                    msg = back;
                    glommio::timer::sleep(Duration::from_micros(200)).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(StoreError::Failed("store is shut down".into())),
            }
        }
        rx.await
            .map_err(|_| StoreError::Failed("a store reader stopped".into()))?
    }

    /// Lets every reader finish its queued jobs, then stops and joins them.
    pub(super) fn stop(&self) {
        let handles: Vec<JoinHandle<()>> = self
            .threads
            .lock()
            .map(|mut h| std::mem::take(&mut *h))
            .unwrap_or_default();
        for _ in 0..handles.len() {
            let _ = self.tx.send(Msg::Stop);
        }
        for h in handles {
            let _ = h.join();
        }
    }
}
