//! Remote paths: absolute, `/`-separated, validated before they reach any store.

use std::fmt;

/// Longest single name, in bytes (as on common local filesystems).
pub const MAX_NAME_LEN: usize = 255;
/// Longest whole path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path is empty; remote paths look like /photos/2024/beach.jpg")]
    Empty,
    #[error("path '{0}' contains an empty component ('//'); remove the doubled slash")]
    EmptyComponent(String),
    #[error("path '{0}' contains '.' or '..'; use a plain absolute path such as /photos/beach.jpg")]
    DotComponent(String),
    #[error("path contains a NUL byte; names may not contain NUL")]
    Nul,
    #[error("name '{0}...' is {1} bytes long; names may be at most {MAX_NAME_LEN} bytes")]
    NameTooLong(String, usize),
    #[error("path is {0} bytes long; paths may be at most {MAX_PATH_LEN} bytes")]
    PathTooLong(usize),
    #[error("this operation needs a file or directory, not the root '/'")]
    Root,
}

/// A validated, normalised absolute path. The root is `/`; other paths never end in `/`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemotePath(String);

/// Validates a user-supplied remote path. A path without a leading `/` is taken relative to
/// the root; a single trailing `/` is allowed.
pub fn validate_path(raw: &str) -> Result<RemotePath, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.contains('\0') {
        return Err(PathError::Nul);
    }
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::PathTooLong(raw.len()));
    }
    let body = raw.strip_prefix('/').unwrap_or(raw);
    let body = body.strip_suffix('/').unwrap_or(body);
    if body.is_empty() {
        return Ok(RemotePath("/".to_string()));
    }
    let mut out = String::with_capacity(body.len() + 1);
    for comp in body.split('/') {
        if comp.is_empty() {
            return Err(PathError::EmptyComponent(raw.to_string()));
        }
        if comp == "." || comp == ".." {
            return Err(PathError::DotComponent(raw.to_string()));
        }
        if comp.len() > MAX_NAME_LEN {
            let prefix: String = comp.chars().take(20).collect();
            return Err(PathError::NameTooLong(prefix, comp.len()));
        }
        out.push('/');
        out.push_str(comp);
    }
    Ok(RemotePath(out))
}

impl RemotePath {
    pub fn root() -> Self {
        RemotePath("/".to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The names from the root down; empty for the root.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }

    /// Splits into parent and final name; `Err(Root)` for the root.
    pub fn split_last(&self) -> Result<(RemotePath, &str), PathError> {
        if self.is_root() {
            return Err(PathError::Root);
        }
        let idx = self.0.rfind('/').unwrap_or(0);
        let parent = if idx == 0 { "/".to_string() } else { self.0[..idx].to_string() };
        Ok((RemotePath(parent), &self.0[idx + 1..]))
    }

    /// Appends one validated name.
    pub fn join(&self, name: &str) -> Result<RemotePath, PathError> {
        if name.contains('/') {
            return Err(PathError::EmptyComponent(name.to_string()));
        }
        let joined = if self.is_root() {
            format!("/{name}")
        } else {
            format!("{}/{name}", self.0)
        };
        validate_path(&joined)
    }

    /// Whether `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RemotePath) -> bool {
        other.is_root() || self.0 == other.0 || self.0.starts_with(&format!("{}/", other.0))
    }
}

impl fmt::Display for RemotePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RemotePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_good_paths() {
        assert_eq!(validate_path("/").unwrap().as_str(), "/");
        assert_eq!(validate_path("/a/b/").unwrap().as_str(), "/a/b");
        assert_eq!(validate_path("a/b").unwrap().as_str(), "/a/b");
        let p = validate_path("/a/b/c").unwrap();
        let (parent, name) = p.split_last().unwrap();
        assert_eq!((parent.as_str(), name), ("/a/b", "c"));
        assert!(p.starts_with(&validate_path("/a").unwrap()));
        assert!(!validate_path("/ab").unwrap().starts_with(&validate_path("/a").unwrap()));
    }

    #[test]
    fn refuses_bad_paths() {
        assert_eq!(validate_path(""), Err(PathError::Empty));
        assert!(matches!(validate_path("/a//b"), Err(PathError::EmptyComponent(_))));
        assert!(matches!(validate_path("/a/../b"), Err(PathError::DotComponent(_))));
        assert!(matches!(validate_path("/a/./b"), Err(PathError::DotComponent(_))));
        assert_eq!(validate_path("/a\0b"), Err(PathError::Nul));
        let long = "x".repeat(256);
        assert!(matches!(validate_path(&format!("/{long}")), Err(PathError::NameTooLong(_, 256))));
        let deep = "/abc".repeat(1100);
        assert!(matches!(validate_path(&deep), Err(PathError::PathTooLong(_))));
        assert_eq!(validate_path("/").unwrap().split_last().unwrap_err(), PathError::Root);
    }
}
