use std::path::Path;

use anyhow::{Context as _, Result, bail};

/// Maps `f` over `items` on up to `jobs` threads, keeping the order; the first error wins.
pub(crate) fn parallel_map<T: Sync, R: Send>(
    jobs: usize,
    items: &[T],
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    use std::sync::Mutex;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Result<R>>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1).min(items.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= items.len() {
                        break;
                    }
                    let r = f(&items[i]);
                    *results[i].lock().expect("no panics while holding it") = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .expect("no panics while holding it")
                .expect("every item ran")
        })
        .collect()
}

/// Splits `KEY=VALUE` for `flag`; the key must be non-empty.
pub(crate) fn split_pair<'a>(flag: &str, item: &'a str) -> Result<(&'a str, &'a str)> {
    match item.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k, v)),
        _ => bail!("{flag} {item:?}: expected KEY=VALUE"),
    }
}

/// Checks, before any work is done, that `path` (given with `flag`) can be written as a file:
/// it names a file, is not a directory, and its parent directory exists. Catching this early
/// keeps a command that would fail at the end from writing to the store first.
pub(crate) fn check_output_file(flag: &str, path: &Path) -> Result<()> {
    if path.file_name().is_none() {
        bail!("{flag} {}: not a file path", path.display());
    }
    if path.is_dir() {
        bail!("{flag} {}: is a directory", path.display());
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!(
            "{flag} {}: {} is not a directory",
            path.display(),
            parent.display()
        );
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically and fsynced, through the store's one mechanism for
/// temps beside outputs ([`gantry_store::write_file_atomic`]).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    gantry_store::write_file_atomic(path, bytes, 0o666)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Parses an argv given as a JSON array (`'["a","b"]'`) or as one value per flag.
pub(crate) fn parse_argv(flag: &str, values: &[String]) -> Result<Option<Vec<String>>> {
    match values {
        [] => Ok(None),
        [one] if one.trim_start().starts_with('[') => {
            let v: Vec<String> = serde_json::from_str(one)
                .with_context(|| format!("{flag} {one:?}: not a JSON array of strings"))?;
            Ok(Some(v))
        }
        many => Ok(Some(many.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_forms() {
        assert_eq!(parse_argv("--cmd", &[]).unwrap(), None);
        assert_eq!(
            parse_argv("--cmd", &[r#"["sh","-c","echo hi"]"#.into()])
                .unwrap()
                .unwrap(),
            ["sh", "-c", "echo hi"]
        );
        assert_eq!(
            parse_argv("--cmd", &["[]".into()]).unwrap().unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            parse_argv("--cmd", &["sh".into(), "-c".into()])
                .unwrap()
                .unwrap(),
            ["sh", "-c"]
        );
        assert!(parse_argv("--cmd", &["[1,2]".into()]).is_err());
    }

    #[test]
    fn output_files() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("out.json");
        check_output_file("--info", &ok).unwrap();
        let e = check_output_file("--info", dir.path()).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let e = check_output_file("-o", &dir.path().join("missing/out.tgz")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(check_output_file("-o", Path::new("/")).is_err());
    }

    #[test]
    fn pairs() {
        assert_eq!(split_pair("--env", "A=b=c").unwrap(), ("A", "b=c"));
        assert!(split_pair("--env", "=x").is_err());
        assert!(split_pair("--env", "x").is_err());
    }
}
