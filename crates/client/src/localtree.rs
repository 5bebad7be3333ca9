//! Writing what a server describes into a local directory, and nowhere else.
//!
//! A download names local files after paths the server sends. A server that lies (a
//! compromised coordinator, or another member's answering for a shared datastore) must not
//! be able to make the client write outside the destination it was given: every path is
//! checked ([`relative_parts`]: no `..`, no absolute path, no empty part, no NUL), and
//! files are made relative to an open directory handle, one component at a time, with
//! `O_NOFOLLOW`: a symbolic link the server had us create earlier in the same tree is
//! never followed while writing (it is recreated as a link, and that is all).

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::ClientError;

/// The parts of `path` below `prefix` (a remote directory, ending in `/`), refusing any
/// path a server should not send: outside the prefix, absolute after it, or with `..`,
/// `.`, empty or NUL-bearing parts.
pub fn relative_parts(prefix: &str, path: &str) -> Result<Vec<String>, ClientError> {
    let bad = |why: &str| ClientError::BadServerPath {
        path: path.escape_debug().to_string(),
        why: why.to_string(),
    };
    let rest = path.strip_prefix(prefix).ok_or_else(|| bad(&format!("it is not below {prefix}")))?;
    if rest.is_empty() {
        return Err(bad("it names no file"));
    }
    let mut out = Vec::new();
    for part in rest.split('/') {
        match part {
            "" => return Err(bad("it has an empty part (or is absolute)")),
            "." | ".." => return Err(bad("it has a '.' or '..' part")),
            p if p.contains('\0') => return Err(bad("it holds a NUL byte")),
            p => out.push(p.to_string()),
        }
    }
    Ok(out)
}

fn cstr(name: &str) -> Result<CString, std::io::Error> {
    CString::new(name).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn last_os_error<T>() -> Result<T, std::io::Error> {
    Err(std::io::Error::last_os_error())
}

/// Opens directory `name` inside `dir`, never through a symbolic link.
fn open_dir_at(dir: &OwnedFd, name: &CStr) -> Result<OwnedFd, std::io::Error> {
    // SAFETY: `dir` is an open descriptor and `name` a NUL-terminated string; the returned
    // descriptor is owned by nobody else.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return last_os_error();
    }
    // SAFETY: `fd` was just opened and is owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A local directory a download writes into.
pub struct LocalTree {
    root: Arc<OwnedFd>,
    root_path: PathBuf,
}

/// Where one file goes: a directory handle and a name in it.
#[derive(Clone)]
pub struct Place {
    dir: Arc<OwnedFd>,
    name: String,
    /// The path shown in messages.
    pub shown: PathBuf,
}

impl LocalTree {
    /// Opens (creating it if needed) the destination the user named; that path itself is
    /// the user's choice and may be a link.
    pub fn open(root: &Path) -> Result<LocalTree, ClientError> {
        std::fs::create_dir_all(root).map_err(ClientError::local(root))?;
        let dir = File::open(root).map_err(ClientError::local(root))?;
        Ok(LocalTree {
            root: Arc::new(OwnedFd::from(dir)),
            root_path: root.to_path_buf(),
        })
    }

    /// The place for `parts` (from [`relative_parts`]): its directories are made as needed,
    /// each opened without following links. A link where a directory should be is an error.
    pub fn place(&self, parts: &[String]) -> Result<Place, ClientError> {
        let (name, dirs) = parts
            .split_last()
            .ok_or_else(|| ClientError::Other("an empty path to write".into()))?;
        let mut dir = self.root.clone();
        let mut shown = self.root_path.clone();
        for d in dirs {
            shown.push(d);
            let c = cstr(d).map_err(ClientError::local(&shown))?;
            // SAFETY: `dir` is open and `c` NUL-terminated.
            if unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o755) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(ClientError::Local { path: shown, source: e });
                }
            }
            let next = open_dir_at(&dir, &c).map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::ENOTDIR) => ClientError::BadServerPath {
                    path: shown.display().to_string(),
                    why: "a file or symbolic link is where the server puts a directory; nothing is written through links".into(),
                },
                _ => ClientError::Local {
                    path: shown.clone(),
                    source: e,
                },
            })?;
            dir = Arc::new(next);
        }
        shown.push(name);
        Ok(Place {
            dir,
            name: name.clone(),
            shown,
        })
    }
}

impl Place {
    /// The place for a single file the user named (its directory is opened as given).
    pub fn for_path(local: &Path) -> Result<Place, ClientError> {
        let parent = match local.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = local
            .file_name()
            .map(OsStr::to_string_lossy)
            .ok_or_else(|| ClientError::Other(format!("{} names no file", local.display())))?
            .into_owned();
        let dir = File::open(&parent).map_err(ClientError::local(&parent))?;
        Ok(Place {
            dir: Arc::new(OwnedFd::from(dir)),
            name,
            shown: local.to_path_buf(),
        })
    }

    fn tmp_name(&self) -> String {
        format!(".{}.collective-part", self.name)
    }

    /// A fresh temporary file next to the place (never through a link), mode `mode`.
    pub fn create_temp(&self, mode: u32) -> Result<File, ClientError> {
        let tmp = self.tmp_name();
        let c = cstr(&tmp).map_err(ClientError::local(&self.shown))?;
        // A leftover of an interrupted download goes first.
        // SAFETY: `dir` is open and `c` NUL-terminated.
        unsafe { libc::unlinkat(self.dir.as_raw_fd(), c.as_ptr(), 0) };
        // SAFETY: as above; the descriptor returned is owned by the File made from it.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(ClientError::Local {
                path: self.shown.with_file_name(&tmp),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` was just opened and is owned here.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Puts the finished temporary file in place (replacing a file or link there).
    pub fn commit(&self) -> Result<(), ClientError> {
        let tmp = cstr(&self.tmp_name()).map_err(ClientError::local(&self.shown))?;
        let name = cstr(&self.name).map_err(ClientError::local(&self.shown))?;
        let fd = self.dir.as_raw_fd();
        // SAFETY: `fd` is open, both names NUL-terminated.
        if unsafe { libc::renameat(fd, tmp.as_ptr(), fd, name.as_ptr()) } != 0 {
            return Err(ClientError::Local {
                path: self.shown.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Removes the temporary file of a download that failed.
    pub fn discard(&self) {
        if let Ok(tmp) = cstr(&self.tmp_name()) {
            // SAFETY: `dir` is open and `tmp` NUL-terminated.
            unsafe { libc::unlinkat(self.dir.as_raw_fd(), tmp.as_ptr(), 0) };
        }
    }

    /// Makes the place a symbolic link to `target` (replacing a file or link there). The
    /// link is only made, never followed.
    pub fn symlink(&self, target: &str) -> Result<(), ClientError> {
        let name = cstr(&self.name).map_err(ClientError::local(&self.shown))?;
        let to = cstr(target).map_err(|_| ClientError::BadServerPath {
            path: self.shown.display().to_string(),
            why: "its link target holds a NUL byte".into(),
        })?;
        let fd = self.dir.as_raw_fd();
        // SAFETY: `fd` is open and the names NUL-terminated.
        unsafe { libc::unlinkat(fd, name.as_ptr(), 0) };
        // SAFETY: as above.
        if unsafe { libc::symlinkat(to.as_ptr(), fd, name.as_ptr()) } != 0 {
            return Err(ClientError::Local {
                path: self.shown.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn paths_from_the_server_stay_below_the_prefix() {
        assert_eq!(relative_parts("/d/", "/d/a/b").unwrap(), parts(&["a", "b"]));
        for bad in [
            "/d/../x",
            "/d/a/../../x",
            "/etc/passwd",
            "/d//etc",
            "/d/a/./b",
            "/d/",
            "/d/a\0b",
            "/dx/a",
        ] {
            let e = relative_parts("/d/", bad).unwrap_err().to_string();
            assert!(e.contains("the server sent the path"), "{bad}: {e}");
        }
    }

    #[test]
    fn nothing_is_written_through_a_link_the_tree_holds() {
        let base = std::env::temp_dir().join(format!("collective-localtree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let outside = base.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let tree = LocalTree::open(&base.join("dest")).unwrap();
        // The server first has us make a link `d` -> the outside directory...
        tree.place(&parts(&["d"])).unwrap().symlink(outside.to_str().unwrap()).unwrap();
        assert!(std::fs::symlink_metadata(base.join("dest/d")).unwrap().file_type().is_symlink());
        // ...then a file below it: refused, and nothing lands outside.
        let e = tree
            .place(&parts(&["d", "passwd"]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("nothing is written through links"), "{e}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // A file named like the link replaces the link itself, not its target.
        let place = tree.place(&parts(&["d"])).unwrap();
        let mut f = place.create_temp(0o644).unwrap();
        std::io::Write::write_all(&mut f, b"data").unwrap();
        place.commit().unwrap();
        assert_eq!(std::fs::read(base.join("dest/d")).unwrap(), b"data");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // Ordinary nesting works.
        let place = tree.place(&parts(&["a", "b", "c.txt"])).unwrap();
        drop(place.create_temp(0o600).unwrap());
        place.commit().unwrap();
        assert!(base.join("dest/a/b/c.txt").is_file());
        let _ = std::fs::remove_dir_all(&base);
    }
}
