//! The peer-link wire format (pure; used by the link tasks on the tailer shard and by tests).
//!
//! Every frame is a 4-byte big-endian length followed by that many bytes of body. The first frame
//! each side sends is a `Hello`: an 8-byte magic, a 2-byte big-endian protocol version, then the
//! rest of the hello in postcard; checking magic and version before anything else lets a future
//! version change everything after them. The second is a 32-byte proof (see `handshake`). After
//! that, every body is one postcard-encoded [`Frame`]. Anything else closes the link.

use futures::io::{AsyncRead, AsyncReadExt};
use serde::{Deserialize, Serialize};

use super::PeerError;

/// First bytes of every hello: not a chatd peer without them.
pub const MAGIC: &[u8; 8] = b"CHATDPR\x01";
/// Version of the link protocol spoken after the magic.
pub const VERSION: u16 = 1;
/// Length of a handshake proof (HMAC-SHA256).
pub const PROOF_LEN: usize = 32;
/// Largest hello accepted, bytes (a hello is tiny; this bounds what an unauthenticated
/// connection can make us read).
pub const MAX_HELLO_BYTES: usize = 1024;

/// What each side says first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// This run of the host (random at start; a restarted host is a new host id).
    pub host: u64,
    /// Fresh random challenge for the other side to sign.
    pub nonce: [u8; 32],
    /// The address others reach this host at (for logs).
    pub name: String,
}

/// A user's connection state on the sending host, with the status they chose there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPresence {
    pub uid: String,
    pub username: String,
    pub name: String,
    /// The sending host's connection status of the user: online, away (every connection idle)
    /// or offline (no connection there any more).
    pub connection: WireStatus,
    /// The user's chosen status and its text as the sending host knows them.
    pub chosen: WireStatus,
    pub text: String,
}

/// A status on the wire (its own type so the wire format does not follow renames elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireStatus {
    Offline,
    Online,
    Away,
    Busy,
}

/// A typing / user-activity notice from a member of `rid` on the sending host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerActivity {
    pub rid: String,
    pub username: String,
    pub activities: Vec<String>,
    /// The client's extra object as JSON text (postcard cannot carry free-form JSON values).
    pub extra: Option<String>,
}

/// Everything a link carries once authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Sent when a link has been idle for a heartbeat interval.
    Ping,
    Typing(PeerActivity),
    /// Transitions of the sender's users, in order.
    Presence(Vec<PeerPresence>),
    /// The sender's whole presence state, in parts; the receiver replaces what it held for the
    /// sender when the `last` part arrives.
    Snapshot {
        entries: Vec<PeerPresence>,
        last: bool,
    },
}

/// A whole frame (length prefix included) holding `body`.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

pub fn encode_hello(hello: &Hello) -> Result<Vec<u8>, PeerError> {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(&VERSION.to_be_bytes());
    body.extend(postcard::to_stdvec(hello).map_err(|e| PeerError::Internal(e.to_string()))?);
    Ok(framed(&body))
}

pub fn decode_hello(body: &[u8]) -> Result<Hello, PeerError> {
    let (magic, rest) = body
        .split_at_checked(MAGIC.len())
        .ok_or(PeerError::Garbage("short hello"))?;
    if magic != MAGIC {
        return Err(PeerError::Garbage("not a chatd peer (bad magic)"));
    }
    let (version, rest) = rest.split_at_checked(2).ok_or(PeerError::Garbage("short hello"))?;
    let version = u16::from_be_bytes([
        version.first().copied().unwrap_or(0),
        version.get(1).copied().unwrap_or(0),
    ]);
    if version != VERSION {
        return Err(PeerError::Version(version));
    }
    postcard::from_bytes(rest).map_err(|_| PeerError::Garbage("undecodable hello"))
}

pub fn encode_proof(proof: &[u8; PROOF_LEN]) -> Vec<u8> {
    framed(proof)
}

pub fn decode_proof(body: &[u8]) -> Result<[u8; PROOF_LEN], PeerError> {
    body.try_into().map_err(|_| PeerError::Garbage("bad proof length"))
}

/// One frame, length prefix included, ready to be queued on any number of links.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, PeerError> {
    let body = postcard::to_stdvec(frame).map_err(|e| PeerError::Internal(e.to_string()))?;
    Ok(framed(&body))
}

pub fn decode(body: &[u8]) -> Result<Frame, PeerError> {
    postcard::from_bytes(body).map_err(|_| PeerError::Garbage("undecodable frame"))
}

/// Reads one frame's body into `buf` (replacing its contents). A length over `max` is refused
/// before anything more is read, so a peer cannot make us allocate more than `max`.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize, buf: &mut Vec<u8>) -> Result<(), PeerError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.map_err(PeerError::io)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(PeerError::Oversized { len, max });
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).await.map_err(PeerError::io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(framed: &[u8]) -> &[u8] {
        &framed[4..]
    }

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Ping,
            Frame::Typing(PeerActivity {
                rid: "GENERAL".into(),
                username: "alice".into(),
                activities: vec!["user-typing".into()],
                extra: Some(r#"{"tmid":"x"}"#.into()),
            }),
            Frame::Presence(vec![PeerPresence {
                uid: "u1".into(),
                username: "alice".into(),
                name: "Alice".into(),
                connection: WireStatus::Away,
                chosen: WireStatus::Busy,
                text: "lunch".into(),
            }]),
            Frame::Snapshot {
                entries: Vec::new(),
                last: true,
            },
        ];
        for f in frames {
            let bytes = encode(&f).unwrap();
            assert_eq!(
                u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize,
                bytes.len() - 4
            );
            assert_eq!(decode(body(&bytes)).unwrap(), f);
        }
    }

    #[test]
    fn hello_checks_magic_and_version_first() {
        let hello = Hello {
            host: 7,
            nonce: [3; 32],
            name: "10.0.0.1:3010".into(),
        };
        let bytes = encode_hello(&hello).unwrap();
        assert_eq!(decode_hello(body(&bytes)).unwrap(), hello);

        let mut other_version = bytes.clone();
        other_version[4 + 8..4 + 10].copy_from_slice(&2u16.to_be_bytes());
        assert!(matches!(decode_hello(body(&other_version)), Err(PeerError::Version(2))));

        assert!(matches!(
            decode_hello(b"GET / HTTP/1.1\r\n"),
            Err(PeerError::Garbage(_))
        ));
        assert!(matches!(decode_hello(b""), Err(PeerError::Garbage(_))));
        let mut truncated = body(&bytes).to_vec();
        truncated.truncate(20);
        assert!(matches!(decode_hello(&truncated), Err(PeerError::Garbage(_))));
    }

    #[test]
    fn garbage_bodies_are_errors_not_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = decode(&junk);
            let _ = decode_hello(&junk);
            let _ = decode_proof(&junk);
        }
        // A huge claimed vector length in a tiny body fails without allocating it.
        assert!(decode(&[2, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    #[test]
    fn oversized_lengths_are_refused_before_reading() {
        let mut input: &[u8] = &[0x7f, 0xff, 0xff, 0xff, 1, 2, 3];
        let mut buf = Vec::new();
        let got = futures_lite::future::block_on(read_frame(&mut input, 1024, &mut buf));
        assert!(matches!(got, Err(PeerError::Oversized { max: 1024, .. })));
        assert!(buf.capacity() < 1024);
    }
}
