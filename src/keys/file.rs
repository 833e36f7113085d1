//! Owner-only files for key material: never readable by anyone else, not even while being
//! written; never overwritten by accident; replaced atomically; read with a size cap.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

/// Owner read/write only.
const PRIVATE_MODE: u32 = 0o600;

/// Write `contents` to a new file at `path` (mode 0600). Fails with
/// [`io::ErrorKind::AlreadyExists`] if anything is already there.
pub(crate) fn create_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = write_temp(path, contents)?;
    // link(2) refuses an existing target, so unlike rename it cannot replace a file that
    // appeared since we looked; and the key file appears whole or not at all.
    let linked = fs::hard_link(&tmp, path);
    // The temporary name is only a second name for the same (owner-only) inode; failing to
    // remove it must not hide whether the key file itself was made.
    let _ = fs::remove_file(&tmp);
    linked?;
    sync_parent(path)
}

/// Atomically replace the file at `path` (mode 0600) with `contents`.
pub(crate) fn replace_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = write_temp(path, contents)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent(path)
}

/// Read a regular file of at most `max_len` bytes. The metadata is of the opened file, so a
/// permission check on it cannot be raced by swapping the path.
pub(crate) fn read_capped(path: &Path, max_len: u64) -> io::Result<(Zeroizing<Vec<u8>>, Metadata)> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut buf = Zeroizing::new(Vec::new());
    file.take(max_len + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max_len {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "file too large"));
    }
    Ok((buf, meta))
}

/// Write `contents` to a fresh owner-only file beside `path` and flush it to disk.
fn write_temp(path: &Path, contents: &[u8]) -> io::Result<PathBuf> {
    let tmp = temp_path(path)?;
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        // Mode at creation, not a chmod afterwards: there is no moment when others may read.
        .mode(PRIVATE_MODE)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(contents)?;
            file.sync_all()
        });
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// A name in the same directory (rename and link work only within one file system) that no
/// other writer in this or another process picks; `create_new` catches the rest.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path names no file"))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(path.with_file_name(tmp_name))
}

/// Make the new directory entry durable, so a crash cannot lose a key that was reported made.
fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}
