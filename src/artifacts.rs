//! Where checkpoints live for good: the artifact store (`--artifacts URL`).
//!
//! The trainer always writes a run's files into its folder under the home
//! (`runs/<key>/`: config.json, log.txt, the checkpoint pairs); paths in the
//! database are relative to that root. The artifact store is where those
//! files are kept so that any worker on any machine can resume any run:
//!
//! * the home itself (the default): nothing to copy; on a cluster, a home on a
//!   shared filesystem;
//! * another folder (`--artifacts /shared/sweep`): files are copied there
//!   (temporary name, fsync, rename);
//! * an S3-compatible bucket (`--artifacts s3://bucket/prefix`, through the
//!   `object_store` crate: AWS S3, MinIO, Ceph; endpoint and credentials from
//!   the usual `AWS_*` variables, `AWS_ENDPOINT` and `AWS_ALLOW_HTTP=true` for
//!   a local server).
//!
//! The worker puts a checkpoint's two files here *before* the database
//! records it (the row is the commit point: the database never names a file
//! the store does not hold); a worker resuming a run fetches its latest
//! checkpoint into its own home and the trainer verifies both SHA-256s; after
//! each record, files of the run that no row refers to are deleted here too.

use object_store::ObjectStore;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// `--artifacts`, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactLocation {
    /// A folder (the home when not given).
    Folder(PathBuf),
    /// An S3 bucket and a key prefix (no leading or trailing `/`).
    S3 {
        /// The bucket.
        bucket: String,
        /// Keys start with `prefix/` (empty: at the bucket's root).
        prefix: String,
    },
}

impl FromStr for ArtifactLocation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an empty artifact store: give a folder or s3://BUCKET/PREFIX".into());
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("`{s}` names no bucket: use s3://BUCKET/PREFIX"));
            }
            return Ok(ArtifactLocation::S3 { bucket: bucket.to_owned(), prefix: prefix.trim_matches('/').to_owned() });
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(format!("unknown artifact store `{scheme}://`: use a folder or s3://BUCKET/PREFIX"));
        }
        Ok(ArtifactLocation::Folder(PathBuf::from(s)))
    }
}

impl fmt::Display for ArtifactLocation {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ArtifactLocation::Folder(p) => write!(f, "{}", p.display()),
            ArtifactLocation::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            ArtifactLocation::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// What can go wrong with the artifact store.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The object store said no.
    #[error("{location}/{key}: {source}")]
    Store {
        /// The store.
        location: String,
        /// The object's key relative to it.
        key: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// The S3 client could not be set up.
    #[error("artifact store {location}: {source}")]
    Setup {
        /// The store.
        location: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// A fetched file is not what the database recorded.
    #[error("{location}/{key}: its SHA-256 is {actual}, the database recorded {expected}")]
    Mismatch {
        /// The store.
        location: String,
        /// The object's key.
        key: String,
        /// What the database says.
        expected: String,
        /// What arrived.
        actual: String,
    },
}

impl ArtifactError {
    /// Whether the store itself failed (unreachable, refused the request,
    /// misconfigured, a shared folder that cannot be written) rather than one
    /// object being missing or not what was recorded. Such a failure is not
    /// the run's doing: the worker stops, and the run resumes once the store
    /// works again.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ArtifactError::Store { source: object_store::Error::NotFound { .. }, .. }
            | ArtifactError::Mismatch { .. } => false,
            ArtifactError::Io { source, .. } => source.kind() != std::io::ErrorKind::NotFound,
            ArtifactError::Store { .. } | ArtifactError::Setup { .. } => true,
        }
    }
}

enum Kind {
    Home,
    Folder(PathBuf),
    S3 { store: Arc<dyn ObjectStore>, prefix: String },
}

/// The open artifact store.
pub struct Artifacts {
    kind: Kind,
    home: PathBuf,
    location: String,
}

impl fmt::Debug for Artifacts {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("Artifacts").field("location", &self.location).finish_non_exhaustive()
    }
}

impl Artifacts {
    /// The store at `location` (None or the home itself: the home).
    pub fn open(home: &Path, location: Option<&ArtifactLocation>) -> Result<Artifacts, ArtifactError> {
        let same_as_home = |p: &Path| {
            p == home || std::fs::canonicalize(p).ok().is_some_and(|c| Some(c) == std::fs::canonicalize(home).ok())
        };
        let (kind, location) = match location {
            None => (Kind::Home, home.display().to_string()),
            Some(ArtifactLocation::Folder(p)) if same_as_home(p) => (Kind::Home, home.display().to_string()),
            Some(ArtifactLocation::Folder(p)) => (Kind::Folder(p.clone()), p.display().to_string()),
            Some(l @ ArtifactLocation::S3 { bucket, prefix }) => {
                use object_store::aws::AmazonS3ConfigKey as Key;
                let builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                // object_store refuses plain HTTP unless allowed, with only
                // "HTTP error: builder error" on the first request.
                let endpoint = builder.get_config_value(&Key::Endpoint).unwrap_or_default();
                let allow_http = builder.get_config_value(&Key::Client(object_store::ClientConfigKey::AllowHttp));
                if endpoint.starts_with("http://") && !allow_http.is_some_and(|v| v.eq_ignore_ascii_case("true")) {
                    let detail = format!("the endpoint {endpoint} is plain HTTP: set AWS_ALLOW_HTTP=true to use it");
                    return Err(ArtifactError::Setup {
                        location: l.to_string(),
                        source: object_store::Error::Generic { store: "S3", source: detail.into() },
                    });
                }
                let store =
                    builder.build().map_err(|source| ArtifactError::Setup { location: l.to_string(), source })?;
                (Kind::S3 { store: Arc::new(store), prefix: prefix.clone() }, l.to_string())
            }
        };
        Ok(Artifacts { kind, home: home.to_owned(), location })
    }

    /// The home itself: the default, with nothing to copy.
    pub fn is_home(&self) -> bool {
        matches!(self.kind, Kind::Home)
    }

    /// How messages name it.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn key(prefix: &str, rel: &str) -> object_store::path::Path {
        if prefix.is_empty() {
            object_store::path::Path::from(rel)
        } else {
            object_store::path::Path::from(format!("{prefix}/{rel}"))
        }
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
        move |source| ArtifactError::Io { path: path.to_owned(), source }
    }

    fn store_err<'a>(&'a self, rel: &'a str) -> impl FnOnce(object_store::Error) -> ArtifactError + 'a {
        move |source| ArtifactError::Store { location: self.location.clone(), key: rel.to_owned(), source }
    }

    /// Checks that the store takes a write: a small object written and
    /// deleted (`.sweep-check/NAME`), so that a worker finds a missing bucket,
    /// wrong credentials or an unreachable endpoint before it trains anything.
    pub async fn check_writable(&self, name: &str) -> Result<(), ArtifactError> {
        let name: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        let rel = format!(".sweep-check/{name}");
        match &self.kind {
            Kind::Home => Ok(()),
            Kind::Folder(root) => {
                let (dir, to) = (root.join(".sweep-check"), root.join(&rel));
                tokio::task::spawn_blocking(move || {
                    write_atomic(&to, b"sweep")?;
                    std::fs::remove_file(&to).map_err(Artifacts::io(&to))?;
                    let _ = std::fs::remove_dir(&dir);
                    Ok(())
                })
                .await
                .expect("the check thread")
            }
            Kind::S3 { store, prefix } => {
                let key = Self::key(prefix, &rel);
                store.put(&key, b"sweep".to_vec().into()).await.map_err(self.store_err(&rel))?;
                store.delete(&key).await.map_err(self.store_err(&rel))?;
                Ok(())
            }
        }
    }

    /// Makes the home's file `rel` durable in the store (complete before this returns).
    pub async fn put(&self, rel: &str) -> Result<(), ArtifactError> {
        let local = self.home.join(rel);
        match &self.kind {
            Kind::Home => Ok(()),
            Kind::Folder(root) => {
                let (from, to) = (local, root.join(rel));
                tokio::task::spawn_blocking(move || copy_atomic(&from, &to)).await.expect("the copy thread")
            }
            Kind::S3 { store, prefix } => {
                let bytes = tokio::fs::read(&local).await.map_err(Self::io(&local))?;
                store.put(&Self::key(prefix, rel), bytes.into()).await.map_err(self.store_err(rel))?;
                Ok(())
            }
        }
    }

    /// Makes the home's file `rel` the store's copy with SHA-256 `sha256`:
    /// kept if it is already there and matches, else fetched and checked.
    pub async fn fetch(&self, rel: &str, sha256: &str) -> Result<(), ArtifactError> {
        let local = self.home.join(rel);
        if self.is_home() || local_matches(&local, sha256) {
            return Ok(());
        }
        let bytes: Vec<u8> = match &self.kind {
            Kind::Home => unreachable!("returned above"),
            Kind::Folder(root) => {
                let from = root.join(rel);
                tokio::fs::read(&from).await.map_err(Self::io(&from))?
            }
            Kind::S3 { store, prefix } => {
                let got = store.get(&Self::key(prefix, rel)).await.map_err(self.store_err(rel))?;
                got.bytes().await.map_err(self.store_err(rel))?.to_vec()
            }
        };
        let actual = crate::fetch::sha256_hex(&bytes);
        if actual != sha256 {
            return Err(ArtifactError::Mismatch {
                location: self.location.clone(),
                key: rel.to_owned(),
                expected: sha256.to_owned(),
                actual,
            });
        }
        let to = local.clone();
        tokio::task::spawn_blocking(move || write_atomic(&to, &bytes)).await.expect("the write thread")
    }

    /// The store's copy of `rel`, whatever it holds (a run's log; None: not there).
    pub async fn get(&self, rel: &str) -> Result<Option<Vec<u8>>, ArtifactError> {
        let read = |path: PathBuf| async move {
            match tokio::fs::read(&path).await {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(ArtifactError::Io { path, source: e }),
            }
        };
        match &self.kind {
            Kind::Home => read(self.home.join(rel)).await,
            Kind::Folder(root) => read(root.join(rel)).await,
            Kind::S3 { store, prefix } => match store.get(&Self::key(prefix, rel)).await {
                Ok(got) => Ok(Some(got.bytes().await.map_err(self.store_err(rel))?.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.store_err(rel)(e)),
            },
        }
    }

    /// Copies the store's `rel` into the home unless the home has it already
    /// (a run's log or config.json written on another machine); says whether it did.
    pub async fn restore(&self, rel: &str) -> Result<bool, ArtifactError> {
        let local = self.home.join(rel);
        if self.is_home() || local.exists() {
            return Ok(false);
        }
        let Some(bytes) = self.get(rel).await? else { return Ok(false) };
        tokio::task::spawn_blocking(move || write_atomic(&local, &bytes)).await.expect("the write thread")?;
        Ok(true)
    }

    /// The names of the files in the store's folder `dir` (a run's folder).
    pub async fn list(&self, dir: &str) -> Result<Vec<String>, ArtifactError> {
        use futures_util::TryStreamExt;
        match &self.kind {
            Kind::Home => crate::train::checkpoint::list_files(&self.home.join(dir)).map_err(Self::io(&self.home)),
            Kind::Folder(root) => crate::train::checkpoint::list_files(&root.join(dir)).map_err(Self::io(root)),
            Kind::S3 { store, prefix } => {
                let objects: Vec<_> =
                    store.list(Some(&Self::key(prefix, dir))).try_collect().await.map_err(self.store_err(dir))?;
                let mut names: Vec<String> =
                    objects.into_iter().filter_map(|o| o.location.filename().map(str::to_owned)).collect();
                names.sort();
                Ok(names)
            }
        }
    }

    /// Deletes the files `names` of the store's folder `dir`.
    pub async fn delete(&self, dir: &str, names: &[String]) -> Result<(), ArtifactError> {
        match &self.kind {
            Kind::Home => {
                let d = self.home.join(dir);
                crate::train::checkpoint::remove_files(&d, names).map_err(Self::io(&d))
            }
            Kind::Folder(root) => {
                let d = root.join(dir);
                crate::train::checkpoint::remove_files(&d, names).map_err(Self::io(&d))
            }
            Kind::S3 { store, prefix } => {
                for name in names {
                    let rel = format!("{dir}/{name}");
                    match store.delete(&Self::key(prefix, &rel)).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(source) => {
                            return Err(ArtifactError::Store { location: self.location.clone(), key: rel, source })
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

fn local_matches(path: &Path, sha256: &str) -> bool {
    path.exists() && crate::fetch::sha256_file(path).is_ok_and(|s| s == sha256)
}

fn write_atomic(to: &Path, bytes: &[u8]) -> Result<(), ArtifactError> {
    use std::io::Write;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(Artifacts::io(dir))?;
    }
    let tmp = to.with_extension("part");
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Artifacts::io(&tmp)(e));
    }
    std::fs::rename(&tmp, to).map_err(Artifacts::io(to))
}

fn copy_atomic(from: &Path, to: &Path) -> Result<(), ArtifactError> {
    let bytes = std::fs::read(from).map_err(Artifacts::io(from))?;
    write_atomic(to, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_once() {
        assert_eq!("/shared/x".parse(), Ok(ArtifactLocation::Folder("/shared/x".into())));
        assert_eq!(
            "s3://lab/sweeps/term/".parse(),
            Ok(ArtifactLocation::S3 { bucket: "lab".into(), prefix: "sweeps/term".into() })
        );
        assert_eq!("s3://lab".parse(), Ok(ArtifactLocation::S3 { bucket: "lab".into(), prefix: String::new() }));
        assert_eq!(ArtifactLocation::S3 { bucket: "b".into(), prefix: "p/q".into() }.to_string(), "s3://b/p/q");
        assert!("s3:///x".parse::<ArtifactLocation>().is_err());
        assert!("gs://b/p".parse::<ArtifactLocation>().unwrap_err().contains("unknown artifact store `gs://`"));
    }

    #[test]
    fn a_folder_store_copies_fetches_verifies_and_deletes() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
            let [home, shared, other] = [0, 1, 2].map(|i| dirs[i].path().to_owned());
            std::fs::create_dir_all(home.join("runs/k")).unwrap();
            std::fs::write(home.join("runs/k/e0001-s00000.safetensors"), b"weights").unwrap();
            let a = Artifacts::open(&home, Some(&ArtifactLocation::Folder(shared.clone()))).unwrap();
            assert!(!a.is_home());
            a.put("runs/k/e0001-s00000.safetensors").await.unwrap();
            assert_eq!(std::fs::read(shared.join("runs/k/e0001-s00000.safetensors")).unwrap(), b"weights");
            // Another machine's home fetches it, checked against the recorded SHA-256.
            let b = Artifacts::open(&other, Some(&ArtifactLocation::Folder(shared.clone()))).unwrap();
            let sha = crate::fetch::sha256_hex(b"weights");
            b.fetch("runs/k/e0001-s00000.safetensors", &sha).await.unwrap();
            assert_eq!(std::fs::read(other.join("runs/k/e0001-s00000.safetensors")).unwrap(), b"weights");
            std::fs::remove_file(other.join("runs/k/e0001-s00000.safetensors")).unwrap();
            let wrong2 = b.fetch("runs/k/e0001-s00000.safetensors", &"0".repeat(64)).await;
            assert!(matches!(wrong2, Err(ArtifactError::Mismatch { .. })), "{wrong2:?}");
            assert_eq!(b.list("runs/k").await.unwrap(), ["e0001-s00000.safetensors"]);
            b.delete("runs/k", &["e0001-s00000.safetensors".into()]).await.unwrap();
            assert!(b.list("runs/k").await.unwrap().is_empty());
            // The home named as the store is the home: nothing copied.
            assert!(Artifacts::open(&home, Some(&ArtifactLocation::Folder(home.clone()))).unwrap().is_home());
        });
    }
}
