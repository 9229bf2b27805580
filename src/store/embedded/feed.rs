//! The embedded change feed: the `changes` table read in order after a sequence number, woken by
//! the journal thread once a group is durable. Runs on the feed thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use redb::Database;

use super::journal::Recent;
use super::schema;
use crate::store::{ChangeFeed, FeedEntry, FeedItem, StoreResult};

pub struct EmbeddedFeed {
    db: Arc<Database>,
    /// Last sequence number handed out.
    seq: u64,
    /// The durable head: records past it are committed but not yet synced to the journal.
    head: Arc<AtomicU64>,
    /// Durable records handed over by the journal thread (read from the store when missing).
    recent: Arc<Recent>,
    wakeups: Receiver<()>,
}

impl EmbeddedFeed {
    pub fn new(db: Arc<Database>, seq: u64, head: Arc<AtomicU64>, recent: Arc<Recent>, wakeups: Receiver<()>) -> Self {
        Self {
            db,
            seq,
            head,
            recent,
            wakeups,
        }
    }

    fn read(&mut self, max: usize) -> StoreResult<Vec<FeedItem>> {
        let durable = self.head.load(Ordering::Acquire).saturating_sub(self.seq);
        if durable == 0 {
            return Ok(Vec::new());
        }
        let max = max.min(usize::try_from(durable).unwrap_or(usize::MAX));
        let in_memory = self.recent.take_after(self.seq, max);
        let records = if in_memory.is_empty() {
            super::changes_after(&self.db, self.seq, max)?
        } else {
            in_memory
                .into_iter()
                .map(|mut r| {
                    schema::restore_change(&mut r.change);
                    (r.seq, Ok(r))
                })
                .collect()
        };
        let mut out = Vec::with_capacity(records.len());
        for (seq, record) in records {
            if seq != self.seq + 1 {
                tracing::warn!(
                    expected = self.seq + 1,
                    got = seq,
                    "gap in the change log (pruned while behind?)"
                );
            }
            self.seq = seq;
            out.push(FeedItem {
                mark: seq,
                entry: match record {
                    Ok(r) => FeedEntry::Change(Arc::new(r)),
                    Err(e) => FeedEntry::Undecodable(e.to_string()),
                },
            });
        }
        Ok(out)
    }
}

impl ChangeFeed for EmbeddedFeed {
    fn next_batch(&mut self, max: usize, wait: Duration) -> StoreResult<Vec<FeedItem>> {
        let batch = self.read(max)?;
        if !batch.is_empty() {
            return Ok(batch);
        }
        // Nothing yet: wait for the writer's wake-up (or the timeout), then look again.
        let _ = self.wakeups.recv_timeout(wait);
        self.read(max)
    }
}
