//! Downloads into a cache folder, with a progress bar, verification and an
//! atomic rename: a file is either complete and verified under its final name,
//! or absent. Used for pretrained weights and dataset archives.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server could not be reached or answered with an error.
    #[error(
        "could not download {url}: {detail}\n  without network access, download it elsewhere and put it at {}",
        dest.display()
    )]
    Unreachable {
        /// What was requested.
        url: String,
        /// Where the file belongs.
        dest: PathBuf,
        /// The transport error.
        detail: String,
    },
    /// The downloaded bytes are not the expected file.
    #[error("downloaded {url}, but {detail}; nothing was kept")]
    Verification {
        /// What was requested.
        url: String,
        /// What did not match.
        detail: String,
    },
    /// Writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The sha256 of a file, as lower-case hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    hash_file::<Sha256>(path)
}

/// The sha256 of bytes in memory, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The md5 of a file, as lower-case hex.
pub fn md5_file(path: &Path) -> std::io::Result<String> {
    hash_file::<md5::Md5>(path)
}

fn hash_file<D: Digest>(path: &Path) -> std::io::Result<String>
where
    sha2::digest::Output<D>: std::fmt::LowerHex,
{
    let mut f = std::fs::File::open(path)?;
    let mut h = D::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// The checksums of a downloaded file, as lower-case hex.
#[derive(Debug, Clone)]
pub struct Digests {
    /// SHA-256 (what torchvision's weight file names carry).
    pub sha256: String,
    /// MD5 (what the CIFAR archives are published with).
    pub md5: String,
}

/// Downloads `url` to `dest` unless it exists. `verify` checks the complete
/// temporary file (given its checksums) before it is renamed into place.
pub fn download(
    url: &str,
    dest: &Path,
    verify: &dyn Fn(&Digests) -> Result<(), String>,
    progress: bool,
) -> Result<(), FetchError> {
    if dest.exists() {
        return Ok(());
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| FetchError::Io { path, source }
    };
    let unreachable = |detail: String| FetchError::Unreachable { url: url.to_owned(), dest: dest.to_owned(), detail };
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut response = ureq::get(url).call().map_err(|e| unreachable(e.to_string()))?;
    let total = response.body().content_length();
    let bar = if progress {
        let bar = indicatif::ProgressBar::new(total.unwrap_or(0));
        let style = indicatif::ProgressStyle::with_template("  {msg} [{bar:25}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("valid template")
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(format!("downloading {url}"));
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let tmp = dest.with_extension(format!("part{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
        let mut hasher = Sha256::new();
        let mut md5 = md5::Md5::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(|e| unreachable(e.to_string()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            md5.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(io(&tmp))?;
            got += n as u64;
            bar.set_position(got);
        }
        if let Some(total) = total {
            if got != total {
                return Err(unreachable(format!("the connection closed after {got} of {total} bytes")));
            }
        }
        file.sync_all().map_err(io(&tmp))?;
        let digests = Digests { sha256: format!("{:x}", hasher.finalize()), md5: format!("{:x}", md5.finalize()) };
        verify(&digests).map_err(|detail| FetchError::Verification { url: url.to_owned(), detail })?;
        std::fs::rename(&tmp, dest).map_err(io(dest))
    })();
    bar.finish_and_clear();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
