use std::fs::Permissions;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use filetime::FileTime;
use tempfile::TempDir;

use super::format::{CHECKSUM_LEN, ENTRY_FIXED_LEN, HEADER_LEN, checksum, decode};
use super::hash::HASH_BUFFER;
use super::*;

/// A store root and a project directory inside a temp dir.
fn setup() -> (TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("home");
    let project = dir.path().join("project");
    fs::create_dir_all(&project).unwrap();
    (dir, root, project)
}

/// A cache that records files however recently they changed, so tests need not wait out
/// the racy window. Tests of the racy rule itself use [`StatCache::load`].
fn eager(root: &Path, scope: &Path) -> StatCache {
    let mut cache = StatCache::load(root, scope);
    cache.racy_window_ns = 0;
    cache
}

fn key_of(path: &Path) -> StatKey {
    StatKey::of(&fs::metadata(path).unwrap())
}

fn write(path: &Path, content: &[u8]) -> StatKey {
    fs::write(path, content).unwrap();
    key_of(path)
}

fn changed_error(err: &io::Error) -> bool {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<Error>())
        .is_some_and(|e| matches!(e, Error::ChangedWhileReading { .. }))
}

#[test]
fn a_hit_does_not_touch_the_file() {
    let (_dir, root, project) = setup();
    let path = project.join("a.txt");
    let key = write(&path, b"first");
    let mut cache = eager(&root, &project);
    assert_eq!(cache.digest(&path, key).unwrap(), Digest::sha256(b"first"));
    assert_eq!((cache.hits(), cache.misses(), cache.len()), (0, 1, 1));

    // Same size, other content, written in place: with the key as it was, the cached
    // digest comes back. Had the file been read, it would be the new content's digest
    // (or an error, since the file no longer has that key).
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all(b"FIRST")
        .unwrap();
    assert_eq!(cache.digest(&path, key).unwrap(), Digest::sha256(b"first"));
    // Not even there: a hit never opens the file.
    fs::remove_file(&path).unwrap();
    assert_eq!(cache.digest(&path, key).unwrap(), Digest::sha256(b"first"));
    assert_eq!((cache.hits(), cache.misses()), (2, 1));
}

#[test]
fn lookup_hash_file_and_record_split_a_digest() {
    let (_t, root, scope) = setup();
    let file = scope.join("f");
    let key = write(&file, b"split");
    let mut cache = eager(&root, &scope);
    assert_eq!(cache.lookup(&file, key), None);
    let started = SystemTime::now();
    let d = hash_file(&file, key).unwrap();
    assert_eq!(d, Digest::sha256(b"split"));
    cache.record(&file, key, &d, started);
    assert_eq!(cache.lookup(&file, key), Some(d.clone()));
    assert_eq!((cache.hits(), cache.misses()), (1, 1));
    // Another key for the same path is a miss, and hash_file refuses it.
    let other = StatKey {
        size: key.size + 1,
        ..key
    };
    assert_eq!(cache.lookup(&file, other), None);
    assert!(changed_error(&hash_file(&file, other).unwrap_err()));
    // With the real racy window, a file changed just now is not recorded.
    let mut strict = StatCache::load(&root, &scope);
    let racy = scope.join("racy");
    let rkey = write(&racy, b"now");
    strict.record(&racy, rkey, &Digest::sha256(b"now"), SystemTime::now());
    assert_eq!(strict.lookup(&racy, rkey), None);
}

#[test]
fn every_key_field_takes_part_in_a_hit() {
    let (_dir, root, project) = setup();
    let path = project.join("a");
    let key = write(&path, b"content");
    let mut cache = eager(&root, &project);
    cache.digest(&path, key).unwrap();
    let tweaks: [fn(&mut StatKey); 5] = [
        |k| k.dev += 1,
        |k| k.ino += 1,
        |k| k.size += 1,
        |k| k.mtime_ns += 1,
        |k| k.ctime_ns += 1,
    ];
    for (i, tweak) in tweaks.iter().enumerate() {
        let mut other = key;
        tweak(&mut other);
        // Not a hit, so the file is opened, and it does not have that key.
        let err = cache.digest(&path, other).unwrap_err();
        assert!(changed_error(&err), "tweak {i}: {err}");
        assert_eq!(cache.hits(), 0, "tweak {i}");
        assert_eq!(cache.misses(), i as u64 + 2, "tweak {i}");
    }
}

#[test]
fn changed_mtime_size_or_inode_rehashes() {
    let (_dir, root, project) = setup();
    let path = project.join("a");
    let mut cache = eager(&root, &project);
    let key = write(&path, b"one");
    cache.digest(&path, key).unwrap();

    // mtime only (content unchanged): a miss, same digest, new key recorded.
    filetime::set_file_mtime(&path, FileTime::from_unix_time(1_000_000, 5)).unwrap();
    let key = key_of(&path);
    assert_eq!(cache.digest(&path, key).unwrap(), Digest::sha256(b"one"));
    assert_eq!((cache.hits(), cache.misses()), (0, 2));
    cache.digest(&path, key).unwrap();
    assert_eq!((cache.hits(), cache.misses()), (1, 2));

    // Size: appended in place.
    fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"!")
        .unwrap();
    let key = key_of(&path);
    assert_eq!(cache.digest(&path, key).unwrap(), Digest::sha256(b"one!"));
    assert_eq!((cache.hits(), cache.misses()), (1, 3));

    // Inode: replaced by rename with content of the same size.
    let other = project.join("b");
    fs::write(&other, b"two!").unwrap();
    fs::rename(&other, &path).unwrap();
    let new_key = key_of(&path);
    assert_ne!(new_key.ino, key.ino);
    assert_eq!(
        cache.digest(&path, new_key).unwrap(),
        Digest::sha256(b"two!")
    );
    assert_eq!((cache.hits(), cache.misses(), cache.len()), (1, 4, 1));
}

#[test]
fn racy_files_are_hashed_but_not_recorded() {
    let (_dir, root, project) = setup();
    let path = project.join("fresh");
    let key = write(&path, b"just written");
    let mut cache = StatCache::load(&root, &project);
    for _ in 0..2 {
        assert_eq!(
            cache.digest(&path, key).unwrap(),
            Digest::sha256(b"just written")
        );
    }
    assert_eq!((cache.hits(), cache.misses(), cache.len()), (0, 2, 0));
    cache.save().unwrap();
    assert!(!cache.file().exists(), "nothing to save");

    // A future mtime is racy even without a window, and so is a saturated one.
    let mut cache = eager(&root, &project);
    let future = SystemTime::now() + Duration::from_secs(3600);
    filetime::set_file_mtime(&path, FileTime::from_system_time(future)).unwrap();
    cache.digest(&path, key_of(&path)).unwrap();
    assert!(cache.is_empty());
    assert!(cache.is_racy(
        &StatKey {
            mtime_ns: i64::MIN,
            ctime_ns: 0,
            ..key
        },
        SystemTime::now()
    ));

    // The same file, old enough, is recorded by a cache with the default window.
    let mut cache = StatCache::load(&root, &project);
    filetime::set_file_mtime(&path, FileTime::from_unix_time(1_000_000, 0)).unwrap();
    let old_key = key_of(&path);
    let started = SystemTime::now() + RACY_WINDOW + Duration::from_millis(10);
    assert!(!cache.is_racy(&old_key, started));
    assert!(
        cache.is_racy(&old_key, SystemTime::now()),
        "ctime is recent"
    );
    cache.racy_window_ns = 0;
    cache.digest(&path, old_key).unwrap();
    assert_eq!(cache.len(), 1);
}

#[test]
fn a_stale_key_is_a_changed_file_error() {
    let (_dir, root, project) = setup();
    let path = project.join("a");
    let mut cache = eager(&root, &project);
    let before = write(&path, b"old");
    cache.digest(&path, before).unwrap();
    fs::write(&path, b"newer content").unwrap();
    let mut stale = before;
    stale.mtime_ns -= 1; // no entry has this key: the file is hashed and checked
    let err = cache.digest(&path, stale).unwrap_err();
    assert!(changed_error(&err), "{err}");
    assert_eq!(err.kind(), io::ErrorKind::Other);
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(err.to_string().contains("changed while"), "{err}");
    // The outdated entry is dropped.
    assert!(cache.is_empty());
}

#[test]
fn a_file_changing_while_hashed_is_an_error() {
    let (_dir, root, project) = setup();
    let path = project.join("big");
    let key = write(&path, &vec![b'x'; HASH_BUFFER * 2 + 7]);
    let mut cache = eager(&root, &project);
    let mut fired = false;
    cache.read_hook = Some(Box::new(move |p: &Path| {
        if !fired {
            fired = true;
            let mut f = fs::OpenOptions::new().write(true).open(p).unwrap();
            f.write_all(b"y").unwrap(); // same size, content changed under the reader
        }
    }));
    let err = cache.digest(&path, key).unwrap_err();
    assert!(changed_error(&err), "{err}");
    assert!(cache.is_empty());

    // Replaced by another file (by rename) while hashed: also refused.
    let key = write(&path, b"contents");
    let other = project.join("other");
    let moved = other.clone();
    cache.read_hook = Some(Box::new(move |p: &Path| {
        if fs::write(&moved, b"CONTENTS").is_ok() {
            fs::rename(&moved, p).unwrap();
        }
    }));
    let err = cache.digest(&path, key).unwrap_err();
    assert!(changed_error(&err), "{err}");
    assert!(cache.is_empty());
}

#[test]
fn only_regular_files_are_hashed() {
    let (_dir, root, project) = setup();
    let mut cache = eager(&root, &project);
    let fifo = project.join("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    for path in [&project, &fifo] {
        let err = cache.digest(path, key_of(path)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
    let missing = project.join("missing");
    let key = key_of(&project);
    let err = cache.digest(&missing, key).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn save_and_load_roundtrip() {
    let (_dir, root, project) = setup();
    let mut cache = eager(&root, &project);
    let mut files = Vec::new();
    for name in ["a", "ab", "abc", "b/c", "b/d/e", "z"] {
        let path = project.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let key = write(&path, name.as_bytes());
        cache.digest(&path, key).unwrap();
        files.push((path, key, Digest::sha256(name.as_bytes())));
    }
    cache.save().unwrap();
    let saved = fs::metadata(cache.file()).unwrap();
    assert_eq!(saved.mode() & 0o777, 0o600);
    assert_eq!(
        fs::metadata(root.join(STAT_BUCKET)).unwrap().mode() & 0o777,
        0o700
    );

    // Other spellings of the scope share the file.
    let mut loaded = StatCache::load(&root, &project.join("./"));
    assert_eq!(loaded.file(), cache.file());
    assert_eq!(loaded.len(), files.len());
    // In path order (the fast way) and in reverse.
    for (path, key, digest) in files.iter().chain(files.iter().rev()) {
        assert_eq!(loaded.digest(path, *key).unwrap(), *digest);
    }
    assert_eq!((loaded.hits(), loaded.misses()), (12, 0));
    // Nothing changed: saving writes nothing.
    loaded.save().unwrap();
    assert_eq!(fs::metadata(cache.file()).unwrap().ino(), saved.ino());

    // Another scope has its own file.
    let other = StatCache::load(&root, &project.join("b"));
    assert_ne!(other.file(), cache.file());
    assert!(other.is_empty());
}

/// Recomputes the checksum of an edited cache file.
fn reseal(bytes: &mut Vec<u8>) {
    bytes.truncate(bytes.len() - CHECKSUM_LEN);
    let sum = checksum(bytes);
    bytes.extend_from_slice(&sum.to_le_bytes());
}

#[test]
fn damaged_files_load_empty() {
    let (_dir, root, project) = setup();
    let mut cache = eager(&root, &project);
    for name in ["one", "two"] {
        let path = project.join(name);
        cache.digest(&path, write(&path, b"x")).unwrap();
    }
    cache.save().unwrap();
    let file = cache.file().to_owned();
    let good = fs::read(&file).unwrap();
    assert_eq!(decode(good.clone()).unwrap().len(), 2);
    let entry_at = HEADER_LEN;

    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    cases.push(("empty", Vec::new(), "bytes long"));
    cases.push((
        "garbage",
        b"not a stat cache at all, not at all!!!!!!!!!!!!!".to_vec(),
        "magic",
    ));
    let mut flipped = good.clone();
    flipped[entry_at + 20] ^= 1;
    cases.push(("flipped byte", flipped, "checksum"));
    let mut version = good.clone();
    version[8] = 2;
    reseal(&mut version);
    cases.push(("other version", version, "version 2"));
    let mut count = good.clone();
    count[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut count);
    cases.push(("huge count", count, "claims"));
    let mut path_len = good.clone();
    path_len[entry_at..entry_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut path_len);
    cases.push(("huge path length", path_len, "bad path length"));
    let mut path_len = good.clone();
    let past_the_end = (good.len() - CHECKSUM_LEN - entry_at - ENTRY_FIXED_LEN + 1) as u32;
    path_len[entry_at..entry_at + 4].copy_from_slice(&past_the_end.to_le_bytes());
    reseal(&mut path_len);
    cases.push(("path past the end", path_len, "bad path length"));
    // Long paths, so that a third entry fits the size check but is missing.
    let record = decode(good.clone()).unwrap().record(0);
    let long = [vec![b'a'; 300], vec![b'b'; 300]];
    let mut high_count = encode(&[(&long[0], record), (&long[1], record)]);
    high_count[12..16].copy_from_slice(&3u32.to_le_bytes());
    reseal(&mut high_count);
    cases.push((
        "count higher than the entries",
        high_count,
        "entry 2 is truncated",
    ));
    let mut trailing = good.clone();
    trailing.splice(good.len() - CHECKSUM_LEN..good.len() - CHECKSUM_LEN, [0u8]);
    reseal(&mut trailing);
    cases.push(("trailing bytes", trailing, "after the last entry"));
    let mut short_count = good.clone();
    short_count[12..16].copy_from_slice(&1u32.to_le_bytes());
    reseal(&mut short_count);
    cases.push((
        "count lower than the entries",
        short_count,
        "after the last entry",
    ));
    for len in [
        HEADER_LEN + CHECKSUM_LEN - 1,
        HEADER_LEN + CHECKSUM_LEN,
        good.len() - 1,
    ] {
        cases.push(("truncated", good[..len].to_vec(), ""));
    }

    for (what, bytes, reason) in &cases {
        let err = decode(bytes.clone()).unwrap_err();
        assert!(err.contains(reason), "{what}: {err}");
        fs::write(&file, bytes).unwrap();
        let mut cache = eager(&root, &project);
        assert!(cache.is_empty(), "{what}");
        // Still usable, and saving replaces the damaged file.
        let path = project.join("one");
        cache.digest(&path, key_of(&path)).unwrap();
        cache.save().unwrap();
        assert_eq!(StatCache::load(&root, &project).len(), 1, "{what}");
    }

    // Out of order entries (sorted input reversed, then resealed) are refused.
    let a = Record {
        key: key_of(&project.join("one")),
        digest: [1; 32],
        day: 0,
    };
    let mut unsorted = encode(&[(b"/b".as_slice(), a), (b"/c".as_slice(), a)]);
    let pos = HEADER_LEN + ENTRY_FIXED_LEN + 2 + 4 + 1;
    assert_eq!(unsorted[pos], b'c');
    unsorted[pos] = b'a';
    reseal(&mut unsorted);
    assert!(decode(unsorted).unwrap_err().contains("out of order"));

    // A file over the cap, and a directory in the file's place.
    fs::remove_file(&file).unwrap();
    fs::File::create(&file)
        .unwrap()
        .set_len(MAX_FILE_SIZE + 1)
        .unwrap();
    assert!(StatCache::load(&root, &project).is_empty());
    fs::remove_file(&file).unwrap();
    fs::create_dir(&file).unwrap();
    assert!(StatCache::load(&root, &project).is_empty());
}

#[test]
fn out_of_order_lookups_build_an_index() {
    let record = Record {
        key: StatKey {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
            ctime_ns: 5,
        },
        digest: [6; 32],
        day: 7,
    };
    let paths: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("/p/{i:03}").into_bytes())
        .collect();
    let entries: Vec<(&[u8], Record)> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                p.as_slice(),
                Record {
                    day: i as u32,
                    ..record
                },
            )
        })
        .collect();
    let mut table = decode(encode(&entries)).unwrap();
    // In order, the hint answers and no index is built.
    for (i, path) in paths.iter().enumerate() {
        assert_eq!(table.find(path, i), Some(i));
    }
    assert!(table.index.is_empty());
    // Out of order: binary searches, then (past a quarter of the entries) the index.
    for round in 0..2 {
        for i in (0..200).map(|i| i * 7 % 200) {
            let found = table.find(&paths[i], 0).map(|j| table.record(j).day);
            assert_eq!(found, Some(i as u32), "round {round}");
        }
        assert_eq!(table.find(b"/p/999", 0), None);
        assert_eq!(table.find(b"/p/", 0), None);
        assert!(!table.index.is_empty(), "built during the first round");
    }
    assert!(table.index.len() >= 400 && table.index.len().is_power_of_two());
}

#[test]
fn concurrent_saves_merge() {
    let (_dir, root, project) = setup();
    // Four processes' worth of caches, each with its own files, saving at once.
    let caches: Vec<(StatCache, Vec<(PathBuf, StatKey)>)> = (0..4)
        .map(|c| {
            let mut cache = eager(&root, &project);
            let mut files = Vec::new();
            for i in 0..50 {
                let path = project.join(format!("c{c}-f{i}"));
                let key = write(&path, path.to_str().unwrap().as_bytes());
                cache.digest(&path, key).unwrap();
                files.push((path, key));
            }
            (cache, files)
        })
        .collect();
    let all: Vec<_> = caches.iter().flat_map(|(_, f)| f.clone()).collect();
    std::thread::scope(|s| {
        for (cache, _) in &caches {
            s.spawn(move || cache.save().unwrap());
        }
    });
    let mut merged = eager(&root, &project);
    assert_eq!(merged.len(), all.len());
    for (path, key) in &all {
        merged.digest(path, *key).unwrap();
    }
    assert_eq!((merged.hits(), merged.misses()), (200, 0));
}

#[test]
fn looked_up_entries_win_and_others_are_kept() {
    let (_dir, root, project) = setup();
    let (f, g, h) = (project.join("f"), project.join("g"), project.join("h"));
    let mut first = eager(&root, &project);
    for path in [&f, &g] {
        first.digest(path, write(path, b"v1")).unwrap();
    }
    first.save().unwrap();

    // Two processes load the same state; f changes; the second sees it, the first
    // records only h and saves last, without looking at f.
    let mut a = eager(&root, &project);
    let mut b = eager(&root, &project);
    let f2 = write(&f, b"version 2");
    assert_eq!(b.digest(&f, f2).unwrap(), Digest::sha256(b"version 2"));
    b.save().unwrap();
    a.digest(&h, write(&h, b"h")).unwrap();
    a.save().unwrap();

    let mut c = eager(&root, &project);
    assert_eq!(c.len(), 3);
    c.digest(&f, f2).unwrap();
    c.digest(&g, key_of(&g)).unwrap();
    c.digest(&h, key_of(&h)).unwrap();
    assert_eq!((c.hits(), c.misses()), (3, 0));

    // A lookup that finds the file changed drops the entry even if another process
    // still has it: the first process saves f's old entry (which it did not look up)
    // along with a new one, then the second merges its drop into that.
    let mut a = eager(&root, &project);
    let mut b = eager(&root, &project);
    let f3 = write(&f, b"version three, now");
    b.racy_window_ns = i64::MAX; // everything racy: hashed, not recorded
    b.digest(&f, f3).unwrap();
    let i = project.join("i");
    a.digest(&i, write(&i, b"i")).unwrap();
    a.save().unwrap();
    assert!(eager(&root, &project).record_of(&f).is_some());
    b.save().unwrap();
    let c = eager(&root, &project);
    assert_eq!(c.len(), 3, "g, h and i");
    assert!(c.record_of(&f).is_none());
}

#[test]
fn unused_entries_expire() {
    let (_dir, root, project) = setup();
    let (used, unused) = (project.join("used"), project.join("unused"));
    let mut cache = eager(&root, &project);
    for path in [&used, &unused] {
        cache.digest(path, write(path, b"x")).unwrap();
    }
    cache.save().unwrap();

    // Within the limit a hit on another day refreshes the entry and keeps the others.
    let mut later = eager(&root, &project);
    later.today += STALE_DAYS;
    later.digest(&used, key_of(&used)).unwrap();
    later.save().unwrap();
    assert_eq!(StatCache::load(&root, &project).len(), 2);

    // One day later, the entry not used since the first day is gone.
    let mut later = eager(&root, &project);
    later.today += STALE_DAYS + 1;
    later.digest(&used, key_of(&used)).unwrap();
    later.save().unwrap();
    let loaded = StatCache::load(&root, &project);
    assert_eq!(loaded.len(), 1);
    assert!(loaded.record_of(&used).is_some());
}

#[test]
fn verify_detects_a_tampered_read_only_file() {
    let (_dir, root, _project) = setup();
    let blobs = root.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let content = b"a blob in the store".to_vec();
    let digest = Digest::sha256(&content);
    let path = blobs.join(digest.hex());
    fs::write(&path, &content).unwrap();
    fs::set_permissions(&path, Permissions::from_mode(0o444)).unwrap();

    let mut cache = eager(&root, &root);
    assert!(cache.verify(&path, &digest).unwrap());
    assert!(cache.verify(&path, &digest).unwrap());
    assert_eq!((cache.hits(), cache.misses()), (1, 1));
    assert!(!cache.verify(&path, &Digest::sha256(b"other")).unwrap());
    let recorded = key_of(&path);

    // Let the filesystem's (possibly coarse) clock move on, so the write below gets a new
    // ctime. In real use the racy window guarantees this.
    std::thread::sleep(Duration::from_millis(50));
    fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
    let mut flipped = content.clone();
    flipped[3] ^= 0x20;
    fs::write(&path, &flipped).unwrap();
    fs::set_permissions(&path, Permissions::from_mode(0o444)).unwrap();
    // Put mtime back: only ctime tells.
    let mtime = FileTime::from_unix_time(
        recorded.mtime_ns.div_euclid(1_000_000_000),
        recorded.mtime_ns.rem_euclid(1_000_000_000) as u32,
    );
    filetime::set_file_mtime(&path, mtime).unwrap();
    let now = key_of(&path);
    assert_eq!(
        (now.ino, now.size, now.mtime_ns),
        (recorded.ino, recorded.size, recorded.mtime_ns)
    );
    assert_ne!(now.ctime_ns, recorded.ctime_ns);

    let misses = cache.misses();
    assert!(!cache.verify(&path, &digest).unwrap());
    assert_eq!(cache.misses(), misses + 1);

    // Other algorithms are hashed every time.
    let sha512 = Digest::compute(Algorithm::Sha512, &flipped);
    assert!(cache.verify(&path, &sha512).unwrap());
    assert!(cache.verify(&path, &sha512).unwrap());
    assert_eq!(cache.misses(), misses + 3);

    let err = cache.verify(&root.join("missing"), &digest).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
}

#[test]
fn deleting_the_bucket_is_safe() {
    let (_dir, root, project) = setup();
    let path = project.join("a");
    let key = write(&path, b"a");
    let mut cache = eager(&root, &project);
    cache.digest(&path, key).unwrap();
    cache.save().unwrap();
    let mut loaded = eager(&root, &project);
    fs::remove_dir_all(root.join(STAT_BUCKET)).unwrap();
    let other = project.join("b");
    loaded.digest(&other, write(&other, b"b")).unwrap();
    loaded.save().unwrap();
    // The deletion is respected: only what this run looked up is saved again.
    let mut again = eager(&root, &project);
    assert_eq!(again.len(), 1);
    again.digest(&path, key).unwrap();
    assert_eq!((again.hits(), again.misses()), (0, 1));
    fs::remove_dir_all(root.join(STAT_BUCKET)).unwrap();
    assert!(StatCache::load(&root, &project).is_empty());
}

/// Measures a no-op rebuild's use of the cache over 54,000 files:
/// `cargo test -p gantry-cache --release -- --ignored --nocapture bench_54k`.
#[test]
#[ignore = "a measurement, not a check; run it by hand in release mode"]
#[allow(clippy::print_stderr)]
fn bench_54k() {
    use std::time::Instant;
    const FILES: usize = 54_000;
    let (_dir, root, project) = setup();
    let mut paths = Vec::with_capacity(FILES);
    for i in 0..FILES {
        let dir = project.join(format!(
            "node_modules/@scope/package-name-{:03}/lib/internal",
            i / 100
        ));
        if i % 100 == 0 {
            fs::create_dir_all(&dir).unwrap();
        }
        let path = dir.join(format!("some-module-file-{i:05}.js"));
        fs::write(&path, format!("module.exports = {i};\n")).unwrap();
        paths.push(path);
    }
    let keys: Vec<StatKey> = paths.iter().map(|p| key_of(p)).collect();

    let t = Instant::now();
    let mut cache = eager(&root, &project);
    for (path, key) in paths.iter().zip(&keys) {
        cache.digest(path, *key).unwrap();
    }
    let first_hash = t.elapsed();
    let t = Instant::now();
    cache.save().unwrap();
    let first_save = t.elapsed();
    let size = fs::metadata(cache.file()).unwrap().len();

    let t = Instant::now();
    let mut cache = StatCache::load(&root, &project);
    let load = t.elapsed();
    let t = Instant::now();
    for (path, key) in paths.iter().zip(&keys) {
        cache.digest(path, *key).unwrap();
    }
    let lookups = t.elapsed();
    let t = Instant::now();
    for path in &paths {
        let key = StatKey::of(&fs::symlink_metadata(path).unwrap());
        cache.digest(path, key).unwrap();
    }
    let stat_lookups = t.elapsed();
    // Out of order (binary search for every lookup): a stride coprime to FILES.
    let t = Instant::now();
    for i in (0..FILES).map(|i| i * 7919 % FILES) {
        cache.digest(&paths[i], keys[i]).unwrap();
    }
    let shuffled = t.elapsed();
    assert_eq!(cache.hits(), 3 * FILES as u64);
    let t = Instant::now();
    cache.save().unwrap();
    let noop_save = t.elapsed();
    cache.dirty = true;
    let t = Instant::now();
    cache.save().unwrap();
    let full_save = t.elapsed();
    cache.loaded_from = None;
    let t = Instant::now();
    cache.save().unwrap();
    let merging_save = t.elapsed();
    eprintln!(
        "{FILES} files, cache file {size} bytes ({} per entry)\n\
         first run: hash all {first_hash:?}, save {first_save:?}\n\
         no-op run: load {load:?}, {FILES} lookups {lookups:?} \
         (with the caller's lstat: {stat_lookups:?}, out of order: {shuffled:?}), \
         save {noop_save:?}\n\
         save when dirty {full_save:?}, save merging with a changed file {merging_save:?}",
        size / FILES as u64
    );
}
