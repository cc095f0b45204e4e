//! A private PostgreSQL server for the soak: initdb into a temporary directory, `postgres` on
//! a free port. The soak restarts it and terminates its backends, which nobody may do to the
//! shared server other engineers' tests use.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A PostgreSQL server of our own; stopped (immediately) and removed when dropped.
pub struct PrivatePg {
    /// The directory holding the cluster, its socket and its log.
    dir: tempfile::TempDir,
    /// `bin/` of the installation (initdb, pg_ctl).
    bin: PathBuf,
    /// Where it listens on 127.0.0.1.
    pub port: u16,
    /// Run the tools as the `postgres` user: PostgreSQL refuses to run as root.
    as_postgres: bool,
}

/// The newest installed `/usr/lib/postgresql/*/bin` that has initdb, or `None`.
fn installation() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop()
}

impl PrivatePg {
    /// Starts a fresh cluster; `Err` names what is missing or failed.
    pub fn start() -> Result<PrivatePg, String> {
        let bin =
            installation().ok_or("no PostgreSQL installation in /usr/lib/postgresql/*/bin")?;
        let dir = tempfile::Builder::new()
            .prefix("mailsync-chaos-pg")
            .tempdir()
            .map_err(|e| format!("a temporary directory: {e}"))?;
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        if as_postgres {
            let ok = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!("chown postgres {}", dir.path().display()));
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("a free port: {e}"))?
            .port();
        let pg = PrivatePg {
            dir,
            bin,
            port,
            as_postgres,
        };
        let data = pg.data();
        pg.tool(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        pg.ctl(&["start"])?;
        Ok(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// The server's log file.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    fn tool(&self, name: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(name);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .output()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{name} {args:?}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `pg_ctl ACTION` with this cluster's options, waiting for it to finish.
    fn ctl(&self, action: &[&str]) -> Result<(), String> {
        let data = self.data();
        let log = self.log().display().to_string();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let mut args = vec!["-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60"];
        args.extend_from_slice(action);
        self.tool("pg_ctl", &args)
    }

    /// A crash and a restart: `pg_ctl restart -m immediate` (no checkpoint; the server
    /// recovers from its WAL, and every client connection breaks).
    pub fn restart(&self) -> Result<(), String> {
        self.ctl(&["-m", "immediate", "restart"])
    }

    /// The cluster's directory (for messages).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self.ctl(&["-m", "immediate", "stop"]);
    }
}
