//! The FUSE mount: Collective as a local filesystem (fuser, no libfuse at run time beyond
//! `fusermount3`).
//!
//! This crate owns the kernel-facing side: inode numbers, the per-open-file content model
//! with copy-on-write commits, read-ahead and the local chunk cache. Everything it knows
//! about the cluster goes through `collective-client` with the user's own certificate, so
//! the coordinator enforces the same rights as for the CLI.

mod cache;
mod errno;
mod file;
mod fs;
mod inodes;
mod ranges;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use collective_client::Client;
use collective_proto::v1::FileKind;
use fuser::{Config, MountOption, SessionACL};

pub use fs::MountSettings;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{0}")]
    Client(#[from] collective_client::ClientError),
    #[error("{path}: {detail}")]
    Local { path: PathBuf, detail: String },
    #[error("{0}")]
    Other(String),
}

pub struct MountOptions {
    pub mountpoint: PathBuf,
    /// Remote directory to show at the mount point ("/" for everything).
    pub root: String,
    pub read_only: bool,
    pub cache_dir: PathBuf,
    /// Bound of the chunk cache on disk, bytes.
    pub cache_size: u64,
    /// Kernel request threads.
    pub threads: usize,
}

/// Plaintext kept in memory for read-ahead (all open files together).
const MEMORY_CACHE: u64 = 256 << 20;

/// Holds the cache directory for one mount at a time (the lock goes with the file).
struct CacheLock {
    _file: std::fs::File,
}

fn lock_cache(dir: &Path) -> Result<CacheLock, MountError> {
    let local = |detail: String| MountError::Local {
        path: dir.to_path_buf(),
        detail,
    };
    std::fs::create_dir_all(dir).map_err(|e| local(format!("cannot create the cache directory: {e}")))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(|e| local(format!("cannot open the cache lock: {e}")))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(local(
            "another mount is using this cache directory; unmount it or give this mount its own --cache-dir".into(),
        ));
    }
    Ok(CacheLock { _file: f })
}

/// A mounted filesystem, ready to serve: [`Mounted::run`] serves until unmounted.
pub struct Mounted {
    session: fuser::Session<fs::CollectiveFs>,
    _lock: CacheLock,
}

/// Unmounts a [`Mounted`] from another thread (for signals).
pub struct Unmounter(fuser::SessionUnmounter);

impl Unmounter {
    pub fn unmount(&mut self) -> std::io::Result<()> {
        self.0.unmount()
    }
}

impl Mounted {
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter(self.session.unmount_callable())
    }

    /// Serves the kernel's requests until the filesystem is unmounted; then commits
    /// whatever open files still hold.
    pub fn run(self) -> std::io::Result<()> {
        let Mounted { session, _lock } = self;
        session.run()
    }
}

/// Mounts; returns once the kernel has accepted the mount. Call from a thread of the
/// client's runtime (requests are served on their own threads).
pub async fn mount(client: Arc<Client>, opts: MountOptions) -> Result<Mounted, MountError> {
    let root_attr = client.stat(&opts.root).await?;
    if root_attr.kind != FileKind::Dir as i32 {
        return Err(MountError::Other(format!(
            "{} is not a directory; --datastore takes a datastore or a directory in one",
            opts.root
        )));
    }
    let meta = std::fs::metadata(&opts.mountpoint).map_err(|e| MountError::Local {
        path: opts.mountpoint.clone(),
        detail: format!("{e}; create the mount point first (mkdir -p)"),
    })?;
    if !meta.is_dir() {
        return Err(MountError::Local {
            path: opts.mountpoint.clone(),
            detail: "the mount point must be a directory".into(),
        });
    }
    let lock = lock_cache(&opts.cache_dir)?;
    let overlay_dir = opts.cache_dir.join("writes");
    // Overlays are anonymous files; anything named here is a leftover.
    let _ = std::fs::remove_dir_all(&overlay_dir);
    std::fs::create_dir_all(&overlay_dir).map_err(|e| MountError::Local {
        path: overlay_dir.clone(),
        detail: e.to_string(),
    })?;
    let chunks_dir = opts.cache_dir.join("chunks");
    let cache = cache::ChunkCache::open(client.clone(), &chunks_dir, opts.cache_size, MEMORY_CACHE).map_err(|e| MountError::Local {
        path: chunks_dir.clone(),
        detail: format!("cannot open the chunk cache: {e}"),
    })?;
    let settings = MountSettings {
        root: opts.root.clone(),
        read_only: opts.read_only,
        overlay_dir,
    };
    let rt = tokio::runtime::Handle::current();
    let fs = fs::CollectiveFs::new(rt, client, Arc::new(cache), settings, root_attr);
    let mut options = vec![
        MountOption::FSName("collective".into()),
        MountOption::Subtype("collective".into()),
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if opts.read_only {
        options.push(MountOption::RO);
    }
    let mut config = Config::default();
    config.mount_options = options;
    config.acl = SessionACL::Owner;
    config.n_threads = Some(opts.threads.max(1));
    let mountpoint = opts.mountpoint.clone();
    let session = tokio::task::spawn_blocking(move || fuser::Session::new(fs, &mountpoint, &config))
        .await
        .map_err(|e| MountError::Other(format!("mounting failed: {e}")))?
        .map_err(|e| MountError::Local {
            path: opts.mountpoint.clone(),
            detail: format!("cannot mount: {e} (is fusermount3 installed, /dev/fuse there, and the mount point not in use?)"),
        })?;
    Ok(Mounted { session, _lock: lock })
}
