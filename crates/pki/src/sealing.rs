//! Convergent encryption of chunks that may be stored on other members' nodes.
//!
//! The key of a chunk is BLAKE3 keyed by the datastore's secret over the plaintext, so the
//! same content in the same datastore always gives the same ciphertext (dedup still works)
//! while anyone without the secret learns nothing, not even whether they hold a copy of a
//! known file. The plaintext is sealed with ChaCha20-Poly1305 under that key (a zero nonce
//! is safe: a key never encrypts anything but its own plaintext); the chunk id is the hash
//! of the ciphertext, so nodes verify what they store without being able to read it. The
//! key and the 16-byte tag (the "seal") go into the owner's metadata, never to a node.

use prost::bytes::Bytes;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

/// Key (32 bytes) then tag (16 bytes).
pub const SEAL_LEN: usize = 48;

fn cipher(key: &[u8]) -> Option<LessSafeKey> {
    UnboundKey::new(&CHACHA20_POLY1305, key).map(LessSafeKey::new).ok()
}

/// Why a chunk could not be sealed (the crypto library refused: never for a 32-byte key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk encryption failed")]
pub struct SealError;

/// Encrypts `data` in place; returns its seal.
pub fn seal(secret: &[u8; 32], data: &mut [u8]) -> Result<[u8; SEAL_LEN], SealError> {
    let key = blake3::keyed_hash(secret, data);
    let tag = cipher(key.as_bytes())
        .ok_or(SealError)?
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key([0; 12]), Aad::empty(), data)
        .map_err(|_| SealError)?;
    let mut out = [0u8; SEAL_LEN];
    out[..32].copy_from_slice(key.as_bytes());
    out[32..].copy_from_slice(tag.as_ref());
    Ok(out)
}

/// Why a chunk does not open with its seal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the chunk's seal has {0} bytes, expected {SEAL_LEN}")]
    SealLength(usize),
    #[error("the chunk does not decrypt with the key in its manifest")]
    WrongKey,
}

/// Decrypts a chunk read from a node (already verified against its id) with its seal.
pub fn open(seal: &[u8], data: Bytes) -> Result<Bytes, OpenError> {
    if seal.len() != SEAL_LEN {
        return Err(OpenError::SealLength(seal.len()));
    }
    let mut buf = Vec::with_capacity(data.len() + 16);
    buf.extend_from_slice(&data);
    buf.extend_from_slice(&seal[32..]);
    let key = cipher(&seal[..32]).ok_or(OpenError::SealLength(seal.len()))?;
    let plain_len = key
        .open_in_place(Nonce::assume_unique_for_key([0; 12]), Aad::empty(), &mut buf)
        .map_err(|_| OpenError::WrongKey)?
        .len();
    buf.truncate(plain_len);
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_is_convergent_per_secret_and_opens_back() {
        let plain = b"family photos, 2019".to_vec();
        let (mut a, mut b, mut c) = (plain.clone(), plain.clone(), plain.clone());
        let sa = seal(&[1; 32], &mut a).unwrap();
        let sb = seal(&[1; 32], &mut b).unwrap();
        let sc = seal(&[2; 32], &mut c).unwrap();
        assert_eq!(a, b, "same secret and content: same ciphertext");
        assert_eq!(sa, sb);
        assert_ne!(a, c, "another datastore's secret: another ciphertext");
        assert_ne!(a, plain);
        assert_eq!(a.len(), plain.len());
        assert_eq!(open(&sa, Bytes::from(a.clone())).unwrap(), plain);
        assert_eq!(open(&sc, Bytes::from(c)).unwrap(), plain);
        // A wrong seal is refused, not turned into garbage.
        assert!(open(&sc, Bytes::from(a)).is_err());
    }
}
