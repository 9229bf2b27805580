//! Chat operations shared by both front doors: the DDP methods (`gateway::methods`) and the REST
//! API (`gateway::rest`). Each front door parses its own wire format and renders [`AppError`] in
//! its own envelope; what a login, a room or a message *is*, who may read it, and how it reaches
//! the store live here (who may *write* what lives in [`super::rules`]), so both APIs behave the
//! same. Runs on the caller's shard; every store read is awaited off the event loop.

use crate::auth::{self, Verified};
use crate::chat::presence::{PresenceRead, Status};
use crate::ids::{now_ms, random_secret, MessageId, RoomId, UserId};
use serde_json::Value;

use super::error::{AppError, AppResult};
use super::login_guard::LoginGuard;
use crate::chat::hub::Hub;
use crate::config::Config;
use crate::protocol::wire::{self, Dates};
use crate::store::{
    HistoryQuery, LoginToken, Message, Room, RoomRole, RoomSettings, RoomType, StoreError, User, WriteOp, WriteOutcome,
    WriteOutput,
};

/// Most public channels a room search looks through, and how many it reads at a time.
const MAX_CHANNEL_SCAN: usize = 20_000;
const CHANNEL_SCAN_PAGE: usize = 500;

/// Most removals one listing reports (a user leaves rooms rarely; a cap keeps the answer bounded).
const MAX_REMOVALS: usize = 10_000;

/// What changed in a room since a time (see [`Ops::room_changes`]): messages sent or edited,
/// oldest change first, and messages deleted, oldest first (each empty unless asked for).
#[derive(Default)]
pub struct RoomChanges {
    pub updated: Vec<Message>,
    pub deleted: Vec<crate::store::Trash>,
}

/// A message sent as a thread reply: the thread's first message, and whether the reply is
/// also shown in the room (`tshow`).
#[derive(Clone, Copy)]
pub struct ThreadReply<'a> {
    pub tmid: &'a str,
    pub tshow: bool,
}

impl<'a> ThreadReply<'a> {
    pub fn of(tmid: Option<&'a str>, tshow: bool) -> Option<Self> {
        tmid.map(|tmid| Self { tmid, tshow })
    }
}

/// How a password login names its user.
pub enum LoginName<'a> {
    Username(&'a str),
    Email(&'a str),
}

/// A successful login: the user, the raw token (only ever sent to this client) and its hash.
pub struct LoggedIn {
    pub user: User,
    pub token: String,
    pub token_hash: String,
    pub expires: i64,
    /// "password" or "resume".
    pub kind: &'static str,
}

/// What the operations need of the shard they run on: its hub (store handle, sessions,
/// presence), the configuration and the host's login guard.
#[derive(Clone, Copy)]
pub struct Ops<'a> {
    pub hub: &'a Hub,
    pub config: &'a Config,
    pub login_guard: &'a LoginGuard,
}

impl<'a> Ops<'a> {
    pub fn new(hub: &'a Hub, config: &'a Config, login_guard: &'a LoginGuard) -> Self {
        Self {
            hub,
            config,
            login_guard,
        }
    }

    /// A durable write whose change this shard has also applied, so the caller's next request on
    /// this shard sees its effect.
    pub async fn write(&self, method: &str, op: WriteOp) -> AppResult<WriteOutcome> {
        let outcome = self
            .hub
            .store
            .write(op)
            .await
            .map_err(|e| AppError::from(e).with_method(method))?;
        self.hub.wait_applied(outcome.mark).await;
        Ok(outcome)
    }

    pub async fn room(&self, rid: &RoomId) -> AppResult<Option<Room>> {
        Ok(self.hub.store.room(rid).await?)
    }

    /// A room by id, or else by name.
    pub async fn room_by_name_or_id(&self, name_or_id: &str) -> AppResult<Option<Room>> {
        match self.room(&RoomId::from(name_or_id)).await? {
            Some(r) => Ok(Some(r)),
            None => Ok(self.hub.store.room_by_name(name_or_id).await?),
        }
    }

    /// The room as `user` may see it: a public channel, or a room they belong to. `None` for a
    /// room that does not exist *and* for one they may not see, so no answer tells them apart.
    pub async fn visible_room(&self, user: &User, room: Option<Room>) -> AppResult<Option<Room>> {
        match room {
            Some(room) if self.can_read(user, &room).await? => Ok(Some(room)),
            _ => Ok(None),
        }
    }

    /// Whether the user belongs to the room. The shard's index is checked first; on a miss the
    /// store decides, because a membership another user's write just created may not have reached
    /// this shard yet (anything later in that room reaches it after the membership does).
    pub async fn member_of(&self, user: &User, rid: &RoomId) -> AppResult<bool> {
        if self.hub.is_member(&user.id, rid) {
            return Ok(true);
        }
        Ok(self.hub.store.subscription(&user.id, rid).await?.is_some())
    }

    /// Whether the user may read the room's history: members, or anyone for public channels.
    pub async fn can_read(&self, user: &User, room: &Room) -> AppResult<bool> {
        Ok(room.t == RoomType::Channel || self.member_of(user, &room.id).await?)
    }

    /// Logs in with a password; after too many failures for the login name or the client's
    /// address, refuses with `error-login-blocked-for-user` / `-ip` before looking.
    pub async fn login_password(
        &self,
        name: LoginName<'_>,
        digest: String,
        ip: Option<std::net::IpAddr>,
    ) -> AppResult<LoggedIn> {
        let guard = &self.login_guard;
        let login = match name {
            LoginName::Username(u) | LoginName::Email(u) => u.to_owned(),
        };
        if let Some(blocked) = guard.blocked(&login, ip, std::time::Instant::now()) {
            tracing::debug!(login, ip = ?ip, "login refused: blocked after failed attempts");
            return Err(AppError::client(blocked.code(), blocked.reason()).with_method("login"));
        }
        let result = self.check_password(name, digest).await;
        match &result {
            Ok(_) => guard.succeeded(&login),
            Err(AppError::Client {
                code: crate::app::error::Code::Number(403),
                ..
            }) => guard.failed(&login, ip, std::time::Instant::now()),
            Err(_) => {}
        }
        result
    }

    async fn check_password(&self, name: LoginName<'_>, digest: String) -> AppResult<LoggedIn> {
        let store = &self.hub.store;
        let user = match name {
            LoginName::Username(u) => store.user_by_username(u).await,
            LoginName::Email(e) => store.user_by_email(e).await,
        }
        .map_err(|e| AppError::from(e).with_method("login"))?;
        let Some(user) = user else {
            return Err(AppError::status(403, "User not found"));
        };
        let stored = user.password_hash.clone();
        let verified = glommio::executor()
            .spawn_blocking(move || auth::verify_password(&stored, &digest))
            .await;
        let rehash = match verified {
            Verified::No => return Err(AppError::status(403, "Incorrect password")),
            Verified::Yes => None,
            Verified::YesRehash(new_hash) => Some(new_hash),
        };
        if !user.active {
            return Err(AppError::client("error-user-is-not-activated", "User is not activated").with_method("login"));
        }
        if let Some(password_hash) = rehash {
            // An imported (bcrypt) hash: replaced by Argon2id now that the password is known.
            self.write(
                "login",
                WriteOp::SetPasswordHash {
                    uid: user.id.clone(),
                    expected: user.password_hash.clone(),
                    password_hash,
                },
            )
            .await?;
        }
        let now = now_ms();
        let token = random_secret();
        let token_hash = auth::token_hash(&token);
        let expires = now + (self.config.accounts.token_ttl_days as i64) * 86_400_000;
        let record = LoginToken {
            uid: user.id.clone(),
            created_at: now,
            expires_at: expires,
        };
        self.write(
            "login",
            WriteOp::CreateToken {
                token_hash: token_hash.clone(),
                token: record,
            },
        )
        .await?;
        Ok(LoggedIn {
            user,
            token,
            token_hash,
            expires,
            kind: "password",
        })
    }

    pub async fn login_resume(&self, token: &str) -> AppResult<LoggedIn> {
        let token_hash = auth::token_hash(token);
        match self
            .hub
            .store
            .user_by_token_hash(&token_hash, now_ms())
            .await
            .map_err(|e| AppError::from(e).with_method("login"))?
        {
            Some((user, t)) if user.active => Ok(LoggedIn {
                user,
                token: token.to_owned(),
                token_hash,
                expires: t.expires_at,
                kind: "resume",
            }),
            _ => Err(AppError::status(
                403,
                "You've been logged out by the server. Please log in again.",
            )),
        }
    }

    pub async fn logout(&self, token_hash: String) -> AppResult<()> {
        self.write("logout", WriteOp::DeleteToken { token_hash }).await?;
        Ok(())
    }

    pub async fn register(
        &self,
        method: &str,
        username: &str,
        pass: &str,
        email: Option<&str>,
        name: Option<&str>,
    ) -> AppResult<User> {
        if !self.config.accounts.registration_open {
            return Err(AppError::client(
                "error-user-registration-disabled",
                "User registration is disabled",
            ));
        }
        if pass.is_empty() {
            return Err(AppError::client("error-invalid-password", "Invalid password"));
        }
        let digest = auth::sha256_hex(pass);
        let hash = glommio::executor()
            .spawn_blocking(move || auth::hash_password_digest(&digest))
            .await
            .map_err(|e| AppError::internal(format!("password hashing failed: {e}")))?;
        let op = WriteOp::CreateUser {
            username: username.to_owned(),
            name: name.unwrap_or(username).to_owned(),
            email: email.map(str::to_owned),
            password_hash: hash,
        };
        match self.write(method, op).await?.output {
            WriteOutput::User(u) => Ok(*u),
            _ => Err(AppError::internal("unexpected write output")),
        }
    }

    pub async fn create_room(
        &self,
        method: &str,
        user: &User,
        t: RoomType,
        name: &str,
        members: Vec<String>,
        read_only: bool,
    ) -> AppResult<Room> {
        let op = WriteOp::CreateRoom {
            t,
            name: name.to_owned(),
            creator: user.id.clone(),
            members,
            read_only,
        };
        match self.write(method, op).await?.output {
            WriteOutput::Room(room, _) => Ok(*room),
            _ => Err(AppError::internal("unexpected write output")),
        }
    }

    /// A direct conversation with `others` (usernames; several make a group conversation).
    pub async fn create_direct(&self, method: &str, user: &User, others: &[&str]) -> AppResult<Room> {
        let op = WriteOp::CreateDirect {
            creator: user.id.clone(),
            usernames: others.iter().map(|o| (*o).to_owned()).collect(),
        };
        match self.write(method, op).await?.output {
            WriteOutput::Room(room, _) => Ok(*room),
            _ => Err(AppError::internal("unexpected write output")),
        }
    }

    pub async fn join(&self, method: &str, user: &User, rid: RoomId) -> AppResult<()> {
        self.write(
            method,
            WriteOp::Join {
                uid: user.id.clone(),
                rid,
            },
        )
        .await?;
        Ok(())
    }

    pub async fn leave(&self, method: &str, user: &User, rid: RoomId) -> AppResult<()> {
        self.write(
            method,
            WriteOp::Leave {
                uid: user.id.clone(),
                rid,
                trash_ttl_ms: self.config.sync.retention_ms(),
            },
        )
        .await?;
        Ok(())
    }

    /// Removes `target` from a room (the caller needs `remove-user` there).
    pub async fn remove_member(&self, method: &str, user: &User, rid: &RoomId, target: &UserId) -> AppResult<()> {
        let op = WriteOp::RemoveMember {
            uid: user.id.clone(),
            rid: rid.clone(),
            target: target.clone(),
            trash_ttl_ms: self.config.sync.retention_ms(),
        };
        self.write(method, op).await?;
        Ok(())
    }

    /// Gives or takes a member's room role.
    pub async fn set_room_role(
        &self,
        method: &str,
        user: &User,
        rid: &RoomId,
        target: &UserId,
        role: RoomRole,
        on: bool,
    ) -> AppResult<()> {
        let op = WriteOp::SetRoomRole {
            uid: user.id.clone(),
            rid: rid.clone(),
            target: target.clone(),
            role,
            on,
        };
        self.write(method, op).await?;
        Ok(())
    }

    /// Changes a room's settings.
    pub async fn save_room_settings(
        &self,
        method: &str,
        user: &User,
        rid: &RoomId,
        settings: RoomSettings,
    ) -> AppResult<()> {
        let op = WriteOp::SaveRoomSettings {
            uid: user.id.clone(),
            rid: rid.clone(),
            settings,
        };
        self.write(method, op).await?;
        Ok(())
    }

    /// Shows or hides a room in the user's list.
    pub async fn set_open(&self, method: &str, user: &User, rid: &RoomId, open: bool) -> AppResult<()> {
        let op = WriteOp::SetOpen {
            uid: user.id.clone(),
            rid: rid.clone(),
            open,
        };
        self.write(method, op).await?;
        Ok(())
    }

    fn check_size(&self, method: &str, text: &str) -> AppResult<()> {
        if text.chars().count() > self.config.limits.max_message_chars {
            return Err(
                AppError::client("error-message-size-exceeded", "Message size exceeds the allowed limit")
                    .with_method(method),
            );
        }
        Ok(())
    }

    /// Sends a message (a thread reply with `tmid`, also shown in the room with `tshow`).
    /// `Ok(Err(existing))`: a re-send of an id that already exists (nothing
    /// written; the stored message is returned).
    pub async fn send_message(
        &self,
        method: &str,
        user: &User,
        rid: RoomId,
        id: Option<&str>,
        text: &str,
        thread: Option<ThreadReply<'_>>,
    ) -> Result<Result<Message, Message>, AppError> {
        self.check_size(method, text)?;
        if id.is_some_and(|i| i.is_empty() || i.len() > 128) {
            return Err(AppError::invalid("_id must be 1 to 128 characters"));
        }
        let op = WriteOp::SendMessage {
            uid: user.id.clone(),
            rid,
            id: id.map(MessageId::from),
            msg: text.to_owned(),
            tmid: thread.map(|t| t.tmid.to_owned()),
            tshow: thread.is_some_and(|t| t.tshow),
        };
        match self.write(method, op).await?.output {
            WriteOutput::Message(m) => Ok(Ok(*m)),
            WriteOutput::Duplicate(m) => Ok(Err(*m)),
            _ => Err(AppError::internal("unexpected write output")),
        }
    }

    /// Edits a message; `rid`, when given, must be the message's room.
    pub async fn update_message(
        &self,
        method: &str,
        user: &User,
        mid: &str,
        rid: Option<&str>,
        text: &str,
    ) -> AppResult<Message> {
        self.check_size(method, text)?;
        let op = WriteOp::UpdateMessage {
            uid: user.id.clone(),
            mid: MessageId::from(mid),
            rid: rid.map(RoomId::from),
            msg: text.to_owned(),
        };
        match self.write(method, op).await?.output {
            WriteOutput::Message(m) => Ok(*m),
            _ => Err(AppError::internal("unexpected write output")),
        }
    }

    /// Deletes a message; `rid`, when given, must be the message's room.
    pub async fn delete_message(&self, method: &str, user: &User, mid: &str, rid: Option<&str>) -> AppResult<Message> {
        let op = WriteOp::DeleteMessage {
            uid: user.id.clone(),
            mid: MessageId::from(mid),
            rid: rid.map(RoomId::from),
            trash_ttl_ms: self.config.sync.retention_ms(),
        };
        match self.write(method, op).await?.output {
            WriteOutput::Message(m) => Ok(*m),
            _ => Err(AppError::internal("unexpected write output")),
        }
    }

    pub async fn mark_read(&self, method: &str, user: &User, rid: RoomId) -> AppResult<()> {
        self.write(
            method,
            WriteOp::MarkRead {
                uid: user.id.clone(),
                rid,
            },
        )
        .await?;
        Ok(())
    }

    /// Marks a room unread from message `mid` on, or as a whole (`rid` only).
    pub async fn mark_unread(
        &self,
        method: &str,
        user: &User,
        rid: Option<RoomId>,
        mid: Option<MessageId>,
    ) -> AppResult<()> {
        self.write(
            method,
            WriteOp::MarkUnread {
                uid: user.id.clone(),
                rid,
                mid,
            },
        )
        .await?;
        Ok(())
    }

    /// A page of a room's history, newest first, as a JSON array rendered on a reader thread
    /// (reading and rendering a page never runs on this shard). `Ok(None)`: the room does not
    /// exist, is not of `kind` (when given), or the user may not read it (indistinguishable).
    pub async fn history_json(
        &self,
        method: &str,
        user: &User,
        rid: &RoomId,
        kind: Option<RoomType>,
        q: &HistoryQuery,
        d: Dates,
    ) -> AppResult<Option<String>> {
        let room = self.room(rid).await?;
        let Some(room) = self.visible_room(user, room).await? else {
            return Ok(None);
        };
        // A room of another kind than the door names is answered as a missing one, before any
        // page is read.
        if kind.is_some_and(|k| k != room.t) {
            return Ok(None);
        }
        let (rid, q) = (rid.clone(), q.clone());
        let json = self
            .hub
            .store
            .read(move |b| {
                let (messages, _) = b.history(&rid, &q)?;
                let list: Vec<wire::WireMessage> = messages.iter().map(|m| wire::WireMessage(m, d)).collect();
                serde_json::to_string(&list).map_err(|e| StoreError::Internal(e.to_string()))
            })
            .await
            .map_err(|e| AppError::from(e).with_method(method))?;
        Ok(Some(json))
    }

    /// The user's rooms (`rooms: true`) or subscriptions updated after `since` (all when
    /// `None`), and those removed since then (none when `None`: `{_id, _deletedAt}` of each
    /// subscription, or of each room the user left and is no longer in), as two JSON arrays
    /// rendered on a reader thread: a user may belong to tens of thousands of rooms, and neither
    /// the scan nor the rendering may stall this shard.
    pub async fn listing_json(
        &self,
        method: &str,
        user: &User,
        rooms: bool,
        since: Option<i64>,
        d: Dates,
    ) -> AppResult<(String, String)> {
        let uid = user.id.clone();
        self.hub
            .store
            .read(move |b| {
                let subs = b.subscriptions_of(&uid)?;
                let items: Vec<Value> = subs
                    .iter()
                    .filter(|(s, r)| {
                        let changed = if rooms {
                            r.updated_at
                        } else {
                            s.updated_at.max(r.updated_at)
                        };
                        since.is_none_or(|t| changed > t)
                    })
                    .map(|(s, r)| {
                        if rooms {
                            wire::room(r, d)
                        } else {
                            wire::subscription(s, r, d)
                        }
                    })
                    .collect();
                let removed: Vec<Value> = match since {
                    None => Vec::new(),
                    Some(t) => {
                        let now = now_ms();
                        let gone = b.removed_subscriptions(&uid, t, MAX_REMOVALS)?;
                        // Rooms: each left room once, unless the user is back in it.
                        let mut seen: std::collections::HashSet<&RoomId> = subs.iter().map(|(s, _)| &s.rid).collect();
                        gone.iter()
                            .filter(|g| g.expires_at > now && (!rooms || seen.insert(&g.rid)))
                            .map(|g| {
                                let id = if rooms { g.rid.as_str() } else { g.id.as_str() };
                                serde_json::json!({"_id": id, "_deletedAt": d.date(g.deleted_at)})
                            })
                            .collect()
                    }
                };
                let enc = |v: &Vec<Value>| serde_json::to_string(v).map_err(|e| StoreError::Internal(e.to_string()));
                Ok((enc(&items)?, enc(&removed)?))
            })
            .await
            .map_err(|e| AppError::from(e).with_method(method))
    }

    /// What changed in a room the user may read since `after` (ms): the messages sent or
    /// changed after it (when `updated`) and those deleted after it (when `deleted`), at most
    /// `limit` of each, in one read. `None`: the room is hidden or missing (indistinguishably).
    /// Deletion records past their retention are left out.
    #[allow(clippy::too_many_arguments)]
    pub async fn room_changes(
        &self,
        method: &str,
        user: &User,
        rid: &RoomId,
        after: i64,
        limit: usize,
        updated: bool,
        deleted: bool,
    ) -> AppResult<Option<RoomChanges>> {
        let room = self.room(rid).await?;
        if self.visible_room(user, room).await?.is_none() {
            return Ok(None);
        }
        let rid = rid.clone();
        let now = now_ms();
        self.hub
            .store
            .read(move |b| {
                let mut changes = RoomChanges::default();
                if updated {
                    changes.updated = b.messages_updated(&rid, after, limit)?;
                }
                if deleted {
                    changes.deleted = b.deleted_messages(&rid, after, limit)?;
                    changes.deleted.retain(|t| t.expires_at > now);
                }
                Ok(Some(changes))
            })
            .await
            .map_err(|e| AppError::from(e).with_method(method))
    }

    /// Messages of a room the user may read (of type `kind`) that `keep` selects, newest first:
    /// one page and how many there are. The room is read newest first on a reader thread, at most
    /// [`super::actions::MAX_SCAN`] messages (older ones are not searched). `None`: hidden or missing.
    #[allow(clippy::too_many_arguments)]
    pub async fn messages_where(
        &self,
        method: &str,
        user: &User,
        rid: &RoomId,
        kind: RoomType,
        keep: impl Fn(&Message) -> bool + Send + 'static,
        offset: usize,
        count: usize,
    ) -> AppResult<Option<(Vec<Message>, usize)>> {
        let room = self.room(rid).await?;
        match self.visible_room(user, room).await? {
            Some(r) if r.t == kind => {}
            _ => return Ok(None),
        }
        let rid = rid.clone();
        self.hub
            .store
            .read(move |b| {
                let mut page = Vec::new();
                let mut total = 0usize;
                super::actions::walk_room(b, &rid, None, |m| {
                    if keep(&m) {
                        if total >= offset && page.len() < count {
                            page.push(m);
                        }
                        total += 1;
                    }
                    true
                })?;
                Ok(Some((page, total)))
            })
            .await
            .map_err(|e| AppError::from(e).with_method(method))
    }

    /// A stored small document.
    pub async fn doc(&self, coll: &'static str, id: &str) -> AppResult<Option<Value>> {
        Ok(self.hub.store.doc(coll, id).await?)
    }

    /// Stores a small document (see [`WriteOp::PutDoc`]); the document now stored.
    pub async fn put_doc(
        &self,
        method: &str,
        coll: &'static str,
        id: String,
        doc: Value,
        only_if_absent: bool,
        owner: Option<&User>,
    ) -> AppResult<Value> {
        let op = WriteOp::PutDoc {
            coll,
            id,
            doc,
            only_if_absent,
            owner: owner.map(|u| u.id.clone()),
        };
        match self.write(method, op).await?.output {
            WriteOutput::Doc(d) => Ok(d),
            _ => Err(AppError::internal("unexpected write output")),
        }
    }

    /// Deletes a small document (`owner`: only theirs); whether there was one.
    pub async fn delete_doc(
        &self,
        method: &str,
        coll: &'static str,
        id: String,
        owner: Option<&User>,
    ) -> AppResult<bool> {
        let op = WriteOp::DeleteDoc {
            coll,
            id,
            owner: owner.map(|u| u.id.clone()),
        };
        match self.write(method, op).await?.output {
            WriteOutput::Doc(d) => Ok(!d.is_null()),
            _ => Err(AppError::internal("unexpected write output")),
        }
    }

    /// One page of rooms chosen by `pick` among the user's subscriptions (`Some(uid)`) or among
    /// every public channel (`None`), sorted by name, rendered as a JSON array; with the page's
    /// length and how many there are in all. Runs on a reader thread.
    pub async fn room_page(
        &self,
        method: &str,
        of: Option<&User>,
        pick: fn(&Room) -> bool,
        offset: usize,
        count: usize,
        d: Dates,
    ) -> AppResult<(String, usize, usize)> {
        let uid = of.map(|u| u.id.clone());
        self.hub
            .store
            .read(move |b| {
                let (page, total): (Vec<Room>, usize) = match &uid {
                    Some(uid) => {
                        let mut rooms: Vec<Room> = b.subscriptions_of(uid)?.into_iter().map(|(_, r)| r).collect();
                        rooms.retain(pick);
                        rooms.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.as_str().cmp(b.id.as_str())));
                        let total = rooms.len();
                        (rooms.into_iter().skip(offset).take(count).collect(), total)
                    }
                    // Every public channel: the store pages through its channel index.
                    None => {
                        let (page, total) = b.channels_page(offset, count)?;
                        (page, usize::try_from(total).unwrap_or(usize::MAX))
                    }
                };
                let list: Vec<Value> = page.iter().map(|r| wire::room(r, d)).collect();
                let json = serde_json::to_string(&list).map_err(|e| StoreError::Internal(e.to_string()))?;
                Ok((json, page.len(), total))
            })
            .await
            .map_err(|e| AppError::from(e).with_method(method))
    }

    /// Named rooms the user may see (their own channels and groups, and every public channel)
    /// whose name contains `term` (case-insensitively), by name, at most `limit`. Runs on a
    /// reader thread; at most [`MAX_CHANNEL_SCAN`] public channels are looked through.
    pub async fn rooms_named(&self, user: &User, term: &str, limit: usize) -> AppResult<Vec<Room>> {
        let uid = user.id.clone();
        let term = term.to_lowercase();
        Ok(self
            .hub
            .store
            .read(move |b| {
                let hit = |r: &Room| {
                    r.t != RoomType::Direct
                        && [&r.name, &r.fname]
                            .iter()
                            .any(|n| n.as_deref().is_some_and(|n| n.to_lowercase().contains(&term)))
                };
                let mut found: Vec<Room> = b
                    .subscriptions_of(&uid)?
                    .into_iter()
                    .map(|(_, r)| r)
                    .filter(|r| hit(r))
                    .collect();
                let mut offset = 0;
                while offset < MAX_CHANNEL_SCAN {
                    let (page, total) = b.channels_page(offset, CHANNEL_SCAN_PAGE)?;
                    if page.is_empty() {
                        break;
                    }
                    offset += page.len();
                    found.extend(page.into_iter().filter(|r| hit(r)));
                    if offset as u64 >= total {
                        break;
                    }
                }
                found.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.as_str().cmp(b.id.as_str())));
                found.dedup_by(|a, b| a.id == b.id);
                found.truncate(limit);
                Ok(found)
            })
            .await?)
    }

    /// Sets the user's chosen (persisted) status and, when given, its text. `invisible` is
    /// stored as `offline`: connected, but shown offline.
    pub async fn set_status(
        &self,
        method: &str,
        user: &User,
        status: Option<&str>,
        text: Option<&str>,
    ) -> AppResult<()> {
        let status = match status {
            None => user.status.clone(),
            Some(s) => match Status::parse(s) {
                Some(st) => st.as_str().to_owned(),
                None => {
                    return Err(AppError::client(
                        "error-invalid-status",
                        "Valid status types include online, away, offline, and busy.",
                    )
                    .with_method(method))
                }
            },
        };
        if text.is_some_and(|t| t.chars().count() > 120) {
            return Err(
                AppError::client("error-status-text-too-long", "Status text is limited to 120 characters")
                    .with_method(method),
            );
        }
        self.write(
            method,
            WriteOp::SetStatus {
                uid: user.id.clone(),
                status,
                status_text: text.map(str::to_owned),
            },
        )
        .await?;
        Ok(())
    }

    /// What others see of `user`'s presence now: (status, connection status, status text).
    pub async fn presence(&self, user: &User) -> AppResult<PresenceRead> {
        Ok(self.hub.query_presence(vec![user.id.clone()]).await?.pop().unwrap_or((
            Status::Offline,
            Status::Offline,
            String::new(),
        )))
    }
}
