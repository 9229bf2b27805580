//! [`Work`]: what one MongoDB transaction has read and written so far, held in memory until the
//! transaction flushes it (pure: no I/O, unit-tested without a server).
//!
//! The chat rules read and write one record at a time. Sent to MongoDB as they come, a group of
//! 64 messages costs some 550 sequential round trips inside one transaction. Here, reads by key
//! are answered from documents fetched once per group (or fetched on first use and kept), and
//! writes only change the kept document: at the end each touched document is written once, in
//! its final state, with one `update` (replacements, upserting) and one `delete` command per
//! collection and one `insert` of the group's change records. Rooms go first, so a write conflict
//! with another host fails the transaction before anything else is sent.
//!
//! A query that is not by key (members of a room, a username, the newest message) first flushes
//! the collection it reads, so the server answers it with this transaction's writes applied.
//! Runs on the MongoDB writer thread.

use std::collections::HashMap;

use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteConcernError, WriteError, WriteFailure};

use super::schema::{CHANGES, ROOMS, SUBSCRIPTIONS};

/// Statements per write command are cut so that one command stays well under MongoDB's 16 MiB
/// limit on a command document.
pub const COMMAND_BYTES: usize = 8 * 1024 * 1024;

/// One document as this transaction sees it.
#[derive(Debug, Clone)]
struct Slot {
    /// `None`: the document does not exist (or this transaction deleted it).
    doc: Option<Document>,
    /// Changed since the last flush.
    dirty: bool,
}

/// A write to a document whose current state is needed but unknown: load it first.
#[derive(Debug, PartialEq)]
pub struct NeedLoad;

#[derive(Debug, Default)]
pub struct Work {
    docs: HashMap<(&'static str, String), Slot>,
    /// Subscriptions by `(uid, rid)`: the `_id` holding it, or `None` when there is none.
    subs: HashMap<(String, String), Option<String>>,
    changes: Vec<Document>,
}

/// `(uid, rid)` of a stored subscription document.
fn sub_key_of(d: &Document) -> Option<(String, String)> {
    let uid = d.get_document("u").ok()?.get_str("id").ok()?;
    let rid = d.get_str("rid").ok()?;
    Some((uid.to_owned(), rid.to_owned()))
}

fn id_of(d: &Document) -> Option<String> {
    match d.get("_id") {
        Some(Bson::String(s)) => Some(s.clone()),
        _ => None,
    }
}

impl Work {
    /// The document `coll`/`id` as this transaction sees it: `None` when it was never read
    /// (ask the server), `Some(None)` when it does not exist.
    pub fn get(&self, coll: &'static str, id: &str) -> Option<Option<&Document>> {
        self.docs.get(&(coll, id.to_owned())).map(|s| s.doc.as_ref())
    }

    /// Records what the server holds for `coll`/`id` (never over this transaction's own writes).
    pub fn loaded(&mut self, coll: &'static str, id: &str, doc: Option<Document>) {
        let key = (coll, id.to_owned());
        if self.docs.get(&key).is_some_and(|s| s.dirty) {
            return;
        }
        if coll == SUBSCRIPTIONS {
            if let Some(k) = doc.as_ref().and_then(sub_key_of) {
                self.subs.insert(k, Some(id.to_owned()));
            }
        }
        self.docs.insert(key, Slot { doc, dirty: false });
    }

    /// The subscription of `uid` to `rid`: `None` when never read, `Some(None)` when there is none.
    pub fn sub(&self, uid: &str, rid: &str) -> Option<Option<&Document>> {
        match self.subs.get(&(uid.to_owned(), rid.to_owned()))? {
            None => Some(None),
            Some(id) => self.get(SUBSCRIPTIONS, id),
        }
    }

    /// Records what the server holds for the subscription of `uid` to `rid`.
    pub fn sub_loaded(&mut self, uid: &str, rid: &str, doc: Option<Document>) {
        let key = (uid.to_owned(), rid.to_owned());
        if let Some(Some(id)) = self.subs.get(&key) {
            if self.docs.get(&(SUBSCRIPTIONS, id.clone())).is_some_and(|s| s.dirty) {
                return;
            }
        }
        match doc.as_ref().and_then(id_of) {
            Some(id) => self.loaded(SUBSCRIPTIONS, &id, doc),
            None => {
                self.subs.insert(key, None);
            }
        }
    }

    /// Replaces (or creates) the document `id` of `coll` with `doc`.
    pub fn put(&mut self, coll: &'static str, id: &str, mut doc: Document) {
        doc.insert("_id", id);
        if coll == SUBSCRIPTIONS {
            if let Some(k) = sub_key_of(&doc) {
                self.subs.insert(k, Some(id.to_owned()));
            }
        }
        self.docs.insert(
            (coll, id.to_owned()),
            Slot {
                doc: Some(doc),
                dirty: true,
            },
        );
    }

    /// `$set` of `fields`, and of `on_insert` only when the document is new (index keys that
    /// never change). Needs the document's current state.
    pub fn set_fields(
        &mut self,
        coll: &'static str,
        id: &str,
        fields: Document,
        on_insert: Document,
    ) -> Result<(), NeedLoad> {
        let current = self.get(coll, id).ok_or(NeedLoad)?;
        let doc = match current {
            Some(existing) => {
                let mut d = existing.clone();
                for (k, v) in fields {
                    if k != "_id" {
                        d.insert(k, v);
                    }
                }
                d
            }
            None => {
                let mut d = on_insert;
                for (k, v) in fields {
                    d.insert(k, v);
                }
                d
            }
        };
        self.put(coll, id, doc);
        Ok(())
    }

    /// Deletes the document `id` of `coll` (nothing when it does not exist).
    pub fn delete(&mut self, coll: &'static str, id: &str) {
        if coll == SUBSCRIPTIONS {
            if let Some(k) = self.get(SUBSCRIPTIONS, id).flatten().and_then(sub_key_of) {
                self.subs.insert(k, None);
            }
        }
        self.docs.insert((coll, id.to_owned()), Slot { doc: None, dirty: true });
    }

    pub fn push_change(&mut self, doc: Document) {
        self.changes.push(doc);
    }

    /// Forgets every clean document of `coll` (after a write that bypassed this cache).
    pub fn forget(&mut self, coll: &'static str) {
        self.docs.retain(|(c, _), s| *c != coll || s.dirty);
        if coll == SUBSCRIPTIONS {
            self.subs.clear();
        }
    }

    /// Whether `coll` has writes not yet sent.
    #[cfg(test)]
    pub fn dirty(&self, coll: &str) -> bool {
        (coll == CHANGES && !self.changes.is_empty()) || self.docs.iter().any(|((c, _), s)| *c == coll && s.dirty)
    }

    /// The commands that write `coll`'s pending changes; they count as sent from here on.
    pub fn take_commands(&mut self, coll: &'static str) -> Vec<Document> {
        if coll == CHANGES {
            let docs = std::mem::take(&mut self.changes);
            return chunked(
                coll,
                "insert",
                "documents",
                docs.into_iter().map(Bson::Document).collect(),
            );
        }
        let mut ids: Vec<String> = self
            .docs
            .iter()
            .filter(|((c, _), s)| *c == coll && s.dirty)
            .map(|((_, id), _)| id.clone())
            .collect();
        // Sorted: the same group writes in the same order every time (fewer lock-order surprises).
        ids.sort_unstable();
        let mut updates = Vec::new();
        let mut deletes = Vec::new();
        for id in ids {
            let Some(slot) = self.docs.get_mut(&(coll, id.clone())) else {
                continue;
            };
            slot.dirty = false;
            match &slot.doc {
                Some(d) => updates.push(Bson::Document(doc! {"q": {"_id": &id}, "u": d.clone(), "upsert": true})),
                None => deletes.push(Bson::Document(doc! {"q": {"_id": &id}, "limit": 1})),
            }
        }
        let mut out = chunked(coll, "update", "updates", updates);
        out.extend(chunked(coll, "delete", "deletes", deletes));
        out
    }

    /// Every pending write, rooms first and change records last.
    pub fn take_all_commands(&mut self) -> Vec<Document> {
        let mut colls: Vec<&'static str> = self
            .docs
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|((c, _), _)| *c)
            .collect();
        colls.sort_unstable_by_key(|c| (*c != ROOMS, *c));
        colls.dedup();
        let mut out = Vec::new();
        for c in colls {
            out.extend(self.take_commands(c));
        }
        out.extend(self.take_commands(CHANGES));
        out
    }
}

/// `{<verb>: coll, <field>: [...], ordered: true}` commands holding `items`, cut at
/// [`COMMAND_BYTES`].
fn chunked(coll: &str, verb: &str, field: &str, items: Vec<Bson>) -> Vec<Document> {
    let mut out = Vec::new();
    let mut part = Vec::new();
    let mut bytes = 0;
    let command = |part: Vec<Bson>| doc! {verb: coll, field: part, "ordered": true};
    for item in items {
        let size = match &item {
            Bson::Document(d) => mongodb::bson::to_vec(d).map_or(0, |v| v.len()),
            _ => 0,
        };
        if !part.is_empty() && bytes + size > COMMAND_BYTES {
            out.push(command(std::mem::take(&mut part)));
            bytes = 0;
        }
        bytes += size;
        part.push(item);
    }
    if !part.is_empty() {
        out.push(command(part));
    }
    out
}

/// A write command's reply as the driver's error when it reports failed writes (the server
/// answers `ok: 1` with `writeErrors`; `ok: 0` replies are errors in the driver already), so the
/// writer decides on codes exactly as for the driver's own write calls.
pub fn check_reply(reply: &Document) -> Result<(), mongodb::error::Error> {
    if let Ok(errors) = reply.get_array("writeErrors") {
        if let Some(Bson::Document(first)) = errors.first() {
            let e: WriteError = mongodb::bson::from_document(first.clone())
                .map_err(|e| mongodb::error::Error::custom(format!("an unreadable write error: {e}")))?;
            return Err(ErrorKind::Write(WriteFailure::WriteError(e)).into());
        }
    }
    if let Ok(wce) = reply.get_document("writeConcernError") {
        let e: WriteConcernError = mongodb::bson::from_document(wce.clone())
            .map_err(|e| mongodb::error::Error::custom(format!("an unreadable write concern error: {e}")))?;
        return Err(ErrorKind::Write(WriteFailure::WriteConcernError(e)).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::mongo::error_code;
    use crate::store::mongo::schema::{MESSAGES, USERS};

    fn sub(id: &str, uid: &str, rid: &str, read: i64) -> Document {
        doc! {"_id": id, "u": {"id": uid}, "rid": rid, "read_seq": read}
    }

    fn statements(cmd: &Document, field: &str) -> Vec<Document> {
        cmd.get_array(field)
            .unwrap()
            .iter()
            .map(|b| b.as_document().unwrap().clone())
            .collect()
    }

    #[test]
    fn each_touched_document_is_written_once_in_its_final_state() {
        let mut w = Work::default();
        w.loaded(
            ROOMS,
            "r1",
            Some(doc! {"_id": "r1", "msgs": 1, "name_lower": "general", "old": true}),
        );
        // Two sends to one room: two `$set`s, one write.
        w.set_fields(ROOMS, "r1", doc! {"msgs": 2}, doc! {"name_lower": "x"})
            .unwrap();
        w.set_fields(ROOMS, "r1", doc! {"msgs": 3}, doc! {"name_lower": "x"})
            .unwrap();
        w.put(MESSAGES, "m1", doc! {"msg": "a"});
        w.put(MESSAGES, "m2", doc! {"msg": "b"});
        w.delete(MESSAGES, "m2");
        w.push_change(doc! {"n": 1});
        w.push_change(doc! {"n": 2});
        let cmds = w.take_all_commands();
        let verbs: Vec<(String, String)> = cmds
            .iter()
            .map(|c| {
                let (k, v) = c.iter().next().unwrap();
                (k.clone(), v.as_str().unwrap().to_owned())
            })
            .collect();
        assert_eq!(
            verbs,
            [
                ("update".into(), ROOMS.into()),
                ("update".into(), MESSAGES.into()),
                ("delete".into(), MESSAGES.into()),
                ("insert".into(), CHANGES.into()),
            ],
            "rooms first, change records last"
        );
        let room = &statements(&cmds[0], "updates")[0];
        assert_eq!(room.get_document("q").unwrap(), &doc! {"_id": "r1"});
        assert!(room.get_bool("upsert").unwrap());
        // `$set` semantics: other fields stay, on-insert keys of an existing document too.
        assert_eq!(
            room.get_document("u").unwrap(),
            &doc! {"_id": "r1", "msgs": 3, "name_lower": "general", "old": true}
        );
        assert_eq!(statements(&cmds[1], "updates").len(), 1);
        assert_eq!(
            statements(&cmds[2], "deletes")[0],
            doc! {"q": {"_id": "m2"}, "limit": 1}
        );
        assert_eq!(statements(&cmds[3], "documents").len(), 2);
        // Sent: nothing is pending any more.
        assert!(w.take_all_commands().is_empty());
        assert!(!w.dirty(ROOMS) && !w.dirty(CHANGES));
    }

    #[test]
    fn a_new_document_gets_its_on_insert_keys_and_an_unknown_one_must_be_loaded() {
        let mut w = Work::default();
        assert_eq!(
            w.set_fields(USERS, "u1", doc! {"name": "Ann"}, doc! {"username_lower": "ann"}),
            Err(NeedLoad)
        );
        w.loaded(USERS, "u1", None);
        w.set_fields(USERS, "u1", doc! {"name": "Ann"}, doc! {"username_lower": "ann"})
            .unwrap();
        assert_eq!(
            w.get(USERS, "u1").unwrap().unwrap(),
            &doc! {"username_lower": "ann", "name": "Ann", "_id": "u1"}
        );
        // A later server answer does not overwrite this transaction's write.
        w.loaded(USERS, "u1", None);
        assert!(w.get(USERS, "u1").unwrap().is_some());
    }

    #[test]
    fn subscriptions_are_found_by_user_and_room_through_their_writes() {
        let mut w = Work::default();
        assert_eq!(w.sub("u1", "r1"), None, "never read");
        w.sub_loaded("u1", "r1", None);
        assert_eq!(w.sub("u1", "r1"), Some(None));
        w.put(SUBSCRIPTIONS, "s1", sub("s1", "u1", "r1", 0));
        assert_eq!(w.sub("u1", "r1").unwrap().unwrap().get_i64("read_seq").unwrap(), 0);
        w.sub_loaded("u2", "r1", Some(sub("s2", "u2", "r1", 4)));
        assert_eq!(
            w.get(SUBSCRIPTIONS, "s2")
                .unwrap()
                .unwrap()
                .get_i64("read_seq")
                .unwrap(),
            4
        );
        w.delete(SUBSCRIPTIONS, "s2");
        assert_eq!(w.sub("u2", "r1"), Some(None));
        // A stale answer for a subscription written here is ignored.
        w.sub_loaded("u1", "r1", None);
        assert!(w.sub("u1", "r1").unwrap().is_some());
        let cmds = w.take_commands(SUBSCRIPTIONS);
        assert_eq!(cmds.len(), 2);
        w.forget(SUBSCRIPTIONS);
        assert_eq!(w.sub("u1", "r1"), None, "forgotten: read again");
    }

    #[test]
    fn large_groups_are_cut_into_commands_under_the_size_limit() {
        let mut w = Work::default();
        let big = "x".repeat(1024 * 1024);
        for i in 0..20 {
            w.put(MESSAGES, &format!("m{i:02}"), doc! {"msg": &big});
        }
        let cmds = w.take_commands(MESSAGES);
        assert!(cmds.len() >= 3, "{} commands", cmds.len());
        let total: usize = cmds.iter().map(|c| statements(c, "updates").len()).sum();
        assert_eq!(total, 20);
        for c in &cmds {
            assert!(mongodb::bson::to_vec(c).unwrap().len() < 16 * 1024 * 1024);
        }
    }

    #[test]
    fn write_errors_in_a_reply_become_the_drivers_errors_with_their_codes() {
        assert!(check_reply(&doc! {"ok": 1, "n": 3, "nModified": 2}).is_ok());
        let dup = check_reply(&doc! {"ok": 1, "n": 0, "writeErrors": [
            {"index": 0, "code": 11000, "errmsg": "E11000 duplicate key error"}
        ]})
        .unwrap_err();
        assert_eq!(error_code(&dup), Some(11000));
        let wce = check_reply(
            &doc! {"ok": 1, "writeConcernError": {"code": 64, "errmsg": "waiting for replication timed out"}},
        )
        .unwrap_err();
        assert_eq!(error_code(&wce), Some(64));
    }
}
