//! Inode numbers for the kernel: this mount hands out its own, one per path it has shown,
//! with the last attributes seen and the kernel's lookup count (an inode is forgotten when
//! the kernel forgets it).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use collective_proto::v1::FileAttr;

pub const ROOT: u64 = 1;

pub struct Node {
    pub path: String,
    pub attr: FileAttr,
    pub seen: Instant,
    lookups: u64,
}

pub struct Inodes {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    next: u64,
}

/// `parent/name` as a remote path.
pub fn child_path(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

impl Inodes {
    pub fn new(root_path: &str, root_attr: FileAttr) -> Inodes {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                path: root_path.to_string(),
                attr: root_attr,
                seen: Instant::now(),
                lookups: 1,
            },
        );
        let mut by_path = HashMap::new();
        by_path.insert(root_path.to_string(), ROOT);
        Inodes {
            nodes,
            by_path,
            next: ROOT + 1,
        }
    }

    #[cfg(test)]
    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn path(&self, ino: u64) -> Option<String> {
        self.nodes.get(&ino).map(|n| n.path.clone())
    }

    pub fn ino_of(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// Attributes seen less than `ttl` ago.
    pub fn fresh(&self, ino: u64, ttl: Duration) -> Option<FileAttr> {
        self.nodes.get(&ino).filter(|n| n.seen.elapsed() < ttl).map(|n| n.attr.clone())
    }

    /// Records `attr` for `path`; `lookup` counts one more kernel reference. Returns the inode.
    pub fn remember(&mut self, path: &str, attr: FileAttr, lookup: bool) -> u64 {
        let ino = match self.by_path.get(path) {
            Some(&ino) => ino,
            None => {
                let ino = self.next;
                self.next += 1;
                self.by_path.insert(path.to_string(), ino);
                self.nodes.insert(
                    ino,
                    Node {
                        path: path.to_string(),
                        attr: attr.clone(),
                        seen: Instant::now(),
                        lookups: 0,
                    },
                );
                ino
            }
        };
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.attr = attr;
            n.seen = Instant::now();
            if lookup {
                n.lookups += 1;
            }
        }
        ino
    }

    /// Marks cached attributes as stale (after a local change).
    pub fn invalidate(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.seen = Instant::now() - Duration::from_secs(3600);
        }
    }

    /// The kernel dropped `n` references; the inode goes when none are left.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let gone = match self.nodes.get_mut(&ino) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0
            }
            None => false,
        };
        if gone
            && let Some(node) = self.nodes.remove(&ino)
            && self.by_path.get(&node.path) == Some(&ino)
        {
            self.by_path.remove(&node.path);
        }
    }

    /// The path no longer names this inode (removed or replaced).
    pub fn unlink(&mut self, path: &str) {
        self.by_path.remove(path);
    }

    /// `from` (and everything below it) is now at `to`.
    pub fn rename(&mut self, from: &str, to: &str) {
        self.by_path.remove(to);
        let prefix = format!("{from}/");
        let moved: Vec<(String, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.as_str() == from || p.starts_with(&prefix))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, ino) in moved {
            self.by_path.remove(&old);
            let new = format!("{to}{}", &old[from.len()..]);
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.path = new.clone();
                n.attr.path = new.clone();
            }
            self.by_path.insert(new, ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_moves_a_directory_and_everything_below_it() {
        let mut t = Inodes::new("/", FileAttr::default());
        let d = t.remember("/a", FileAttr::default(), true);
        let f = t.remember("/a/b/c", FileAttr::default(), true);
        let other = t.remember("/ab", FileAttr::default(), true);
        t.rename("/a", "/x");
        assert_eq!(t.path(d).as_deref(), Some("/x"));
        assert_eq!(t.path(f).as_deref(), Some("/x/b/c"));
        assert_eq!(t.path(other).as_deref(), Some("/ab"), "a sibling sharing the prefix stays");
        assert_eq!(t.ino_of("/x/b/c"), Some(f));
        assert_eq!(t.ino_of("/a/b/c"), None);
    }

    #[test]
    fn an_inode_lives_until_the_kernel_forgets_every_lookup() {
        let mut t = Inodes::new("/", FileAttr::default());
        let i = t.remember("/f", FileAttr::default(), true);
        assert_eq!(t.remember("/f", FileAttr::default(), true), i);
        t.forget(i, 1);
        assert!(t.get(i).is_some());
        t.forget(i, 1);
        assert!(t.get(i).is_none());
        assert_eq!(t.ino_of("/f"), None);
        t.forget(ROOT, 10);
        assert!(t.get(ROOT).is_some());
    }
}
