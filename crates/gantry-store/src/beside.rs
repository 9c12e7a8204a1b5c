//! Temp files and directories beside outputs: the one mechanism every atomic output write uses
//! (layouts, archives, blob and JSON files), and the cleanup of those that dead processes left.
//!
//! An output `DIR/NAME` is written as `DIR/.NAME.gantry-tmp-<pid>-<start>-<random>` and renamed
//! (or exchanged) into place at the end. Two things tell a live temp from a leftover:
//!
//! - its owner holds an exclusive `flock` on the temp itself (a file, or a directory opened
//!   read-only) for as long as it works on it, and the kernel drops it when the process dies,
//!   however it dies;
//! - the name carries the owner's pid and its start time (clock ticks after boot, from
//!   `/proc/PID/stat`), which covers the moment between creating the temp and locking it, and
//!   the old tree a layout exchange leaves at the temp name while its owner deletes it.
//!
//! A temp is dead when nobody holds its lock *and* no process with that pid and start time
//! runs (a zombie counts as gone). A reused pid has another start time, so it never keeps a
//! leftover alive, and a live owner in another pid namespace still holds its lock. The cleaner
//! takes the lock itself before removing, so two cleaners never race.
//!
//! Leftovers are removed by the next write into the same directory, by `gantry gc` (for the
//! directories of outputs that refs name) and by `gantry clean` (a project's output
//! directories). Names of older gantry versions (`.NAME.gantry-tmp-XXXXXX`, no owner) count as
//! dead once unlocked and a day old.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::fsutil::{fsync_dir, remove_any};
use crate::{Error, Result};

/// What every temp name has between the output's name and its owner.
const MARKER: &str = ".gantry-tmp-";
/// How old an unlocked temp of an older gantry (no owner in its name) must be to be removed.
const LEGACY_AGE: Duration = Duration::from_secs(24 * 3600);

/// A temp file or directory beside an output, locked by this process while it lives. Dropping
/// it removes it, unless [`OutputTemp::keep`] was called (after it was moved into place).
#[derive(Debug)]
pub struct OutputTemp {
    path: PathBuf,
    /// The temp itself, opened and `flock`ed exclusively: the proof that its owner lives.
    lock: Option<File>,
    armed: bool,
}

impl OutputTemp {
    /// Creates an empty temp file (with `mode`, before the umask) for the output `dest`, locked,
    /// after removing dead temps in its directory. Returns the temp and the file, open for
    /// reading and writing.
    pub fn file(dest: &Path, mode: u32) -> Result<(OutputTemp, File)> {
        let (path, file) = create(dest, |p| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_CLOEXEC)
                .open(p)
        })?;
        file.lock().map_err(|e| Error::io("lock", &path, e))?;
        let lock = file
            .try_clone()
            .map_err(|e| Error::io("duplicate the descriptor of", &path, e))?;
        Ok((OutputTemp::locked(path, lock), file))
    }

    /// Creates an empty temp directory (with `mode`, before the umask) for the output `dest`,
    /// locked, after removing dead temps in its parent.
    pub fn dir(dest: &Path, mode: u32) -> Result<OutputTemp> {
        let (path, ()) = create(dest, |p| fs::DirBuilder::new().mode(mode).create(p))?;
        match lock_temp(&path) {
            Ok(lock) => Ok(OutputTemp::locked(path, lock)),
            Err(e) => {
                let _ = fs::remove_dir(&path);
                Err(e)
            }
        }
    }

    /// Makes a temp for the output `dest` with `fill`, which must create it (a hard link, a
    /// copy) at the path it is given; the temp is locked as soon as it exists. Errors of `fill`
    /// come back as they are, so the caller can tell why (a link across filesystems, say).
    pub fn fill<E: From<Error>>(
        dest: &Path,
        mut fill: impl FnMut(&Path) -> std::result::Result<(), E>,
    ) -> std::result::Result<OutputTemp, E> {
        let (parent, prefix) = temp_prefix(dest)?;
        remove_dead_quietly(&parent);
        for _ in 0..100 {
            let path = parent.join(random_name(&prefix));
            if fs::symlink_metadata(&path).is_ok() {
                continue;
            }
            // Armed before `fill`, so that whatever a failing `fill` left is removed too.
            let mut temp = OutputTemp {
                path,
                lock: None,
                armed: true,
            };
            fill(&temp.path)?;
            temp.lock = Some(lock_temp(&temp.path)?);
            return Ok(temp);
        }
        Err(Error::io(
            "find a free temp name in",
            parent,
            io::ErrorKind::AlreadyExists.into(),
        )
        .into())
    }

    fn locked(path: PathBuf, lock: File) -> OutputTemp {
        OutputTemp {
            path,
            lock: Some(lock),
            armed: true,
        }
    }

    /// The temp's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the temp over `dest` (replacing a file there) and fsyncs the directory.
    pub fn persist(mut self, dest: &Path) -> Result<()> {
        fs::rename(&self.path, dest).map_err(|e| Error::io("move a new file to", dest, e))?;
        self.armed = false;
        match dest.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => fsync_dir(dir),
            _ => Ok(()),
        }
    }

    /// Stops owning the temp path: it is not removed on drop, and its lock is released. Call
    /// once the temp was moved into place (its path may then hold what it was exchanged with,
    /// which the caller removes). Returns the path.
    pub fn keep(mut self) -> PathBuf {
        self.armed = false;
        self.lock = None;
        std::mem::take(&mut self.path)
    }
}

impl Drop for OutputTemp {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = remove_any(&self.path)
        {
            tracing::debug!("cannot remove the temp {}: {e}", self.path.display());
        }
    }
}

/// Writes `bytes` to `dest` atomically: a temp beside it, fsynced, renamed over it. A reader
/// never sees half a file, and a failure leaves the old file and no temp behind.
pub fn write_file_atomic(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let (temp, mut file) = OutputTemp::file(dest, mode)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("write", temp.path(), e))?;
    drop(file);
    temp.persist(dest)
}

/// The temps in `dir` that their owners left behind (see the module docs); a missing
/// directory has none.
pub fn dead_temps(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut dead = Vec::new();
    scan(dir, |path, _lock| dead.push(path.to_owned()))?;
    Ok(dead)
}

/// Removes the temps in `dir` that their owners left behind. Returns what was removed.
pub fn remove_dead_temps(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    scan(dir, |path, _lock| {
        // The lock is held until the temp is gone, so no other cleaner touches it meanwhile.
        match remove_any(path) {
            Ok(()) => {
                tracing::debug!(path = %path.display(), "removed a dead process's temp");
                removed.push(path.to_owned());
            }
            Err(e) => tracing::warn!("cannot remove the leftover temp {}: {e}", path.display()),
        }
    })?;
    if !removed.is_empty() {
        fsync_dir(dir)?;
    }
    Ok(removed)
}

/// Calls `dead` for every dead temp in `dir`, with its lock held.
fn scan(dir: &Path, mut dead: impl FnMut(&Path, &File)) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        if owner_of(&entry.file_name()).is_some() {
            paths.push(entry.path());
        }
    }
    paths.sort();
    for path in paths {
        let Some(owner) = path.file_name().and_then(owner_of) else {
            continue;
        };
        if let Some(lock) = lock_if_dead(&path, owner) {
            dead(&path, &lock);
        }
    }
    Ok(())
}

/// Removes dead temps in `dir`, logging (not failing) if that does not work: the write that
/// asked for it must go on.
fn remove_dead_quietly(dir: &Path) {
    if let Err(e) = remove_dead_temps(dir) {
        tracing::debug!("cannot clean leftover temps in {}: {e}", dir.display());
    }
}

/// Who made a temp, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// A process (pid, start time in clock ticks after boot; 0 if it could not tell).
    Process(u32, u64),
    /// An older gantry that put no owner in the name.
    Unknown,
}

/// The owner a temp name states, or `None` if it is not a temp name.
fn owner_of(name: &OsStr) -> Option<Owner> {
    let name = name.as_bytes();
    if name.first() != Some(&b'.') {
        return None;
    }
    let at = name
        .windows(MARKER.len())
        .rposition(|w| w == MARKER.as_bytes())?;
    if at == 0 {
        return None;
    }
    let tail = std::str::from_utf8(&name[at + MARKER.len()..]).ok()?;
    let parts: Vec<&str> = tail.split('-').collect();
    match parts.as_slice() {
        [pid, start, random] if !random.is_empty() => {
            Some(Owner::Process(pid.parse().ok()?, start.parse().ok()?))
        }
        [legacy] if !legacy.is_empty() && legacy.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            Some(Owner::Unknown)
        }
        _ => None,
    }
}

/// Opens a temp without following a symlink or blocking, and takes its lock if it is dead.
/// Returns the locked file, or `None` if it is alive (or gone, or cannot be opened).
fn lock_if_dead(path: &Path, owner: Owner) -> Option<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    // Held by its owner: alive, whatever the name says.
    file.try_lock().ok()?;
    let dead = match owner {
        Owner::Process(pid, start) => !process_runs(pid, start),
        Owner::Unknown => file
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > LEGACY_AGE),
    };
    dead.then_some(file)
}

/// Opens a temp this process just made and locks it.
fn lock_temp(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    file.lock().map_err(|e| Error::io("lock", path, e))?;
    Ok(file)
}

/// Creates a temp for `dest` with `make`, trying new random names while one exists, after
/// removing dead temps in the directory.
fn create<T>(dest: &Path, make: impl Fn(&Path) -> io::Result<T>) -> Result<(PathBuf, T)> {
    let (parent, prefix) = temp_prefix(dest)?;
    remove_dead_quietly(&parent);
    for _ in 0..100 {
        let path = parent.join(random_name(&prefix));
        match make(&path) {
            Ok(made) => return Ok((path, made)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("create a temp beside", dest, e)),
        }
    }
    Err(Error::io(
        "find a free temp name beside",
        dest,
        io::ErrorKind::AlreadyExists.into(),
    ))
}

/// The directory of `dest` and the start of its temps' names: `.NAME.gantry-tmp-PID-START-`.
fn temp_prefix(dest: &Path) -> Result<(PathBuf, OsString)> {
    let invalid = |reason| Error::InvalidOutputPath {
        path: dest.to_owned(),
        reason,
    };
    let name = dest
        .file_name()
        .ok_or_else(|| invalid("it does not end in a file or directory name"))?;
    let parent = match dest.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return Err(invalid("it has no parent directory")),
    };
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(format!(
        "{MARKER}{}-{}-",
        std::process::id(),
        own_start_time()
    ));
    Ok((parent.to_owned(), prefix))
}

fn random_name(prefix: &OsStr) -> OsString {
    let mut name = prefix.to_owned();
    let random: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(8)
        .collect();
    name.push(random);
    name
}

/// This process's start time (0 if `/proc` cannot tell).
fn own_start_time() -> u64 {
    static START: OnceLock<u64> = OnceLock::new();
    *START.get_or_init(|| start_time(std::process::id()).map_or(0, |(start, _)| start))
}

/// A process's start time (clock ticks after boot) and state letter, from `/proc/PID/stat`.
/// `Err` with `NotFound` when no such process runs.
fn start_time(pid: u32) -> io::Result<(u64, u8)> {
    let stat = fs::read(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may hold anything: fields start after the last ')'.
    let after = stat
        .iter()
        .rposition(|&b| b == b')')
        .map(|i| &stat[i + 1..])
        .ok_or(io::ErrorKind::InvalidData)?;
    let fields: Vec<&[u8]> = after
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
        .collect();
    // Field 3 (state) is fields[0]; field 22 (starttime) is fields[19].
    let state = fields.first().and_then(|f| f.first()).copied();
    let start = fields
        .get(19)
        .and_then(|f| std::str::from_utf8(f).ok())
        .and_then(|f| f.parse().ok());
    match (start, state) {
        (Some(start), Some(state)) => Ok((start, state)),
        _ => Err(io::ErrorKind::InvalidData.into()),
    }
}

/// Whether the process `pid` that started at `start` still runs. A zombie has released its
/// locks and counts as gone; so does a pid now used by a process with another start time.
/// When `/proc` cannot say, the answer is "it runs" unless the pid is plainly gone.
fn process_runs(pid: u32, start: u64) -> bool {
    match start_time(pid) {
        Ok((_, b'Z' | b'X')) => false,
        Ok((actual, _)) => start == 0 || actual == start,
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn names_state_their_owner() {
        let own = std::process::id();
        let (_, prefix) = temp_prefix(Path::new("/x/out.tar")).unwrap();
        let name = random_name(&prefix);
        let s = name.to_str().unwrap();
        assert!(s.starts_with(&format!(".out.tar.gantry-tmp-{own}-")), "{s}");
        assert_eq!(owner_of(&name), Some(Owner::Process(own, own_start_time())));
        assert_ne!(own_start_time(), 0, "/proc tells this process's start time");
        assert_eq!(
            owner_of(OsStr::new(".a.gantry-tmp-AbC123")),
            Some(Owner::Unknown)
        );
        assert_eq!(
            owner_of(OsStr::new(".a.gantry-tmp-b.gantry-tmp-12-34-xyz")),
            Some(Owner::Process(12, 34))
        );
        for not_ours in [
            "a.gantry-tmp-1-2-x",
            ".gantry-tmp-1-2-x",
            ".a.gantry-tmp-1-2-",
            ".a.gantry-tmp-x-2-y",
            ".a.gantry-tmp-",
            ".a",
        ] {
            assert_eq!(owner_of(OsStr::new(not_ours)), None, "{not_ours}");
        }
    }

    #[test]
    fn live_temps_are_kept_and_dead_ones_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        // Live: this process holds it.
        let (live, _file) = OutputTemp::file(&out, 0o600).unwrap();
        let live_dir = OutputTemp::dir(&out, 0o700).unwrap();
        // Dead: a process that exited (its pid is gone), a pid now used by a process with
        // another start time, and an unlocked temp of an older gantry, a day old.
        let mut child = Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let exited = dir.path().join(format!(".out.gantry-tmp-{gone}-5-aaaa"));
        fs::create_dir(&exited).unwrap();
        fs::write(exited.join("blob"), b"x").unwrap();
        let reused = dir
            .path()
            .join(format!(".out.gantry-tmp-{}-1-bbbb", std::process::id()));
        fs::write(&reused, b"x").unwrap();
        let legacy = dir.path().join(".out.gantry-tmp-Xy12Ab");
        fs::write(&legacy, b"x").unwrap();
        let day_ago = SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
        File::options()
            .write(true)
            .open(&legacy)
            .unwrap()
            .set_modified(day_ago)
            .unwrap();
        // Kept: a fresh legacy temp (its owner may still run), and anything not named so.
        let fresh_legacy = dir.path().join(".out.gantry-tmp-Zz99Zz");
        fs::write(&fresh_legacy, b"x").unwrap();
        fs::write(dir.path().join("unrelated"), b"x").unwrap();

        let mut dead = dead_temps(dir.path()).unwrap();
        dead.sort();
        let mut want = vec![exited.clone(), reused.clone(), legacy.clone()];
        want.sort();
        assert_eq!(dead, want);
        assert_eq!(remove_dead_temps(dir.path()).unwrap(), dead);
        let mut left = vec![
            live.path()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned(),
            live_dir
                .path()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned(),
            ".out.gantry-tmp-Zz99Zz".to_owned(),
            "unrelated".to_owned(),
        ];
        left.sort();
        assert_eq!(names(dir.path()), left);

        drop(live);
        drop(live_dir);
        assert_eq!(
            names(dir.path()),
            vec![".out.gantry-tmp-Zz99Zz", "unrelated"]
        );
    }

    #[test]
    fn a_temp_being_made_is_not_taken_for_dead() {
        // Between its creation and its lock, a temp is protected by its owner's pid and start
        // time alone.
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let temp = OutputTemp::fill(&out, |p| -> Result<()> {
            assert!(dead_temps(p.parent().unwrap()).unwrap().is_empty());
            fs::write(p, b"made")
                .map_err(|e| Error::io("write", p, e))
                .map(drop)?;
            assert!(dead_temps(p.parent().unwrap()).unwrap().is_empty());
            Ok(())
        })
        .unwrap();
        assert!(dead_temps(dir.path()).unwrap().is_empty());
        temp.persist(&out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"made");
        assert_eq!(names(dir.path()), vec!["out"]);
    }

    #[test]
    fn write_file_atomic_replaces_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("info.json");
        write_file_atomic(&out, b"one", 0o644).unwrap();
        write_file_atomic(&out, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"two");
        assert_eq!(names(dir.path()), vec!["info.json"]);
        let err = write_file_atomic(&dir.path().join("missing/x"), b"x", 0o644).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
