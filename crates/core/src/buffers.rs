//! Reuse of chunk-sized byte buffers within a process.
//!
//! Chunks are read, received and sent in buffers of one to a few MiB, one after another.
//! Freshly mapped memory costs a page fault per 4 KiB on first touch, which in a virtual
//! machine whose host takes freed memory back is several times the cost of filling it
//! (a 500 MB put faulted 120,000 times; the dedup put ran at 890 instead of 1,100 MB/s).
//! Left to glibc, buffers this size come from its heaps once it has seen a few freed,
//! and the holes it keeps there grew the client's peak from 44 to 75 MB. So buffers are
//! taken from and given back to a small pool here, and everything else large is mapped
//! and unmapped exactly (the binary fixes malloc's mmap threshold). Buffers left idle for
//! a while are freed, so a process that has gone quiet does not sit on them.

use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Buffers smaller than this are left to malloc.
pub const POOLED_MIN: usize = 512 * 1024;
/// Buffers are kept with at most this capacity (a larger one is shrunk first): a buffer
/// that once held a 16 MiB chunk would otherwise keep all those pages resident while
/// holding 1 MiB ones. It fits an average 4 MiB chunk being cut plus one read.
const KEPT_CAPACITY: usize = 5 << 20;
/// Idle capacity the pool keeps at most; beyond, returned buffers are freed. This does
/// not raise the peak: a buffer is idle only because as many were in use at once a moment
/// ago; idle ones go after [`IDLE_FOR`].
const RETAIN: usize = 48 << 20;
/// Buffers idle this long are freed (checked about this often).
const IDLE_FOR: Duration = Duration::from_secs(1);

struct Idle {
    /// Most recently returned last, each with when it was returned.
    buffers: Vec<(Vec<u8>, Instant)>,
    bytes: usize,
}

impl Idle {
    /// Frees the buffers returned before `cutoff`; says whether any are left.
    fn release_before(&mut self, cutoff: Instant) -> bool {
        let stale = self.buffers.partition_point(|(_, at)| *at < cutoff);
        for (v, _) in self.buffers.drain(..stale) {
            self.bytes -= v.capacity();
        }
        !self.buffers.is_empty()
    }
}

static POOL: Mutex<Idle> = Mutex::new(Idle {
    buffers: Vec::new(),
    bytes: 0,
});

/// An empty buffer with room for at least `capacity` bytes, reused when one is idle: the
/// smallest idle one that is large enough, trimmed if it is much larger (its extra pages
/// would stay resident, unused); else the largest, grown in place.
pub fn take(capacity: usize) -> Vec<u8> {
    if capacity >= POOLED_MIN {
        let reused = POOL.lock().ok().and_then(|mut idle| {
            let caps = idle.buffers.iter().map(|(v, _)| v.capacity());
            let fit = caps.clone().enumerate().filter(|(_, c)| *c >= capacity).min_by_key(|(_, c)| *c);
            let (i, _) = fit.or_else(|| caps.enumerate().max_by_key(|(_, c)| *c))?;
            let (v, _) = idle.buffers.remove(i);
            idle.bytes -= v.capacity();
            Some(v)
        });
        if let Some(mut v) = reused {
            if v.capacity() > capacity + capacity / 4 {
                v.shrink_to(capacity);
            } else {
                v.reserve_exact(capacity);
            }
            return v;
        }
    }
    Vec::with_capacity(capacity)
}

/// Hands a buffer back for reuse, shrunk to at most [`KEPT_CAPACITY`] (or frees it, if it
/// is small or the pool already holds [`RETAIN`]).
pub fn give(mut v: Vec<u8>) {
    if v.capacity() < POOLED_MIN {
        return;
    }
    v.clear();
    v.shrink_to(KEPT_CAPACITY);
    let cap = v.capacity();
    if let Ok(mut idle) = POOL.lock()
        && idle.bytes + cap <= RETAIN
    {
        idle.bytes += cap;
        idle.buffers.push((v, Instant::now()));
        drop(idle);
        start_releasing();
    }
}

/// Starts, once per process, the thread that frees buffers left idle for [`IDLE_FOR`]. It
/// wakes once per [`IDLE_FOR`] while there are idle buffers and sleeps otherwise.
fn start_releasing() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new().name("buffer-release".into()).spawn(|| {
            loop {
                std::thread::sleep(IDLE_FOR);
                let Some(cutoff) = Instant::now().checked_sub(IDLE_FOR) else {
                    continue;
                };
                let any_left = match POOL.lock() {
                    Ok(mut idle) => idle.release_before(cutoff),
                    Err(_) => return,
                };
                if !any_left {
                    std::thread::park();
                }
            }
        });
        if let Ok(handle) = spawned {
            // Kept so `give` can wake it; if the thread could not start, idle buffers are
            // simply kept (bounded by RETAIN).
            let _ = RELEASER.set(handle.thread().clone());
        }
    });
    if let Some(t) = RELEASER.get() {
        t.unpark();
    }
}

static RELEASER: std::sync::OnceLock<std::thread::Thread> = std::sync::OnceLock::new();

/// The bytes of `v`, shared; the buffer goes back to the pool when the last reference is
/// dropped.
pub fn into_bytes(v: Vec<u8>) -> Bytes {
    if v.capacity() < POOLED_MIN {
        return Bytes::from(v);
    }
    Bytes::from_owner(Recycled(v))
}

struct Recycled(Vec<u8>);

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_reused_the_pool_stays_bounded_and_empties_when_idle() {
        let mut v = take(1 << 20);
        v.extend_from_slice(&[7u8; 1000]);
        let ptr = v.as_ptr();
        let b = into_bytes(v);
        let copy = b.clone();
        drop(b);
        assert_eq!(&copy[..3], &[7, 7, 7], "shared bytes stay valid while referenced");
        drop(copy);
        let again = take(1 << 20);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), ptr, "the idle buffer was handed out again");
        give(again);
        let two = take(2 << 20);
        let mut big = Vec::with_capacity(4 << 20);
        big.push(1u8);
        let big_ptr = big.as_ptr();
        give(two);
        give(big);
        let small = take(1 << 20);
        assert!(
            small.capacity() >= 1 << 20 && small.capacity() < 2 << 20,
            "the best fit, trimmed to what was asked"
        );
        let large = take(7 << 19);
        assert_eq!(large.as_ptr(), big_ptr, "the one large enough");
        assert!(large.capacity() >= 7 << 19);
        give(small);
        give(large);
        for _ in 0..80 {
            give(Vec::with_capacity(1 << 20));
        }
        let idle = POOL.lock().unwrap();
        assert!(idle.bytes <= RETAIN && idle.bytes == idle.buffers.iter().map(|(b, _)| b.capacity()).sum::<usize>());
        drop(idle);
        *POOL.lock().unwrap() = Idle {
            buffers: Vec::new(),
            bytes: 0,
        };
        let mut large = Vec::with_capacity(4 * KEPT_CAPACITY);
        large.resize(3 * KEPT_CAPACITY, 1u8);
        give(large);
        let idle = POOL.lock().unwrap();
        assert!(!idle.buffers.is_empty(), "a large buffer is kept too");
        assert!(idle.buffers.iter().all(|(b, _)| b.capacity() <= KEPT_CAPACITY), "but shrunk first");
        drop(idle);

        // Left alone, the pool empties itself.
        let deadline = Instant::now() + 10 * IDLE_FOR;
        while !POOL.lock().unwrap().buffers.is_empty() {
            assert!(
                Instant::now() < deadline,
                "idle buffers were still pooled after {:?}",
                10 * IDLE_FOR
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn buffers_left_idle_are_freed_and_recent_ones_kept() {
        let mut idle = Idle {
            buffers: Vec::new(),
            bytes: 0,
        };
        let start = Instant::now();
        for i in 0..4u64 {
            let v = Vec::with_capacity(POOLED_MIN);
            idle.bytes += v.capacity();
            idle.buffers.push((v, start + Duration::from_millis(i * 100)));
        }
        assert!(idle.release_before(start + Duration::from_millis(150)));
        assert_eq!(idle.buffers.len(), 2, "the two returned before the cutoff are freed");
        assert_eq!(idle.bytes, 2 * POOLED_MIN);
        assert!(!idle.release_before(start + Duration::from_secs(1)));
        assert_eq!(idle.bytes, 0);
    }
}
