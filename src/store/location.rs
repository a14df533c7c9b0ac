//! Which database: `--store URL` (or `SWEEP_STORE`) turned once into a
//! [`Location`]. A path or `sqlite://PATH` is a SQLite file; `postgres://` or
//! `postgresql://` is a PostgreSQL database (sqlx's URL: user, password,
//! host or `?host=/socket/dir`, port, database, `sslmode`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The database engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file: one machine.
    Sqlite,
    /// A PostgreSQL server: many machines.
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        })
    }
}

/// Where the database is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl Location {
    /// The default: `sweep.db` in the home folder.
    pub fn default_in(home: &Path) -> Location {
        Location::Sqlite(home.join(super::DB_FILE))
    }

    /// `--store` if given, else the default in `home`.
    pub fn or_default(given: Option<&Location>, home: &Path) -> Location {
        given.cloned().unwrap_or_else(|| Location::default_in(home))
    }

    /// Its engine.
    pub fn backend(&self) -> Backend {
        match self {
            Location::Sqlite(_) => Backend::Sqlite,
            Location::Postgres(_) => Backend::Postgres,
        }
    }

    /// The URL sqlx connects to.
    pub(super) fn url(&self) -> String {
        match self {
            Location::Sqlite(path) => {
                // sqlx percent-decodes the path: encode what would end or escape it.
                let mut p = String::new();
                for c in path.display().to_string().chars() {
                    match c {
                        '%' => p.push_str("%25"),
                        '?' => p.push_str("%3F"),
                        '#' => p.push_str("%23"),
                        c => p.push(c),
                    }
                }
                format!("sqlite://{p}?mode=rwc")
            }
            Location::Postgres(url) => url.clone(),
        }
    }

    /// The store as `--store` (or `SWEEP_STORE`) takes it back: what a child
    /// worker is given.
    pub fn as_arg(&self) -> String {
        match self {
            Location::Sqlite(path) => path.display().to_string(),
            Location::Postgres(url) => url.clone(),
        }
    }

    /// How messages name it: the file, or the URL with its password hidden.
    pub fn display_name(&self) -> String {
        match self {
            Location::Sqlite(path) => path.display().to_string(),
            Location::Postgres(url) => redact(url),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.display_name())
    }
}

/// `postgres://user:secret@host/db` -> `postgres://user:***@host/db`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (auth, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match auth.rsplit_once('@') {
        Some((user_pass, host)) => match user_pass.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl FromStr for Location {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an empty store: give a SQLite file or a postgres:// URL".into());
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Location::Postgres(s.to_owned()));
        }
        if let Some(path) = s.strip_prefix("sqlite://").or_else(|| s.strip_prefix("sqlite:")) {
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(format!("`{s}` names no file: use sqlite://PATH"));
            }
            return Ok(Location::Sqlite(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(format!(
                "unknown store `{scheme}://`: use a SQLite file (a path or sqlite://PATH) or postgres://USER@HOST/DB"
            ));
        }
        Ok(Location::Sqlite(PathBuf::from(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_parse_once() {
        assert_eq!("runs.db".parse(), Ok(Location::Sqlite("runs.db".into())));
        assert_eq!("sqlite:///tmp/a b.db".parse(), Ok(Location::Sqlite("/tmp/a b.db".into())));
        assert_eq!("sqlite://x.db?mode=rwc".parse(), Ok(Location::Sqlite("x.db".into())));
        let pg: Location = "postgres://me:pw@db.lab:5432/sweep".parse().unwrap();
        assert_eq!(pg.backend(), Backend::Postgres);
        assert_eq!(pg.display_name(), "postgres://me:***@db.lab:5432/sweep");
        assert_eq!(
            Location::Postgres("postgresql:///sweep?host=/run/pg".into()).display_name(),
            "postgresql:///sweep?host=/run/pg"
        );
        assert!("mysql://x/y".parse::<Location>().unwrap_err().contains("unknown store `mysql://`"));
        assert!("".parse::<Location>().is_err());
        assert!("sqlite://".parse::<Location>().is_err());
    }

    #[test]
    fn sqlite_urls_escape_what_sqlx_would_decode() {
        let l = Location::Sqlite("/tmp/50%?#.db".into());
        assert_eq!(l.url(), "sqlite:///tmp/50%25%3F%23.db?mode=rwc");
    }
}
