//! `collective mount` and `collective umount`.
//!
//! Without `--foreground`, `mount` starts itself again in the background (a new session,
//! output to a log file in the cache directory) and returns once that process reports the
//! mount ready, or its error. No fork after the async runtime has started.

use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use collective_core::{parse_size, validate_path};

use crate::config::ClientOverrides;

/// Environment variable telling a background mount which descriptor reports readiness.
const READY_FD_ENV: &str = "COLLECTIVE_MOUNT_READY_FD";
const READY_FD: i32 = 3;

#[derive(Args)]
pub struct MountArgs {
    /// Local directory to mount on (must exist and be empty)
    pub mountpoint: PathBuf,
    /// Show only this datastore (or a directory in one), e.g. /photos, instead of everything
    #[arg(long, value_name = "PATH")]
    pub datastore: Option<String>,
    /// Refuse every change (EROFS)
    #[arg(long)]
    pub read_only: bool,
    /// Local cache of chunks and of writes not committed yet [default: ~/.cache/collective/mounts/NAME]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Bound of the chunk cache on disk
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    pub cache_size: String,
    /// Stay in the foreground (logs on stderr) until unmounted
    #[arg(long)]
    pub foreground: bool,
}

#[derive(Args)]
pub struct UmountArgs {
    /// The mount point
    pub mountpoint: PathBuf,
}

/// `$XDG_CACHE_HOME/collective`, else `~/.cache/collective`.
fn cache_home() -> Result<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|b| b.join("collective"))
        .context("cannot tell where the cache lives: set HOME (or XDG_CACHE_HOME), or pass --cache-dir")
}

/// A file-name-safe key for a mount point: its last component and a hash of the path.
fn mount_key(mountpoint: &Path) -> String {
    let text = mountpoint.to_string_lossy();
    // FNV-1a: stable across runs and versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let name: String = mountpoint
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect()
        })
        .unwrap_or_default();
    format!("{}-{h:016x}", if name.is_empty() { "root" } else { &name })
}

/// Where the background process of a mount records its pid.
fn pid_file(mountpoint: &Path) -> Result<PathBuf> {
    Ok(cache_home()?.join("pids").join(mount_key(mountpoint)))
}

fn absolute(p: &Path) -> Result<PathBuf> {
    match p.canonicalize() {
        Ok(c) => Ok(c),
        // A dead mount cannot be resolved ("transport endpoint is not connected").
        Err(_) if p.is_absolute() => Ok(p.to_path_buf()),
        Err(_) => Ok(std::env::current_dir()?.join(p)),
    }
}

/// Whether `mountpoint` is a Collective FUSE mount (per /proc/self/mountinfo).
fn is_collective_mount(mountpoint: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = mountpoint.to_string_lossy();
    info.lines().any(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-");
        let fstype = sep.and_then(|i| fields.get(i + 1)).copied().unwrap_or("");
        let source = sep.and_then(|i| fields.get(i + 2)).copied().unwrap_or("");
        // fusermount3 records the subtype ("fuse.collective") or, as root, the source.
        let ours = fstype == "fuse.collective" || (fstype.starts_with("fuse") && source == "collective");
        fields.get(4).is_some_and(|m| unescape_mountinfo(m) == want) && ours
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub async fn mount(o: &ClientOverrides, a: MountArgs) -> Result<()> {
    let mountpoint = absolute(&a.mountpoint)?;
    if is_collective_mount(&mountpoint) {
        bail!(
            "{} is already a Collective mount; unmount it first (`collective umount {}`)",
            mountpoint.display(),
            mountpoint.display()
        );
    }
    let cache_dir = match &a.cache_dir {
        Some(d) => absolute(d)?,
        None => cache_home()?.join("mounts").join(mount_key(&mountpoint)),
    };
    let cache_size = parse_size(&a.cache_size).map_err(|e| anyhow::anyhow!("--cache-size: {e}"))?;
    let root = validate_path(a.datastore.as_deref().unwrap_or("/")).map_err(|e| anyhow::anyhow!("--datastore: {e}"))?;
    if !a.foreground {
        return spawn_background(&mountpoint, &cache_dir);
    }
    let ready_fd = std::env::var(READY_FD_ENV).ok().and_then(|v| v.parse::<i32>().ok());
    let result = serve(o, &mountpoint, root.to_string(), a.read_only, &cache_dir, cache_size, ready_fd).await;
    if let (Err(e), Some(fd)) = (&result, ready_fd) {
        report_ready(fd, &format!("error: {e:#}"));
    }
    result
}

/// Writes one line to the parent's readiness pipe and closes it.
fn report_ready(fd: i32, line: &str) {
    // SAFETY: the descriptor was handed to us by the parent for this one message; taking
    // ownership closes it afterwards.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let _ = writeln!(f, "{line}");
}

async fn serve(
    o: &ClientOverrides,
    mountpoint: &Path,
    root: String,
    read_only: bool,
    cache_dir: &Path,
    cache_size: u64,
    ready_fd: Option<i32>,
) -> Result<()> {
    let cfg = crate::config::client_config(o)?;
    let client = Arc::new(collective_client::Client::connect(&cfg)?);
    let opts = collective_fuse::MountOptions {
        mountpoint: mountpoint.to_path_buf(),
        root: root.clone(),
        read_only,
        cache_dir: cache_dir.to_path_buf(),
        cache_size,
        threads: 8,
    };
    let mut mounted = collective_fuse::mount(client.clone(), opts)
        .await
        .with_context(|| format!("mounting {}", mountpoint.display()))?;
    let pid_path = pid_file(mountpoint)?;
    if let Some(dir) = pid_path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(&pid_path, std::process::id().to_string());
    tracing::info!(mountpoint = %mountpoint.display(), %root, "mounted");
    match ready_fd {
        Some(fd) => report_ready(fd, "ok"),
        None => eprintln!(
            "mounted {root} at {} (read-only: {read_only}); Ctrl-C or `collective umount {}` to unmount",
            mountpoint.display(),
            mountpoint.display()
        ),
    }
    let mut unmounter = mounted.unmounter();
    let serving = tokio::task::spawn_blocking(move || mounted.run());
    let mp = mountpoint.to_path_buf();
    let signals = tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received: unmounting {}", mp.display());
        let lazy = tokio::task::spawn_blocking(move || unmounter.unmount()).await;
        if !matches!(lazy, Ok(Ok(()))) {
            // Busy: detach now; the kernel finishes once open files are closed.
            let _ = std::process::Command::new("fusermount3").arg("-uz").arg(&mp).status();
        }
    });
    let result = serving.await.context("the mount's request loop failed")?;
    signals.abort();
    client.close().await;
    let _ = std::fs::remove_file(&pid_path);
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    result.with_context(|| format!("serving {}", mountpoint.display()))
}

/// Starts `collective mount ... --foreground` in the background and waits for it to report.
fn spawn_background(mountpoint: &Path, cache_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(cache_dir).with_context(|| format!("cannot create the cache directory {}", cache_dir.display()))?;
    let log_path = cache_dir.join("mount.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open the log {}", log_path.display()))?;
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("cannot create a pipe: {}", std::io::Error::last_os_error());
    }
    let (read_fd, write_fd) = (fds[0], fds[1]);
    let exe = std::env::current_exe().context("cannot find this program's own path")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .arg("--foreground")
        .env(READY_FD_ENV, READY_FD.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            if write_fd == READY_FD {
                let flags = libc::fcntl(READY_FD, libc::F_GETFD);
                libc::fcntl(READY_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(write_fd, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("cannot start the background mount process");
    // SAFETY: both descriptors are ours; the parent keeps only the read end.
    let mut reader = unsafe {
        libc::close(write_fd);
        std::fs::File::from_raw_fd(read_fd)
    };
    let child = child?;
    let mut answer = String::new();
    let _ = reader.read_to_string(&mut answer);
    let answer = answer.trim();
    if answer == "ok" {
        println!(
            "mounted at {} (pid {}; log {}); unmount with `collective umount {}`",
            mountpoint.display(),
            child.id(),
            log_path.display(),
            mountpoint.display()
        );
        return Ok(());
    }
    let why = answer.strip_prefix("error: ").unwrap_or(answer);
    if why.is_empty() {
        bail!("the mount process exited before the mount was ready; see {}", log_path.display());
    }
    bail!("{why}")
}

pub async fn umount(a: UmountArgs) -> Result<()> {
    let mountpoint = absolute(&a.mountpoint)?;
    if !is_collective_mount(&mountpoint) {
        bail!(
            "{} is not a Collective mount (see `mount -t fuse.collective`)",
            mountpoint.display()
        );
    }
    let pid = pid_file(&mountpoint)
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.trim().parse::<i32>().ok());
    let out = tokio::process::Command::new("fusermount3")
        .arg("-u")
        .arg(&mountpoint)
        .output()
        .await
        .context("cannot run fusermount3; install the fuse3 package")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("busy") {
            bail!(
                "{} is busy: a program still has a file or directory open in it (`fuser -vm {}` shows which); close it and retry, or detach now with `fusermount3 -uz {}`",
                mountpoint.display(),
                mountpoint.display(),
                mountpoint.display()
            );
        }
        bail!("fusermount3 -u {} failed: {}", mountpoint.display(), err.trim());
    }
    // The mount process commits anything left open, then exits: wait for it.
    if let Some(pid) = pid {
        let deadline = Instant::now() + Duration::from_secs(300);
        // SAFETY: signal 0 only checks that the process exists.
        while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!("unmounted {}", mountpoint.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_keys_are_stable_and_safe_as_file_names() {
        let a = mount_key(Path::new("/mnt/my data"));
        assert_eq!(a, mount_key(Path::new("/mnt/my data")));
        assert!(a.starts_with("mydata-"), "{a}");
        assert_ne!(a, mount_key(Path::new("/srv/my data")));
        assert!(mount_key(Path::new("/")).starts_with("root-"));
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b"), "/mnt/a b");
    }
}
