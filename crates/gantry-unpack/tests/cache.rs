//! The rootfs cache: crash leftovers, reuse, concurrent callers, chain ids.

mod common;

use std::fs::{self, File};
use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{Tb, decompress, gz, names, opts};
use gantry_oci::Digest;
use gantry_unpack::{Error, RootfsCache, chain_id};

type Layers = Vec<(String, Box<dyn Read>)>;

fn layer() -> Vec<u8> {
    let mut tb = Tb::new();
    tb.file("etc/os-release", "ID=test\n")
        .symlink("bin", "usr/bin");
    gz(&tb.finish())
}

fn layers_of(data: Vec<u8>) -> Layers {
    vec![("sha256:l".to_owned(), Box::new(io::Cursor::new(data)))]
}

/// The diff_ids of an image made of `layers`.
fn ids(layers: &[Vec<u8>]) -> Vec<Digest> {
    layers
        .iter()
        .map(|l| Digest::sha256(&decompress(l)))
        .collect()
}

/// The entry name of an image made of `layers`.
fn key(layers: &[Vec<u8>]) -> String {
    format!("sha256-{}", chain_id(&ids(layers)).hex())
}

fn other_layer() -> Vec<u8> {
    let mut tb = Tb::new();
    tb.file("other", "other");
    gz(&tb.finish())
}

#[test]
fn chain_ids_follow_the_image_spec() {
    let a = Digest::sha256(b"a");
    let b = Digest::sha256(b"b");
    let c = Digest::sha256(b"c");
    assert_eq!(chain_id(std::slice::from_ref(&a)), a);
    let ab = Digest::sha256(format!("{a} {b}").as_bytes());
    assert_eq!(chain_id(&[a.clone(), b.clone()]), ab);
    assert_eq!(
        chain_id(&[a.clone(), b.clone(), c.clone()]),
        Digest::sha256(format!("{ab} {c}").as_bytes())
    );
    assert_ne!(chain_id(&[b, a]), ab, "order matters");
    assert_eq!(chain_id(&[]), Digest::sha256(b""));
}

#[test]
fn a_second_call_reuses_the_rootfs_without_opening_layers() {
    let dir = tempfile::tempdir().unwrap();
    let cache = RootfsCache::open(dir.path()).unwrap();
    let calls = AtomicUsize::new(0);
    let diff_ids = ids(&[layer()]);
    let get = || {
        cache.get_or_unpack(
            &diff_ids,
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(layers_of(layer()))
            },
            &opts(),
        )
    };
    let first = get().unwrap();
    assert_eq!(
        fs::read(first.join("etc/os-release")).unwrap(),
        b"ID=test\n"
    );
    let second = get().unwrap();
    assert_eq!(first, second);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(first.ends_with(format!("v2/{}/rootfs", key(&[layer()]))));
    // Reopening finds it too.
    let again = RootfsCache::open(dir.path()).unwrap();
    let p = again
        .get_or_unpack(&diff_ids, || panic!("must not unpack again"), &opts())
        .unwrap();
    assert_eq!(p, first);
    assert_eq!(again.get(&diff_ids), Some(first));
    // Only the entry and its lock remain; no temp dirs.
    let left: Vec<String> = names(again.dir())
        .into_iter()
        .map(|n| String::from_utf8(n).unwrap())
        .collect();
    let k = key(&[layer()]);
    assert_eq!(left, vec![k.clone(), format!("{k}.lock")]);
    assert!(
        RootfsCache::check(dir.path(), false).unwrap().is_empty(),
        "a cache in use is consistent"
    );
}

#[test]
fn racing_threads_unpack_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(RootfsCache::open(dir.path()).unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (cache, calls, barrier) = (cache.clone(), calls.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                cache
                    .get_or_unpack(
                        &ids(&[layer()]),
                        || {
                            calls.fetch_add(1, Ordering::SeqCst);
                            // Widen the window for the others to arrive.
                            std::thread::sleep(Duration::from_millis(300));
                            Ok(layers_of(layer()))
                        },
                        &opts(),
                    )
                    .unwrap()
            })
        })
        .collect();
    let paths: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(paths.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(
        fs::read(paths[0].join("etc/os-release")).unwrap(),
        b"ID=test\n"
    );
}

#[test]
fn crash_leftovers_are_removed_at_open_but_live_ones_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = RootfsCache::open(dir.path()).unwrap().dir().to_owned();
    let k = key(&[layer()]);
    // A crashed unpack with its (unlocked) lock file, one without a lock file, and a stray lock.
    for name in ["tmp-dead-1", "tmp-dead-2"] {
        fs::create_dir_all(v1.join(name).join("rootfs/usr/bin")).unwrap();
        fs::write(v1.join(name).join("rootfs/usr/bin/x"), "x").unwrap();
        // Hostile content must not make the cleanup follow symlinks.
        std::os::unix::fs::symlink("/", v1.join(name).join("rootfs/escape")).unwrap();
    }
    File::create(v1.join("tmp-dead-1.lock")).unwrap();
    File::create(v1.join("tmp-stray.lock")).unwrap();
    // A live one: its lock is held (as by another process).
    fs::create_dir_all(v1.join("tmp-live/rootfs")).unwrap();
    let live_lock = File::create(v1.join("tmp-live.lock")).unwrap();
    live_lock.lock().unwrap();
    // A complete entry stays.
    let done = v1.join(&k);
    fs::create_dir_all(done.join("rootfs")).unwrap();

    let cache = RootfsCache::open(dir.path()).unwrap();
    let left: Vec<String> = names(cache.dir())
        .into_iter()
        .map(|n| String::from_utf8(n).unwrap())
        .collect();
    assert_eq!(
        left,
        vec![k.clone(), "tmp-live".to_owned(), "tmp-live.lock".to_owned()]
    );
    assert!(std::path::Path::new("/usr/bin").exists());
    drop(live_lock);
    // Once its owner is gone, the next open removes it.
    let cache = RootfsCache::open(dir.path()).unwrap();
    assert_eq!(names(cache.dir()).len(), 1);
    // The cache is private.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(cache.dir()).unwrap().mode() & 0o777, 0o700);
}

#[test]
fn failures_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let cache = RootfsCache::open(dir.path()).unwrap();
    // A bad layer.
    let mut tb = Tb::new();
    tb.file("ok", "fine").file("../escape", "x");
    let bad = gz(&tb.finish());
    let diff_ids = ids(std::slice::from_ref(&bad));
    let err = cache
        .get_or_unpack(&diff_ids, || Ok(layers_of(bad.clone())), &opts())
        .unwrap_err();
    assert!(err.to_string().contains("'..'"), "{err}");
    // A failing source.
    let err = cache
        .get_or_unpack(
            &diff_ids,
            || Err(Error::Source("the registry is down".into())),
            &opts(),
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "the registry is down");
    // Not one layer per diff_id.
    let err = cache
        .get_or_unpack(
            &diff_ids,
            || {
                let mut two = layers_of(layer());
                two.extend(layers_of(layer()));
                Ok(two)
            },
            &opts(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::LayerCount { .. }), "{err}");
    let left: Vec<String> = names(cache.dir())
        .into_iter()
        .map(|n| String::from_utf8(n).unwrap())
        .collect();
    assert_eq!(
        left,
        vec![format!("{}.lock", key(&[bad]))],
        "no temp dirs, no entry"
    );
    // And a later success works.
    cache
        .get_or_unpack(&ids(&[layer()]), || Ok(layers_of(layer())), &opts())
        .unwrap();
}

#[test]
fn entries_unused_for_long_are_pruned_and_used_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cache = RootfsCache::open(dir.path()).unwrap();
    let (chain, other) = (ids(&[layer()]), ids(&[other_layer()]));
    let old = cache
        .get_or_unpack(&chain, || Ok(layers_of(layer())), &opts())
        .unwrap();
    let fresh = cache
        .get_or_unpack(&other, || Ok(layers_of(other_layer())), &opts())
        .unwrap();
    let ten_days_ago = filetime::FileTime::from_system_time(
        std::time::SystemTime::now() - Duration::from_secs(10 * 86_400),
    );
    let lock_of = |l: Vec<u8>| cache.dir().join(format!("{}.lock", key(&[l])));
    filetime::set_file_mtime(lock_of(layer()), ten_days_ago).unwrap();
    filetime::set_file_mtime(lock_of(other_layer()), ten_days_ago).unwrap();
    // A use refreshes the entry.
    cache
        .get_or_unpack(&other, || panic!("cached"), &opts())
        .unwrap();
    let day = Duration::from_secs(86_400);
    assert_eq!(cache.prune(day, true).unwrap(), 1, "dry run counts");
    assert!(old.is_dir(), "a dry run removes nothing");
    assert_eq!(cache.prune(day, false).unwrap(), 1);
    assert!(
        !old.exists() && !lock_of(layer()).exists(),
        "the unused entry is gone"
    );
    assert!(fresh.is_dir(), "the used entry stays");
    assert_eq!(cache.prune(day, false).unwrap(), 0);
}

#[test]
fn regression_gc_left_the_unverified_v1_bucket_behind() {
    let dir = tempfile::tempdir().unwrap();
    // An older gantry's cache: bucket v1 with an (unverified) tree in it.
    let old_tree = dir.path().join("v1/sha256-00/rootfs/etc");
    std::fs::create_dir_all(&old_tree).unwrap();
    std::fs::write(old_tree.join("passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
    // A stray file is not a bucket: fsck's business, not gc's.
    std::fs::write(dir.path().join("notes"), "mine").unwrap();
    let cache = RootfsCache::open(dir.path()).unwrap();
    let day = Duration::from_secs(86_400);
    assert_eq!(
        cache.prune(day, true).unwrap(),
        1,
        "dry run counts the old bucket"
    );
    assert!(dir.path().join("v1").is_dir());
    assert_eq!(cache.prune(day, false).unwrap(), 1);
    assert!(!dir.path().join("v1").exists());
    assert!(dir.path().join("notes").is_file());
    assert!(cache.dir().is_dir(), "the current bucket stays");
    assert_eq!(cache.prune(day, false).unwrap(), 0);
}
