//! Private database servers for tests (a module of the shared harness, `serve_support::db`):
//! a real PostgreSQL ([`Postgres`]) or MariaDB ([`Mariadb`]) server per call, over a fresh
//! temporary folder, on a loopback port of its own, with password authentication, that a test
//! can kill with SIGKILL and start again over the same data.
//!
//! Invariants:
//! * Each server is a DIRECT child of the test process, in a process group of its own. `kill`
//!   sends SIGKILL to that whole group (the PostgreSQL postmaster and all its backends at once,
//!   as a crash would) and reaps the child with `wait`, so a restart never finds the old
//!   server still holding the data folder or its shared memory. `Drop` does the same.
//! * It listens only on 127.0.0.1, at a port from [`free_port`] (below the ephemeral range, one
//!   counter per test process), and on a unix socket inside its own temporary folder: servers
//!   in one test process, and in parallel test processes, never share a port or a folder.
//! * Authentication is real: the test role `bootforge` has a random password and a client
//!   over TCP must give it; no account may log in over TCP without a password (MariaDB's
//!   password-less `root` keeps only its `localhost` entry, which is the unix socket, used by
//!   the harness to create the test role).
//! * Durability settings are explicit and on (PostgreSQL `fsync`, `synchronous_commit`,
//!   `full_page_writes`; InnoDB `innodb_flush_log_at_trx_commit=1`, doublewrite): a row a
//!   commit acknowledged must survive `kill` + `start_again`. (A killed process leaves the
//!   kernel's page cache intact, so that tests the servers' write-ahead logging, not the disk's
//!   flush; fsync stays on so that commits cost what they do in production.) Memory is kept
//!   small (16 MB of buffers each) so several servers fit a small CI machine.
//! * The password is never on a command line (other local users can read those): it goes to
//!   `initdb` in a 0600 file, to the servers in SQL on the client's stdin, and to the clients
//!   in their environment (`PGPASSWORD`, `MYSQL_PWD`).
//! * A missing program FAILS the test and names the Debian package to install (as
//!   `scripts/setup --test` does). A database test that skipped would pass for code nobody ran.
//!
//! Running as root (CI): PostgreSQL refuses to run as root, so `initdb` runs through
//! `runuser -u postgres` and the server is exec'd by `setpriv` as the `postgres` account (the
//! child's pid is the postmaster's); the temporary folder is then made traversable (0755) and
//! the server's own folders belong to `postgres`. MariaDB runs as root with `--user=root`.
//!
//! Not handled: a test process killed outright (SIGKILL, abort) runs no `Drop`, so its servers
//! outlive it; they hold only a loopback port and a temporary folder.
#![allow(dead_code)]

use super::sushy::free_port;
use rand::distributions::{Alphanumeric, DistString};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The role (PostgreSQL) or user (MariaDB) the tests log in as; it may do anything.
pub const USER: &str = "bootforge";
/// The database created for the tests; [`USER`] may do anything in it.
pub const DATABASE: &str = "bootforge";

/// How long a server may take to accept connections (including crash recovery after `kill`)
/// on a loaded two-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A random password for the test role: letters and digits only, so it needs no escaping in
/// a URL, a command line or SQL.
fn random_password() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 24)
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `name` on PATH or in the system binary folders (a non-root PATH often lacks `/usr/sbin`,
/// where `mariadbd` lives); fails the test naming the Debian `package` when it is nowhere.
fn program(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "PREREQUISITE MISSING: `{name}` is not installed. Install the Debian package \
                 `{package}` (scripts/setup --test does). Database tests never skip."
            )
        })
}

/// Runs a setup command to completion; fails the test with its output when it fails.
fn run(what: &str, cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// The last lines of a server's log file, for a failure message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A log file that a server appends its stdout and stderr to.
fn log_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

/// Starts `cmd` as a direct child in a process group of its own, its output appended to `log`.
fn spawn(what: &str, mut cmd: Command, log: &Path) -> Child {
    let out = log_file(log);
    let err = out.try_clone().expect("duplicate a log file handle");
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"))
}

/// SIGKILL to the child's whole process group and to the child's own children, then reap the
/// child, then wait until those children are gone. PostgreSQL's backends each call `setsid()`,
/// so they are NOT in the postmaster's group: left alone they notice its death a moment later,
/// and a server started again while they still hold the old shared memory refuses to start.
fn kill_group(child: &mut Child) {
    let children = children_of(child.id());
    signal_group(child, libc::SIGKILL);
    for &pid in &children {
        // SAFETY: kill has no memory-safety preconditions; a pid reused since the scan (within
        // microseconds) is the only risk, as for any kill by pid.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in children {
        while is_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The processes whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|pid| stat_field(*pid, 1).and_then(|p| p.parse::<u32>().ok()) == Some(parent))
        .collect()
}

/// Field `n` after the command name of /proc/PID/stat (0: the state letter, 1: the parent).
fn stat_field(pid: libc::pid_t, n: usize) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(n).map(str::to_string)
}

/// Running, as opposed to gone or a zombie (which holds no memory any more).
fn is_alive(pid: libc::pid_t) -> bool {
    stat_field(pid, 0).is_some_and(|state| state != "Z")
}

/// SIGSTOP to the child's whole process group; returns once the child is stopped (signals
/// are delivered asynchronously).
fn stop_group(child: &Child) {
    signal_group(child, libc::SIGSTOP);
    let stat = format!("/proc/{}/stat", child.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&stat).unwrap_or_default();
        // "pid (comm) state ...": the state letter follows the last ')'.
        let state = text.rfind(')').and_then(|i| text[i + 1..].trim_start().chars().next());
        if state == Some('T') {
            return;
        }
        assert!(Instant::now() < deadline, "the server did not stop: {text}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `signal` to the child's whole process group.
fn signal_group(child: &Child, signal: libc::c_int) {
    let pgid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill has no memory-safety preconditions. The group is the one the child leads
    // (`process_group(0)`); the child is not reaped yet (callers hold it unwaited), so its id,
    // and the group's, cannot have been reused.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Polls `ready` every 100 ms until it holds. Fails the test, with the tail of `log`, when the
/// server exits or `READY_TIMEOUT` passes.
fn wait_ready(what: &str, child: &mut Child, log: &Path, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("poll the server process") {
            panic!(
                "{what} exited ({status}) before accepting connections. End of {}:\n{}",
                log.display(),
                log_tail(log)
            );
        }
        if ready() {
            return;
        }
        if Instant::now() > deadline {
            kill_group(child);
            panic!(
                "{what} did not accept connections within {READY_TIMEOUT:?}. End of {}:\n{}",
                log.display(),
                log_tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The numeric uid and gid of a system account, through `id` (thread-safe, unlike getpwnam).
fn account_ids(name: &str, package: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, name]).output().expect("run id");
        if !out.status.success() {
            panic!(
                "PREREQUISITE MISSING: there is no `{name}` account. The Debian package \
                 `{package}` creates it (scripts/setup --test installs it)."
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("id prints a number")
    };
    (id("-u"), id("-g"))
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/// The PostgreSQL programs: the server's from the highest `/usr/lib/postgresql/<version>/bin`
/// holding both `initdb` and `postgres` (Debian keeps them off PATH), else from PATH.
struct PgBin {
    initdb: PathBuf,
    postgres: PathBuf,
    pg_isready: PathBuf,
    psql: PathBuf,
}

impl PgBin {
    fn find() -> PgBin {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                (bin.join("initdb").is_file() && bin.join("postgres").is_file())
                    .then_some((version, bin))
            })
            .collect();
        versions.sort();
        let dir = versions.pop().map(|(_, bin)| bin);
        let find = |name: &str, package: &str| match &dir {
            Some(d) if d.join(name).is_file() => d.join(name),
            _ => program(name, package),
        };
        PgBin {
            initdb: find("initdb", "postgresql"),
            postgres: find("postgres", "postgresql"),
            // postgresql-client-<version>, which the `postgresql` package pulls in.
            pg_isready: find("pg_isready", "postgresql-client"),
            psql: find("psql", "postgresql-client"),
        }
    }
}

/// A private PostgreSQL server. See the module documentation for its invariants.
pub struct Postgres {
    bin: PgBin,
    port: u16,
    password: String,
    /// As root: the server runs as the `postgres` account.
    as_postgres: bool,
    child: Option<Child>,
    /// Settings added by [`Postgres::require_tls`], passed at every start.
    extra: Vec<String>,
    /// Holds everything; removed when this is dropped, after `Drop::drop` killed the server.
    dir: tempfile::TempDir,
}

impl Postgres {
    /// A new cluster (`initdb`) in a fresh temporary folder, started and accepting
    /// connections, with the superuser [`USER`] (random password, scram-sha-256 over TCP and
    /// the socket alike) and the database [`DATABASE`].
    pub fn start() -> Postgres {
        let bin = PgBin::find();
        let as_postgres = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("bootforge-pg-")
            .tempdir()
            .expect("create a temporary folder");
        let password = random_password();
        let mut pg = Postgres {
            bin,
            port: free_port(),
            password,
            as_postgres,
            child: None,
            extra: Vec::new(),
            dir,
        };
        for folder in [pg.data_dir(), pg.socket_dir()] {
            std::fs::create_dir(&folder).expect("create a server folder");
            std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o700))
                .expect("chmod a server folder");
        }
        let pwfile = pg.dir.path().join("pwfile");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&pwfile)
                .expect("create the password file");
            f.write_all(pg.password.as_bytes()).expect("write the password file");
        }
        if as_postgres {
            let (uid, gid) = account_ids("postgres", "postgresql");
            // The server's account must reach its folders through the temporary one.
            std::fs::set_permissions(pg.dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod the temporary folder");
            for path in [pg.data_dir(), pg.socket_dir(), pwfile.clone()] {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
            }
        }
        let mut initdb = pg.run_as_server_account(&pg.bin.initdb);
        initdb
            .arg("--pgdata")
            .arg(pg.data_dir())
            .args(["--username", USER, "--pwfile"])
            .arg(&pwfile)
            .args(["--auth-host=scram-sha-256", "--auth-local=scram-sha-256"])
            .args(["--encoding=UTF8", "--locale=C"])
            // Skips only initdb's own flush of the files it wrote. The durability under test
            // is the running server's (fsync stays on, below), and a killed process does not
            // lose the page cache; this saves seconds per server on a shared disk.
            .arg("--no-sync")
            .current_dir(pg.dir.path());
        run("initdb", &mut initdb);
        std::fs::remove_file(&pwfile).expect("remove the password file");
        pg.start_again();
        pg.psql_as("postgres", &format!("CREATE DATABASE {DATABASE}"));
        pg
    }

    /// Restarts the server with TLS on (`cert` and `key`, PEM) and a `pg_hba.conf` that refuses
    /// every TCP connection without TLS (`hostssl` only), so a client that connects at all
    /// spoke TLS.
    pub fn require_tls(&mut self, cert: &Path, key: &Path) {
        let (cert_copy, key_copy) =
            (self.dir.path().join("server.pem"), self.dir.path().join("server.key"));
        std::fs::copy(cert, &cert_copy).expect("copy the server certificate");
        std::fs::copy(key, &key_copy).expect("copy the server key");
        // The server refuses a key that others may read.
        std::fs::set_permissions(&key_copy, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the server key");
        let hba = self.data_dir().join("pg_hba.conf");
        if self.as_postgres {
            let (uid, gid) = account_ids("postgres", "postgresql");
            for path in [&cert_copy, &key_copy] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
            }
        }
        std::fs::write(
            &hba,
            "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("write pg_hba.conf");
        self.extra = vec![
            "ssl=on".to_string(),
            format!("ssl_cert_file={}", cert_copy.display()),
            format!("ssl_key_file={}", key_copy.display()),
        ];
        self.kill();
        self.start_again();
    }

    /// `postgres://USER:PASSWORD@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self) -> String {
        format!("postgres://{USER}:{}@127.0.0.1:{}/{DATABASE}", self.password, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The cluster's data folder (`PGDATA`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log (its stderr), appended to across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    /// Started and not killed since (a server that died on its own still counts).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL to the postmaster and every backend at once, then reap: no shutdown
    /// checkpoint, the next start runs crash recovery.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }

    /// SIGSTOP to the whole server: a hung database. Connections stay open and new ones are
    /// queued by the kernel, but nothing answers until [`Self::resume`].
    pub fn pause(&self) {
        stop_group(self.child.as_ref().expect("pause: the server is not running"));
    }

    /// SIGCONT to the whole server, after [`Self::pause`].
    pub fn resume(&self) {
        signal_group(
            self.child.as_ref().expect("resume: the server is not running"),
            libc::SIGCONT,
        );
    }

    /// The server's process id (the postmaster's, for PostgreSQL), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the server again over the same data folder and port (after [`Postgres::kill`])
    /// and waits until it accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again: the server is running");
        let port = self.port.to_string();
        let mut cmd = self.exec_as_server_account(&self.bin.postgres);
        cmd.arg("-D").arg(self.data_dir());
        let settings = [
            "listen_addresses=127.0.0.1".to_string(),
            format!("port={port}"),
            format!("unix_socket_directories={}", self.socket_dir().display()),
            "fsync=on".to_string(),
            "synchronous_commit=on".to_string(),
            "full_page_writes=on".to_string(),
            "shared_buffers=16MB".to_string(),
            "huge_pages=off".to_string(),
            "logging_collector=off".to_string(),
        ];
        for s in settings.iter().chain(&self.extra) {
            cmd.arg("-c").arg(s);
        }
        cmd.current_dir(self.dir.path());
        let log = self.log_path();
        let mut child = spawn("postgres", cmd, &log);
        let (pg_isready, what) = (&self.bin.pg_isready, format!("postgres on port {port}"));
        wait_ready(&what, &mut child, &log, || {
            // Exit 0 only when the server accepts connections (not while it starts up or
            // recovers).
            Command::new(pg_isready)
                .args(["-q", "-h", "127.0.0.1", "-p", &port, "-t", "2"])
                .stdin(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        self.child = Some(child);
    }

    /// Runs `sql` with `psql` over TCP as [`USER`] with the password, in [`DATABASE`]; fails
    /// the test when psql does. Rows come back unaligned, `|`-separated, without headers.
    pub fn sql(&self, sql: &str) -> String {
        self.psql_as(DATABASE, sql)
    }

    /// Like [`Postgres::sql`], but returns psql's result instead of failing the test.
    pub fn try_sql(&self, password: &str, sql: &str) -> Output {
        self.psql(DATABASE, password, sql)
    }

    fn psql_as(&self, database: &str, sql: &str) -> String {
        let out = self.psql(database, &self.password, sql);
        if !out.status.success() {
            panic!(
                "psql {sql:?} on port {} failed ({}): {}",
                self.port,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8(out.stdout).expect("psql prints UTF-8")
    }

    fn psql(&self, database: &str, password: &str, sql: &str) -> Output {
        Command::new(&self.bin.psql)
            .args(["-X", "-w", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", USER, "-d", database, "-c", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .expect("run psql")
    }

    /// `program`, to run to completion as the server's account (as root: via `runuser`).
    fn run_as_server_account(&self, program: &Path) -> Command {
        if !self.as_postgres {
            return Command::new(program);
        }
        let mut cmd = Command::new(util_linux("runuser"));
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    }

    /// `program`, to start as the server's account (as root: via `setpriv`, which execs it, so
    /// the child's pid is the server's).
    fn exec_as_server_account(&self, program: &Path) -> Command {
        if !self.as_postgres {
            return Command::new(program);
        }
        let mut cmd = Command::new(util_linux("setpriv"));
        cmd.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]).arg(program);
        cmd
    }
}

fn util_linux(name: &str) -> PathBuf {
    program(name, "util-linux")
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// MariaDB
// ---------------------------------------------------------------------------------------------

/// InnoDB settings for both the bootstrap and the server, so the server never resizes the redo
/// log it was created with.
const INNODB: [&str; 5] = [
    // Every commit is written and flushed to the redo log before it is acknowledged.
    "--innodb-flush-log-at-trx-commit=1",
    "--innodb-doublewrite=1",
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=8M",
    // Plain synchronous I/O: container sandboxes often forbid io_uring/libaio, and how I/O is
    // submitted does not change what a commit guarantees.
    "--innodb-use-native-aio=0",
];

/// A private MariaDB server. See the module documentation for its invariants. The server's
/// compiled-in defaults apply (`--no-defaults`: no `/etc/mysql` file is read), so the default
/// character set is latin1: a schema must name its character set.
pub struct Mariadb {
    mariadbd: PathBuf,
    client: PathBuf,
    port: u16,
    password: String,
    child: Option<Child>,
    /// Holds everything; removed when this is dropped, after `Drop::drop` killed the server.
    dir: tempfile::TempDir,
}

impl Mariadb {
    /// A new server (`mariadb-install-db`) in a fresh temporary folder, started and accepting
    /// connections, with the user [`USER`]@`%` (random password, all privileges) and the
    /// database [`DATABASE`].
    pub fn start() -> Mariadb {
        let install = program("mariadb-install-db", "mariadb-server-core");
        let mariadbd = program("mariadbd", "mariadb-server-core");
        // Also mariadb-install-db's `my_print_defaults`.
        let client = program("mariadb", "mariadb-client-core");
        program("my_print_defaults", "mariadb-client-core");
        let dir = tempfile::Builder::new()
            .prefix("bootforge-mariadb-")
            .tempdir()
            .expect("create a temporary folder");
        let mut db = Mariadb {
            mariadbd,
            client,
            port: free_port(),
            password: random_password(),
            child: None,
            dir,
        };
        let mut cmd = Command::new(install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", db.data_dir().display()))
            // root@localhost without a password, reachable only over the socket (below); the
            // default, unix_socket, would tie it to the OS account running the tests.
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg("--skip-name-resolve")
            .args(INNODB)
            .args(db.user_arg())
            .current_dir(db.dir.path());
        run("mariadb-install-db", &mut cmd);
        db.start_again();
        // The bootstrap also makes root@127.0.0.1, root@::1 and root@<hostname> without a
        // password: drop them, so nothing logs in over TCP without one.
        let setup = format!(
            "DELETE FROM mysql.global_priv WHERE User = 'root' AND Host <> 'localhost';
             DELETE FROM mysql.proxies_priv WHERE User = 'root' AND Host <> 'localhost';
             FLUSH PRIVILEGES;
             CREATE USER '{USER}'@'%' IDENTIFIED BY '{}';
             GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'%' WITH GRANT OPTION;
             CREATE DATABASE {DATABASE};",
            db.password
        );
        let out = db.root_sql(&setup);
        if !out.status.success() {
            panic!("creating the test user failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        db
    }

    /// `mysql://USER:PASSWORD@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self) -> String {
        format!("mysql://{USER}:{}@127.0.0.1:{}/{DATABASE}", self.password, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's error log (and its stdout and stderr), appended to across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mariadbd.log")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("mariadbd.sock")
    }

    /// Started and not killed since (a server that died on its own still counts).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, then reap: no shutdown, the next start runs InnoDB crash recovery.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }

    /// SIGSTOP to the whole server: a hung database. Connections stay open and new ones are
    /// queued by the kernel, but nothing answers until [`Self::resume`].
    pub fn pause(&self) {
        stop_group(self.child.as_ref().expect("pause: the server is not running"));
    }

    /// SIGCONT to the whole server, after [`Self::pause`].
    pub fn resume(&self) {
        signal_group(
            self.child.as_ref().expect("resume: the server is not running"),
            libc::SIGCONT,
        );
    }

    /// The server's process id (the postmaster's, for PostgreSQL), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the server again over the same data folder and port (after [`Mariadb::kill`])
    /// and waits until it accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again: the server is running");
        let dir = self.dir.path();
        let mut cmd = Command::new(&self.mariadbd);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.data_dir().display()))
            .args(["--bind-address=127.0.0.1", "--skip-name-resolve"])
            .arg(format!("--port={}", self.port))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--pid-file={}", dir.join("mariadbd.pid").display()))
            .arg(format!("--tmpdir={}", dir.display()))
            .arg(format!("--log-error={}", self.log_path().display()))
            .args(INNODB)
            .arg("--skip-log-bin")
            .args(self.user_arg())
            .current_dir(dir);
        let log = self.log_path();
        let mut child = spawn("mariadbd", cmd, &log);
        let what = format!("mariadbd on port {}", self.port);
        wait_ready(&what, &mut child, &log, || self.root_sql("SELECT 1").status.success());
        self.child = Some(child);
    }

    /// Runs `sql` with the `mariadb` client over TCP as [`USER`] with the password, in
    /// [`DATABASE`]; fails the test when the client does. Rows come back tab-separated,
    /// without headers.
    pub fn sql(&self, sql: &str) -> String {
        let out = self.try_sql(&self.password, sql);
        if !out.status.success() {
            panic!(
                "mariadb {sql:?} on port {} failed ({}): {}",
                self.port,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8(out.stdout).expect("mariadb prints UTF-8")
    }

    /// Like [`Mariadb::sql`] with another password, returning the client's result.
    pub fn try_sql(&self, password: &str, sql: &str) -> Output {
        self.tcp_sql(USER, password, sql)
    }

    /// `sql` over TCP as any `user` (e.g. to show that `root` cannot log in that way).
    pub fn tcp_sql(&self, user: &str, password: &str, sql: &str) -> Output {
        let mut cmd = Command::new(&self.client);
        cmd.args(["--no-defaults", "--protocol=tcp", "--host=127.0.0.1"])
            .arg(format!("--port={}", self.port))
            .arg(format!("--user={user}"))
            .args(["--batch", "--skip-column-names", "--connect-timeout=10"]);
        if user == USER {
            cmd.arg(format!("--database={DATABASE}"));
        }
        // The client takes the password from MYSQL_PWD: not on a command line others can read.
        cmd.env("MYSQL_PWD", password)
            .arg("--execute")
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .expect("run the mariadb client")
    }

    /// `sql` as root over the server's unix socket (the harness's own way in). The SQL goes
    /// on the client's stdin: it may hold the test user's password.
    fn root_sql(&self, sql: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(&self.client)
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["--user=root", "--batch", "--skip-column-names"])
            .env_remove("MYSQL_PWD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the mariadb client");
        // A write error means the client exited early; its status and stderr tell why.
        let _ = child.stdin.take().expect("piped stdin").write_all(sql.as_bytes());
        child.wait_with_output().expect("wait for the mariadb client")
    }

    /// mariadbd refuses to run as root unless told to; as anyone else it runs as itself.
    fn user_arg(&self) -> Option<&'static str> {
        running_as_root().then_some("--user=root")
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        self.kill();
    }
}
