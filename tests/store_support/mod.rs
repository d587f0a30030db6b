//! The two databases the store tests run against: a SQLite file in a temp dir, and a private
//! PostgreSQL cluster (Debian's `postgresql` binaries) that this test process starts on a Unix
//! socket in a temp dir, with no TCP port, and stops when the test is done.
//!
//! The cluster belongs to the `Postgres` value: dropping it (at the end of the test, or while a
//! failed test unwinds) stops the server and waits for it, and the server is told to die with
//! the test process if that is killed first, so no test leaves one running. As root (postgres
//! refuses to run as root) it runs as `nobody`. Without the binaries a test is skipped with a
//! message — except under `CI=true`, where that is a failure.

#![allow(dead_code)] // each test binary uses what it needs

use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The port in the socket's name (`.s.PGSQL.5432`); nothing listens on TCP.
const PORT: u16 = 5432;

/// The directory holding `initdb` and `postgres`, if installed.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("KITT_PG_BIN").map(PathBuf::from) {
        return Some(d);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("postgres").is_file() && b.join("initdb").is_file())
        .collect();
    found.sort_by_key(|p| p.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()).unwrap_or(0));
    found.pop()
}

/// A running private cluster.
pub struct Postgres {
    dir: tempfile::TempDir,
    server: Child,
    /// The databases made with `database`.
    made: u32,
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `nobody`'s uid and gid when running as root (postgres refuses root), else `None`.
fn unprivileged() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    (unsafe { libc::geteuid() } == 0).then_some((65534, 65534))
}

fn command(program: &Path, ids: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(program);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(move || {
            if let Some((uid, gid)) = ids
                && (libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            // After the change of user, which would clear it: the server dies with this process.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    c
}

impl Postgres {
    /// Starts a cluster, or `None` (a skip, said on stderr) when PostgreSQL is not installed
    /// outside CI.
    pub fn start() -> Option<Postgres> {
        let Some(bin) = bin_dir() else {
            let msg = "PostgreSQL is not installed (apt-get install postgresql, or set KITT_PG_BIN)";
            assert!(!ci(), "{msg}");
            eprintln!("skipping: {msg}");
            return None;
        };
        let ids = unprivileged();
        let dir = tempfile::Builder::new().prefix("kitt-pg").tempdir().unwrap();
        let (data, sock) = (dir.path().join("data"), dir.path().join("sock"));
        std::fs::create_dir(&sock).unwrap();
        if let Some((uid, gid)) = ids {
            chown(dir.path(), Some(uid), Some(gid)).unwrap();
            chown(&sock, Some(uid), Some(gid)).unwrap();
        }
        let init = command(&bin.join("initdb"), ids)
            .args(["-D"])
            .arg(&data)
            .args(["-A", "trust", "-U", "kitt", "--no-sync", "--no-instructions", "-E", "UTF8"])
            .output()
            .unwrap();
        assert!(init.status.success(), "initdb failed:\n{}", String::from_utf8_lossy(&init.stderr));
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        if let Some((uid, gid)) = ids {
            chown(dir.path().join("server.log"), Some(uid), Some(gid)).unwrap();
        }
        let server = command(&bin.join("postgres"), ids)
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&sock)
            .args(["-p", &PORT.to_string(), "-h", "", "-F"])
            .args(["-c", "shared_buffers=16MB", "-c", "max_connections=60", "-c", "dynamic_shared_memory_type=mmap"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pg = Postgres { dir, server, made: 0 };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match postgres::Client::connect(&pg.dsn("postgres"), postgres::NoTls) {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("postgres did not start: {e}\n{}", pg.log()),
            }
        }
        Some(pg)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The URL of database `db` (the socket directory percent-encoded as the host).
    pub fn dsn(&self, db: &str) -> String {
        let host = self.socket_dir().to_string_lossy().replace('/', "%2F");
        format!("postgresql://kitt@{host}:{PORT}/{db}")
    }

    /// A new, empty database; its URL.
    pub fn database(&mut self) -> String {
        self.made += 1;
        let name = format!("store{}", self.made);
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
        self.dsn(&name)
    }

    /// Runs `sql` in database `db` (a name or a URL).
    pub fn sql(&self, db: &str, sql: &str) {
        let dsn = if db.contains("://") { db.to_string() } else { self.dsn(db) };
        let mut c = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
        c.batch_execute(sql).unwrap();
    }

    /// The one integer `sql` answers, in the database at `dsn`.
    pub fn int(&self, dsn: &str, sql: &str) -> i64 {
        let mut c = postgres::Client::connect(dsn, postgres::NoTls).unwrap();
        let row = c.query_one(sql, &[]).unwrap();
        row.try_get::<_, i64>(0).or_else(|_| row.try_get::<_, i32>(0).map(i64::from)).unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.server.id()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown; the server stops its children, then exits.
        // SAFETY: the pid is our own child's, not yet waited for.
        unsafe { libc::kill(self.server.id() as i32, libc::SIGQUIT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.server.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Which database a store test runs against.
pub enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(Postgres),
}

impl Backend {
    pub fn sqlite() -> Backend {
        Backend::Sqlite(tempfile::tempdir().unwrap())
    }

    pub fn postgres() -> Option<Backend> {
        Postgres::start().map(Backend::Postgres)
    }

    /// A new, empty store's location (a path or a URL); `name` tells stores of one test apart.
    pub fn store(&mut self, name: &str) -> String {
        match self {
            Backend::Sqlite(d) => d.path().join(format!("{name}.db")).to_string_lossy().into_owned(),
            Backend::Postgres(pg) => pg.database(),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Backend::Postgres(_))
    }

    /// Whether the store at `location` exists (a file; a database with a store in it).
    pub fn exists(&self, location: &str) -> bool {
        match self {
            Backend::Sqlite(_) => Path::new(location).exists(),
            Backend::Postgres(pg) => {
                pg.int(location, "SELECT COUNT(*) FROM pg_tables WHERE tablename = 'kitt_schema'") > 0
            }
        }
    }

    /// Runs `sql` directly in the store at `location`, bypassing kitt.
    pub fn sql(&self, location: &str, sql: &str) {
        match self {
            Backend::Sqlite(_) => rusqlite::Connection::open(location).unwrap().execute_batch(sql).unwrap(),
            Backend::Postgres(pg) => pg.sql(location, sql),
        }
    }

    /// The one integer `sql` answers in the store at `location`.
    pub fn int(&self, location: &str, sql: &str) -> i64 {
        match self {
            Backend::Sqlite(_) => {
                rusqlite::Connection::open(location).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
            }
            Backend::Postgres(pg) => pg.int(location, sql),
        }
    }

    /// The schema version written in the store at `location`, bypassing kitt.
    pub fn version(&self, location: &str) -> i64 {
        match self {
            Backend::Sqlite(_) => self.int(location, "PRAGMA user_version"),
            Backend::Postgres(_) => self.int(location, "SELECT version FROM kitt_schema"),
        }
    }

    /// Sets the schema version written in the store at `location`, bypassing kitt.
    pub fn set_version(&self, location: &str, v: u32) {
        match self {
            Backend::Sqlite(_) => self.sql(location, &format!("PRAGMA user_version = {v}")),
            Backend::Postgres(_) => self.sql(
                location,
                &format!("CREATE TABLE IF NOT EXISTS kitt_schema (version INTEGER NOT NULL); DELETE FROM kitt_schema; INSERT INTO kitt_schema VALUES ({v})"),
            ),
        }
    }

    /// A store location that cannot be opened.
    pub fn broken(&self, scratch: &Path) -> String {
        match self {
            Backend::Sqlite(_) => {
                let blocker = scratch.join("file");
                std::fs::write(&blocker, "").unwrap();
                blocker.join("results.db").to_string_lossy().into_owned()
            }
            Backend::Postgres(_) => "postgresql://kitt@%2Fnonexistent-kitt-socket-dir:5432/nothing".into(),
        }
    }
}

/// Defines each test twice, `NAME::sqlite` and `NAME::postgres`, with one body taking the backend.
#[macro_export]
macro_rules! both_backends {
    ($($(#[$meta:meta])* fn $name:ident($b:ident: &mut Backend) $body:block)*) => {$(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body($b: &mut Backend) $body

            #[test]
            fn sqlite() {
                body(&mut Backend::sqlite());
            }

            #[test]
            fn postgres() {
                if let Some(mut b) = Backend::postgres() {
                    body(&mut b);
                }
            }
        }
    )*};
}
