//! Private files: written 0600, refused when group- or world-readable.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::PkiError;

/// Writes `data` to a new file readable only by its owner (mode 0600), replacing any file
/// already there.
pub fn write_private_file(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    let werr = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(werr)?;
    f.write_all(data).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    Ok(())
}

/// Replaces `path` with `data` atomically: a temporary file beside it (created with
/// `mode`), fsynced, renamed over the old one, and the directory fsynced. A process reading
/// the file sees either the old or the new contents, never a missing or partial file.
pub fn replace_file(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let werr = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(werr)?;
    let written = f.write_all(data).and_then(|_| f.sync_all()).and_then(|_| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(werr(e));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Refuses a key file that group or others can read or write.
pub fn check_key_permissions(path: &Path) -> Result<(), PkiError> {
    let meta = fs::metadata(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PkiError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_lax_ones_are_refused() {
        let dir = std::env::temp_dir().join(format!("collective-keyfile-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k.key");
        write_private_file(&p, b"secret").unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        check_key_permissions(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_key_permissions(&p).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
