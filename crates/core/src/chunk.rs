//! Chunk identifiers: the BLAKE3 hash of the bytes a node stores.

use std::fmt;

/// Length of a chunk id in bytes (a BLAKE3 digest).
pub const CHUNK_ID_LEN: usize = 32;

/// Largest chunk anyone accepts (FastCDC's largest chunks are far smaller).
pub const MAX_CHUNK_BYTES: u64 = 64 << 20;

/// The content address of a chunk: BLAKE3 of the stored bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ChunkId(pub [u8; CHUNK_ID_LEN]);

impl ChunkId {
    /// Hashes `data` and returns its id.
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// The id of the bytes of `pieces` one after another (as if they were one buffer).
    pub fn of_pieces<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut h = blake3::Hasher::new();
        for p in pieces {
            h.update(p);
        }
        ChunkId(*h.finalize().as_bytes())
    }

    /// Parses an id from raw bytes, as carried in protobuf messages.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; CHUNK_ID_LEN]>::try_from(b).ok().map(ChunkId)
    }

    /// Parses an id from its 64-character lowercase hex form.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; CHUNK_ID_LEN];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(ChunkId(out))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; CHUNK_ID_LEN] {
        &self.0
    }

    /// A short form for log lines and error messages.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ChunkId::of(b"hello");
        assert_eq!(ChunkId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ChunkId::from_hex("zz"), None);
        assert_eq!(ChunkId::from_slice(&[1, 2, 3]), None);
    }

    #[test]
    fn the_id_of_pieces_is_the_id_of_their_bytes_together() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let whole = ChunkId::of(&data);
        assert_eq!(ChunkId::of_pieces([&data[..]]), whole);
        assert_eq!(ChunkId::of_pieces([&data[..1], &data[1..65_536], &data[65_536..]]), whole);
        assert_ne!(ChunkId::of_pieces([&data[1..]]), whole);
    }
}
