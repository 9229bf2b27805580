//! A session's bounded outbound queue (runs on the session's shard). The hub and the session's
//! reader push serialized frames; the session's writer drains everything pending at once and
//! writes it with one flush (coalescing). A consumer that falls behind past the frame or byte
//! cap is closed as slow rather than allowed to grow memory.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use tungstenite::Utf8Bytes;

/// Why the writer must end the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
}

impl CloseReason {
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

struct Inner {
    queue: VecDeque<Utf8Bytes>,
    bytes: usize,
    closing: Option<CloseReason>,
    slow: bool,
    waker: Option<Waker>,
    close_waker: Option<Waker>,
}

pub struct Outbound {
    inner: RefCell<Inner>,
    max_frames: usize,
    max_bytes: usize,
}

/// What the writer gets from [`Outbound::next_batch`].
pub enum Batch {
    Frames,
    Close(CloseReason),
}

impl Outbound {
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Self {
            inner: RefCell::new(Inner {
                queue: VecDeque::new(),
                bytes: 0,
                closing: None,
                slow: false,
                waker: None,
                close_waker: None,
            }),
            max_frames: max_frames.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    /// Queues a frame. Returns `false` (and starts closing the session as slow) when the queue is
    /// over its cap, or `false` if the session is already closing.
    pub fn push(&self, frame: Utf8Bytes) -> bool {
        let mut inner = self.inner.borrow_mut();
        if inner.closing.is_some() {
            return false;
        }
        if inner.queue.len() >= self.max_frames || inner.bytes + frame.len() > self.max_bytes {
            inner.queue.clear();
            inner.bytes = 0;
            inner.slow = true;
            inner.closing = Some(CloseReason::new(1008, "slow consumer: outbound queue over its limit"));
            if let Some(w) = inner.close_waker.take() {
                w.wake();
            }
        } else {
            inner.bytes += frame.len();
            inner.queue.push_back(frame);
        }
        let ok = !inner.slow;
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
        ok
    }

    /// Queues a frame that may be dropped (typing): only while the queue is under half its
    /// limits, so ephemeral traffic can neither grow memory nor get a session closed as slow.
    /// Returns `false` when the frame was dropped.
    pub fn push_ephemeral(&self, frame: Utf8Bytes) -> bool {
        let mut inner = self.inner.borrow_mut();
        if inner.closing.is_some()
            || inner.queue.len() * 2 >= self.max_frames
            || (inner.bytes + frame.len()) * 2 > self.max_bytes
        {
            return false;
        }
        inner.bytes += frame.len();
        inner.queue.push_back(frame);
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
        true
    }

    pub fn push_str(&self, frame: String) -> bool {
        self.push(Utf8Bytes::from(frame))
    }

    /// Asks the writer to send what is queued, then a close frame.
    pub fn close(&self, reason: CloseReason) {
        let mut inner = self.inner.borrow_mut();
        if inner.closing.is_none() {
            inner.closing = Some(reason);
        }
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
        if let Some(w) = inner.close_waker.take() {
            w.wake();
        }
    }

    /// Resolves once the session started closing (slow consumer, write failure, server close).
    pub async fn closed(&self) {
        poll_fn(|cx| {
            let mut inner = self.inner.borrow_mut();
            if inner.closing.is_some() {
                return Poll::Ready(());
            }
            inner.close_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    pub fn is_closing(&self) -> bool {
        self.inner.borrow().closing.is_some()
    }

    pub fn was_slow(&self) -> bool {
        self.inner.borrow().slow
    }

    /// Waits for frames (moved into `out`) or for the close request once the queue is empty.
    pub async fn next_batch(&self, out: &mut Vec<Utf8Bytes>) -> Batch {
        poll_fn(|cx| {
            let mut inner = self.inner.borrow_mut();
            if !inner.queue.is_empty() {
                out.extend(inner.queue.drain(..));
                inner.bytes = 0;
                return Poll::Ready(Batch::Frames);
            }
            if let Some(reason) = &inner.closing {
                return Poll::Ready(Batch::Close(reason.clone()));
            }
            inner.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_cap_closes_as_slow_and_drops_the_backlog() {
        let out = Outbound::new(2, 1 << 20);
        assert!(out.push_str("a".into()));
        assert!(out.push_str("b".into()));
        assert!(!out.push_str("c".into()));
        assert!(out.was_slow());
        let mut buf = Vec::new();
        match futures_lite::future::block_on(out.next_batch(&mut buf)) {
            Batch::Close(r) => assert_eq!(r.code, 1008),
            Batch::Frames => panic!("backlog of a slow consumer must be dropped"),
        }
    }

    #[test]
    fn pending_frames_are_drained_together() {
        let out = Outbound::new(100, 1 << 20);
        for i in 0..10 {
            assert!(out.push_str(format!("{i}")));
        }
        let mut buf = Vec::new();
        assert!(matches!(
            futures_lite::future::block_on(out.next_batch(&mut buf)),
            Batch::Frames
        ));
        assert_eq!(buf.len(), 10);
    }
}
