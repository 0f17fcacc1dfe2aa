"""Fixtures for the third-party (Python grpcio) client tests of Quiver's gRPC server.

- `quiver_pb`: Python stubs generated from server/proto/quiver/v1/quiver.proto with
  grpc_tools.protoc into a temporary directory at test time (session scope).
- `server`: the `quiver serve` binary (env QUIVER_BIN, default target/debug/quiver) started on
  127.0.0.1:0 in a fresh data directory, with the extra arguments in env QUIVER_SERVE_ARGS
  (e.g. `--backend cuda`); yields "127.0.0.1:PORT" and, on teardown, sends SIGTERM and asserts
  a graceful exit (code 0).
- `channel` / `stub`: an insecure grpc channel to that server and a quiver.v1.Quiver stub.
"""

import importlib
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "server" / "proto"
PROTO_FILE = PROTO_ROOT / "quiver" / "v1" / "quiver.proto"

STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 10.0
RPC_TIMEOUT_S = 30.0
SERVE_ARGS = shlex.split(os.environ.get("QUIVER_SERVE_ARGS", ""))


def _quiver_bin() -> Path:
    p = Path(os.environ.get("QUIVER_BIN", "target/debug/quiver"))
    if not p.is_absolute():
        p = REPO / p
    return p


@pytest.fixture(scope="session")
def quiver_pb(tmp_path_factory):
    """Generates the quiver.v1 stubs now and imports them: (quiver_pb2, quiver_pb2_grpc)."""
    from grpc_tools import protoc
    import grpc_tools

    out = tmp_path_factory.mktemp("quiver_stubs")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO_FILE),
    ]
    rc = protoc.main(args)
    assert rc == 0, f"grpc_tools.protoc failed ({rc}) on {PROTO_FILE}"
    sys.path.insert(0, str(out))
    importlib.invalidate_caches()
    pb2 = importlib.import_module("quiver.v1.quiver_pb2")
    pb2_grpc = importlib.import_module("quiver.v1.quiver_pb2_grpc")
    return SimpleNamespace(pb2=pb2, grpc=pb2_grpc)


class _Server:
    def __init__(self, proc, addr, stderr_path, data_dir):
        self.proc = proc
        self.addr = addr
        self.stderr_path = stderr_path
        self.data_dir = data_dir

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""


def _drain(stream, lines: "queue.Queue[str | None]"):
    # Keeps reading stdout for the server's whole life so that its pipe never fills.
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode(errors="replace").rstrip("\n"))
    lines.put(None)


def _stop(proc) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None  # did not stop in time
    return proc.returncode


def start_server(tmp_path, extra_args=(), env=None, name="server"):
    """Starts `quiver serve` on 127.0.0.1:0 with its data in tmp_path/<name>-data (kept from an
    earlier server of that name); returns a _Server once it printed its address (stop it with
    stop_server)."""
    binary = _quiver_bin()
    if not binary.exists():
        pytest.fail(f"server binary not found: {binary} (build it with `cargo build`, or set QUIVER_BIN)")
    data_dir = tmp_path / f"{name}-data"
    data_dir.mkdir(exist_ok=True)  # a restart of a server of that name finds its data
    stderr_path = tmp_path / f"{name}.stderr"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [str(binary), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
             *SERVE_ARGS, *extra_args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=tmp_path,
            env={**os.environ, **(env or {})},
        )
    lines: "queue.Queue[str | None]" = queue.Queue()
    threading.Thread(target=_drain, args=(proc.stdout, lines), daemon=True).start()

    srv = _Server(proc, None, stderr_path, data_dir)
    srv.lines = lines
    try:
        first = lines.get(timeout=STARTUP_TIMEOUT_S)  # the first stdout line; None at EOF
    except queue.Empty:
        first = None
    if first is None or not first.startswith("listening on "):
        exited = proc.poll()
        code = _stop(proc)
        if first is not None:
            why = f"its first stdout line was {first!r}, not 'listening on ADDR'"
        elif exited is not None:
            why = f"it exited with code {exited} before printing 'listening on ADDR'"
        else:
            why = f"it printed nothing on stdout within {STARTUP_TIMEOUT_S:.0f}s (stopped; exit code {code})"
        pytest.fail(f"server {binary} failed to start: {why}\n--- server stderr ---\n{srv.stderr()}")
    srv.addr = first[len("listening on "):].strip()
    host, _, port = srv.addr.rpartition(":")
    assert host == "127.0.0.1" and port.isdigit() and int(port) > 0, f"unexpected address {srv.addr!r}"
    return srv


def stop_server(srv):
    """SIGTERM, then asserts a graceful exit (code 0)."""
    code = _stop(srv.proc)
    assert code is not None, (
        f"server did not exit within {SHUTDOWN_TIMEOUT_S:.0f}s of SIGTERM (killed)\n"
        f"--- server stderr ---\n{srv.stderr()}"
    )
    assert code == 0, f"server exited with {code} after SIGTERM\n--- server stderr ---\n{srv.stderr()}"


@pytest.fixture
def server(tmp_path):
    """Starts `quiver serve` on an ephemeral port in a fresh data dir; yields a _Server."""
    srv = start_server(tmp_path, name="server")
    yield srv
    stop_server(srv)


@pytest.fixture
def channel(server):
    ch = grpc.insecure_channel(server.addr)
    try:
        grpc.channel_ready_future(ch).result(timeout=STARTUP_TIMEOUT_S)
        yield ch
    finally:
        ch.close()


@pytest.fixture
def stub(channel, quiver_pb):
    return quiver_pb.grpc.QuiverStub(channel)
