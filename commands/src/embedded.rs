//! The embedded default: a private Postgres cluster (initdb + pg_ctl from the system's
//! PostgreSQL binaries) in a data directory of our own, on a free loopback port.
//!
//! When we run as root, the cluster belongs to the unprivileged `postgres` account,
//! because initdb and postgres refuse to run as root.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL binaries (initdb, pg_ctl) were not found (LEDGERLINE_PG_BIN, PATH, /usr/lib/postgresql/*/bin): \
         install the `postgresql` package (apt-get install postgresql) or set DATABASE_URL"
    )]
    NoBinaries,
    #[error("running as root, but there is no unprivileged `postgres` account to own the cluster: create one or set DATABASE_URL")]
    NoPostgresUser,
    #[error("{step} failed: {detail}")]
    Step { step: String, detail: String },
}

fn step(step: &str, detail: impl std::fmt::Display) -> EmbeddedError {
    EmbeddedError::Step {
        step: step.to_string(),
        detail: detail.to_string(),
    }
}

/// A running cluster. Dropping it stops the cluster if this process started it.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    cluster_dir: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
    started_here: bool,
}

impl EmbeddedPostgres {
    /// Start (or join, if one already runs there) the cluster in `cluster_dir`.
    pub fn start(cluster_dir: &Path) -> Result<Self, EmbeddedError> {
        let bin_dir = find_bin_dir().ok_or(EmbeddedError::NoBinaries)?;
        let owner = if unsafe { libc::geteuid() } == 0 {
            Some(postgres_account().ok_or(EmbeddedError::NoPostgresUser)?)
        } else {
            None
        };
        let parent = cluster_dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(|e| step(&format!("creating {}", parent.display()), e))?;
        // The postgres tools run from `/`: give them an absolute path.
        let parent = parent
            .canonicalize()
            .map_err(|e| step(&format!("resolving {}", parent.display()), e))?;
        let parent = parent.as_path();
        let cluster_dir = &parent.join(cluster_dir.file_name().unwrap_or(std::ffi::OsStr::new("postgres")));
        // One process at a time initializes or starts a given cluster.
        let lock_path = parent.join(format!(
            ".{}.lock",
            cluster_dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        ));
        let _lock = FileLock::acquire(&lock_path)?;

        let mut pg = EmbeddedPostgres {
            cluster_dir: cluster_dir.to_path_buf(),
            bin_dir,
            port: 0,
            owner,
            started_here: false,
        };
        if !cluster_dir.join("PG_VERSION").exists() {
            pg.init()?;
        }
        if let Some(port) = pg.running_port() {
            pg.port = port;
            return Ok(pg);
        }
        pg.port = free_port()?;
        let log = cluster_dir.join("postgres.log");
        let output = pg
            .command("pg_ctl")
            .arg("start")
            .arg("-w")
            .arg("-t")
            .arg("60")
            .arg("-D")
            .arg(cluster_dir)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(format!("-p {}", pg.port))
            .output()
            .map_err(|e| step("running pg_ctl start", e))?;
        if !output.status.success() {
            let tail = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            return Err(step(
                "pg_ctl start",
                format!(
                    "{}{} (log: {})",
                    String::from_utf8_lossy(&output.stderr).trim(),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
                    log.display()
                ),
            ));
        }
        pg.started_here = true;
        Ok(pg)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `database` on this cluster (superuser `postgres`, trust auth on loopback).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, database)
    }

    pub fn cluster_dir(&self) -> &Path {
        &self.cluster_dir
    }

    /// Leave the cluster running when this handle is dropped (the shared test cluster).
    pub fn detach(mut self) -> Self {
        self.started_here = false;
        self
    }

    /// Stop the cluster now (fast shutdown: open sessions are ended, committed data stays).
    pub fn stop(&mut self) -> Result<(), EmbeddedError> {
        let output = self
            .command("pg_ctl")
            .arg("stop")
            .arg("-w")
            .arg("-m")
            .arg("fast")
            .arg("-D")
            .arg(&self.cluster_dir)
            .output()
            .map_err(|e| step("running pg_ctl stop", e))?;
        self.started_here = false;
        if output.status.success() {
            Ok(())
        } else {
            Err(step("pg_ctl stop", String::from_utf8_lossy(&output.stderr).trim()))
        }
    }

    fn init(&self) -> Result<(), EmbeddedError> {
        fs::create_dir_all(&self.cluster_dir).map_err(|e| step("creating the cluster directory", e))?;
        fs::set_permissions(&self.cluster_dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| step("setting cluster directory permissions", e))?;
        if let Some((uid, gid)) = self.owner {
            chown(&self.cluster_dir, uid, gid)?;
        }
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(&self.cluster_dir)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            ])
            .output()
            .map_err(|e| step("running initdb", e))?;
        if !output.status.success() {
            return Err(step("initdb", String::from_utf8_lossy(&output.stderr).trim()));
        }
        // Loopback TCP only, no unix socket to place; room for many test pools.
        let mut conf = fs::OpenOptions::new()
            .append(true)
            .open(self.cluster_dir.join("postgresql.conf"))
            .map_err(|e| step("opening postgresql.conf", e))?;
        writeln!(
            conf,
            "\n# Ledgerline embedded cluster\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
             max_connections = 300\nidle_in_transaction_session_timeout = '60s'\n"
        )
        .map_err(|e| step("writing postgresql.conf", e))?;
        Ok(())
    }

    /// The port of a postmaster already serving this cluster, if one runs.
    fn running_port(&self) -> Option<u16> {
        let status = self
            .command("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(&self.cluster_dir)
            .output()
            .ok()?;
        if !status.status.success() {
            return None;
        }
        let pid_file = fs::read_to_string(self.cluster_dir.join("postmaster.pid")).ok()?;
        pid_file.lines().nth(3)?.trim().parse().ok()
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        cmd.current_dir("/").env("LC_ALL", "C").env_remove("PGDATA");
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid).env("HOME", "/tmp");
        }
        cmd
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if self.started_here {
            if let Err(e) = self.stop() {
                eprintln!("ledgerline: stopping the embedded Postgres failed: {e}");
            }
        }
    }
}

/// `LEDGERLINE_PG_BIN` when set (and nothing else), else `initdb` and `pg_ctl` on PATH,
/// else the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("LEDGERLINE_PG_BIN") {
        let dir = PathBuf::from(dir);
        return (dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()).then_some(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn postgres_account() -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() > 3 && fields[0] == "postgres" {
            Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
        } else {
            None
        }
    })
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), EmbeddedError> {
    let meta = fs::metadata(path).map_err(|e| step("reading the cluster directory", e))?;
    if meta.uid() == uid {
        return Ok(());
    }
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| step("giving the cluster directory to postgres", e))
}

fn free_port() -> Result<u16, EmbeddedError> {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| step("finding a free port", e))?;
    socket
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| step("finding a free port", e))
}

/// An exclusive advisory lock on a file, released on drop.
pub struct FileLock {
    _file: fs::File,
}

impl FileLock {
    pub fn acquire(path: &Path) -> Result<Self, EmbeddedError> {
        use std::os::fd::AsRawFd;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| step(&format!("opening {}", path.display()), e))?;
        // SAFETY: flock on a file descriptor we own; it blocks until the lock is ours.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(step("locking the cluster", std::io::Error::last_os_error()));
        }
        Ok(FileLock { _file: file })
    }
}
