//! Seeds a chatd data directory for a benchmark (server stopped): users with login tokens and
//! rooms with members, written through the store's own write path. Login cost is paid here, once,
//! not during the measured run: the run logs in with the tokens (resume).

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use chatd::ids::{now_ms, random_secret};
use chatd::store::mongo::{MongoOptions, MongoStore};
use chatd::store::{Backend, EmbeddedStore, LoginToken, RoomType, Store, WriteOp, WriteOutput};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanUser {
    pub uid: String,
    pub username: String,
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanRoom {
    pub rid: String,
    /// Indices into `users`.
    pub members: Vec<usize>,
}

/// What a run needs to know about the seeded data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Plan {
    pub users: Vec<PlanUser>,
    pub rooms: Vec<PlanRoom>,
}

/// The password every seeded user has.
pub const PASSWORD: &str = "bench-password";
/// Writers submitting at once, so the store's group commit batches them.
const WRITERS: usize = 64;

fn submit(store: &Store, op: WriteOp) -> anyhow::Result<WriteOutput> {
    Ok(store.write_blocking(op).map_err(|e| anyhow!("{e}"))?.output)
}

/// Creates `users` users (`bench-u<i>`, each with one token) and `rooms` channels (`bench-r<i>`)
/// of `members` consecutive users each (wrapping around).
/// With `mongo_url`, the MongoDB database it names is seeded instead (`dir` then only holds
/// the store's local files).
pub fn seed(dir: &Path, mongo_url: Option<&str>, users: usize, rooms: usize, members: usize) -> anyhow::Result<Plan> {
    std::fs::create_dir_all(dir)?;
    let backend: Arc<dyn Backend> = match mongo_url {
        Some(url) => MongoStore::open(&MongoOptions {
            url: url.to_owned(),
            database: None,
            connect_timeout: std::time::Duration::from_secs(10),
            data_dir: dir.to_owned(),
            host: "chatd-load-seed".into(),
            readers: 1,
        })?,
        None => EmbeddedStore::open(dir).with_context(|| format!("opening {}", dir.display()))?,
    };
    let store = Store::new(backend, 1).map_err(|e| anyhow!("{e}"))?;
    let hash = chatd::auth::hash_password_digest(&chatd::auth::sha256_hex(PASSWORD)).map_err(|e| anyhow!(e))?;
    let store = Arc::new(store);
    let indices: Vec<usize> = (0..users).collect();
    let chunk = users.div_ceil(WRITERS).max(1);
    let mut created: Vec<PlanUser> = Vec::with_capacity(users);
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = indices
            .chunks(chunk)
            .map(|part| {
                let store = store.clone();
                let hash = hash.clone();
                s.spawn(move || -> anyhow::Result<Vec<(usize, PlanUser)>> {
                    let mut out = Vec::with_capacity(part.len());
                    for &i in part {
                        let username = format!("bench-u{i}");
                        let user = match submit(
                            &store,
                            WriteOp::CreateUser {
                                username: username.clone(),
                                name: username.clone(),
                                email: None,
                                password_hash: hash.clone(),
                            },
                        )? {
                            WriteOutput::User(u) => u,
                            other => return Err(anyhow!("unexpected {other:?}")),
                        };
                        let token = random_secret();
                        let now = now_ms();
                        submit(
                            &store,
                            WriteOp::CreateToken {
                                token_hash: chatd::auth::token_hash(&token),
                                token: LoginToken {
                                    uid: user.id.clone(),
                                    created_at: now,
                                    expires_at: now + 365 * 86_400_000,
                                },
                            },
                        )?;
                        out.push((
                            i,
                            PlanUser {
                                uid: user.id.to_string(),
                                username,
                                token,
                            },
                        ));
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(users);
        for h in handles {
            all.extend(h.join().map_err(|_| anyhow!("seed thread panicked"))??);
        }
        all.sort_by_key(|(i, _)| *i);
        created = all.into_iter().map(|(_, u)| u).collect();
        Ok(())
    })?;
    let mut plan = Plan {
        users: created,
        rooms: Vec::with_capacity(rooms),
    };
    for r in 0..rooms {
        let members: Vec<usize> = (0..members).map(|k| (r * members + k) % users.max(1)).collect();
        let Some((&first, rest)) = members.split_first() else {
            continue;
        };
        let creator = chatd::ids::UserId::from(plan.users[first].uid.as_str());
        let names = rest.iter().map(|i| plan.users[*i].username.clone()).collect();
        let room = match submit(
            &store,
            WriteOp::CreateRoom {
                t: RoomType::Channel,
                name: format!("bench-r{r}"),
                creator,
                members: names,
                read_only: false,
            },
        )? {
            WriteOutput::Room(room, _) => room,
            other => return Err(anyhow!("unexpected {other:?}")),
        };
        plan.rooms.push(PlanRoom {
            rid: room.id.to_string(),
            members,
        });
    }
    store.close();
    Ok(plan)
}

/// Drops the MongoDB database `url` names.
pub fn drop_mongo(url: &str) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let store = MongoStore::open(&MongoOptions {
        url: url.to_owned(),
        database: None,
        connect_timeout: std::time::Duration::from_secs(10),
        data_dir: dir.clone(),
        host: "chatd-load-drop".into(),
        readers: 1,
    })?;
    store.drop_database().map_err(|e| anyhow!("{e}"))?;
    store.close();
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("chatd-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
