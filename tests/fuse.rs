//! The FUSE mount with real mounts (`/dev/fuse`, `fusermount3`) of a real local cluster:
//! copies in and out, a seeded random-operation test against a reference file, a source
//! tree and a git repository inside the mount, POSIX corner cases, rights, a node dying
//! during a read, and unmounting while a program is writing.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Cluster, Rng, p, pid_alive, random_bytes, within};

const BIN: &str = env!("CARGO_BIN_EXE_collective");

/// A background mount (`collective mount`), unmounted (and its process stopped) on drop.
struct Mount {
    point: PathBuf,
    cache_home: PathBuf,
    config: PathBuf,
    pid: u32,
}

impl Mount {
    fn new(c: &Cluster, name: &str, extra: &[&str]) -> Mount {
        Self::with_config(c, &c.client_config, name, extra)
    }

    fn with_config(c: &Cluster, config: &Path, name: &str, extra: &[&str]) -> Mount {
        let point = c.path(name);
        std::fs::create_dir_all(&point).unwrap();
        let cache_home = c.path(&format!("{name}-cache"));
        let out = Command::new(BIN)
            .env("COLLECTIVE_CONFIG", config)
            .env("XDG_CACHE_HOME", &cache_home)
            .arg("mount")
            .arg(&point)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let pid = text
            .split("(pid ")
            .nth(1)
            .and_then(|r| r.split(';').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no pid in: {text}"));
        Mount {
            point,
            cache_home,
            config: config.to_path_buf(),
            pid,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.point.join(rel)
    }

    fn umount(&self) -> std::process::Output {
        Command::new(BIN)
            .env("COLLECTIVE_CONFIG", &self.config)
            .env("XDG_CACHE_HOME", &self.cache_home)
            .arg("umount")
            .arg(&self.point)
            .output()
            .unwrap()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if pid_alive(self.pid) {
            let _ = self.umount();
            let _ = Command::new("fusermount3").arg("-uz").arg(&self.point).output();
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
    }
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

#[test]
fn a_100mib_file_copied_in_and_out_is_byte_exact_and_the_cli_reads_the_same() {
    let c = Cluster::start("fuse-copy", 3, 2);
    c.ok(&["mkdir", "/data"]);
    let m = Mount::new(&c, "mnt", &[]);
    let data = random_bytes(100 << 20, 1);
    let local = c.write_local("big.bin", &data);
    let st = Command::new("cp").arg(&local).arg(m.path("data/big.bin")).status().unwrap();
    assert!(st.success());
    // The CLI sees the committed file as soon as cp has closed it.
    let cli = c.cmd().args(["cat", "/data/big.bin"]).output().unwrap();
    assert!(cli.status.success());
    assert!(cli.stdout == data, "the CLI reads different bytes than were copied in");
    let back = c.path("back.bin");
    let st = Command::new("cp").arg(m.path("data/big.bin")).arg(&back).status().unwrap();
    assert!(st.success());
    let st = Command::new("cmp").arg(&local).arg(&back).status().unwrap();
    assert!(st.success(), "copied out bytes differ");
    assert_eq!(std::fs::metadata(m.path("data/big.bin")).unwrap().len(), 100 << 20);
    // A file put by the CLI reads the same through the mount.
    c.ok(&["put", p(&local), "/data/via-cli.bin"]);
    let mut f = File::open(m.path("data/via-cli.bin")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    f.seek(SeekFrom::Start(50 << 20)).unwrap();
    f.read_exact(&mut buf).unwrap();
    assert!(buf == data[50 << 20..51 << 20], "a read after a seek returns other bytes");
    // Busy while a file is open: refused with the reason, the mount stays.
    let out = m.umount();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("busy"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(f);
    let out = m.umount();
    assert!(out.status.success(), "umount: {}", String::from_utf8_lossy(&out.stderr));
    within(Duration::from_secs(30), "the mount process exits after umount", || {
        !pid_alive(m.pid)
    });
}

fn read_all(f: &File, len: u64) -> Vec<u8> {
    let mut out = vec![0u8; len as usize];
    let mut done = 0;
    while done < out.len() {
        let n = f.read_at(&mut out[done..], done as u64).unwrap();
        if n == 0 {
            break;
        }
        done += n;
    }
    out.truncate(done);
    out
}

#[test]
fn random_writes_truncates_and_reads_match_a_reference_file() {
    // COLLECTIVE_FSX_SEED=N reproduces a failing run; COLLECTIVE_FSX_OPS sets its length.
    let seed: u64 = std::env::var("COLLECTIVE_FSX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x05ee_df5c);
    let full_every_step = std::env::var("COLLECTIVE_FSX_FULL").is_ok();
    let ops: usize = std::env::var("COLLECTIVE_FSX_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let c = Cluster::start("fuse-fsx", 3, 2);
    c.ok(&["mkdir", "/data"]);
    let m = Mount::new(&c, "mnt", &[]);
    let reference_path = c.path("reference");
    let reference = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&reference_path)
        .unwrap();
    let open = |path: &Path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap()
    };
    let target = m.path("data/fsx.bin");
    let mut file = open(&target);
    let mut rng = Rng(seed | 1);
    let max_size: u64 = 6 << 20;
    let mut size: u64 = 0;
    for step in 0..ops {
        let what = rng.below(100);
        let ctx = |op: String| format!("seed {seed}, step {step}: {op}");
        let op = if what < 55 {
            // A write anywhere, also past the end (sparse), of 1 byte to 300 KiB.
            let off = rng.below(max_size);
            let big = rng.below(4) == 0;
            let len = 1 + rng.below(if big { 300 << 10 } else { 4096 });
            let len = len.min(max_size - off);
            let data = random_bytes(len as usize, rng.next());
            file.write_all_at(&data, off)
                .unwrap_or_else(|e| panic!("{}", ctx(format!("write {len} at {off}: {e}"))));
            reference.write_all_at(&data, off).unwrap();
            size = size.max(off + len);
            format!("write {len} at {off}")
        } else if what < 65 {
            let to = rng.below(max_size);
            file.set_len(to)
                .unwrap_or_else(|e| panic!("{}", ctx(format!("truncate to {to}: {e}"))));
            reference.set_len(to).unwrap();
            size = to;
            format!("truncate to {to}")
        } else if what < 70 {
            file.sync_all().unwrap_or_else(|e| panic!("{}", ctx(format!("fsync: {e}"))));
            "fsync".to_string()
        } else if what < 74 {
            // Close (commits) and open again: the committed version must read the same.
            drop(file);
            file = open(&target);
            "close and reopen".to_string()
        } else {
            let off = rng.below(size.max(1));
            let len = 1 + rng.below(256 << 10);
            let mut got = vec![0u8; len as usize];
            let n = file
                .read_at(&mut got, off)
                .unwrap_or_else(|e| panic!("{}", ctx(format!("read {len} at {off}: {e}"))));
            let mut want = vec![0u8; len as usize];
            let k = reference.read_at(&mut want, off).unwrap();
            assert_eq!(n, k, "{}", ctx(format!("read {len} at {off}: length")));
            assert!(got[..n] == want[..k], "{}", ctx(format!("read {len} at {off}: bytes differ")));
            format!("read {len} at {off}")
        };
        if full_every_step {
            eprintln!("step {step}: {op} (size {size})");
        }
        // After every step: the size, and after every few, the whole content.
        let got_len = file.metadata().unwrap().len();
        assert_eq!(got_len, size, "{}", ctx(format!("{op}: size")));
        if step % 25 == 0 || op.starts_with("close") || full_every_step {
            let got = read_all(&file, size);
            let want = read_all(&reference, size);
            let first = got.iter().zip(&want).position(|(a, b)| a != b);
            assert!(
                got == want,
                "{}",
                ctx(format!(
                    "{op}: content differs from the reference (first at {first:?}, lengths {} and {})",
                    got.len(),
                    want.len()
                ))
            );
        }
    }
    drop(file);
    // What the CLI reads is the last committed version: the same bytes.
    let want = read_all(&reference, size);
    let cli = c.cmd().args(["cat", "/data/fsx.bin"]).output().unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    assert!(
        cli.stdout == want,
        "seed {seed}: the CLI reads other bytes than the reference after close"
    );
}

#[test]
fn an_untarred_tree_matches_the_original_and_git_works_inside_the_mount() {
    let c = Cluster::start("fuse-tree", 3, 2);
    c.ok(&["mkdir", "/src"]);
    let m = Mount::new(&c, "mnt", &[]);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tarball = c.path("tree.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&repo)
        .args(["-cf", p(&tarball), "crates", "proto", "docs"])
        .status()
        .unwrap();
    assert!(st.success());
    let dest = m.path("src");
    let st = Command::new("tar")
        .args(["--no-same-owner", "-xf", p(&tarball), "-C", p(&dest)])
        .status()
        .unwrap();
    assert!(st.success(), "untar into the mount failed");
    let original = c.path("original");
    std::fs::create_dir_all(&original).unwrap();
    let st = Command::new("tar").args(["-xf", p(&tarball), "-C", p(&original)]).status().unwrap();
    assert!(st.success());
    let diff = Command::new("diff").arg("-r").arg(&original).arg(&dest).output().unwrap();
    assert!(diff.status.success(), "diff -r: {}", String::from_utf8_lossy(&diff.stdout));

    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.email=t@example.org",
                "-c",
                "user.name=t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(m.path("src"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "tree"]);
    git(&["fsck", "--full"]);
    std::fs::write(m.path("src/docs/new.md"), "more\n").unwrap();
    git(&["add", "docs/new.md"]);
    git(&["commit", "-qm", "second"]);
    git(&["fsck", "--full"]);
    assert_eq!(git(&["log", "--oneline"]).lines().count(), 2);
    assert!(git(&["status", "--porcelain"]).trim().is_empty(), "the work tree should be clean");
}

#[test]
fn posix_corner_cases_rename_over_rmdir_nonempty_unlink_while_open_and_errors() {
    let c = Cluster::start("fuse-posix", 3, 2);
    c.ok(&["mkdir", "/data"]);
    c.ok(&["datastore", "create", "/vault", "--strategy", "media"]);
    let m = Mount::new(&c, "mnt", &[]);
    let d = m.path("data");
    // rename over an existing file replaces it, within and across directories.
    std::fs::write(d.join("a"), "new").unwrap();
    std::fs::write(d.join("b"), "old").unwrap();
    std::fs::rename(d.join("a"), d.join("b")).unwrap();
    assert_eq!(std::fs::read_to_string(d.join("b")).unwrap(), "new");
    assert!(!d.join("a").exists());
    std::fs::create_dir(d.join("sub")).unwrap();
    std::fs::write(d.join("sub/c"), "other").unwrap();
    std::fs::rename(d.join("b"), d.join("sub/c")).unwrap();
    assert_eq!(c.ok(&["cat", "/data/sub/c"]), "new");
    // rmdir of a non-empty directory: ENOTEMPTY; of a file: ENOTDIR; unlink of a dir: EISDIR.
    let e = std::fs::remove_dir(d.join("sub")).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOTEMPTY, "{e}");
    let e = std::fs::remove_dir(d.join("sub/c")).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOTDIR, "{e}");
    let e = std::fs::remove_file(d.join("sub")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EISDIR, "{e}");
    let e = std::fs::create_dir(d.join("sub")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EEXIST, "{e}");
    let e = std::fs::read(d.join("missing")).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOENT, "{e}");
    let e = std::fs::write(d.join("sub/c/x"), "x").unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOTDIR, "{e}");
    // Hard links are refused cleanly.
    let e = std::fs::hard_link(d.join("sub/c"), d.join("hard")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EPERM, "{e}");
    // A move into another datastore: EXDEV, so `mv` copies and deletes instead.
    let e = std::fs::rename(d.join("sub/c"), m.path("vault/c")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EXDEV, "{e}");
    std::fs::write(d.join("moving"), "moved").unwrap();
    let st = Command::new("mv")
        .arg(d.join("moving"))
        .arg(m.path("vault/moved"))
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(c.ok(&["cat", "/vault/moved"]), "moved");
    assert!(!d.join("moving").exists());
    // An unlinked file stays readable through a descriptor opened before.
    let data = random_bytes(3 << 20, 9);
    std::fs::write(d.join("open"), &data).unwrap();
    let f = File::open(d.join("open")).unwrap();
    std::fs::remove_file(d.join("open")).unwrap();
    assert!(!d.join("open").exists());
    assert!(read_all(&f, data.len() as u64) == data, "an unlinked open file must stay readable");
    drop(f);
    c.fails(&["stat", "/data/open"]);
    // Symbolic links, modes and times.
    std::os::unix::fs::symlink("sub/c", d.join("link")).unwrap();
    assert_eq!(std::fs::read_link(d.join("link")).unwrap(), Path::new("sub/c"));
    assert_eq!(std::fs::read_to_string(d.join("link")).unwrap(), "new");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("sub/c"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(std::fs::metadata(d.join("sub/c")).unwrap().permissions().mode() & 0o777, 0o600);
    let st = Command::new("touch")
        .args(["-d", "2020-02-03 04:05:06Z"])
        .arg(d.join("sub/c"))
        .status()
        .unwrap();
    assert!(st.success());
    let mtime = std::fs::metadata(d.join("sub/c")).unwrap().modified().unwrap();
    assert_eq!(mtime.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(), 1_580_702_706);
    // Truncate up and down through setattr with no descriptor open.
    let st = Command::new("truncate").args(["-s", "10"]).arg(d.join("sub/c")).status().unwrap();
    assert!(st.success());
    assert_eq!(std::fs::read(d.join("sub/c")).unwrap(), b"new\0\0\0\0\0\0\0");
    // statfs shows the cluster's room.
    let out = Command::new("df").arg("-B1").arg(&m.point).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let total: u64 = text
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(total > 0, "df shows no capacity: {text}");
    // A large directory lists in full.
    std::fs::create_dir(d.join("many")).unwrap();
    for i in 0..1500 {
        File::create(d.join(format!("many/f{i:05}"))).unwrap();
    }
    assert_eq!(std::fs::read_dir(d.join("many")).unwrap().count(), 1500);
    assert_eq!(c.ok(&["ls", "/data/many"]).lines().count(), 1500);
}

#[test]
fn a_read_only_grant_reads_but_cannot_write_and_ungranted_datastores_are_hidden() {
    let c = Cluster::start("fuse-rights", 3, 2);
    c.ok(&["datastore", "create", "/shared"]);
    c.ok(&["datastore", "create", "/private"]);
    let local = c.write_local("doc.txt", b"shared document\n");
    c.ok(&["put", p(&local), "/shared/doc.txt"]);
    c.ok(&["put", p(&local), "/private/doc.txt"]);
    // A second user of this member with a read grant on /shared only.
    let guest_config = c.second_user("guest");
    c.ok(&["datastore", "grant", "/shared", "guest@home.collective.local", "read"]);
    let m = Mount::with_config(&c, &guest_config, "guest-mnt", &[]);
    let names: Vec<String> = std::fs::read_dir(&m.point)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["shared".to_string()], "only the granted datastore is listed");
    assert_eq!(std::fs::read_to_string(m.path("shared/doc.txt")).unwrap(), "shared document\n");
    let e = std::fs::write(m.path("shared/new.txt"), "x").unwrap_err();
    assert_eq!(errno_of(&e), libc::EACCES, "{e}");
    let e = OpenOptions::new().write(true).open(m.path("shared/doc.txt")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EACCES, "{e}");
    let e = std::fs::remove_file(m.path("shared/doc.txt")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EACCES, "{e}");
    let e = std::fs::create_dir(m.path("shared/dir")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EACCES, "{e}");
    assert!(std::fs::read(m.path("private/doc.txt")).is_err());
    assert_eq!(c.ok(&["cat", "/shared/doc.txt"]), "shared document\n", "nothing changed");
    // --read-only refuses writes even where the user may write.
    let ro = Mount::new(&c, "ro-mnt", &["--read-only", "--datastore", "/shared"]);
    assert_eq!(std::fs::read_to_string(ro.path("doc.txt")).unwrap(), "shared document\n");
    let e = std::fs::write(ro.path("other.txt"), "x").unwrap_err();
    assert_eq!(errno_of(&e), libc::EROFS, "{e}");
}

#[test]
fn a_node_killed_during_a_sequential_read_does_not_break_the_read() {
    let c = Cluster::start("fuse-kill", 3, 2);
    c.ok(&["mkdir", "/data"]);
    let data = random_bytes(64 << 20, 4);
    let local = c.write_local("movie.bin", &data);
    c.ok(&["put", p(&local), "/data/movie.bin"]);
    let m = Mount::new(&c, "mnt", &[]);
    let mut f = File::open(m.path("data/movie.bin")).unwrap();
    let mut got = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; 256 << 10];
    let mut killed = false;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if !killed && got.len() >= 8 << 20 {
            c.kill9("node-02");
            killed = true;
        }
    }
    assert!(killed);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the read returned other bytes after a node died");
}

#[test]
fn unmounting_while_a_program_writes_loses_nothing_closed_or_fsynced() {
    let c = Cluster::start("fuse-umount", 3, 2);
    c.ok(&["mkdir", "/data"]);
    let m = Mount::new(&c, "mnt", &[]);
    // A file written and fsynced, still open when the mount goes away.
    let synced = random_bytes(2 << 20, 11);
    let mut held = File::create(m.path("data/synced.bin")).unwrap();
    held.write_all(&synced).unwrap();
    held.sync_all().unwrap();
    let out = c.cmd().args(["cat", "/data/synced.bin"]).output().unwrap();
    assert!(out.stdout == synced, "fsync commits");
    // A writer closing one file after another while the mount is stopped.
    let dir = m.path("data");
    let writer = std::thread::spawn(move || {
        let mut closed = Vec::new();
        for i in 0..10_000u64 {
            let path = dir.join(format!("f{i:05}"));
            let body = random_bytes(20_000 + (i as usize % 7) * 3000, i);
            let r = File::create(&path).and_then(|mut f| {
                f.write_all(&body)?;
                // Dropping a File ignores close errors; flush through sync_all to see them.
                f.sync_all()
            });
            match r {
                Ok(()) => closed.push((i, body)),
                Err(_) => break,
            }
        }
        closed
    });
    std::thread::sleep(Duration::from_millis(1500));
    // SIGTERM: the mount process unmounts (lazily, since a file is open) and exits once
    // nothing is open any more.
    unsafe { libc::kill(m.pid as i32, libc::SIGTERM) };
    let closed = writer.join().unwrap();
    drop(held);
    within(Duration::from_secs(60), "the mount process exits", || !pid_alive(m.pid));
    assert!(closed.len() > 3, "the writer should have closed some files first");
    let listing = c.ok(&["ls", "/data"]);
    for (i, body) in &closed {
        let name = format!("f{i:05}");
        assert!(listing.contains(&name), "{name} was closed but is missing");
        let out = c.cmd().args(["cat", &format!("/data/{name}")]).output().unwrap();
        assert!(out.stdout == *body, "{name} was closed but reads different bytes");
    }
    let out = c.cmd().args(["cat", "/data/synced.bin"]).output().unwrap();
    assert!(out.stdout == synced, "the fsynced file changed");
}

#[test]
fn an_overwrite_in_the_middle_of_a_large_file_uploads_only_the_chunks_around_it() {
    let c = Cluster::start("fuse-cow", 3, 2);
    c.ok(&["mkdir", "/data"]);
    let mut data = random_bytes(48 << 20, 21);
    let local = c.write_local("large.bin", &data);
    c.ok(&["put", p(&local), "/data/large.bin"]);
    let before: std::collections::BTreeSet<PathBuf> = c.stored_chunks().into_iter().map(|(_, p)| p).collect();
    // Chunk bytes nodes sent and received, over all nodes.
    let traffic = |name: &str| -> u64 {
        c.nodes()
            .iter()
            .map(|n| {
                let (_, body) = common::http_get(&n.http, "/metrics");
                body.lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0) as u64
            })
            .sum()
    };
    let (sent, received) = (
        traffic("collective_node_sent_bytes_total"),
        traffic("collective_node_received_bytes_total"),
    );
    let m = Mount::new(&c, "mnt", &[]);
    let f = OpenOptions::new().write(true).open(m.path("data/large.bin")).unwrap();
    f.write_all_at(b"patched in the middle", 20 << 20).unwrap();
    drop(f);
    data[20 << 20..(20 << 20) + 21].copy_from_slice(b"patched in the middle");
    let after: std::collections::BTreeSet<PathBuf> = c.stored_chunks().into_iter().map(|(_, p)| p).collect();
    let new = after.difference(&before).count();
    // Rewriting the file would read all 48 MiB back from the nodes; the edit reads and
    // sends only the chunks around it (at most 4 MiB each).
    let read = traffic("collective_node_sent_bytes_total") - sent;
    let written = traffic("collective_node_received_bytes_total") - received;
    assert!(read > 0 && read <= 12 << 20, "{read} bytes read back for a 21-byte overwrite");
    assert!(written <= 2 * (12 << 20), "{written} bytes uploaded for a 21-byte overwrite");
    // ~48 chunks of ~1 MiB, 2 copies each: the edit re-chunks one or two of them.
    assert!(new > 0 && new <= 3 * 2, "{new} new chunk copies for a 21-byte overwrite");
    let out = c.cmd().args(["cat", "/data/large.bin"]).output().unwrap();
    assert!(out.stdout == data, "the patched file reads other bytes");
}
