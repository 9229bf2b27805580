//! Chat operations shared by both front doors: the DDP methods (`methods`) and the REST API
//! (`rest`). Each front door parses its own wire format and renders its own envelope; what a
//! login, a room or a message *is*, who may touch it, and how it reaches the store live here, so
//! both APIs behave the same. Runs on the caller's shard.

use crate::auth;
use crate::chat::presence::{PresenceRead, Status};
use crate::ids::{now_ms, random_secret, MessageId, RoomId};
use serde_json::Value;

use crate::protocol::ddp::MeteorError;
use crate::protocol::wire::{self, Dates};
use crate::store::{
    HistoryQuery, LoginToken, Message, Room, RoomType, StoreError, Subscription, User, WriteOp, WriteOutcome,
    WriteOutput,
};

use super::ShardCtx;

pub fn store_err(method: &str, e: StoreError) -> MeteorError {
    match e {
        StoreError::Rejected { code, reason } => MeteorError::new(code, reason).with_method(method),
        StoreError::Internal(msg) => {
            tracing::error!(method, error = %msg, "store failure");
            MeteorError::internal()
        }
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

pub struct Ops<'a> {
    pub ctx: &'a ShardCtx,
}

impl<'a> Ops<'a> {
    pub fn new(ctx: &'a ShardCtx) -> Self {
        Self { ctx }
    }

    /// A durable write whose change this shard has also applied, so the caller's next request on
    /// this shard sees its effect.
    pub async fn write(&self, method: &str, op: WriteOp) -> Result<WriteOutcome, MeteorError> {
        let outcome = self.ctx.hub.store.write(op).await.map_err(|e| store_err(method, e))?;
        self.ctx.hub.wait_applied(outcome.seq).await;
        Ok(outcome)
    }

    pub fn room(&self, rid: &RoomId) -> Result<Option<Room>, MeteorError> {
        self.ctx.hub.store.room(rid).map_err(|e| store_err("room", e))
    }

    /// A room by id, or else by name.
    pub fn room_by_name_or_id(&self, name_or_id: &str) -> Result<Option<Room>, MeteorError> {
        match self.room(&RoomId::from(name_or_id))? {
            Some(r) => Ok(Some(r)),
            None => self
                .ctx
                .hub
                .store
                .room_by_name(name_or_id)
                .map_err(|e| store_err("room", e)),
        }
    }

    /// Whether the user belongs to the room. The shard's index is checked first; on a miss the
    /// store decides, because a membership another user's write just created may not have reached
    /// this shard yet (anything later in that room reaches it after the membership does).
    pub fn member_of(&self, user: &User, rid: &RoomId) -> bool {
        self.ctx.hub.is_member(&user.id, rid) || matches!(self.ctx.hub.store.subscription(&user.id, rid), Ok(Some(_)))
    }

    /// Whether the user may read the room's history: members, or anyone for public channels.
    pub fn can_read(&self, user: &User, room: &Room) -> bool {
        room.t == RoomType::Channel || self.member_of(user, &room.id)
    }

    pub async fn login_password(&self, name: LoginName<'_>, digest: String) -> Result<LoggedIn, MeteorError> {
        let store = &self.ctx.hub.store;
        let user = match name {
            LoginName::Username(u) => store.user_by_username(u),
            LoginName::Email(e) => store.user_by_email(e),
        }
        .map_err(|e| store_err("login", e))?;
        let Some(user) = user else {
            return Err(MeteorError::new(403, "User not found"));
        };
        let phc = user.password_hash.clone();
        let ok = glommio::executor()
            .spawn_blocking(move || auth::verify_password_digest(&phc, &digest))
            .await;
        if !ok {
            return Err(MeteorError::new(403, "Incorrect password"));
        }
        let now = now_ms();
        let token = random_secret();
        let token_hash = auth::token_hash(&token);
        let expires = now + (self.ctx.config.accounts.token_ttl_days as i64) * 86_400_000;
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

    pub fn login_resume(&self, token: &str) -> Result<LoggedIn, MeteorError> {
        let token_hash = auth::token_hash(token);
        match self
            .ctx
            .hub
            .store
            .user_by_token_hash(&token_hash, now_ms())
            .map_err(|e| store_err("login", e))?
        {
            Some((user, t)) => Ok(LoggedIn {
                user,
                token: token.to_owned(),
                token_hash,
                expires: t.expires_at,
                kind: "resume",
            }),
            None => Err(MeteorError::new(
                403,
                "You've been logged out by the server. Please log in again.",
            )),
        }
    }

    pub async fn logout(&self, token_hash: String) -> Result<(), MeteorError> {
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
    ) -> Result<User, MeteorError> {
        if !self.ctx.config.accounts.registration_open {
            return Err(MeteorError::new(
                "error-user-registration-disabled",
                "User registration is disabled",
            ));
        }
        if pass.is_empty() {
            return Err(MeteorError::new("error-invalid-password", "Invalid password"));
        }
        let digest = auth::sha256_hex(pass);
        let hash = glommio::executor()
            .spawn_blocking(move || auth::hash_password_digest(&digest))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "password hashing failed");
                MeteorError::internal()
            })?;
        let op = WriteOp::CreateUser {
            username: username.to_owned(),
            name: name.unwrap_or(username).to_owned(),
            email: email.map(str::to_owned),
            password_hash: hash,
        };
        match self.write(method, op).await?.output {
            WriteOutput::User(u) => Ok(*u),
            _ => Err(MeteorError::internal()),
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
    ) -> Result<Room, MeteorError> {
        let op = WriteOp::CreateRoom {
            t,
            name: name.to_owned(),
            creator: user.id.clone(),
            members,
            read_only,
        };
        match self.write(method, op).await?.output {
            WriteOutput::Room(room, _) => Ok(*room),
            _ => Err(MeteorError::internal()),
        }
    }

    pub async fn create_direct(&self, method: &str, user: &User, other: &str) -> Result<Room, MeteorError> {
        let op = WriteOp::CreateDirect {
            creator: user.id.clone(),
            other_username: other.to_owned(),
        };
        match self.write(method, op).await?.output {
            WriteOutput::Room(room, _) => Ok(*room),
            _ => Err(MeteorError::internal()),
        }
    }

    pub async fn join(&self, method: &str, user: &User, rid: RoomId) -> Result<(), MeteorError> {
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

    pub async fn leave(&self, method: &str, user: &User, rid: RoomId) -> Result<(), MeteorError> {
        self.write(
            method,
            WriteOp::Leave {
                uid: user.id.clone(),
                rid,
            },
        )
        .await?;
        Ok(())
    }

    fn check_size(&self, method: &str, text: &str) -> Result<(), MeteorError> {
        if text.chars().count() > self.ctx.config.limits.max_message_chars {
            return Err(
                MeteorError::new("error-message-size-exceeded", "Message size exceeds the allowed limit")
                    .with_method(method),
            );
        }
        Ok(())
    }

    /// Sends a message. `Ok(Err(existing))`: a re-send of an id that already exists (nothing
    /// written; the stored message is returned).
    pub async fn send_message(
        &self,
        method: &str,
        user: &User,
        rid: RoomId,
        id: Option<&str>,
        text: &str,
        tmid: Option<&str>,
    ) -> Result<Result<Message, Message>, MeteorError> {
        self.check_size(method, text)?;
        if id.is_some_and(|i| i.is_empty() || i.len() > 128) {
            return Err(MeteorError::match_failed("_id must be 1 to 128 characters"));
        }
        let op = WriteOp::SendMessage {
            uid: user.id.clone(),
            rid,
            id: id.map(MessageId::from),
            msg: text.to_owned(),
            tmid: tmid.map(str::to_owned),
        };
        match self.write(method, op).await?.output {
            WriteOutput::Message(m) => Ok(Ok(*m)),
            WriteOutput::Duplicate(m) => Ok(Err(*m)),
            _ => Err(MeteorError::internal()),
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
    ) -> Result<Message, MeteorError> {
        self.check_size(method, text)?;
        let mid = MessageId::from(mid);
        if let Some(rid) = rid {
            self.check_message_room(method, &mid, rid)?;
        }
        let op = WriteOp::UpdateMessage {
            uid: user.id.clone(),
            mid,
            msg: text.to_owned(),
        };
        match self.write(method, op).await?.output {
            WriteOutput::Message(m) => Ok(*m),
            _ => Err(MeteorError::internal()),
        }
    }

    fn check_message_room(&self, method: &str, mid: &MessageId, rid: &str) -> Result<(), MeteorError> {
        match self.ctx.hub.store.message(mid) {
            Ok(Some(existing)) if existing.rid.as_str() != rid => Err(MeteorError::new(
                "error-invalid-room",
                "The message does not belong to this room",
            )
            .with_method(method)),
            _ => Ok(()),
        }
    }

    pub async fn delete_message(
        &self,
        method: &str,
        user: &User,
        mid: &str,
        rid: Option<&str>,
    ) -> Result<Message, MeteorError> {
        let mid = MessageId::from(mid);
        if let Some(rid) = rid {
            self.check_message_room(method, &mid, rid)?;
        }
        match self
            .write(
                method,
                WriteOp::DeleteMessage {
                    uid: user.id.clone(),
                    mid,
                },
            )
            .await?
            .output
        {
            WriteOutput::Message(m) => Ok(*m),
            _ => Err(MeteorError::internal()),
        }
    }

    pub async fn mark_read(&self, method: &str, user: &User, rid: RoomId) -> Result<(), MeteorError> {
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

    /// A page of a room's history, newest first, with the total matching when asked for.
    /// `Ok(None)`: the room does not exist or the user may not read it.
    pub fn history(
        &self,
        method: &str,
        user: &User,
        rid: &RoomId,
        q: &HistoryQuery,
    ) -> Result<Option<(Room, Vec<Message>, u64)>, MeteorError> {
        let Some(room) = self.room(rid)? else {
            return Ok(None);
        };
        if !self.can_read(user, &room) {
            return Ok(None);
        }
        let (messages, total) = self.ctx.hub.store.history(rid, q).map_err(|e| store_err(method, e))?;
        Ok(Some((room, messages, total)))
    }

    fn subscriptions_of(&self, method: &str, user: &User) -> Result<Vec<(Subscription, Room)>, MeteorError> {
        self.ctx
            .hub
            .store
            .subscriptions_of(&user.id)
            .map_err(|e| store_err(method, e))
    }

    /// The user's rooms updated after `since` (all when `None`).
    pub fn rooms_since(
        &self,
        method: &str,
        user: &User,
        since: Option<i64>,
        d: Dates,
    ) -> Result<Vec<Value>, MeteorError> {
        Ok(self
            .subscriptions_of(method, user)?
            .iter()
            .filter(|(_, r)| since.is_none_or(|s| r.updated_at > s))
            .map(|(_, r)| wire::room(r, d))
            .collect())
    }

    /// The user's subscriptions updated after `since` (all when `None`).
    pub fn subscriptions_since(
        &self,
        method: &str,
        user: &User,
        since: Option<i64>,
        d: Dates,
    ) -> Result<Vec<Value>, MeteorError> {
        Ok(self
            .subscriptions_of(method, user)?
            .iter()
            .filter(|(s, r)| since.is_none_or(|t| s.updated_at.max(r.updated_at) > t))
            .map(|(s, r)| wire::subscription(s, r, d))
            .collect())
    }

    /// Sets the user's chosen (persisted) status and, when given, its text. `invisible` is
    /// stored as `offline`: connected, but shown offline.
    pub async fn set_status(
        &self,
        method: &str,
        user: &User,
        status: Option<&str>,
        text: Option<&str>,
    ) -> Result<(), MeteorError> {
        let status = match status {
            None => user.status.clone(),
            Some(s) => match Status::parse(s) {
                Some(st) => st.as_str().to_owned(),
                None => {
                    return Err(MeteorError::new(
                        "error-invalid-status",
                        "Valid status types include online, away, offline, and busy.",
                    )
                    .with_method(method))
                }
            },
        };
        if text.is_some_and(|t| t.chars().count() > 120) {
            return Err(
                MeteorError::new("error-status-text-too-long", "Status text is limited to 120 characters")
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
    pub async fn presence(&self, user: &User) -> PresenceRead {
        self.ctx
            .hub
            .query_presence(vec![user.id.clone()])
            .await
            .pop()
            .unwrap_or((Status::Offline, Status::Offline, String::new()))
    }
}
