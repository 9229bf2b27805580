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
}
