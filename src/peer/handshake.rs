//! Link authentication by challenge–response (runs in a link task on the tailer shard).
//!
//! Both sides send a [`Hello`] with a fresh random nonce, then prove they hold the shared
//! secret with `HMAC-SHA256(secret, label ‖ role ‖ verifier's nonce ‖ prover's nonce ‖ prover's
//! host ‖ verifier's host)`. The secret never crosses the wire; a proof answers only the nonce
//! the verifier chose for this connection; the role byte (dialer or acceptor) and the refusal of
//! a hello carrying our own host id stop a proof from being reflected back to its maker.

use futures::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::codec::{self, Hello, MAX_HELLO_BYTES, PROOF_LEN};
use super::PeerError;

const LABEL: &[u8] = b"chatd-peer-link-v1";

/// Which end of the TCP connection a host is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Dialer,
    Acceptor,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Self::Dialer => b'D',
            Self::Acceptor => b'A',
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Dialer => Self::Acceptor,
            Self::Acceptor => Self::Dialer,
        }
    }
}

fn mac(secret: &[u8], role: Role, prover: &Hello, verifier: &Hello) -> Result<Hmac<Sha256>, PeerError> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).map_err(|e| PeerError::Internal(e.to_string()))?;
    m.update(LABEL);
    m.update(&[role.byte()]);
    m.update(&verifier.nonce);
    m.update(&prover.nonce);
    m.update(&prover.host.to_be_bytes());
    m.update(&verifier.host.to_be_bytes());
    Ok(m)
}

/// The proof `prover` (in `role`) sends to `verifier`.
pub fn proof(secret: &[u8], role: Role, prover: &Hello, verifier: &Hello) -> Result<[u8; PROOF_LEN], PeerError> {
    let bytes = mac(secret, role, prover, verifier)?.finalize().into_bytes();
    let mut out = [0u8; PROOF_LEN];
    out.copy_from_slice(&bytes);
    Ok(out)
}

/// Checks (in constant time) a proof from `prover` in `role`.
pub fn verify(secret: &[u8], role: Role, prover: &Hello, verifier: &Hello, got: &[u8]) -> Result<(), PeerError> {
    mac(secret, role, prover, verifier)?
        .verify_slice(got)
        .map_err(|_| PeerError::Unauthenticated)
}

/// Runs the handshake on a fresh connection; returns the other side's hello once it proved it
/// holds the secret. The caller bounds it in time.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    secret: &[u8],
    me: &Hello,
    role: Role,
) -> Result<Hello, PeerError> {
    stream
        .write_all(&codec::encode_hello(me)?)
        .await
        .map_err(PeerError::io)?;
    let mut buf = Vec::new();
    codec::read_frame(stream, MAX_HELLO_BYTES, &mut buf).await?;
    let theirs = codec::decode_hello(&buf)?;
    if theirs.host == me.host {
        return Err(PeerError::SelfLink);
    }
    let mine = proof(secret, role, me, &theirs)?;
    stream
        .write_all(&codec::encode_proof(&mine))
        .await
        .map_err(PeerError::io)?;
    codec::read_frame(stream, PROOF_LEN, &mut buf).await?;
    let got = codec::decode_proof(&buf)?;
    verify(secret, role.other(), &theirs, me, &got)?;
    Ok(theirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(host: u64, nonce: u8) -> Hello {
        Hello {
            host,
            nonce: [nonce; 32],
            name: format!("h{host}"),
        }
    }

    #[test]
    fn a_proof_checks_only_with_the_same_secret_nonces_and_roles() {
        let (a, b) = (hello(1, 1), hello(2, 2));
        let p = proof(b"0123456789abcdef", Role::Dialer, &a, &b).unwrap();
        verify(b"0123456789abcdef", Role::Dialer, &a, &b, &p).unwrap();
        assert!(verify(b"0123456789abcdeX", Role::Dialer, &a, &b, &p).is_err());
        // Reflected: the acceptor's proof is not a dialer's proof.
        assert!(verify(b"0123456789abcdef", Role::Acceptor, &a, &b, &p).is_err());
        // Replayed against another challenge.
        assert!(verify(b"0123456789abcdef", Role::Dialer, &a, &hello(2, 9), &p).is_err());
        assert!(verify(b"0123456789abcdef", Role::Dialer, &a, &b, &p[..31]).is_err());
    }
}
