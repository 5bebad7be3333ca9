//! Content-defined chunking: chunk sizes chosen by file size, and a stream chunker that
//! cuts exactly where FastCDC does while copying each byte once.

/// FastCDC minimum, average and maximum chunk sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParams {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
}

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Files from this size on (and streams of unknown size) are cut into ≈4 MiB chunks.
///
/// Every chunk costs a fixed amount wherever it goes: on each node a file, two flushes to
/// the disk (the chunk and its directory) and a signed token to check; in the metadata a
/// reference count and its locations. With ≈1 MiB chunks a 500 MB put spent a third of
/// the nodes' CPU on that, and on a disk that seeks (a homelab's usual hard disk does ~100
/// flushes a second) per-chunk flushes would cap a node near 50 MB/s. Large files are
/// mostly media and archives, whose edits are rare, so the coarser dedup costs little.
/// The mount cuts what it streams with the same sizes (it starts streaming a file only
/// past this size), so a file copied in dedups with the same file stored by `put`.
pub const LARGE_FILE: u64 = 64 << 20;

/// ≈64 KiB below 1 MiB, ≈1 MiB below [`LARGE_FILE`], ≈4 MiB from there on and for streams
/// of unknown size. Minimum and maximum are a quarter and four times the average.
pub fn chunk_params(size: Option<u64>) -> ChunkParams {
    let avg = match size {
        Some(s) if s < MIB as u64 => 64 * KIB,
        Some(s) if s < LARGE_FILE => MIB,
        _ => 4 * MIB,
    };
    ChunkParams {
        min: avg / 4,
        avg,
        max: avg * 4,
    }
}

/// One chunk of a stream: where it starts in the stream, and its bytes.
#[derive(Debug)]
pub struct Chunk {
    pub offset: u64,
    /// The chunk's bytes in order, in the chunker's segments: all but the last are whole.
    pub data: Vec<Vec<u8>>,
}

impl Chunk {
    /// The chunk's length in bytes.
    pub fn len(&self) -> usize {
        self.data.iter().map(Vec::len).sum()
    }

    /// The chunk's bytes in one buffer (a copy); its segments go back to the pool.
    pub fn into_contiguous(self) -> Vec<u8> {
        if self.data.len() == 1 {
            return self.data.into_iter().next().unwrap_or_default();
        }
        let mut all = collective_core::buffers::take(self.len());
        for seg in self.data {
            all.extend_from_slice(&seg);
            collective_core::buffers::give(seg);
        }
        all
    }
}

/// Cuts a byte stream into chunks at exactly the boundaries of
/// `fastcdc::v2020::FastCDC` (normalisation level 1, its default gear table) with the same
/// sizes, so content stored by any version dedups with content stored by this one.
///
/// fastcdc's own `StreamCDC` keeps one maximum chunk of data and, after every chunk, copies
/// the chunk out and moves the rest of its buffer to the front: with 1 MiB chunks cut from
/// a 4 MiB buffer, four bytes copied per byte stored, and a 16 MiB buffer for 4 MiB
/// chunks. This one reads straight into the chunk being cut, and its scan resumes where it
/// stopped when more arrives: each byte is hashed once, and only what was read past a
/// boundary is copied (into the next chunk).
///
/// A chunk is held in segments of a fixed size ([`segment_size`]), each filled before the
/// next is started, rather than in one buffer grown to the chunk's length: chunks vary
/// from a quarter to four times the average, and a buffer that grows takes fresh pages,
/// which cost a page fault each (a 500 MB put faulted 30,000 times, about 0.1 core-s). Segments of one size are reused from `collective_core::buffers`
/// whatever the chunk's length, and memory is the chunk being cut, whatever the stream.
pub struct Chunker<R> {
    source: R,
    params: ChunkParams,
    mask_s: u64,
    mask_l: u64,
    gear: [u64; 256],
    gear_ls: [u64; 256],
    /// The bytes of the chunk being cut, and maybe some past its end: whole segments of
    /// `seg_size` bytes but the last.
    segs: Vec<Vec<u8>>,
    /// Bytes in `segs`.
    len: usize,
    /// Segment size: even, so no byte pair the scan tests straddles two segments.
    seg_size: usize,
    /// The stream's expected length, if known (its last segment is then no larger than it
    /// needs to be).
    size_hint: Option<u64>,
    eof: bool,
    /// Stream offset of the chunk being cut.
    offset: u64,
    /// Scan state of the chunk being cut: the next byte pair to test (bytes `2 * pair`
    /// and `2 * pair + 1`) and the gear hash before it.
    pair: usize,
    hash: u64,
}

/// FastCDC's test of byte pairs `*pair..end` of `w` against `mask`: the length of the
/// chunk if a boundary is found (the same arithmetic as `fastcdc::v2020::cut_gear`,
/// which tests two bytes per step), else `None` with the state advanced.
#[inline(always)]
fn scan_pairs(w: &[u8], pair: &mut usize, end: usize, hash: &mut u64, mask: u64, gear: &[u64; 256], gear_ls: &[u64; 256]) -> Option<usize> {
    let mask_ls = mask << 1;
    let w = &w[..2 * end];
    let (mut i, mut h) = (*pair, *hash);
    let mut found = None;
    while i < end {
        let a = 2 * i;
        h = (h << 2).wrapping_add(gear_ls[w[a] as usize]);
        if h & mask_ls == 0 {
            found = Some(a);
            break;
        }
        h = h.wrapping_add(gear[w[a + 1] as usize]);
        if h & mask == 0 {
            found = Some(a + 1);
            break;
        }
        i += 1;
    }
    (*pair, *hash) = (i, h);
    found
}

/// Byte pairs after which the gear hash no longer depends on earlier bytes: each pair
/// shifts it left by two bits, and it has 64.
const WARM_PAIRS: usize = 32;

/// Pairs per lane between two tests for a boundary in [`scan_lanes`].
const BLOCK_PAIRS: usize = 8;

/// Lanes of [`scan_lanes`] in the chunker: measured on this project's 2-core VM, a gear scan
/// ran at 1.3 GB/s in one lane, 2.1 in two (pair by pair), 2.5 in two and 2.8 in three
/// with the test once per block; four and more were slower (registers run out).
const LANES: usize = 3;

/// [`scan_pairs`] in `N` interleaved lanes, with the same result. The gear hash is a chain
/// (each step needs the one before), so one lane leaves most of the core idle. The range is
/// cut into `N` parts scanned side by side, each lane after the first starting `WARM_PAIRS`
/// early so its hash is exact by then. Lanes test for a boundary once per block of
/// `BLOCK_PAIRS` pairs; a block with one is scanned again pair by pair, the earlier lanes
/// finishing their parts first, since a boundary there comes before.
fn scan_lanes<const N: usize>(
    w: &[u8],
    pair: &mut usize,
    end: usize,
    hash: &mut u64,
    mask: u64,
    gear: &[u64; 256],
    gear_ls: &[u64; 256],
) -> Option<usize> {
    let start = *pair;
    let part = (end - start) / N;
    if part < 2 * WARM_PAIRS {
        return scan_pairs(w, pair, end, hash, mask, gear, gear_ls);
    }
    let mask_ls = mask << 1;
    let at = |l: usize| start + l * part;
    let mut h = [0u64; N];
    h[0] = *hash;
    for (l, h) in h.iter_mut().enumerate().skip(1) {
        for k in at(l) - WARM_PAIRS..at(l) {
            *h = (*h << 2)
                .wrapping_add(gear_ls[w[2 * k] as usize])
                .wrapping_add(gear[w[2 * k + 1] as usize]);
        }
    }
    let blocks = part / BLOCK_PAIRS;
    let lanes: [&[[u8; 2 * BLOCK_PAIRS]]; N] = std::array::from_fn(|l| w[2 * at(l)..2 * (at(l) + blocks * BLOCK_PAIRS)].as_chunks().0);
    // `j` picks the same block in every lane.
    #[allow(clippy::needless_range_loop)]
    for j in 0..blocks {
        let saved = h;
        let mut hit = false;
        let block: [&[u8; 2 * BLOCK_PAIRS]; N] = std::array::from_fn(|l| &lanes[l][j]);
        for i in 0..BLOCK_PAIRS {
            for l in 0..N {
                let g = gear[block[l][2 * i + 1] as usize];
                h[l] = (h[l] << 2).wrapping_add(gear_ls[block[l][2 * i] as usize].wrapping_add(g));
                hit |= (h[l].wrapping_sub(g) & mask_ls == 0) | (h[l] & mask == 0);
            }
        }
        if hit {
            for (l, mut hl) in saved.into_iter().enumerate() {
                let mut next = at(l) + j * BLOCK_PAIRS;
                let stop = if l + 1 == N { end } else { at(l + 1) };
                if let Some(n) = scan_pairs(w, &mut next, stop, &mut hl, mask, gear, gear_ls) {
                    return Some(n);
                }
            }
            // Not reached (the block has a boundary); the plain scan is the reference.
            return scan_pairs(w, pair, end, hash, mask, gear, gear_ls);
        }
    }
    for (l, mut hl) in h.into_iter().enumerate() {
        let mut next = at(l) + blocks * BLOCK_PAIRS;
        let stop = if l + 1 == N { end } else { at(l + 1) };
        if let Some(n) = scan_pairs(w, &mut next, stop, &mut hl, mask, gear, gear_ls) {
            return Some(n);
        }
        if l + 1 == N {
            (*pair, *hash) = (next, hl);
        }
    }
    None
}

impl<R: std::io::Read> Chunker<R> {
    /// `size_hint`: the stream's expected length, if known (a small file then gets a small
    /// buffer); the stream may turn out longer or shorter.
    pub fn new(source: R, params: ChunkParams, size_hint: Option<u64>) -> Chunker<R> {
        debug_assert!(params.min.is_multiple_of(2) && params.avg.is_multiple_of(2) && params.max.is_multiple_of(2));
        let seg_size = segment_size(params);
        let (mask_s, mask_l) = fastcdc::v2020::select_masks(params.avg, fastcdc::v2020::Normalization::Level1);
        let (g, g_ls) = fastcdc::v2020::get_gear_with_seed(0);
        let (mut gear, mut gear_ls) = ([0u64; 256], [0u64; 256]);
        gear.copy_from_slice(&g);
        gear_ls.copy_from_slice(&g_ls);
        Chunker {
            source,
            params,
            mask_s,
            mask_l,
            gear,
            gear_ls,
            segs: Vec::new(),
            len: 0,
            seg_size,
            size_hint,
            eof: false,
            offset: 0,
            pair: params.min / 2,
            hash: 0,
        }
    }

    /// A new, empty segment for bytes from stream offset `at` on.
    fn new_segment(&self, at: u64) -> Vec<u8> {
        segment(self.seg_size, self.size_hint, at)
    }

    /// Length of the chunk being cut if it can be decided from what was read.
    ///
    /// FastCDC tests the pairs from `min / 2` on, with the strict mask before `avg` and
    /// the loose one after, up to `max`; a window of fewer bytes only ends the pairs sooner
    /// (an odd last byte is never tested). So a boundary found in part of a chunk is final,
    /// and a scan that ran out of bytes goes on from the same pair once more arrive.
    fn cut(&mut self) -> Option<usize> {
        let p = self.params;
        let pairs = (self.len / 2).min(p.max / 2);
        let s_end = pairs.min(p.avg / 2);
        if let Some(n) = self.scan(s_end, self.mask_s) {
            return Some(n);
        }
        if let Some(n) = self.scan(pairs, self.mask_l) {
            return Some(n);
        }
        if self.len >= p.max {
            Some(p.max)
        } else if self.eof {
            Some(self.len)
        } else {
            None
        }
    }

    /// Tests the pairs from `self.pair` up to `end` against `mask`, segment by segment.
    fn scan(&mut self, end: usize, mask: u64) -> Option<usize> {
        let per_seg = self.seg_size / 2;
        while self.pair < end {
            let k = self.pair / per_seg;
            let base = k * per_seg;
            let seg = &self.segs[k];
            let seg_end = (end - base).min(seg.len() / 2);
            let mut local = self.pair - base;
            let found = scan_lanes::<LANES>(seg, &mut local, seg_end, &mut self.hash, mask, &self.gear, &self.gear_ls);
            if let Some(n) = found {
                return Some(2 * base + n);
            }
            self.pair = base + local;
        }
        None
    }

    /// Appends up to a segment's worth of the stream to the chunk being cut (less if the
    /// last segment is partly filled: it is filled first).
    fn read_more(&mut self) -> std::io::Result<()> {
        use std::io::Read;
        if self.segs.last().is_none_or(|s| s.len() >= self.seg_size) {
            let seg = self.new_segment(self.offset + self.len as u64);
            self.segs.push(seg);
        }
        let Some(seg) = self.segs.last_mut() else {
            return Ok(());
        };
        let want = (self.seg_size - seg.len()) as u64;
        // `read_to_end` reads into the spare capacity without zeroing it first.
        let n = (&mut self.source).take(want).read_to_end(seg)?;
        self.len += n;
        if (n as u64) < want {
            self.eof = true;
        }
        Ok(())
    }

    /// Takes the first `len` bytes as a chunk; what was read past them starts the next one,
    /// copied to the start of a segment of its own.
    fn split(&mut self, len: usize) -> Chunk {
        let (seg_size, hint) = (self.seg_size, self.size_hint);
        let k_last = len.saturating_sub(1) / seg_size;
        let after = self.segs.split_off((k_last + 1).min(self.segs.len()));
        let next_offset = self.offset + len as u64;
        let mut next: Vec<Vec<u8>> = Vec::new();
        let mut next_len = 0usize;
        let mut carry = |mut bytes: &[u8]| {
            while !bytes.is_empty() {
                if next.last().is_none_or(|s| s.len() >= seg_size) {
                    next.push(segment(seg_size, hint, next_offset + next_len as u64));
                }
                if let Some(seg) = next.last_mut() {
                    let take = (seg_size - seg.len()).min(bytes.len());
                    seg.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    next_len += take;
                }
            }
        };
        if let Some(last) = self.segs.last_mut() {
            let cut = len - k_last * seg_size;
            carry(&last[cut..]);
            last.truncate(cut);
        }
        for seg in after {
            carry(&seg);
            collective_core::buffers::give(seg);
        }
        let chunk = Chunk {
            offset: self.offset,
            data: std::mem::replace(&mut self.segs, next),
        };
        self.len = next_len;
        self.offset = next_offset;
        (self.pair, self.hash) = (self.params.min / 2, 0);
        chunk
    }
}

/// Bytes per segment: a quarter of the average chunk, at most 1 MiB (a chunk of a large file
/// is then four to sixteen segments), and at least 64 KiB, so a small file is one segment
/// and goes out as one piece. Even, as the scan needs.
fn segment_size(params: ChunkParams) -> usize {
    (params.avg / 4).clamp(64 * KIB, MIB)
}

/// An empty segment of `seg_size` bytes for bytes from stream offset `at` on, or as many as
/// the stream's expected size leaves, plus one (so its end shows without a read into a
/// grown buffer).
fn segment(seg_size: usize, size_hint: Option<u64>, at: u64) -> Vec<u8> {
    let cap = match size_hint {
        Some(size) => usize::try_from(size.saturating_sub(at).saturating_add(1)).map_or(seg_size, |left| left.min(seg_size)),
        None => seg_size,
    };
    collective_core::buffers::take(cap)
}

impl<R: std::io::Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Chunk>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.len == 0 && self.eof {
                return None;
            }
            if self.len > 0
                && let Some(len) = self.cut()
            {
                return Some(Ok(self.split(len)));
            }
            if let Err(e) = self.read_more() {
                return Some(Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_file_size() {
        assert_eq!(chunk_params(Some(100)).avg, 64 * KIB);
        assert_eq!(chunk_params(Some(20 << 20)).avg, MIB);
        assert_eq!(chunk_params(Some(LARGE_FILE - 1)).avg, MIB);
        assert_eq!(chunk_params(Some(LARGE_FILE)).avg, 4 * MIB);
        assert_eq!(chunk_params(Some(2 << 30)).avg, 4 * MIB);
        assert_eq!(chunk_params(None).avg, 4 * MIB);
        let p = chunk_params(Some(2 << 30));
        assert!(p.max <= fastcdc::v2020::MAXIMUM_MAX && p.min <= fastcdc::v2020::MINIMUM_MAX);
    }

    /// Pseudo-random bytes with a run of zeros (where only the maximum size cuts).
    fn sample(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let zeros = len / 3..len / 3 + (len / 4);
        data[zeros].fill(0);
        data
    }

    /// Hands out a stream in reads of varying, often tiny, sizes.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            self.step = (self.step * 7919 + 13) % 300_007;
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn the_chunker_cuts_exactly_where_fastcdc_does_whatever_the_reads() {
        for (size, params_for) in [
            (0usize, 0u64),
            (1, 1),
            (70_000, 70_000),
            (3 << 20, 3 << 20),
            (21 << 20, 21 << 20),
            (9 << 20, 2 << 30),
        ] {
            let data = sample(size, size as u64 + 7);
            let p = chunk_params(Some(params_for));
            let expected: Vec<(u64, usize)> = fastcdc::v2020::FastCDC::new(&data, p.min, p.avg, p.max)
                .map(|c| (c.offset as u64, c.length))
                .collect();
            let check = |chunks: Vec<Chunk>, how: &str| {
                let got: Vec<(u64, usize)> = chunks.iter().map(|c| (c.offset, c.len())).collect();
                assert_eq!(got, expected, "{size} bytes, {how}");
                let seg_size = segment_size(p);
                for c in &chunks {
                    assert_eq!(c.data.concat(), data[c.offset as usize..c.offset as usize + c.len()]);
                    let (last, whole) = c.data.split_last().expect("a chunk has a segment");
                    assert!(
                        whole.iter().all(|s| s.len() == seg_size) && !last.is_empty() && last.len() <= seg_size,
                        "{size} bytes, {how}: segments of {:?} bytes",
                        c.data.iter().map(Vec::len).collect::<Vec<_>>()
                    );
                }
            };
            for hint in [Some(size as u64), None, Some(10)] {
                let whole: Vec<Chunk> = Chunker::new(&data[..], p, hint).collect::<Result<_, _>>().unwrap();
                check(whole, "whole reads");
            }
            let trickled = Chunker::new(Trickle { data: &data, step: 1 }, p, Some(size as u64));
            check(trickled.collect::<Result<_, _>>().unwrap(), "short reads");
        }
    }

    #[test]
    fn lanes_find_the_same_boundary_and_leave_the_same_state_as_one_lane() {
        let mut x = 99u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let data: Vec<u8> = (0..(256 << 10)).map(|_| next() as u8).collect();
        let (g, g_ls) = fastcdc::v2020::get_gear_with_seed(0);
        let (mut gear, mut gear_ls) = ([0u64; 256], [0u64; 256]);
        gear.copy_from_slice(&g);
        gear_ls.copy_from_slice(&g_ls);
        let (mut found, mut missed) = (0, 0);
        for trial in 0..3000 {
            // From one boundary every 2^4 pairs to none at all; ranges from a few pairs to
            // thousands, starting where the hash starts or somewhat after.
            let bits = [4u32, 7, 9, 12, 40][trial % 5];
            let mask = (0..bits).fold(0u64, |m, i| m | 1 << (63 - 3 * i as u64 % 64));
            let hash_start = next() as usize % 1000;
            let start = hash_start + next() as usize % 200;
            let end = (start + next() as usize % [300, 3000, 60_000][trial % 3]).min(data.len() / 2);
            let (mut pair, mut hash) = (hash_start, 0u64);
            assert_eq!(scan_pairs(&data, &mut pair, start, &mut hash, u64::MAX, &gear, &gear_ls), None);
            let (mut p1, mut h1) = (start, hash);
            let one = scan_pairs(&data, &mut p1, end, &mut h1, mask, &gear, &gear_ls);
            for (n, (mut pn, mut hn)) in [2usize, 3, 4].into_iter().map(|n| (n, (start, hash))) {
                let many = match n {
                    2 => scan_lanes::<2>(&data, &mut pn, end, &mut hn, mask, &gear, &gear_ls),
                    3 => scan_lanes::<3>(&data, &mut pn, end, &mut hn, mask, &gear, &gear_ls),
                    _ => scan_lanes::<4>(&data, &mut pn, end, &mut hn, mask, &gear, &gear_ls),
                };
                assert_eq!(many, one, "{n} lanes, pairs {start}..{end}, {bits} mask bits");
                if one.is_none() {
                    assert_eq!((pn, hn), (p1, h1), "{n} lanes leave another state");
                }
            }
            if one.is_some() { found += 1 } else { missed += 1 }
        }
        assert!(found > 500 && missed > 500, "both outcomes are tried ({found} found, {missed} not)");
    }

    #[test]
    fn the_chunker_matches_fastcdc_over_thousands_of_small_chunks() {
        // Small sizes give many boundaries, right at the minimum and around the average
        // too, where the scan state and the switch of masks matter.
        let p = ChunkParams {
            min: 64,
            avg: 256,
            max: 1024,
        };
        let data = sample(3 << 20, 5);
        let expected: Vec<(u64, usize)> = fastcdc::v2020::FastCDC::new(&data, p.min, p.avg, p.max)
            .map(|c| (c.offset as u64, c.length))
            .collect();
        assert!(expected.len() > 5_000);
        for step in [1, 97, 4_000] {
            let got: Vec<(u64, usize)> = Chunker::new(Trickle { data: &data, step }, p, None)
                .map(|c| c.map(|c| (c.offset, c.len())))
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(got, expected, "reads starting at {step} bytes");
        }
    }

    #[test]
    fn a_read_error_ends_the_chunks_with_that_error() {
        struct Broken(usize);
        impl std::io::Read for Broken {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("disk on fire"));
                }
                let n = self.0.min(out.len());
                out[..n].fill(1);
                self.0 -= n;
                Ok(n)
            }
        }
        let mut c = Chunker::new(Broken(100_000), chunk_params(Some(100_000)), None);
        let err = c.find_map(|r| r.err()).expect("the error surfaces");
        assert!(err.to_string().contains("disk on fire"));
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
