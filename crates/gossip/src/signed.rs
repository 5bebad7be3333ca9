//! Member states signed by their member's coordinator, and the cache of verified signers
//! (shared with the datagram envelopes, which are signed by the same keys).
//!
//! A relay can drop or delay a state, never change one: the receiver checks the signature
//! against the signer's chain up to the federation root, that the signer is a coordinator
//! of the member the state describes, and that the version is not ahead of its own clock by
//! more than [`MAX_FUTURE_MS`] (so nobody can pin a member's state with a version no real
//! one will ever exceed, and versions, which are times of day, stay far from overflow).

use std::collections::HashMap;

use collective_core::{Principal, Role};
use collective_pki::{CertInfo, TlsIdentity, TokenSigner, TokenVerifier, fingerprint_bytes};
use collective_proto::v1::{MemberState, SignedState};
use prost::Message;
use prost::bytes::Bytes;

const STATE_CONTEXT: &[u8] = b"collective-state-v1";
/// A state whose version is further ahead of our clock than this is refused.
pub const MAX_FUTURE_MS: u64 = 10 * 60_000;
/// A cached signer's chain is checked again (revocation, removal, expiry) after this long.
const RECHECK_MS: u64 = 30_000;
const MAX_CACHED: usize = 1024;
/// Signers kept per member: a member's CA can mint any number of coordinator certificates,
/// and those must not push other members' signers out.
const MAX_CACHED_PER_MEMBER: usize = 8;

/// Why a member state was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateRefused {
    #[error("malformed member state: {0}")]
    Malformed(String),
    #[error("signed by a certificate not seen yet (anti-entropy brings its chain)")]
    UnknownSigner,
    #[error("the signer's certificate is refused: {0}")]
    BadChain(String),
    #[error("signed by {0}, a {1}: only a member's coordinator signs its state")]
    NotCoordinator(Principal, Role),
    #[error("the state of {claims} is signed by {signer}: a member signs only its own state")]
    WrongMember { claims: String, signer: Principal },
    #[error("bad signature on the state of {0}")]
    BadSignature(String),
    #[error("the state of {member} has version {version}, more than 10 minutes ahead of our clock ({now})")]
    Future { member: String, version: u64, now: u64 },
}

/// A certificate chain that verified, and when.
pub(crate) struct Signer {
    pub principal: Principal,
    pub role: Role,
    pub verifier: TokenVerifier,
    pub chain: Vec<Vec<u8>>,
    not_after_ms: u64,
    checked_ms: u64,
}

/// Verified signers by leaf fingerprint.
pub(crate) struct Signers {
    identity: TlsIdentity,
    known: HashMap<[u8; 32], Signer>,
}

impl Signers {
    pub fn new(identity: TlsIdentity) -> Signers {
        Signers {
            identity,
            known: HashMap::new(),
        }
    }

    /// The signer whose leaf has fingerprint `fp`: verified from `chain` when it is given
    /// and not cached (or the cached check is older than [`RECHECK_MS`]), else from the
    /// cache.
    pub fn resolve(&mut self, fp: [u8; 32], chain: &[Vec<u8>], now: u64) -> Result<&Signer, StateRefused> {
        let fresh = self
            .known
            .get(&fp)
            .is_some_and(|s| s.not_after_ms > now && now.saturating_sub(s.checked_ms) < RECHECK_MS);
        if !fresh {
            let chain = if chain.is_empty() {
                // Re-check a stale entry with the chain it came with.
                self.known.get(&fp).map(|s| s.chain.clone()).ok_or(StateRefused::UnknownSigner)?
            } else {
                chain.to_vec()
            };
            let leaf = chain.first().ok_or(StateRefused::UnknownSigner)?;
            if fingerprint_bytes(leaf) != fp {
                return Err(StateRefused::Malformed("the signer named is not the chain's leaf".into()));
            }
            let checked = self.identity.verify_chain(&chain);
            let (principal, role) = match checked {
                Ok(v) => v,
                Err(e) => {
                    self.known.remove(&fp);
                    return Err(StateRefused::BadChain(e.to_string()));
                }
            };
            let info = CertInfo::from_der(leaf).map_err(|e| StateRefused::BadChain(e.to_string()))?;
            let verifier = TokenVerifier::new(&info.public_key).map_err(|e| StateRefused::BadChain(e.to_string()))?;
            // Room among this member's own signers first: the least recently checked goes.
            let mine: Vec<([u8; 32], u64)> = self
                .known
                .iter()
                .filter(|(k, s)| s.principal.domain == principal.domain && **k != fp)
                .map(|(k, s)| (*k, s.checked_ms))
                .collect();
            if mine.len() >= MAX_CACHED_PER_MEMBER
                && let Some((oldest, _)) = mine.iter().min_by_key(|(_, at)| *at)
            {
                self.known.remove(oldest);
            }
            if self.known.len() >= MAX_CACHED {
                self.known
                    .retain(|_, s| s.not_after_ms > now && now.saturating_sub(s.checked_ms) < RECHECK_MS);
            }
            if self.known.len() >= MAX_CACHED {
                self.known.clear();
            }
            self.known.insert(
                fp,
                Signer {
                    principal,
                    role,
                    verifier,
                    chain,
                    not_after_ms: (info.not_after.unix_timestamp().max(0) as u64).saturating_mul(1000),
                    checked_ms: now,
                },
            );
        }
        self.known.get(&fp).ok_or(StateRefused::UnknownSigner)
    }

    /// Checks a signed state; returns it decoded, with the full signed form (chain included)
    /// to keep and pass on.
    pub fn open(&mut self, signed: &SignedState, now: u64) -> Result<(MemberState, SignedState), StateRefused> {
        let fp: [u8; 32] = if signed.signer.is_empty() {
            let leaf = signed.chain.first().ok_or(StateRefused::UnknownSigner)?;
            fingerprint_bytes(leaf.as_ref())
        } else {
            <[u8; 32]>::try_from(signed.signer.as_ref())
                .map_err(|_| StateRefused::Malformed("the signer is not a SHA-256 fingerprint".into()))?
        };
        let state = MemberState::decode(signed.state.as_ref()).map_err(|e| StateRefused::Malformed(e.to_string()))?;
        let chain: Vec<Vec<u8>> = signed.chain.iter().map(|c| c.to_vec()).collect();
        let signer = self.resolve(fp, &chain, now)?;
        if signer.role != Role::Coordinator {
            return Err(StateRefused::NotCoordinator(signer.principal.clone(), signer.role));
        }
        if signer.principal.domain != state.member {
            return Err(StateRefused::WrongMember {
                claims: state.member,
                signer: signer.principal.clone(),
            });
        }
        if !signer.verifier.verify_raw(&message(&signed.state), &signed.signature) {
            return Err(StateRefused::BadSignature(state.member));
        }
        if state.version > now.saturating_add(MAX_FUTURE_MS) {
            return Err(StateRefused::Future {
                member: state.member,
                version: state.version,
                now,
            });
        }
        let full = SignedState {
            state: signed.state.clone(),
            chain: signer.chain.iter().map(|c| Bytes::from(c.clone())).collect(),
            signature: signed.signature.clone(),
            signer: Bytes::copy_from_slice(&fp),
        };
        Ok((state, full))
    }
}

fn message(state: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(STATE_CONTEXT.len() + state.len());
    m.extend_from_slice(STATE_CONTEXT);
    m.extend_from_slice(state);
    m
}

/// Signs our own state with our coordinator key.
pub(crate) fn sign(state: &MemberState, identity: &TlsIdentity, key: &TokenSigner) -> SignedState {
    let bytes = state.encode_to_vec();
    let chain = identity.chain_der();
    let signer = chain.first().map(|leaf| fingerprint_bytes(leaf).to_vec()).unwrap_or_default();
    SignedState {
        signature: Bytes::copy_from_slice(&key.sign_raw(&message(&bytes))),
        state: Bytes::from(bytes),
        chain: chain.into_iter().map(Bytes::from).collect(),
        signer: Bytes::from(signer),
    }
}

/// The same state without its chain (the receiver knows it from our datagrams' envelopes),
/// small enough to ride on SWIM messages.
pub(crate) fn without_chain(s: &SignedState) -> SignedState {
    SignedState {
        chain: vec![],
        ..s.clone()
    }
}
