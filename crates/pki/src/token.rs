//! Capability tokens: a coordinator signs, with its Ed25519 certificate key, a short-lived
//! permission for one caller to put or get one chunk on a named set of nodes. Nodes verify
//! the signature with the key their coordinator gave them at registration.

use std::time::Duration;

use collective_core::{ChunkId, SharedClock, system_clock};
use collective_proto::v1::{SignedToken, TokenClaims, TokenOp};
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use prost::Message;

use crate::PkiError;

/// How long a token stays valid after it is issued.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
const TOKEN_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("no token was presented")]
    Missing,
    #[error("the token cannot be decoded")]
    Malformed,
    #[error("the token's signature is not from this node's coordinator")]
    Forged,
    #[error("the token expired {0} s ago; ask the coordinator for a new one")]
    Expired(u64),
    #[error("the token is for another operation")]
    WrongOp,
    #[error("the token is for another chunk")]
    WrongChunk,
    #[error("the token is not valid on this node")]
    WrongNode,
    #[error("the token was issued to {0}, not to the caller")]
    WrongCaller(String),
    #[error("unsupported token version {0}")]
    Version(u32),
}

/// Signs tokens (coordinator side).
pub struct TokenSigner {
    key: SigningKey,
    issuer: String,
    clock: SharedClock,
}

impl TokenSigner {
    /// Uses the coordinator's TLS key (PKCS#8 DER, Ed25519) as the token key.
    pub fn from_pkcs8(der: &[u8], issuer: String) -> Result<TokenSigner, PkiError> {
        let key =
            SigningKey::from_pkcs8_der(der).map_err(|e| PkiError::Invalid(format!("the coordinator key is not an Ed25519 key: {e}")))?;
        Ok(TokenSigner {
            key,
            issuer,
            clock: system_clock(),
        })
    }

    /// Dates tokens by `clock` instead of the system's.
    pub fn with_clock(mut self, clock: SharedClock) -> TokenSigner {
        self.clock = clock;
        self
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Signs arbitrary bytes (invite codes, gossip envelopes) with the same key.
    pub fn sign_raw(&self, msg: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.key.sign(msg).to_bytes()
    }

    /// Signs a token for `caller` to run `op` on `chunk` at any of `nodes`.
    pub fn sign(&self, op: TokenOp, chunk: &ChunkId, nodes: &[String], caller: &str, size: u64, ttl: Duration) -> Vec<u8> {
        let claims = TokenClaims {
            version: TOKEN_VERSION,
            op: op as i32,
            chunk_id: chunk.0.to_vec().into(),
            nodes: nodes.to_vec(),
            caller: caller.to_string(),
            expires_unix_ms: self.clock.now_ms().saturating_add(ttl.as_millis() as u64),
            size,
            issuer: self.issuer.clone(),
        }
        .encode_to_vec();
        let signature = self.key.sign(&claims).to_bytes();
        SignedToken {
            claims: claims.into(),
            signature: signature.to_vec().into(),
        }
        .encode_to_vec()
    }
}

/// Checks tokens (node side).
#[derive(Clone)]
pub struct TokenVerifier {
    key: VerifyingKey,
    clock: SharedClock,
}

impl TokenVerifier {
    pub fn new(public_key: &[u8]) -> Result<TokenVerifier, PkiError> {
        let bytes: [u8; 32] = public_key
            .try_into()
            .map_err(|_| PkiError::Invalid("token key must be 32 bytes".into()))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|e| PkiError::Invalid(format!("bad token key: {e}")))?;
        Ok(TokenVerifier {
            key,
            clock: system_clock(),
        })
    }

    /// Checks expiry against `clock` instead of the system's.
    pub fn with_clock(mut self, clock: SharedClock) -> TokenVerifier {
        self.clock = clock;
        self
    }

    /// Checks an Ed25519 signature made by [`TokenSigner::sign_raw`].
    pub fn verify_raw(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
            return false;
        };
        self.key.verify_strict(msg, &sig).is_ok()
    }

    /// Verifies `token` allows `caller` to run `op` on `chunk` at `node`; returns its claims.
    pub fn verify(&self, token: &SignedToken, op: TokenOp, chunk: &ChunkId, node: &str, caller: &str) -> Result<TokenClaims, TokenError> {
        if token.claims.is_empty() {
            return Err(TokenError::Missing);
        }
        let sig_bytes: [u8; 64] = token.signature.as_ref().try_into().map_err(|_| TokenError::Forged)?;
        let sig = ed25519_dalek::Signature::from_bytes(&sig_bytes);
        self.key.verify(&token.claims, &sig).map_err(|_| TokenError::Forged)?;
        let claims = TokenClaims::decode(token.claims.clone()).map_err(|_| TokenError::Malformed)?;
        if claims.version != TOKEN_VERSION {
            return Err(TokenError::Version(claims.version));
        }
        let now = self.clock.now_ms();
        if claims.expires_unix_ms < now {
            return Err(TokenError::Expired((now - claims.expires_unix_ms) / 1000));
        }
        if claims.op != op as i32 {
            return Err(TokenError::WrongOp);
        }
        if claims.chunk_id.as_ref() != chunk.as_bytes() {
            return Err(TokenError::WrongChunk);
        }
        if !claims.nodes.iter().any(|n| n == node) {
            return Err(TokenError::WrongNode);
        }
        if claims.caller != caller {
            return Err(TokenError::WrongCaller(claims.caller));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> TokenSigner {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        TokenSigner::from_pkcs8(&kp.serialize_der(), "coordinator@a.collective.local".into()).unwrap()
    }

    fn decode(b: &[u8]) -> SignedToken {
        SignedToken::decode(b).unwrap()
    }

    #[test]
    fn token_allows_exactly_what_it_names() {
        let s = signer();
        let v = TokenVerifier::new(&s.public_key()).unwrap();
        let c = ChunkId::of(b"x");
        let nodes = vec!["n1@a.collective.local".to_string()];
        let t = decode(&s.sign(TokenOp::Put, &c, &nodes, "u@a.collective.local", 1, DEFAULT_TOKEN_TTL));
        assert!(
            v.verify(&t, TokenOp::Put, &c, "n1@a.collective.local", "u@a.collective.local")
                .is_ok()
        );
        assert_eq!(
            v.verify(&t, TokenOp::Get, &c, "n1@a.collective.local", "u@a.collective.local"),
            Err(TokenError::WrongOp)
        );
        assert_eq!(
            v.verify(
                &t,
                TokenOp::Put,
                &ChunkId::of(b"y"),
                "n1@a.collective.local",
                "u@a.collective.local"
            ),
            Err(TokenError::WrongChunk)
        );
        assert_eq!(
            v.verify(&t, TokenOp::Put, &c, "n2@a.collective.local", "u@a.collective.local"),
            Err(TokenError::WrongNode)
        );
        assert!(matches!(
            v.verify(&t, TokenOp::Put, &c, "n1@a.collective.local", "m@a.collective.local"),
            Err(TokenError::WrongCaller(_))
        ));
    }

    #[test]
    fn forged_and_expired_tokens_are_refused() {
        let s = signer();
        let other = signer();
        let v = TokenVerifier::new(&s.public_key()).unwrap();
        let c = ChunkId::of(b"x");
        let nodes = vec!["n1@a.collective.local".to_string()];
        let forged = decode(&other.sign(TokenOp::Get, &c, &nodes, "u@a.collective.local", 0, DEFAULT_TOKEN_TTL));
        assert_eq!(
            v.verify(&forged, TokenOp::Get, &c, "n1@a.collective.local", "u@a.collective.local"),
            Err(TokenError::Forged)
        );
        let mut tampered = decode(&s.sign(TokenOp::Get, &c, &nodes, "u@a.collective.local", 0, DEFAULT_TOKEN_TTL));
        let mut claims = TokenClaims::decode(tampered.claims.clone()).unwrap();
        claims.caller = "evil@a.collective.local".into();
        tampered.claims = claims.encode_to_vec().into();
        assert_eq!(
            v.verify(&tampered, TokenOp::Get, &c, "n1@a.collective.local", "evil@a.collective.local"),
            Err(TokenError::Forged)
        );
        let clock = collective_core::ManualClock::at(1_000_000);
        let s = s.with_clock(clock.clone());
        let v = v.with_clock(clock.clone());
        let token = decode(&s.sign(TokenOp::Get, &c, &nodes, "u@a.collective.local", 0, Duration::from_secs(60)));
        let check = || v.verify(&token, TokenOp::Get, &c, "n1@a.collective.local", "u@a.collective.local");
        assert!(check().is_ok(), "valid until its lifetime is over");
        clock.advance(Duration::from_secs(60));
        assert!(check().is_ok(), "still valid at the last millisecond");
        clock.advance(Duration::from_secs(31));
        assert_eq!(check(), Err(TokenError::Expired(31)), "says how long ago it expired");
        assert_eq!(
            v.verify(
                &SignedToken::default(),
                TokenOp::Get,
                &c,
                "n1@a.collective.local",
                "u@a.collective.local"
            ),
            Err(TokenError::Missing)
        );
    }
}
