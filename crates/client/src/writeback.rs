//! Streaming a large file that only passes through local disk (the mount's overlay of a
//! file being written, its chunk cache) without growing the kernel's page cache.
//!
//! A file written front to back normally leaves every byte in the page cache, dirty until
//! the kernel writes it back and cached long after. For hundreds of MB passing through
//! that means taking hundreds of MB of memory the system has not touched recently. That is the
//! most expensive thing a write does in a virtual machine whose host hands back guest memory
//! (ballooning, free page reporting): measured here, 1.2–1.4 core-seconds for 500 MB into
//! fresh pages, against 0.15 when the same pages are reused (docs/benchmarks.md).
//!
//! [`WriteBehind`] keeps the file's cached part to three windows: each full window is
//! handed to the kernel's writeback at once, and the one two windows back, written back by
//! then, is dropped from the cache, so its pages are reused for the next window. (Waiting
//! for the window just before instead holds the writer up: measured, 7 % slower downloads
//! when `get` still wrote this way.)
//! Throughput is unchanged as long as the disk keeps up with the write-behind; bytes
//! already on disk read back as from any file. Everything here is advice to the kernel: a call it
//! does not support changes nothing but speed.

use std::fs::File;
use std::os::fd::AsRawFd;

/// How much is handed to writeback at once.
pub const WINDOW: u64 = 16 << 20;

/// The write-behind state of one file.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriteBehind {
    /// The range handed to writeback last, and the one before it, both still cached.
    pending: Option<(u64, u64)>,
    older: Option<(u64, u64)>,
    /// Where the next window of a sequential writer starts.
    next: u64,
}

impl WriteBehind {
    pub fn new() -> WriteBehind {
        WriteBehind::default()
    }

    /// Tells it that `f` holds its bytes up to `end`, written front to back: every full
    /// window up to there is released (see [`Self::release`]). May block while the kernel
    /// finishes writing an earlier window: call it where blocking is allowed.
    pub fn wrote_up_to(&mut self, f: &File, end: u64) {
        while end.saturating_sub(self.next) >= WINDOW {
            let start = self.next;
            self.release(f, start, start + WINDOW);
            self.next = start + WINDOW;
        }
    }

    /// Hands `[start, end)` of `f` to writeback, then waits for the range released two
    /// calls before to be on disk (it mostly is by then) and drops it from the cache.
    /// Blocks like [`Self::wrote_up_to`].
    pub fn release(&mut self, f: &File, start: u64, end: u64) {
        if end <= start {
            return;
        }
        sync_range(f, start, end, libc::SYNC_FILE_RANGE_WRITE);
        let older = self.pending.replace((start, end));
        if let Some((s, e)) = self.older.take() {
            write_out_and_forget(f, s, e);
        }
        self.older = older;
    }
}

/// Files written whole, one after another (a cache's entries), kept out of the page cache
/// the same way: each is handed to writeback once written, and dropped from the cache once
/// more than a window of newer files follows it.
#[derive(Debug, Default)]
pub struct DropBehind {
    queue: std::sync::Mutex<(std::collections::VecDeque<(File, u64)>, u64)>,
}

impl DropBehind {
    pub fn new() -> DropBehind {
        DropBehind::default()
    }

    /// Takes a file just written in full (`len` bytes). May block while an older file's
    /// writeback finishes: call it where blocking is allowed.
    pub fn written(&self, f: File, len: u64) {
        sync_range(&f, 0, len, libc::SYNC_FILE_RANGE_WRITE);
        let mut old = Vec::new();
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.0.push_back((f, len));
            q.1 += len;
            while q.1 > WINDOW {
                let Some((f, n)) = q.0.pop_front() else { break };
                q.1 -= n;
                old.push((f, n));
            }
        }
        for (f, n) in old {
            write_out_and_forget(&f, 0, n);
        }
    }
}

fn sync_range(f: &File, start: u64, end: u64, flags: libc::c_uint) {
    let (Ok(off), Ok(len)) = (libc::off64_t::try_from(start), libc::off64_t::try_from(end - start)) else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments; `f` is an open descriptor.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), off, len, flags);
    }
}

/// Waits until `[start, end)` is on disk, then drops its pages from the cache.
fn write_out_and_forget(f: &File, start: u64, end: u64) {
    let all = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    sync_range(f, start, end, all);
    forget_range(f, start, end);
}

/// Drops the clean cached pages of `[start, end)`; dirty ones stay.
fn forget_range(f: &File, start: u64, end: u64) {
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(start), libc::off_t::try_from(end - start)) else {
        return;
    };
    // SAFETY: posix_fadvise only reads its integer arguments; `f` is an open descriptor.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), off, len, libc::POSIX_FADV_DONTNEED);
    }
}

/// How many bytes of `f` (open for reading) the page cache holds, by mincore over a
/// read-only mapping; None where that cannot be asked.
#[cfg(test)]
fn cached_bytes(f: &File) -> Option<u64> {
    let len = usize::try_from(f.metadata().ok()?.len()).ok()?;
    if len == 0 {
        return Some(0);
    }
    // SAFETY: sysconf has no memory effects.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    // SAFETY: a fresh shared read-only mapping of an open file; unmapped below and never
    // dereferenced (mincore only inspects residency).
    let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0) };
    if addr == libc::MAP_FAILED {
        return None;
    }
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: `addr` maps `len` bytes and `vec` has one byte per page of them.
    let rc = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
    // SAFETY: unmapping exactly the mapping made above.
    unsafe {
        libc::munmap(addr, len);
    }
    (rc == 0).then(|| vec.iter().filter(|b| **b & 1 == 1).count() as u64 * page as u64)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn a_file_streamed_with_write_behind_stays_mostly_out_of_the_cache_and_reads_back_whole() {
        let dir = std::env::temp_dir().join(format!("collective-wb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let block: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let mut wb = WriteBehind::new();
        let blocks = 6 * WINDOW / (1 << 20);
        for i in 0..blocks {
            f.write_all(&block).unwrap();
            wb.wrote_up_to(&f, (i + 1) << 20);
        }
        let total = blocks << 20;
        let cached = cached_bytes(&f);
        let tmpfs = on_tmpfs(&f);
        drop(f);
        let mut back = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut back).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(back.len() as u64, total);
        assert!(back.chunks(1 << 20).all(|c| c == block.as_slice()));
        // tmpfs keeps everything in memory whatever it is told; elsewhere at most the last
        // three windows stay cached.
        if tmpfs {
            eprintln!("{} is on tmpfs: only the content was checked", dir.display());
            return;
        }
        let cached = cached.expect("mincore works on a regular file");
        assert!(cached <= 3 * WINDOW, "{cached} bytes of {total} still cached");
    }

    #[test]
    fn files_written_whole_leave_the_cache_once_a_window_of_newer_ones_follows() {
        let dir = std::env::temp_dir().join(format!("collective-db-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let block: Vec<u8> = (0..1 << 20).map(|i| (i % 241) as u8).collect();
        let behind = DropBehind::new();
        let count = 3 * WINDOW / (1 << 20);
        let mut tmpfs = false;
        for i in 0..count {
            let mut f = File::create(dir.join(i.to_string())).unwrap();
            f.write_all(&block).unwrap();
            tmpfs = on_tmpfs(&f);
            behind.written(f, block.len() as u64);
        }
        let mut cached = 0;
        for i in 0..count {
            let f = File::open(dir.join(i.to_string())).unwrap();
            cached += cached_bytes(&f).expect("mincore works on a regular file");
            let mut back = Vec::new();
            (&f).read_to_end(&mut back).unwrap();
            assert_eq!(back, block);
        }
        std::fs::remove_dir_all(&dir).unwrap();
        if tmpfs {
            eprintln!("{} is on tmpfs: only the content was checked", dir.display());
            return;
        }
        assert!(cached <= WINDOW + (1 << 20), "{cached} bytes still cached");
    }

    fn on_tmpfs(f: &File) -> bool {
        // SAFETY: plain old data; zeroed is a valid value, filled in by fstatfs.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `f` is open and `st` is a properly sized out-parameter.
        let rc = unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) };
        rc == 0 && st.f_type == libc::TMPFS_MAGIC
    }
}
