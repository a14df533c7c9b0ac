//! A real PostgreSQL for the tests that run on both stores.
//!
//! `SWEEP_TEST_POSTGRES=URL` names a server to use (a database per test is
//! created in it); `SWEEP_TEST_POSTGRES=off` turns PostgreSQL off. Otherwise,
//! where Debian's postgresql package is installed, the first test that asks
//! starts a throwaway cluster with `scripts/postgres.sh` (initdb and pg_ctl, a
//! Unix socket in a folder under /tmp, no TCP) that stops itself when this
//! test process ends. Without PostgreSQL the PostgreSQL half of each test is
//! skipped and says so on stderr (`.ci/run` sets `SWEEP_TEST_REQUIRE_POSTGRES`,
//! which makes that a failure instead).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use sweep::store::Location;

static SERVER: OnceLock<Option<String>> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn start() -> Option<String> {
    match std::env::var("SWEEP_TEST_POSTGRES").ok().as_deref() {
        Some("off" | "0" | "") => {
            eprintln!("PostgreSQL: off (SWEEP_TEST_POSTGRES=off); PostgreSQL halves of the store tests skipped");
            return None;
        }
        Some(url) => return Some(url.to_owned()),
        None => {}
    }
    let dir = format!("/tmp/sweep-test-pg-{}", std::process::id());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh");
    let out = std::process::Command::new("bash")
        .args([script, "start", &dir, &std::process::id().to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        assert!(
            std::env::var_os("SWEEP_TEST_REQUIRE_POSTGRES").is_none(),
            "SWEEP_TEST_REQUIRE_POSTGRES is set but PostgreSQL did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "PostgreSQL: not started ({}); PostgreSQL halves of the store tests SKIPPED (install Debian's \
             postgresql, or set SWEEP_TEST_POSTGRES=URL)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    eprintln!("PostgreSQL: a throwaway cluster at {dir} (stops when the tests end)");
    Some(url)
}

/// The server's admin URL, if there is one.
pub fn server() -> Option<&'static str> {
    SERVER.get_or_init(start).as_deref()
}

/// `url` with its database name replaced.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let prefix = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{prefix}/{db}{query}")
}

/// A new, empty database on the server (None: no PostgreSQL here).
pub async fn fresh() -> Option<Location> {
    use sqlx::Connection;
    let admin = server()?;
    let db = format!("t{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
    let mut conn = sqlx::PgConnection::connect(admin).await.expect("connecting to the test PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {db}")).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    Some(Location::Postgres(with_database(admin, &db)))
}

/// A fresh database, blocking (for tests outside a runtime).
pub fn fresh_blocking() -> Option<Location> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(fresh())
}

/// Every store a backend-independent test runs on: SQLite in `dir`, and a
/// fresh PostgreSQL database where there is one.
pub async fn locations(dir: &std::path::Path) -> Vec<Location> {
    let mut out = vec![Location::default_in(dir)];
    out.extend(fresh().await);
    out
}

/// A cluster of the test's own, which the test may take down and bring up
/// again (an outage); stopped and removed when dropped. None: no PostgreSQL
/// here (or `SWEEP_TEST_POSTGRES` names a server, which a test must not stop).
pub struct Cluster {
    dir: String,
    /// The URL of its `postgres` database.
    pub url: String,
}

impl Cluster {
    pub fn start(tag: &str) -> Option<Cluster> {
        server()?;
        if std::env::var_os("SWEEP_TEST_POSTGRES").is_some() {
            eprintln!(
                "PostgreSQL: SWEEP_TEST_POSTGRES names a server; the outage test needs a cluster of its own: skipped"
            );
            return None;
        }
        let dir = format!("/tmp/sweep-test-pg-{}-{tag}", std::process::id());
        let out = Self::script(&["start", &dir, &std::process::id().to_string()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Some(Cluster { url: String::from_utf8_lossy(&out.stdout).trim().to_owned(), dir })
    }

    /// Stops the server (a fast shutdown: clients lose their connections), keeping its data.
    pub fn down(&self) {
        let out = Self::script(&["down", &self.dir]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Starts it again.
    pub fn up(&self) {
        let out = Self::script(&["up", &self.dir]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    fn script(args: &[&str]) -> std::process::Output {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh");
        std::process::Command::new("bash").arg(script).args(args).output().unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Self::script(&["stop", &self.dir]);
    }
}

#[test]
fn database_names_are_replaced_in_any_url_shape() {
    assert_eq!(
        with_database("postgres://postgres@localhost/postgres?host=/tmp/x", "t1"),
        "postgres://postgres@localhost/t1?host=/tmp/x"
    );
    assert_eq!(with_database("postgres://u:p@h:5432/db", "t2"), "postgres://u:p@h:5432/t2");
    assert_eq!(with_database("postgres://u@h", "t3"), "postgres://u@h/t3");
}
