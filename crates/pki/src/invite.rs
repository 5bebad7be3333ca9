//! Invite codes: what one person sends another to bring a new member or user in.
//!
//! A code carries the coordinator to contact, the SHA-256 fingerprint of that
//! coordinator's public key (so the first contact needs no certificate of our own and
//! cannot be intercepted, and a renewal of the coordinator's certificate keeps codes good), the invite id and its expiry, all signed with the coordinator's
//! key so a code that was altered is refused. The coordinator keeps the authoritative
//! record (uses, revocation, grants) in its metadata.

use serde::{Deserialize, Serialize};

use crate::{PkiError, TokenSigner, TokenVerifier};

/// Codes start with this, so they are recognisable and versioned.
pub const INVITE_PREFIX: &str = "collective-invite-v1:";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InviteCodeKind {
    Member,
    User,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteCode {
    pub id: [u8; 16],
    pub kind: InviteCodeKind,
    /// Federation domain, e.g. `collective.local`.
    pub federation: String,
    /// Principal of the inviting coordinator.
    pub coordinator: String,
    /// Its gRPC address.
    pub addr: String,
    /// SHA-256 of its public key (codes made before keys were pinned: of its certificate).
    pub fingerprint: [u8; 32],
    pub expires_ms: u64,
}

impl InviteCode {
    /// The text form, signed with `signer`.
    pub fn encode(&self, signer: &TokenSigner) -> String {
        use base64::Engine;
        // Serialising a plain struct into a Vec cannot fail.
        let mut body = postcard::to_allocvec(self).unwrap_or_default();
        let sig = signer.sign_raw(&body);
        body.extend_from_slice(&sig);
        format!("{INVITE_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body))
    }

    /// Reads a code without checking its signature (the invitee cannot: it does not know
    /// the coordinator's key yet; the coordinator checks it with [`InviteCode::verify`]).
    pub fn decode(code: &str) -> Result<(InviteCode, Vec<u8>, Vec<u8>), PkiError> {
        use base64::Engine;
        let bad = |why: &str| {
            PkiError::Invalid(format!(
                "this is not a valid invite code ({why}); copy the whole code, it starts with {INVITE_PREFIX}"
            ))
        };
        let text = code.trim().strip_prefix(INVITE_PREFIX).ok_or_else(|| bad("wrong prefix"))?;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| bad("damaged text"))?;
        if raw.len() < 64 {
            return Err(bad("too short"));
        }
        let (body, sig) = raw.split_at(raw.len() - 64);
        let invite: InviteCode = postcard::from_bytes(body).map_err(|_| bad("damaged contents"))?;
        Ok((invite, body.to_vec(), sig.to_vec()))
    }

    /// Decodes a code and checks it was signed by `verifier`'s key.
    pub fn verify(code: &str, verifier: &TokenVerifier) -> Result<InviteCode, PkiError> {
        let (invite, body, sig) = InviteCode::decode(code)?;
        if !verifier.verify_raw(&body, &sig) {
            return Err(PkiError::Invalid(
                "this invite code was altered or not issued by this coordinator; ask for a new one".into(),
            ));
        }
        Ok(invite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_tampering_is_detected() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let der = key.to_pkcs8_der().unwrap();
        let signer = TokenSigner::from_pkcs8(der.as_bytes(), "coordinator@alice.collective.local".into()).unwrap();
        let verifier = TokenVerifier::new(&signer.public_key()).unwrap();
        let code = InviteCode {
            id: [1; 16],
            kind: InviteCodeKind::User,
            federation: "collective.local".into(),
            coordinator: "coordinator@alice.collective.local".into(),
            addr: "127.0.0.1:7000".into(),
            fingerprint: [9; 32],
            expires_ms: 123,
        };
        let text = code.encode(&signer);
        assert!(text.starts_with(INVITE_PREFIX));
        assert_eq!(InviteCode::verify(&text, &verifier).unwrap(), code);
        // Flip one character of the body.
        let mut chars: Vec<char> = text.chars().collect();
        let i = INVITE_PREFIX.len() + 10;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        let tampered: String = chars.into_iter().collect();
        assert!(InviteCode::verify(&tampered, &verifier).is_err());
        assert!(InviteCode::decode("hello").is_err());
        assert!(InviteCode::decode(&format!("{INVITE_PREFIX}AAAA")).is_err());
    }
}
