//! Passwords and tokens. Password hashing is deliberately slow (Argon2id), so callers on a shard
//! run it on glommio's blocking thread pool, never on the event loop. Any thread.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256, as Meteor clients send passwords (`{digest, algorithm: "sha-256"}`).
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// What the store keeps for a login token: its SHA-256 only.
pub fn token_hash(token: &str) -> String {
    sha256_hex(token)
}

/// Argon2id PHC string of the password's sha-256 digest (so DDP digests and REST plain
/// passwords verify against the same hash).
pub fn hash_password_digest(digest: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(digest.to_lowercase().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

pub fn verify_password_digest(phc: &str, digest: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(digest.to_lowercase().as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// The outcome of checking a password digest against a stored hash.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    No,
    Yes,
    /// Correct, against a hash chatd replaces (Rocket.Chat's bcrypt): the new Argon2id hash.
    YesRehash(String),
}

/// Checks a sha-256 digest against a stored hash: chatd's Argon2id, or Rocket.Chat's bcrypt of
/// the lowercase hex digest (`$2a$` / `$2b$` / `$2y$`, any cost) as imported. An empty hash
/// (an account without a password, e.g. OAuth-only) never verifies.
pub fn verify_password(stored: &str, digest: &str) -> Verified {
    if stored.starts_with("$2") {
        let digest = digest.to_lowercase();
        if !bcrypt::verify(&digest, stored).unwrap_or(false) {
            return Verified::No;
        }
        return match hash_password_digest(&digest) {
            Ok(new_hash) => Verified::YesRehash(new_hash),
            Err(_) => Verified::Yes,
        };
    }
    if verify_password_digest(stored, digest) {
        Verified::Yes
    } else {
        Verified::No
    }
}

/// Meteor's stored form of a login token, `base64(sha256(token))`, converted to chatd's
/// (lowercase hex SHA-256). `None` when it is not a base64 SHA-256.
pub fn meteor_token_hash_to_hex(hashed: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(hashed.trim()).ok()?;
    (bytes.len() == 32).then(|| hex::encode(bytes))
}

/// Whether `s` looks like a lowercase/uppercase hex sha-256 digest.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_and_plain_paths_verify_against_one_hash() {
        let phc = hash_password_digest(&sha256_hex("hunter2")).unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password_digest(&phc, &sha256_hex("hunter2")));
        assert!(verify_password_digest(&phc, &sha256_hex("hunter2").to_uppercase()));
        assert!(!verify_password_digest(&phc, &sha256_hex("hunter3")));
        assert!(!verify_password_digest("garbage", "x"));
    }

    #[test]
    fn rocket_chat_bcrypt_hashes_verify_and_ask_for_a_rehash() {
        let digest = sha256_hex("hunter2");
        let stored = bcrypt::hash(&digest, 4).unwrap();
        let Verified::YesRehash(new_hash) = verify_password(&stored, &digest.to_uppercase()) else {
            panic!("bcrypt hash did not verify");
        };
        assert_eq!(verify_password(&new_hash, &digest), Verified::Yes);
        assert_eq!(verify_password(&stored, &sha256_hex("nope")), Verified::No);
        assert_eq!(verify_password("", &digest), Verified::No);
        let y = stored.replacen("$2b$", "$2y$", 1);
        assert!(matches!(verify_password(&y, &digest), Verified::YesRehash(_)));
    }

    #[test]
    fn meteor_token_hashes_convert_to_hex() {
        use base64::Engine;
        let token = "abc";
        let meteor = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(token.as_bytes()));
        assert_eq!(
            meteor_token_hash_to_hex(&meteor).as_deref(),
            Some(token_hash(token).as_str())
        );
        assert_eq!(meteor_token_hash_to_hex("not base64!"), None);
    }
}
