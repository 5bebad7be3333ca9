//! Content-defined chunk sizes, chosen by file size so an insertion early in a file moves
//! only nearby chunk boundaries.

/// FastCDC minimum, average and maximum chunk sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParams {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
}

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// ≈64 KiB below 1 MiB, ≈1 MiB below 1 GiB, ≈4 MiB above; unknown sizes (streams) use 1 MiB.
pub fn chunk_params(size: Option<u64>) -> ChunkParams {
    let avg = match size {
        Some(s) if s < MIB as u64 => 64 * KIB,
        Some(s) if s >= 1 << 30 => 4 * MIB,
        _ => MIB,
    };
    ChunkParams {
        min: avg / 4,
        avg,
        max: avg * 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_file_size() {
        assert_eq!(chunk_params(Some(100)).avg, 64 * KIB);
        assert_eq!(chunk_params(Some(500 << 20)).avg, MIB);
        assert_eq!(chunk_params(Some(2 << 30)).avg, 4 * MIB);
        assert_eq!(chunk_params(None).avg, MIB);
        let p = chunk_params(Some(2 << 30));
        assert!(p.max <= fastcdc::v2020::MAXIMUM_MAX && p.min <= fastcdc::v2020::MINIMUM_MAX);
    }

    #[test]
    fn an_insertion_early_in_a_file_keeps_later_chunks() {
        let mut data = vec![0u8; 4 << 20];
        let mut x: u64 = 42;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let p = chunk_params(Some(data.len() as u64));
        let ids = |d: &[u8]| -> Vec<[u8; 32]> {
            fastcdc::v2020::FastCDC::new(d, p.min, p.avg, p.max)
                .map(|c| *blake3::hash(&d[c.offset..c.offset + c.length]).as_bytes())
                .collect()
        };
        let before = ids(&data);
        let mut edited = data.clone();
        edited.splice(1000..1000, b"inserted bytes".iter().copied());
        let after = ids(&edited);
        let shared = after.iter().filter(|c| before.contains(c)).count();
        assert!(
            shared + 2 >= before.len(),
            "only {shared} of {} chunks survived an insertion",
            before.len()
        );
    }
}
