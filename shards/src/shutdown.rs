//! Shutdown signalling shared by every shard. Any thread may trigger; every shard awaits.
//!
//! Two phases: `drain` (stop accepting, tell clients to go, finish in-flight work) and then the
//! executors end when their shard future returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use event_listener::Event;

#[derive(Default)]
struct Inner {
    triggered: AtomicBool,
    event: Event,
}

/// Cloneable, thread-safe trigger. Holding one does not keep shards alive.
#[derive(Clone, Default)]
pub struct ShutdownHandle {
    inner: Arc<Inner>,
}

impl ShutdownHandle {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts shutdown. Idempotent.
    pub fn trigger(&self) {
        if !self.inner.triggered.swap(true, Ordering::SeqCst) {
            self.inner.event.notify(usize::MAX);
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    /// A waitable view for one task.
    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal {
            inner: self.inner.clone(),
        }
    }
}

/// Await [`ShutdownSignal::wait`] to learn that shutdown began.
#[derive(Clone)]
pub struct ShutdownSignal {
    inner: Arc<Inner>,
}

impl ShutdownSignal {
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    /// Sleeps for `d` on the current shard's timer; `false` if shutdown began first (or had).
    pub async fn sleep(&self, d: std::time::Duration) -> bool {
        futures_lite::future::or(
            async {
                glommio::timer::sleep(d).await;
                !self.is_triggered()
            },
            async {
                self.wait().await;
                false
            },
        )
        .await
    }

    /// Resolves once shutdown has been triggered (at once if it already was).
    pub async fn wait(&self) {
        loop {
            if self.is_triggered() {
                return;
            }
            let listener = self.inner.event.listen();
            if self.is_triggered() {
                return;
            }
            listener.await;
        }
    }
}
