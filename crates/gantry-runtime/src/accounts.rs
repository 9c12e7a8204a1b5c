//! The container's user from the image's own `/etc/passwd` and `/etc/group`, read inside its
//! root with a size cap: no NSS, nothing from the image is executed.

use std::path::Path;

use crate::{Error, Result, User};

/// `/etc/passwd` and `/etc/group` are read up to this size.
const MAX_ACCOUNT_FILE: u64 = 4 << 20;

/// Resolves `user` (`uid[:gid]`, `name[:group]`, empty for root) against the rootfs's
/// /etc/passwd and /etc/group, read inside the root with a size cap: no NSS, nothing from
/// the image is executed. A named user gets the groups that list it as supplementary ones.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<User> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = || read_account_file(rootfs, "etc/passwd");
    let (uid, primary) = if u.is_empty() {
        (0, 0)
    } else if let Ok(n) = u.parse::<u32>() {
        let primary = passwd()?
            .lines()
            .filter_map(|l| parse_passwd(l))
            .find(|e| e.1 == n)
            .map_or(0, |e| e.2);
        (n, primary)
    } else {
        let text = passwd()?;
        let e = text
            .lines()
            .filter_map(|l| parse_passwd(l))
            .find(|e| e.0 == u)
            .ok_or_else(|| Error::UnknownUser(u.to_owned()))?;
        (e.1, e.2)
    };
    let groups = read_account_file(rootfs, "etc/group")?;
    let gid = match g {
        None | Some("") => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .lines()
                .filter_map(|l| parse_group(l))
                .find(|e| e.0 == g)
                .map(|e| e.1)
                .ok_or_else(|| Error::UnknownGroup(g.to_owned()))?,
        },
    };
    // Supplementary groups of a named user.
    let mut additional_gids = Vec::new();
    if !u.is_empty() && u.parse::<u32>().is_err() {
        for (_, id, members) in groups.lines().filter_map(|l| parse_group(l)) {
            if id != gid && members.split(',').any(|m| m == u) && !additional_gids.contains(&id) {
                additional_gids.push(id);
            }
        }
    }
    Ok(User {
        uid,
        gid,
        additional_gids,
    })
}

/// A line of `/etc/passwd`: name, uid, primary gid.
fn parse_passwd(line: &str) -> Option<(&str, u32, u32)> {
    let mut f = line.split(':');
    let name = f.next()?;
    let _pw = f.next()?;
    let uid = f.next()?.parse().ok()?;
    let gid = f.next()?.parse().ok()?;
    Some((name, uid, gid))
}

/// A line of `/etc/group`: name, gid, members (comma-separated).
fn parse_group(line: &str) -> Option<(&str, u32, &str)> {
    let mut f = line.split(':');
    let name = f.next()?;
    let _pw = f.next()?;
    let gid = f.next()?.parse().ok()?;
    Some((name, gid, f.next().unwrap_or("")))
}

/// A file of the rootfs, resolved inside it (an absent file reads as empty).
fn read_account_file(rootfs: &Path, rel: &str) -> Result<String> {
    match crate::read_in_root(rootfs, rel, MAX_ACCOUNT_FILE) {
        Ok(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Ok(None) => Ok(String::new()),
        Err(e) => Err(Error::AccountFile {
            file: format!("/{rel}"),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_from_the_image_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\napp:x:1001:\nwheel:x:10:app,other\n",
        )
        .unwrap();
        let r = |u: &str| resolve_user(d.path(), u).unwrap();
        assert_eq!(
            r("app"),
            User {
                uid: 1000,
                gid: 1001,
                additional_gids: vec![10]
            }
        );
        assert_eq!(r("1000").gid, 1001);
        assert_eq!(r("1000:10").gid, 10);
        assert_eq!(r("app:wheel").gid, 10);
        assert_eq!(r("").uid, 0);
        assert_eq!(r("4242").gid, 0);
        let e = resolve_user(d.path(), "nobody").unwrap_err().to_string();
        assert!(e.contains("\"nobody\""), "{e}");
        let e = resolve_user(d.path(), "app:staff").unwrap_err().to_string();
        assert_eq!(e, "group \"staff\" is not in the image's /etc/group");
    }

    #[test]
    fn account_files_are_read_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(d.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        // An absolute symlink out of the root resolves inside it (and finds nothing).
        std::os::unix::fs::symlink(d.path().join("passwd"), root.join("etc/passwd")).unwrap();
        let e = resolve_user(&root, "evil").unwrap_err().to_string();
        assert!(e.contains("not in the image's /etc/passwd"), "{e}");
    }

    #[test]
    fn an_unreadable_account_file_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc/passwd")).unwrap();
        let e = resolve_user(d.path(), "app").unwrap_err().to_string();
        assert_eq!(
            e,
            "cannot read /etc/passwd of the image: /etc/passwd: not a regular file"
        );
    }
}
