//! Atomic file output: every file the library writes goes through a temporary file and a rename.
//!
//! A reader of the destination sees either the earlier file or the complete new one, never a
//! half-written file, and a failure (read-only folder, full disk, an error from the producer)
//! leaves the earlier file as it was.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Distinguishes temporary files made by concurrent writers in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically.
///
/// The bytes go to a temporary file in the same folder, which is flushed to disk (`fsync`) and
/// then renamed over `path`. On any failure the temporary file is removed and `path` keeps its
/// earlier content; the error is an [`Error::Io`] naming `path`.
///
/// # Limitations
/// The folder itself is not synced after the rename, so a power cut right after the call may
/// still show the earlier file (never a mixture). The new file gets default permissions, not
/// those of the file it replaces.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |writer| {
        writer.write_all(bytes).map_err(|e| Error::io(path, e))
    })
}

/// Writes the output of `produce` to `path` atomically.
///
/// `produce` receives a buffered writer onto a temporary file in the same folder as `path`.
/// When it returns `Ok`, the file is flushed, synced and renamed over `path`; when it returns an
/// error (its own, or one from the file system), the temporary file is removed, `path` keeps
/// its earlier content and the error is returned.
///
/// ```
/// # fn main() -> labelwise::Result<()> {
/// use std::io::Write;
/// let path = std::env::temp_dir().join("labelwise-doc-write-atomic.txt");
/// labelwise::io::write_atomic_with(&path, |w| {
///     writeln!(w, "hello").map_err(|e| labelwise::Error::io(&path, e))
/// })?;
/// assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\n");
/// # std::fs::remove_file(&path).ok();
/// # Ok(())
/// # }
/// ```
pub fn write_atomic_with<F>(path: &Path, produce: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> Result<()>,
{
    let (temp_path, file) = create_temp_beside(path)?;
    let outcome = fill_and_sync(path, file, produce)
        .and_then(|()| fs::rename(&temp_path, path).map_err(|e| context(path, e, "cannot rename")));
    if outcome.is_err() {
        // Best effort: the error that matters is the one being returned.
        let _ = fs::remove_file(&temp_path);
    }
    outcome
}

/// Flushes a folder's entries to disk (`fsync` on the folder), so a rename made in it survives
/// a power cut. A no-op where folders cannot be opened as files (not Unix).
pub fn sync_folder(folder: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let folder = folder_of_entries(folder);
        let dir = File::open(folder).map_err(|e| context(folder, e, "cannot open the folder"))?;
        dir.sync_all()
            .map_err(|e| context(folder, e, "cannot sync the folder to disk"))?;
    }
    #[cfg(not(unix))]
    let _ = folder;
    Ok(())
}

/// Temporary files that [`write_atomic`] left beside `path` when its process was killed
/// mid-write. They are never read as `path`; a caller that owns `path` may delete them.
pub fn temp_leftovers(path: &Path) -> Vec<PathBuf> {
    let (Some(name), folder) = (path.file_name(), folder_of(path)) else {
        return Vec::new();
    };
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".tmp-");
    let prefix = prefix.to_string_lossy().into_owned();
    let Ok(entries) = fs::read_dir(folder) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// Checks, before a long job starts, that [`write_atomic`] will be able to write `path` when it
/// ends: `path` is not a folder, and a temporary file can be created beside it (it is removed
/// again). The earlier content of `path`, if any, is not touched.
///
/// # Errors
/// [`Error::Io`] naming `path` when it is a folder, or when its folder is missing, not a folder
/// or not writable.
pub fn check_writable(path: &Path) -> Result<()> {
    // `out/` names a folder even before it exists; the final rename would fail on it.
    let trailing_separator = path
        .as_os_str()
        .to_string_lossy()
        .ends_with(std::path::is_separator);
    if path.is_dir() || trailing_separator {
        let e = io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a folder; expected the path of a file",
        );
        return Err(Error::io(path, e));
    }
    let (temp_path, file) = create_temp_beside(path)?;
    drop(file);
    fs::remove_file(&temp_path).map_err(|e| context(path, e, "cannot remove the probe file"))
}

/// The folder `path` is in (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// `folder` itself, or `.` when it is empty.
#[cfg(unix)]
fn folder_of_entries(folder: &Path) -> &Path {
    match folder.as_os_str().is_empty() {
        true => Path::new("."),
        false => folder,
    }
}

/// Creates a fresh temporary file next to `path` (same folder, so the rename stays atomic).
fn create_temp_beside(path: &Path) -> Result<(PathBuf, File)> {
    let name = path.file_name().ok_or_else(|| {
        Error::io(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
        )
    })?;
    let folder = folder_of(path);
    loop {
        let serial = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".tmp-{}-{serial}", std::process::id()));
        let temp_path = folder.join(temp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
        {
            Ok(file) => return Ok((temp_path, file)),
            // A leftover from a crashed process with a recycled id: try the next serial.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                let what = format!("cannot create a temporary file in {}", folder.display());
                return Err(context(path, e, &what));
            }
        }
    }
}

/// Runs the producer on a buffered writer, then flushes and syncs the file.
fn fill_and_sync<F>(path: &Path, file: File, produce: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> Result<()>,
{
    let mut writer = BufWriter::new(file);
    produce(&mut writer)?;
    let file = writer
        .into_inner()
        .map_err(|e| context(path, e.into_error(), "cannot write"))?;
    file.sync_all()
        .map_err(|e| context(path, e, "cannot sync to disk"))
}

/// An [`Error::Io`] for `path` whose message says which step failed; the error kind is kept.
fn context(path: &Path, source: io::Error, what: &str) -> Error {
    Error::io(
        path,
        io::Error::new(source.kind(), format!("{what}: {source}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("labelwise-io-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect()
    }

    #[test]
    fn writes_and_replaces() {
        let dir = scratch("replace");
        let path = dir.join("a.txt");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert!(leftovers(&dir).is_empty());
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn failing_producer_keeps_earlier_file() {
        let dir = scratch("producer");
        let path = dir.join("a.txt");
        write_atomic(&path, b"old").unwrap();
        let err = write_atomic_with(&path, |w| {
            w.write_all(b"partial").map_err(|e| Error::io(&path, e))?;
            Err(Error::InvalidArgument("boom".into()))
        })
        .unwrap_err();
        assert!(err.to_string().contains("boom"));
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert!(leftovers(&dir).is_empty());
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn missing_folder_names_the_path() {
        let dir = scratch("missing");
        let path = dir.join("no-such-folder").join("a.txt");
        let err = write_atomic(&path, b"x").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Io { .. }));
        assert!(
            text.contains("a.txt") && text.contains("temporary file"),
            "{text}"
        );
        fs::remove_dir_all(&dir).ok();
    }

    #[cfg(unix)]
    #[test]
    fn read_only_folder_keeps_earlier_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("readonly");
        let path = dir.join("a.txt");
        write_atomic(&path, b"old").unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
        // Root ignores folder permissions; the check only means something for other users.
        let probe = dir.join("probe");
        let writable = File::create(&probe).is_ok();
        if !writable {
            let err = write_atomic(&path, b"new").unwrap_err();
            assert!(matches!(err, Error::Io { .. }));
            assert!(err.to_string().contains("a.txt"), "{err}");
            assert_eq!(fs::read(&path).unwrap(), b"old");
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn leftovers_are_found_and_probes_leave_none() {
        let dir = scratch("leftovers");
        let path = dir.join("a.bin");
        fs::write(dir.join(".a.bin.tmp-1-0"), b"torn").unwrap();
        fs::write(dir.join(".b.bin.tmp-1-0"), b"other file's").unwrap();
        let found = temp_leftovers(&path);
        assert_eq!(found, vec![dir.join(".a.bin.tmp-1-0")]);
        check_writable(&path).unwrap();
        assert_eq!(leftovers(&dir).len(), 2, "the probe left nothing behind");
        sync_folder(&dir).unwrap();
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn parent_that_is_a_file_fails_early_and_cleanly() {
        let dir = scratch("parent-file");
        let blocker = dir.join("not-a-folder");
        fs::write(&blocker, b"x").unwrap();
        let path = blocker.join("a.txt");
        let err = check_writable(&path).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("a.txt"), "{err}");
        assert!(write_atomic(&path, b"x").is_err());
        assert_eq!(fs::read(&blocker).unwrap(), b"x");
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn check_writable_refuses_folders_and_missing_parents() {
        let dir = scratch("check");
        let path = dir.join("model.safetensors");
        check_writable(&path).unwrap();
        assert!(!path.exists() && leftovers(&dir).is_empty());
        write_atomic(&path, b"old").unwrap();
        check_writable(&path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"old");

        let err = check_writable(&dir).unwrap_err();
        assert!(matches!(err, Error::Io { .. }));
        assert!(err.to_string().contains("is a folder"), "{err}");
        let err = check_writable(Path::new(&format!("{}/new/", dir.display()))).unwrap_err();
        assert!(err.to_string().contains("is a folder"), "{err}");
        let err = check_writable(&dir.join("no-such-folder").join("m")).unwrap_err();
        assert!(err.to_string().contains("no-such-folder"), "{err}");
        // A file where a folder is expected.
        let err = check_writable(&path.join("m")).unwrap_err();
        assert!(err.to_string().contains("model.safetensors"), "{err}");
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn folder_as_target_fails_cleanly() {
        let dir = scratch("dir-target");
        let target = dir.join("sub");
        fs::create_dir(&target).unwrap();
        let err = write_atomic(&target, b"x").unwrap_err();
        assert!(err.to_string().contains("sub"), "{err}");
        assert!(leftovers(&dir).is_empty());
        fs::remove_dir_all(&dir).ok();
    }
}
