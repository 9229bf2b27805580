//! Rocket.Chat dumps for tests: documents shaped like Rocket.Chat's collections, written as
//! `mongodump` BSON files, and the real `chatd import` run over them.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use base64::Engine;
use bson::{doc, Bson, DateTime, Document};
use sha2::{Digest, Sha256};

use super::sha256_hex;

pub const DAY: i64 = 86_400_000;

pub fn now() -> i64 {
    chatd::ids::now_ms()
}

pub fn date(ms: i64) -> Bson {
    Bson::DateTime(DateTime::from_millis(ms))
}

/// Rocket.Chat's stored password: bcrypt of the lowercase hex SHA-256 (cost 4 keeps tests fast;
/// any cost verifies).
pub fn rc_password(pw: &str) -> String {
    bcrypt::hash(sha256_hex(pw), 4).unwrap()
}

/// Meteor's stored form of a resume token: base64 of its SHA-256.
pub fn rc_token_hash(token: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(token.as_bytes()))
}

pub fn write_bson(path: &Path, docs: &[Document], gzip: bool) {
    let mut bytes = Vec::new();
    for d in docs {
        d.to_writer(&mut bytes).unwrap();
    }
    if gzip {
        let f = std::fs::File::create(path.with_extension("bson.gz")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        gz.finish().unwrap();
    } else {
        std::fs::write(path, bytes).unwrap();
    }
}

pub fn user_doc(id: &str, username: &str, password: Option<&str>, active: bool, tokens: Vec<Document>) -> Document {
    let mut services = doc! {"resume": {"loginTokens": tokens}};
    if let Some(pw) = password {
        services.insert("password", doc! {"bcrypt": rc_password(pw)});
    } else {
        services.insert(
            "google",
            doc! {"id": "g-1", "email": format!("{username}@gmail.example")},
        );
    }
    doc! {
        "_id": id, "username": username, "name": format!("{username} N."),
        "emails": [{"address": format!("{username}@example.org"), "verified": true}],
        "roles": ["user"], "active": active, "type": "user", "createdAt": date(now() - 400 * DAY),
        "services": services, "_updatedAt": date(now() - DAY),
    }
}

/// Runs `chatd import rocketchat --dump DUMP --data-dir DATA`.
pub fn import(dump: &Path, data: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(["import", "rocketchat", "--dump"])
        .arg(dump)
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("run chatd import")
}
