//! A generated Rocket.Chat `mongodump` folder shaped like a real deployment (documents as
//! Rocket.Chat stores them: ../shared/reference/rocketchat-schema.md), for timing
//! `chatd import rocketchat` and for seeding large stores quickly. The seed deployment
//! (../shared/seeds/) is the default: 7,116 users, 49,149 rooms of which 47,188 DMs,
//! 2.4 million messages. Deterministic for a given `--seed`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use bson::{doc, Bson, DateTime, Document};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Debug, clap::Args)]
pub struct DumpArgs {
    /// Output folder (created); the .bson files go straight into it.
    #[arg(long)]
    pub out: std::path::PathBuf,
    #[arg(long, default_value_t = 7_116)]
    pub users: usize,
    /// Channels and private groups (besides GENERAL): the first `channels` of them are public
    /// channels, the rest private groups.
    #[arg(long, default_value_t = 1_960)]
    pub rooms: usize,
    /// Public channels among `rooms` (the seed: 44 channels, 1,917 private groups).
    #[arg(long, default_value_t = 43)]
    pub channels: usize,
    /// The first this many channels are large...
    #[arg(long, default_value_t = 4)]
    pub large_channels: usize,
    /// ...with this many members each.
    #[arg(long, default_value_t = 400)]
    pub large_members: usize,
    /// Direct-message rooms.
    #[arg(long, default_value_t = 47_188)]
    pub dms: usize,
    /// Members of each channel or group (GENERAL has every user).
    #[arg(long, default_value_t = 20)]
    pub members: usize,
    /// Messages spread over all rooms.
    #[arg(long, default_value_t = 2_400_000)]
    pub messages: usize,
    /// Of those, how many go to GENERAL (one very large room).
    #[arg(long, default_value_t = 200_000)]
    pub general_messages: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

const ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz";
const WORDS: &[&str] = &[
    "deploy",
    "the",
    "build",
    "is",
    "green",
    "again",
    "who",
    "owns",
    "this",
    "ticket",
    "lunch",
    "at",
    "noon",
    "please",
    "review",
    "my",
    "PR",
    "thanks",
    "server",
    "restarted",
    "looks",
    "good",
    "to",
    "me",
    "ok",
];

fn meteor_id(rng: &mut StdRng) -> String {
    (0..17)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

fn sentence(rng: &mut StdRng) -> String {
    let n = rng.gen_range(3..14);
    (0..n)
        .map(|_| WORDS[rng.gen_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

fn date(ms: i64) -> Bson {
    Bson::DateTime(DateTime::from_millis(ms))
}

struct Out(BufWriter<File>);

impl Out {
    fn create(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let path = dir.join(format!("{name}.bson"));
        Ok(Self(BufWriter::with_capacity(
            1 << 20,
            File::create(&path).with_context(|| path.display().to_string())?,
        )))
    }

    fn put(&mut self, d: &Document) -> anyhow::Result<()> {
        d.to_writer(&mut self.0)?;
        Ok(())
    }
}

/// The resume token of user `i` in a generated dump (stored hashed, as Rocket.Chat does), so load
/// clients log in without bcrypt.
pub fn token_of(i: usize) -> String {
    format!("tok-user{i}")
}

/// Rocket.Chat's stored form of a resume token: base64 of its SHA-256.
fn meteor_hashed_token(token: &str) -> String {
    use base64::Engine;
    let hex = chatd::auth::sha256_hex(token);
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Every user's password is "pw-user0" (one bcrypt hash is reused for speed: cost 10 as
/// Rocket.Chat uses would take minutes for thousands of users); user `i` also has the resume
/// token [`token_of`]`(i)`.
pub fn generate(a: &DumpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.out)?;
    let mut rng = StdRng::seed_from_u64(a.seed);
    let now = chatd::ids::now_ms();
    let start = now - 3 * 365 * 86_400_000;
    let hash = bcrypt::hash(chatd::auth::sha256_hex("pw-user0"), 10)?;

    let users: Vec<(String, String)> = (0..a.users)
        .map(|i| (meteor_id(&mut rng), format!("user{i}")))
        .collect();
    let mut out = Out::create(&a.out, "users")?;
    for (i, (id, name)) in users.iter().enumerate() {
        let hashed = meteor_hashed_token(&token_of(i));
        out.put(&doc! {
            "_id": id, "createdAt": date(start), "username": name, "name": format!("User {name}"),
            "emails": [{"address": format!("{name}@example.org"), "verified": true}],
            "type": "user", "active": true, "roles": ["user"], "status": "offline", "statusDefault": "online",
            "utcOffset": 0, "_updatedAt": date(now),
            "services": {"password": {"bcrypt": hash.as_str()}, "resume": {"loginTokens": [
                {"when": date(now - 86_400_000), "hashedToken": hashed.as_str()}]}},
        })?;
    }
    out.0.flush()?;

    // Rooms: GENERAL, channels/groups, DMs (ids: the two user ids concatenated, sorted).
    let mut rooms: Vec<(String, char, Vec<usize>)> = vec![("GENERAL".into(), 'c', (0..a.users).collect())];
    for i in 0..a.rooms {
        let t = if i < a.channels { 'c' } else { 'p' };
        let size = if i < a.large_channels.min(a.channels) {
            a.large_members
        } else {
            a.members
        };
        let mut members: Vec<usize> = (0..size.min(a.users)).map(|_| rng.gen_range(0..a.users)).collect();
        members.sort_unstable();
        members.dedup();
        rooms.push((format!("room{i}-{}", meteor_id(&mut rng)), t, members));
    }
    let mut dm_seen = std::collections::HashSet::new();
    while dm_seen.len() < a.dms && a.users > 1 {
        let (x, y) = (rng.gen_range(0..a.users), rng.gen_range(0..a.users));
        if x == y {
            continue;
        }
        let (x, y) = if users[x].0 < users[y].0 { (x, y) } else { (y, x) };
        if dm_seen.insert((x, y)) {
            rooms.push((format!("{}{}", users[x].0, users[y].0), 'd', vec![x, y]));
        }
    }
    let mut out = Out::create(&a.out, "rocketchat_room")?;
    let mut subs = Out::create(&a.out, "rocketchat_subscription")?;
    for (i, (id, t, members)) in rooms.iter().enumerate() {
        let mut d = doc! {"_id": id, "t": t.to_string(), "ts": date(start), "_updatedAt": date(now),
        "msgs": 0, "usersCount": members.len() as i64, "ro": false, "sysMes": true};
        if *t == 'd' {
            let uids: Vec<&str> = members.iter().map(|m| users[*m].0.as_str()).collect();
            let names: Vec<&str> = members.iter().map(|m| users[*m].1.as_str()).collect();
            d.insert("uids", uids);
            d.insert("usernames", names);
        } else {
            let name = if id == "GENERAL" {
                "general".to_owned()
            } else {
                format!("room{}", i - 1)
            };
            d.insert("name", name.as_str());
            d.insert("fname", name.as_str());
            d.insert("u", doc! {"_id": users[0].0.as_str(), "username": users[0].1.as_str()});
        }
        out.put(&d)?;
        for (k, m) in members.iter().enumerate() {
            let (uid, uname) = &users[*m];
            let other = if *t == 'd' {
                &users[members[1 - k.min(1)]].1
            } else {
                uname
            };
            subs.put(&doc! {
                "_id": meteor_id(&mut rng), "rid": id, "u": {"_id": uid, "username": uname}, "t": t.to_string(),
                "name": other, "fname": other, "open": true, "alert": false, "unread": 0,
                "ts": date(start), "ls": date(start + rng.gen_range(0..(now - start))), "_updatedAt": date(now),
            })?;
        }
    }
    out.0.flush()?;
    subs.0.flush()?;

    // Messages, in time order overall, each in a random room (GENERAL gets its share).
    let mut out = Out::create(&a.out, "rocketchat_message")?;
    let step = ((now - start) / a.messages.max(1) as i64).max(1);
    for n in 0..a.messages {
        let r = if n < a.general_messages {
            0
        } else {
            rng.gen_range(1..rooms.len().max(2)).min(rooms.len() - 1)
        };
        let (rid, _, members) = &rooms[r];
        let author = members
            .get(rng.gen_range(0..members.len().max(1)))
            .copied()
            .unwrap_or(0);
        let (uid, uname) = &users[author];
        let ts = start + n as i64 * step;
        let mut d = doc! {
            "_id": meteor_id(&mut rng), "rid": rid, "msg": sentence(&mut rng), "ts": date(ts),
            "u": {"_id": uid, "username": uname, "name": format!("User {uname}")},
            "_updatedAt": date(ts), "urls": [], "mentions": [], "channels": [], "md": [],
        };
        if n % 50 == 0 {
            d.insert("reactions", doc! {":+1:": {"usernames": [uname.as_str()]}});
        }
        out.put(&d)?;
    }
    out.0.flush()?;
    Ok(())
}
