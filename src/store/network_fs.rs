//! Whether the SQLite file lives on a network filesystem.
//!
//! SQLite's WAL keeps its index in shared memory (the `-shm` file, mapped by
//! every process): "all processes using a database must be on the same host
//! computer; WAL does not work over a network filesystem" (sqlite.org/wal.html).
//! A home on NFS or Lustre shared by workers on several machines would give
//! "database is locked" errors or worse; those workers need PostgreSQL. The
//! filesystem is read from `/proc/self/mountinfo` (Linux; elsewhere nothing
//! is said).

use std::path::Path;

/// Filesystem types that machines share over a network (`mount -t`).
const NETWORK: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "lustre",
    "gpfs",
    "beegfs",
    "ceph",
    "fuse.ceph",
    "glusterfs",
    "fuse.glusterfs",
    "fuse.sshfs",
    "afs",
    "ocfs2",
    "gfs2",
    "panfs",
    "wekafs",
    "fuse.s3fs",
    "fuse.gcsfuse",
    "fuse.juicefs",
];

/// The network filesystem type `path` is on (`nfs4`), or None (a local one,
/// or not known).
pub fn network_filesystem(path: &Path) -> Option<String> {
    let dir = if path.is_dir() { path } else { path.parent()? };
    let real = std::fs::canonicalize(dir).ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let fstype = filesystem_of(&mountinfo, &real.to_string_lossy())?;
    NETWORK.contains(&fstype.as_str()).then_some(fstype)
}

/// The type of the filesystem mounted deepest above `path` in a
/// `/proc/self/mountinfo` text (the last such mount wins, as it hides the
/// earlier ones).
fn filesystem_of(mountinfo: &str, path: &str) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let (Some(point), Some(fstype)) = (left.split(' ').nth(4), right.split(' ').next()) else { continue };
        let point = unescape(point);
        let under = path == point
            || point == "/"
            || path.strip_prefix(point.as_str()).is_some_and(|rest| rest.starts_with('/'));
        if under && best.as_ref().is_none_or(|(len, _)| point.len() >= *len) {
            best = Some((point.len(), fstype.to_owned()));
        }
    }
    best.map(|(_, t)| t)
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
30 22 0:40 / /home rw,relatime - nfs4 fs:/export/home rw,vers=4.2
31 30 8:2 / /home/local rw - xfs /dev/sdb1 rw
32 22 0:41 / /scratch\\040space rw - lustre 10.0.0.1@tcp:/scratch rw
33 22 0:42 / /homework rw - ext4 /dev/sdc1 rw
34 22 0:43 / /home rw - tmpfs tmpfs rw
";

    #[test]
    fn the_deepest_and_latest_mount_above_a_path_names_its_filesystem() {
        assert_eq!(filesystem_of(MOUNTINFO, "/var/lib/x").as_deref(), Some("ext4"));
        assert_eq!(filesystem_of(MOUNTINFO, "/home/local/lab").as_deref(), Some("xfs"));
        assert_eq!(filesystem_of(MOUNTINFO, "/scratch space/u/.sweep").as_deref(), Some("lustre"));
        // Not a prefix by characters only: /homework is not under /home.
        assert_eq!(filesystem_of(MOUNTINFO, "/homework/a").as_deref(), Some("ext4"));
        // A later mount on the same point hides the earlier one.
        assert_eq!(filesystem_of(MOUNTINFO, "/home/u").as_deref(), Some("tmpfs"));
        let nfs = MOUNTINFO.lines().filter(|l| !l.starts_with("34 ")).collect::<Vec<_>>().join("\n");
        assert_eq!(filesystem_of(&nfs, "/home/u/.sweep").as_deref(), Some("nfs4"));
        assert_eq!(filesystem_of(&nfs, "/home").as_deref(), Some("nfs4"));
    }

    #[test]
    fn a_local_home_is_not_a_network_filesystem() {
        let dir = std::env::temp_dir();
        if std::path::Path::new("/proc/self/mountinfo").exists() {
            let t = filesystem_of(&std::fs::read_to_string("/proc/self/mountinfo").unwrap(), "/");
            assert!(t.is_some(), "the root filesystem has a type");
        }
        // This machine's temp folder is local (CI and the development machines).
        assert_eq!(network_filesystem(&dir), None);
    }
}
