//! Convergent encryption of chunks that may be stored on other members' nodes: the
//! scheme lives in `collective_pki::sealing` (the coordinator seals its metadata backups
//! the same way); this maps its error into the client's.

pub use collective_pki::sealing::{SEAL_LEN, open};

use crate::ClientError;

/// Encrypts `data` in place; returns its seal.
pub fn seal(secret: &[u8; 32], data: &mut [u8]) -> Result<[u8; SEAL_LEN], ClientError> {
    collective_pki::sealing::seal(secret, data).map_err(|e| ClientError::Other(e.to_string()))
}
