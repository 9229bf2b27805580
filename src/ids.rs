//! Identifier newtypes and Meteor-style id generation. Pure; used from any thread.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Meteor's "unmistakable" alphabet (no 0/1/I/O/l), as Rocket.Chat clients expect.
const UNMISTAKABLE: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz";
/// Alphabet for secrets (login tokens): base64url.
const SECRET_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A new 17-character Meteor-style id.
pub fn random_id() -> String {
    random_from(UNMISTAKABLE, 17)
}

/// A new 43-character login token (≈256 bits).
pub fn random_secret() -> String {
    random_from(SECRET_CHARS, 43)
}

fn random_from(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| {
            let i = rng.gen_range(0..alphabet.len());
            alphabet.get(i).copied().map(char::from).unwrap_or('x')
        })
        .collect()
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
    };
}

id_type!(
    /// A user's `_id`.
    UserId
);
id_type!(
    /// A room's `_id` (`rid`). For 1:1 DMs, the two user ids sorted and concatenated.
    RoomId
);
id_type!(
    /// A message's `_id`; clients may choose it (any string).
    MessageId
);

/// The rid of the 1:1 direct room between two users.
pub fn direct_room_id(a: &UserId, b: &UserId) -> RoomId {
    if a.0 <= b.0 {
        RoomId(format!("{}{}", a.0, b.0))
    } else {
        RoomId(format!("{}{}", b.0, a.0))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_use_meteor_shape() {
        let id = random_id();
        assert_eq!(id.len(), 17);
        assert!(id.bytes().all(|b| UNMISTAKABLE.contains(&b)));
        assert_ne!(random_id(), random_id());
        assert_eq!(random_secret().len(), 43);
    }

    #[test]
    fn direct_room_id_is_sorted_concatenation() {
        let a = UserId::from("bbb");
        let b = UserId::from("aaa");
        assert_eq!(direct_room_id(&a, &b).0, "aaabbb");
        assert_eq!(direct_room_id(&b, &a).0, "aaabbb");
    }
}
