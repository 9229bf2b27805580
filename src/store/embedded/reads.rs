//! The embedded store's reads, each in its own MVCC read transaction. Run on store-side threads
//! only (the reader pool, the feed thread, the CLI and importer): never on a shard.

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;

use super::schema::*;
use crate::ids::{MessageId, RoomId, UserId};
use crate::store::{HistoryQuery, LoginToken, Mark, Message, Room, StoreResult, Subscription, Trash, User};

fn read<T>(db: &Database, f: impl FnOnce(&ReadTransaction) -> StoreResult<T>) -> StoreResult<T> {
    let txn = db.begin_read().map_err(sf)?;
    f(&txn)
}

fn get_json<T: DeserializeOwned>(
    t: &ReadTransaction,
    def: TableDefinition<&str, &[u8]>,
    key: &str,
) -> StoreResult<Option<T>> {
    let table = t.open_table(def).map_err(sf)?;
    let v = table.get(key).map_err(sf)?;
    v.map(|v| dec(v.value())).transpose()
}

/// A record found through a case-insensitive name index (`index`: name → id, `data`: id → record).
fn by_index<T: DeserializeOwned>(
    t: &ReadTransaction,
    index: TableDefinition<&str, &str>,
    name: &str,
    data: TableDefinition<&str, &[u8]>,
) -> StoreResult<Option<T>> {
    let ids = t.open_table(index).map_err(sf)?;
    let Some(id) = ids.get(name.to_lowercase().as_str()).map_err(sf)? else {
        return Ok(None);
    };
    let id = id.value().to_owned();
    get_json(t, data, &id)
}

pub fn user(db: &Database, uid: &UserId) -> StoreResult<Option<User>> {
    read(db, |t| get_json(t, USERS, uid.as_str()))
}

pub fn users(db: &Database, uids: &[UserId]) -> StoreResult<Vec<User>> {
    read(db, |t| {
        let table = t.open_table(USERS).map_err(sf)?;
        let mut out = Vec::with_capacity(uids.len());
        for uid in uids {
            if let Some(v) = table.get(uid.as_str()).map_err(sf)? {
                out.push(dec(v.value())?);
            }
        }
        Ok(out)
    })
}

pub fn all_users(db: &Database) -> StoreResult<Vec<User>> {
    read(db, |t| {
        let table = t.open_table(USERS).map_err(sf)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(sf)? {
            let (_, v) = row.map_err(sf)?;
            out.push(dec(v.value())?);
        }
        Ok(out)
    })
}

/// Through the username index (lowercase, so username order), decoding each user.
pub fn users_matching(db: &Database, term: Option<&str>, limit: usize) -> StoreResult<Vec<User>> {
    let term = term.map(str::to_lowercase);
    read(db, |t| {
        let names = t.open_table(USERNAMES).map_err(sf)?;
        let users = t.open_table(USERS).map_err(sf)?;
        let mut out = Vec::new();
        for row in names.iter().map_err(sf)? {
            if out.len() >= limit {
                break;
            }
            let (name, uid) = row.map_err(sf)?;
            let Some(v) = users.get(uid.value()).map_err(sf)? else {
                continue;
            };
            let user: User = dec(v.value())?;
            // The index keeps a renamed user's old name too: only the current one counts.
            if user.username.to_lowercase() != name.value() {
                continue;
            }
            let hit = term.as_deref().is_none_or(|term| {
                user.username.to_lowercase().contains(term) || user.name.to_lowercase().contains(term)
            });
            if hit {
                out.push(user);
            }
        }
        Ok(out)
    })
}

pub fn user_by_username(db: &Database, username: &str) -> StoreResult<Option<User>> {
    read(db, |t| by_index(t, USERNAMES, username, USERS))
}

pub fn user_by_email(db: &Database, email: &str) -> StoreResult<Option<User>> {
    read(db, |t| by_index(t, EMAILS, email, USERS))
}

pub fn user_by_token_hash(db: &Database, token_hash: &str, now: i64) -> StoreResult<Option<(User, LoginToken)>> {
    read(db, |t| {
        let Some(token): Option<LoginToken> = get_json(t, TOKENS, token_hash)? else {
            return Ok(None);
        };
        if token.expires_at <= now {
            return Ok(None);
        }
        Ok(get_json::<User>(t, USERS, token.uid.as_str())?.map(|u| (u, token)))
    })
}

/// Whole rooms (record, tail, last message) read in one read transaction.
struct Rooms {
    rooms: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    tails: redb::ReadOnlyTable<&'static str, Tail>,
    messages: redb::ReadOnlyTable<(&'static str, u64, u64), &'static [u8]>,
}

impl Rooms {
    fn open(t: &ReadTransaction) -> StoreResult<Self> {
        Ok(Self {
            rooms: t.open_table(ROOMS).map_err(sf)?,
            tails: t.open_table(ROOM_TAILS).map_err(sf)?,
            messages: t.open_table(MESSAGES).map_err(sf)?,
        })
    }

    fn get(&self, rid: &str) -> StoreResult<Option<Room>> {
        self.rooms
            .get(rid)
            .map_err(sf)?
            .map(|v| finish_room(v.value(), &self.tails, Some(&self.messages)))
            .transpose()
    }
}

pub fn room(db: &Database, rid: &RoomId) -> StoreResult<Option<Room>> {
    read(db, |t| Rooms::open(t)?.get(rid.as_str()))
}

pub fn room_by_name(db: &Database, name: &str) -> StoreResult<Option<Room>> {
    read(db, |t| {
        let ids = t.open_table(ROOM_NAMES).map_err(sf)?;
        let Some(id) = ids.get(name.to_lowercase().as_str()).map_err(sf)? else {
            return Ok(None);
        };
        Rooms::open(t)?.get(id.value())
    })
}

pub fn subscription(db: &Database, uid: &UserId, rid: &RoomId) -> StoreResult<Option<Subscription>> {
    read(db, |t| {
        let subs = t.open_table(SUBS).map_err(sf)?;
        let v = subs.get((uid.as_str(), rid.as_str())).map_err(sf)?;
        v.map(|v| dec(v.value())).transpose()
    })
}

pub fn subscriptions_of(db: &Database, uid: &UserId) -> StoreResult<Vec<(Subscription, Room)>> {
    read(db, |t| {
        let subs = t.open_table(SUBS).map_err(sf)?;
        let rooms = Rooms::open(t)?;
        let mut out = Vec::new();
        for entry in subs.range((uid.as_str(), "")..).map_err(sf)? {
            let (k, v) = entry.map_err(sf)?;
            if k.value().0 != uid.as_str() {
                break;
            }
            let sub: Subscription = dec(v.value())?;
            if let Some(room) = rooms.get(sub.rid.as_str())? {
                out.push((sub, room));
            }
        }
        Ok(out)
    })
}

pub fn members(db: &Database, rid: &RoomId) -> StoreResult<Vec<UserId>> {
    read(db, |t| members_of(&t.open_table(MEMBERS).map_err(sf)?, rid))
}

pub fn all_memberships(db: &Database) -> StoreResult<Vec<(RoomId, UserId)>> {
    read(db, |t| {
        let members = t.open_table(MEMBERS).map_err(sf)?;
        let mut out = Vec::new();
        for entry in members.iter().map_err(sf)? {
            let (k, _) = entry.map_err(sf)?;
            let (r, u) = k.value();
            out.push((RoomId::from(r), UserId::from(u)));
        }
        Ok(out)
    })
}

/// Most remembered page starts (a client paging through every channel leaves one per page).
const MAX_PAGE_HINTS: usize = 4096;

/// Where pages of the channel index start: `offset → (lowercase name, rid)` of the entry at that
/// offset, learnt from earlier pages, so the next page starts there instead of skipping `offset`
/// entries from the first (a client paging 100 at a time through 50,000 channels would otherwise
/// scan 25,000 entries per page on average). Valid while the index keeps its length (channels are
/// only ever added; an addition clears the hints).
#[derive(Default)]
pub struct PageHints {
    len: u64,
    starts: std::collections::BTreeMap<usize, (String, String)>,
}

pub fn channels_page(
    db: &Database,
    hints: &std::sync::Mutex<PageHints>,
    offset: usize,
    count: usize,
) -> StoreResult<(Vec<Room>, u64)> {
    read(db, |t| {
        let index = t.open_table(CHANNELS).map_err(sf)?;
        let rooms = Rooms::open(t)?;
        let total = index.len().map_err(sf)?;
        let start = hints.lock().ok().and_then(|mut h| {
            if h.len != total {
                *h = PageHints {
                    len: total,
                    ..PageHints::default()
                };
            }
            h.starts.range(..=offset).next_back().map(|(o, k)| (*o, k.clone()))
        });
        let (mut at, entries) = match &start {
            Some((o, (name, rid))) => (*o, index.range((name.as_str(), rid.as_str())..).map_err(sf)?),
            None => (0, index.iter().map_err(sf)?),
        };
        let mut out = Vec::with_capacity(count.min(1024));
        let mut next_start = None;
        for entry in entries {
            let (k, _) = entry.map_err(sf)?;
            if at >= offset.saturating_add(count) {
                let (name, rid) = k.value();
                next_start = Some((name.to_owned(), rid.to_owned()));
                break;
            }
            if at >= offset {
                if let Some(room) = rooms.get(k.value().1)? {
                    out.push(room);
                }
            }
            at += 1;
        }
        if let (Some(key), Ok(mut h)) = (next_start, hints.lock()) {
            if h.len == total {
                if h.starts.len() >= MAX_PAGE_HINTS {
                    h.starts.clear();
                }
                h.starts.insert(offset.saturating_add(count), key);
            }
        }
        Ok((out, total))
    })
}

pub fn message(db: &Database, mid: &MessageId) -> StoreResult<Option<Message>> {
    read(db, |t| {
        let ids = t.open_table(MESSAGE_IDS).map_err(sf)?;
        let Some(key) = ids.get(mid.as_str()).map_err(sf)? else {
            return Ok(None);
        };
        let (rid, ts, seq) = key.value();
        let messages = t.open_table(MESSAGES).map_err(sf)?;
        let v = messages.get((rid, ts, seq)).map_err(sf)?;
        v.map(|v| dec(v.value())).transpose()
    })
}

/// Messages of a room, newest first, with `ts` in `(oldest, latest)` (bounds inclusive when
/// `inclusive`), skipping `offset` and returning at most `limit`, and how many matched.
pub fn history(db: &Database, rid: &RoomId, q: &HistoryQuery) -> StoreResult<(Vec<Message>, u64)> {
    read(db, |t| {
        let messages = t.open_table(MESSAGES).map_err(sf)?;
        let lo = match q.oldest {
            Some(o) if q.inclusive => ts_key(o),
            Some(o) => ts_key(o).saturating_add(1),
            None => 0,
        };
        let hi = match q.latest {
            Some(l) if q.inclusive => ts_key(l).saturating_add(1),
            Some(l) => ts_key(l),
            None => u64::MAX,
        };
        let mut out = Vec::new();
        let mut total = 0u64;
        if lo >= hi {
            return Ok((out, 0));
        }
        let range = messages
            .range((rid.as_str(), lo, 0)..(rid.as_str(), hi, 0))
            .map_err(sf)?;
        for entry in range.rev() {
            let (_, v) = entry.map_err(sf)?;
            // Leaving replies out means reading each message to see whether it is one.
            let decoded: Option<Message> = if q.skip_thread_replies {
                let m: Message = dec(v.value())?;
                if m.tmid.is_some() && !m.tshow() {
                    continue;
                }
                Some(m)
            } else {
                None
            };
            total += 1;
            if total <= q.offset {
                continue;
            }
            if out.len() < q.limit {
                out.push(match decoded {
                    Some(m) => m,
                    None => dec(v.value())?,
                });
            } else if !q.count_total {
                break;
            }
        }
        Ok((out, total))
    })
}

pub fn memberships_of(db: &Database, uid: &UserId) -> StoreResult<(Vec<Subscription>, Mark)> {
    read(db, |t| {
        let meta = t.open_table(META).map_err(sf)?;
        let seq = meta.get(META_CHANGE_SEQ).map_err(sf)?.map(|v| v.value()).unwrap_or(0);
        let subs = t.open_table(SUBS).map_err(sf)?;
        let mut out = Vec::new();
        for entry in subs.range((uid.as_str(), "")..).map_err(sf)? {
            let (k, v) = entry.map_err(sf)?;
            if k.value().0 != uid.as_str() {
                break;
            }
            out.push(dec(v.value())?);
        }
        Ok((out, seq))
    })
}

/// Messages of a room changed after `after` (sent, or edited since), oldest change first, at
/// most `limit`: the messages sent after it that were never edited, merged with the edits
/// index.
pub fn messages_updated(db: &Database, rid: &RoomId, after: i64, limit: usize) -> StoreResult<Vec<Message>> {
    read(db, |t| {
        let messages = t.open_table(MESSAGES).map_err(sf)?;
        let edits = t.open_table(EDITS).map_err(sf)?;
        let ids = t.open_table(MESSAGE_IDS).map_err(sf)?;
        let from = ts_key(after).saturating_add(1);
        let mut sent = messages
            .range((rid.as_str(), from, 0)..(rid.as_str(), u64::MAX, u64::MAX))
            .map_err(sf)?;
        let mut edited = edits
            .range((rid.as_str(), from, "")..(rid.as_str(), u64::MAX, ""))
            .map_err(sf)?;
        let mut next_sent = || -> StoreResult<Option<Message>> {
            for entry in sent.by_ref() {
                let m: Message = dec(entry.map_err(sf)?.1.value())?;
                // An edited message is reported by its edit, at its change time.
                if m.updated_at <= m.ts {
                    return Ok(Some(m));
                }
            }
            Ok(None)
        };
        let mut next_edit = || -> StoreResult<Option<Message>> {
            for entry in edited.by_ref() {
                let (k, _) = entry.map_err(sf)?;
                let mid = k.value().2;
                let Some(key) = ids.get(mid).map_err(sf)? else { continue };
                let (r, ts, seq) = key.value();
                if let Some(v) = messages.get((r, ts, seq)).map_err(sf)? {
                    return Ok(Some(dec(v.value())?));
                }
            }
            Ok(None)
        };
        let mut out = Vec::new();
        let (mut a, mut b) = (next_sent()?, next_edit()?);
        while out.len() < limit {
            let take_a = match (&a, &b) {
                (Some(x), Some(y)) => x.updated_at <= y.updated_at,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_a {
                out.extend(a.take());
                a = next_sent()?;
            } else {
                out.extend(b.take());
                b = next_edit()?;
            }
        }
        Ok(out)
    })
}

/// Records of `table` under `scope` deleted after `after`, oldest first, at most `limit`.
fn trash_after(
    db: &Database,
    def: TableDefinition<(&str, u64, &str), &[u8]>,
    scope: &str,
    after: i64,
    limit: usize,
) -> StoreResult<Vec<Trash>> {
    read(db, |t| {
        let table = t.open_table(def).map_err(sf)?;
        let mut out = Vec::new();
        for entry in table
            .range((scope, ts_key(after).saturating_add(1), "")..(scope, u64::MAX, ""))
            .map_err(sf)?
        {
            if out.len() >= limit {
                break;
            }
            out.push(dec(entry.map_err(sf)?.1.value())?);
        }
        Ok(out)
    })
}

pub fn deleted_messages(db: &Database, rid: &RoomId, after: i64, limit: usize) -> StoreResult<Vec<Trash>> {
    trash_after(db, TRASH_MESSAGES, rid.as_str(), after, limit)
}

pub fn removed_subscriptions(db: &Database, uid: &UserId, after: i64, limit: usize) -> StoreResult<Vec<Trash>> {
    trash_after(db, TRASH_SUBS, uid.as_str(), after, limit)
}

pub fn doc(db: &Database, coll: &str, id: &str) -> StoreResult<Option<serde_json::Value>> {
    read(db, |t| {
        let table = match t.open_table(DOCS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(sf(e)),
        };
        let v = table.get((coll, id)).map_err(sf)?;
        v.map(|v| dec(v.value())).transpose()
    })
}
