//! The embedded store's side of `chatd import rocketchat`: bulk upserts into the redb file, one
//! write transaction per batch, while no server runs (the file is opened exclusively). Nothing
//! goes to the change log: a starting server loads state from the tables. Runs on the importer's
//! thread.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};

use super::schema::{enc, message_key, sf, Tables, ROOMS, USERS};
use super::OpenError;
use crate::app::rules::Txn;
use crate::ids::{RoomId, UserId};
use crate::import::convert::{ImportedUser, Skip};
use crate::import::ImportSink;
use crate::store::{Message, Room, StoreResult, Subscription};

/// Rooms whose counters and read positions are recomputed per transaction in `finish`.
const FINISH_ROOMS_PER_TXN: usize = 10_000;
/// redb's page cache while importing (an upper bound): large, since messages land all over the file.
const IMPORT_CACHE_BYTES: usize = 4 << 30;

/// Per-room sequence numbers handed out in this import.
#[derive(Default)]
struct Tally {
    last_seq: u64,
    msgs: u64,
}

pub struct EmbeddedImport {
    db: Database,
    tallies: HashMap<String, Tally>,
    touched: HashSet<String>,
}

impl EmbeddedImport {
    /// Opens `dir/chatd.redb` for exclusive use (`InUse` while a server or command has it).
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        let db = super::EmbeddedStore::open_db_with_cache(dir, Some(IMPORT_CACHE_BYTES))?;
        super::bootstrap(&db).map_err(|e| OpenError::Failed {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            db,
            tallies: HashMap::new(),
            touched: HashSet::new(),
        })
    }
}

/// Runs `f` in one write transaction and commits it.
fn write<T>(db: &Database, f: impl FnOnce(&mut Tables<'_>) -> StoreResult<T>) -> StoreResult<T> {
    let txn: WriteTransaction = db.begin_write().map_err(sf)?;
    let out = {
        let mut t = Tables::open(&txn)?;
        f(&mut t)?
    };
    txn.commit().map_err(sf)?;
    Ok(out)
}

fn keys(db: &Database, def: redb::TableDefinition<&str, &[u8]>) -> StoreResult<HashSet<String>> {
    let t = db.begin_read().map_err(sf)?;
    let table = t.open_table(def).map_err(sf)?;
    let mut out = HashSet::new();
    for entry in table.iter().map_err(sf)? {
        let (k, _) = entry.map_err(sf)?;
        out.insert(k.value().to_owned());
    }
    Ok(out)
}

impl ImportSink for EmbeddedImport {
    fn existing_ids(&mut self) -> StoreResult<(HashSet<String>, HashSet<String>)> {
        Ok((keys(&self.db, USERS)?, keys(&self.db, ROOMS)?))
    }

    fn put_users(&mut self, batch: &[ImportedUser]) -> StoreResult<Vec<Option<Skip>>> {
        write(&self.db, |t| {
            let mut out = Vec::with_capacity(batch.len());
            for iu in batch {
                let u = &iu.user;
                if let Some(holder) = t.user_by_username(&u.username)? {
                    if holder.id != u.id {
                        out.push(Some(Skip::new(
                            "username taken by another user (case-insensitive)",
                            format!("{} ({}; held by {})", u.username, u.id, holder.id),
                        )));
                        continue;
                    }
                }
                match t.user(&u.id)? {
                    Some(existing) => t.put_user(&crate::import::convert::rerun_user(u, &existing))?,
                    None => t.put_user(u)?,
                }
                for email in iu.emails.iter().skip(1) {
                    t.index_email(email, &u.id)?;
                }
                for (hash, token) in &iu.tokens {
                    t.put_token(hash, token)?;
                }
                out.push(None);
            }
            Ok(out)
        })
    }

    fn put_rooms(&mut self, batch: &[Room]) -> StoreResult<Vec<Option<String>>> {
        write(&self.db, |t| {
            let mut out = Vec::with_capacity(batch.len());
            for room in batch {
                let mut room = room.clone();
                if let Some(existing) = t.room(&room.id)? {
                    // A re-run: the counters describe messages already imported.
                    room.last_seq = existing.last_seq;
                    room.msgs = existing.msgs;
                    room.lm = existing.lm;
                    room.last_message = existing.last_message;
                    room.users_count = existing.users_count;
                }
                t.put_room_record(&room)?;
                t.index_channel(&room)?;
                let warning = match &room.name {
                    Some(name) if !t.index_room_name(name, &room.id)? => {
                        Some(format!("room name {name:?} is taken by another room"))
                    }
                    _ => None,
                };
                out.push(warning);
                self.touched.insert(room.id.0);
            }
            Ok(out)
        })
    }

    fn put_subscriptions(&mut self, batch: &[Subscription]) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        write(&self.db, |t| {
            for sub in batch {
                let mut sub = sub.clone();
                if let Some(existing) = t.sub(&sub.u.id, &sub.rid)? {
                    sub.id = existing.id;
                }
                t.put_sub(&sub)?;
                self.touched.insert(sub.rid.0);
            }
            Ok(())
        })
    }

    fn put_messages(&mut self, mut batch: Vec<Message>) -> StoreResult<u64> {
        if batch.is_empty() {
            return Ok(0);
        }
        // In key order, so each page of the message tree is visited once per batch.
        batch.sort_unstable_by(|a, b| (a.rid.as_str(), a.ts).cmp(&(b.rid.as_str(), b.ts)));
        let tallies = &mut self.tallies;
        let touched = &mut self.touched;
        let txn: WriteTransaction = self.db.begin_write().map_err(sf)?;
        let mut duplicates = 0;
        {
            let mut t = Tables::open(&txn)?;
            for mut m in batch {
                let tally = match tallies.get_mut(m.rid.as_str()) {
                    Some(tally) => tally,
                    None => {
                        let existing = t.room(&m.rid)?;
                        let tally = Tally {
                            last_seq: existing.as_ref().map_or(0, |r| r.last_seq),
                            msgs: existing.as_ref().map_or(0, |r| r.msgs),
                        };
                        touched.insert(m.rid.0.clone());
                        tallies.entry(m.rid.0.clone()).or_insert(tally)
                    }
                };
                // Sequence numbers count messages; unread counts only need how many there are.
                m.seq = tally.last_seq + 1;
                let key = message_key(&m);
                // One lookup, not two: insert the id, and undo on the rare id already there (a
                // re-run, or an id twice in the dump).
                let previous = t.message_ids.insert(m.id.as_str(), key).map_err(sf)?.map(|old| {
                    let (r, ts, seq) = old.value();
                    (r.to_owned(), ts, seq)
                });
                if let Some((r, ts, seq)) = previous {
                    t.message_ids.insert(m.id.as_str(), (r.as_str(), ts, seq)).map_err(sf)?;
                    duplicates += 1;
                    continue;
                }
                t.messages.insert(key, enc(&m)?.as_slice()).map_err(sf)?;
                tally.last_seq = m.seq;
                tally.msgs += 1;
            }
        }
        txn.commit().map_err(sf)?;
        Ok(duplicates)
    }

    fn put_settings(&mut self, settings: &[(String, serde_json::Value)]) -> StoreResult<()> {
        write(&self.db, |t| {
            for (id, value) in settings {
                t.put_doc(crate::api::settings::SETTINGS, id, value)?;
            }
            Ok(())
        })
    }

    fn finish(&mut self) -> StoreResult<()> {
        let rooms: Vec<String> = self.touched.drain().collect();
        for chunk in rooms.chunks(FINISH_ROOMS_PER_TXN) {
            write(&self.db, |t| {
                for rid in chunk {
                    let rid = RoomId(rid.clone());
                    let Some(mut room) = t.room(&rid)? else { continue };
                    if let Some(tally) = self.tallies.get(rid.as_str()) {
                        room.last_seq = room.last_seq.max(tally.last_seq);
                        room.msgs = room.msgs.max(tally.msgs);
                    }
                    // Message times in order (the key holds them; no record is decoded).
                    let mut times: Vec<i64> = Vec::new();
                    for entry in t
                        .messages
                        .range((rid.as_str(), 0, 0)..(rid.as_str(), u64::MAX, u64::MAX))
                        .map_err(sf)?
                    {
                        let (k, _) = entry.map_err(sf)?;
                        times.push(i64::try_from(k.value().1).unwrap_or(i64::MAX));
                    }
                    if let Some(last) = t.last_message(&rid)? {
                        room.lm = Some(last.ts);
                        room.last_message = Some(last);
                    }
                    let members: Vec<UserId> = t.members(&rid)?;
                    room.users_count = members.len() as u64;
                    for uid in members {
                        let Some(mut sub) = t.sub(&uid, &rid)? else { continue };
                        sub.read_seq = crate::import::convert::imported_read_seq(&sub, room.last_seq, &times);
                        t.put_sub(&sub)?;
                    }
                    t.put_room(&room)?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}
