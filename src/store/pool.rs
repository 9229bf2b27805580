//! The reader pool: a few named threads ("chatd-reader-N") that run the store's reads, so a scan
//! or a decode never runs on a shard's event loop. Jobs arrive over one bounded crossbeam queue;
//! each answers its caller over a oneshot. A shard whose job finds the queue full waits
//! asynchronously (back-pressure) and retries; it never blocks its event loop.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use futures::channel::oneshot;

use super::{Backend, StoreError, StoreResult};

type Job = Box<dyn FnOnce(&dyn Backend) + Send>;

enum Msg {
    Run(Job),
    Stop,
}

/// Nice value of reader threads: on a core shared with a shard, the shard's event loop wins.
const READER_NICE: libc::c_int = 10;

/// Lowers the calling thread's scheduling priority (Linux: `setpriority` on the thread id).
/// Best effort: a failure leaves the default priority.
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread's own id; no memory is shared.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, READER_NICE)
    };
    if rc != 0 {
        tracing::debug!("could not lower the reader thread's priority");
    }
}

#[derive(Clone)]
pub(super) struct ReadPool {
    tx: Sender<Msg>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl ReadPool {
    pub(super) fn start(backend: Arc<dyn Backend>, threads: usize, capacity: usize) -> StoreResult<Self> {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx: Receiver<Msg> = rx.clone();
            let backend = backend.clone();
            let handle = std::thread::Builder::new()
                .name(format!("chatd-reader-{i}"))
                .spawn(move || {
                    lower_priority();
                    while let Ok(Msg::Run(job)) = rx.recv() {
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
        let mut msg = Msg::Run(Box::new(move |b: &dyn Backend| {
            let _ = reply.send(f(b));
        }));
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
