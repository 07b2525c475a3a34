//! Real PostgreSQL and Redis servers on loopback for end-to-end tests that
//! need their collectors' series: Debian's `postgresql` (a throw-away
//! cluster, run as the `postgres` OS user, trust authentication on
//! 127.0.0.1) and `redis-server` (no persistence). Both are killed on drop.
//! Without the binaries a test fails under `HERD_REQUIRE_PEERS=1` and is
//! skipped otherwise.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_tcp_port, wait_for};

const STARTUP: Duration = Duration::from_secs(30);

fn missing(what: &str, install: &str) -> bool {
    assert!(std::env::var("HERD_REQUIRE_PEERS").as_deref() != Ok("1"), "{what} is missing: apt-get install {install}");
    eprintln!("skipped: {what} is not installed (apt-get install {install})");
    false
}

fn pg_bin(tool: &str) -> PathBuf {
    let dir =
        std::env::var_os("HERD_PG_BIN").map_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"), PathBuf::from);
    dir.join(tool)
}

/// Whether PostgreSQL's server binaries and Redis are installed.
pub fn servers_available() -> bool {
    if !pg_bin("initdb").exists() {
        return missing("PostgreSQL", "postgresql");
    }
    if Command::new("redis-server").arg("--version").output().is_err() {
        return missing("redis-server", "redis-server");
    }
    true
}

fn as_postgres(program: &std::path::Path) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(program).stdout(Stdio::null()).stderr(Stdio::null());
    command
}

/// A throw-away PostgreSQL cluster listening on `127.0.0.1:port`.
pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    server: Child,
}

impl Postgres {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let chown = |path: &std::path::Path| {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(path).status().expect("chown");
            assert!(status.success(), "chown {} to postgres", path.display());
        };
        chown(dir.path());
        let data = dir.path().join("data");
        let status = as_postgres(&pg_bin("initdb"))
            .args(["-D", data.to_str().expect("utf-8"), "-U", "postgres", "--auth=trust", "--no-sync"])
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed");
        let port = free_tcp_port();
        let server = as_postgres(&pg_bin("postgres"))
            .args(["-D", data.to_str().expect("utf-8"), "-p", &port.to_string()])
            .args(["-k", dir.path().to_str().expect("utf-8"), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .spawn()
            .expect("start postgres");
        let ready = wait_for(STARTUP, || {
            let status =
                Command::new(pg_bin("pg_isready")).args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()]).status();
            status.is_ok_and(|s| s.success()).then_some(())
        });
        assert!(ready.is_some(), "postgres did not start on port {port}");
        Self { port, dir, server }
    }

    /// A DSN for the agent's `[[collect.postgres]]`.
    pub fn dsn(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres(&pg_bin("pg_ctl"))
            .args(["-D", data.to_str().unwrap_or_default(), "-m", "immediate", "-w", "stop"])
            .status();
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// A Redis on `127.0.0.1:port`, without persistence.
pub struct Redis {
    pub port: u16,
    server: Child,
}

impl Redis {
    pub fn start() -> Self {
        let port = free_tcp_port();
        let server = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let ready = wait_for(STARTUP, || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
        assert!(ready.is_some(), "redis-server did not start on port {port}");
        Self { port, server }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
