//! Real PostgreSQL and Redis servers for end-to-end tests and benchmarks:
//! Debian's binaries started as child processes on free loopback ports, in
//! temporary directories, stopped when dropped. PostgreSQL runs as the
//! `postgres` OS user (the tests run as root), with password
//! authentication over TCP.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_tcp_port;

const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
pub const PASSWORD: &str = "herd-test-password";

fn pg_bin(tool: &str) -> PathBuf {
    let dir =
        std::env::var_os("HERD_PG_BIN").map_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"), PathBuf::from);
    let path = dir.join(tool);
    assert!(path.exists(), "{} is missing: apt-get install -y postgresql (or set HERD_PG_BIN)", path.display());
    path
}

fn as_postgres(program: &Path, args: &[&str]) {
    let status = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("runuser runs");
    assert!(status.success(), "{} {args:?} failed", program.display());
}

/// A throw-away PostgreSQL cluster.
pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    server: Option<Child>,
}

impl Postgres {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`Postgres::start`], with extra server settings (`name=value`,
    /// each passed as `-c`), e.g. `shared_preload_libraries=pg_stat_statements`.
    pub fn start_with(settings: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pwfile = dir.path().join("pw");
        std::fs::File::create(&pwfile).and_then(|mut f| f.write_all(PASSWORD.as_bytes())).expect("write password");
        let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().expect("chown");
        assert!(status.success());
        let data = dir.path().join("data");
        as_postgres(
            &pg_bin("initdb"),
            &[
                "-D",
                data.to_str().expect("utf-8"),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--pwfile",
                pwfile.to_str().expect("utf-8"),
                "--no-sync",
            ],
        );
        let port = free_tcp_port();
        let child = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("postgres"))
            .args(["-D", data.to_str().expect("utf-8"), "-p", &port.to_string()])
            .args(["-k", dir.path().to_str().expect("utf-8")])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=50"])
            .args(settings.iter().flat_map(|setting| ["-c", setting]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres starts");
        let server = Self { dir, port, server: Some(child) };
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            let ready = Command::new(pg_bin("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return server;
            }
            assert!(Instant::now() < deadline, "postgres did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A connection string without the password (give it with `password_file`).
    pub fn dsn(&self, database: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname={database} sslmode=disable", self.port)
    }

    /// Runs `sql` with `psql` as the `postgres` superuser over the server's
    /// Unix socket, in `database`; returns its unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-d", database, "-c", sql])
            .output()
            .expect("runuser runs psql");
        assert!(output.status.success(), "psql failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let data = self.data();
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_bin("pg_ctl"))
                .args(["-D", data.to_str().unwrap_or_default(), "-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A throw-away Redis server with `requirepass` [`PASSWORD`].
pub struct Redis {
    pub port: u16,
    child: Child,
}

impl Redis {
    pub fn start() -> Self {
        let binary = std::env::var("HERD_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let port = free_tcp_port();
        let child = Command::new(&binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--requirepass", PASSWORD])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {binary}: {err} (apt-get install -y redis-server)"));
        let deadline = Instant::now() + STARTUP_DEADLINE;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends `command` (arguments, as RESP) after AUTH and returns the raw reply.
    pub fn command(&self, command: &[&str]) -> String {
        use std::io::Read;
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis-server");
        let mut request = Vec::new();
        for args in [&["AUTH", PASSWORD][..], command] {
            request.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for arg in args {
                request.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
            }
        }
        request.extend_from_slice(b"*1\r\n$4\r\nQUIT\r\n");
        stream.write_all(&request).expect("write to redis-server");
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        reply
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `secret` to `path` with mode 0600, for `password_file` and token files.
pub fn secret_file(path: &Path, secret: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, secret).expect("write secret file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod secret file");
    path.to_owned()
}

/// Whether PostgreSQL's server binaries and `redis-server` are installed;
/// without them, fails under `HERD_REQUIRE_PEERS=1` and says so otherwise.
pub fn servers_available() -> bool {
    let postgres = std::env::var_os("HERD_PG_BIN")
        .map_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"), PathBuf::from)
        .join("initdb")
        .exists();
    let redis = Command::new("redis-server").arg("--version").output().is_ok_and(|o| o.status.success());
    if !(postgres && redis) {
        assert!(
            std::env::var("HERD_REQUIRE_PEERS").as_deref() != Ok("1"),
            "PostgreSQL or redis-server is missing: apt-get install postgresql redis-server"
        );
        eprintln!("skipped: PostgreSQL or redis-server is not installed (apt-get install postgresql redis-server)");
    }
    postgres && redis
}
