"""TLS and SuperNode authentication, exactly as docs/network.md tells a miner and an operator to set
them up: a SuperLink with a certificate and ``--enable-supernode-auth``, one registered SuperNode
key (``flwr supernode register``) that connects over TLS, and an unregistered key that is refused."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (shutil.which("openssl") and shutil.which("ssh-keygen")),
                                                     reason="needs openssl and ssh-keygen")]


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True, timeout=120)


def make_certificates(folder: Path) -> None:
    """The commands of docs/network.md, "TLS": a CA, and a SuperLink certificate for 127.0.0.1."""
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
         "-days", "365", "-subj", "/CN=ModelMine test CA"], folder)
    run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "superlink.key", "-out", "superlink.csr",
         "-subj", "/CN=127.0.0.1"], folder)
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run(["openssl", "x509", "-req", "-in", "superlink.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "superlink.crt", "-days", "365", "-extfile", "san.ext"], folder)


def spawn(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"process exited with {proc.returncode}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on {port}")


@pytest.fixture()
def tmp_dir() -> Iterator[Path]:
    """Outside pytest's rotating basetemp (the SuperLink keeps files open there for a minute)."""
    folder = Path(tempfile.mkdtemp(prefix="mm-tls-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_tls_and_supernode_auth(tmp_dir: Path) -> None:
    tmp_path = tmp_dir
    make_certificates(tmp_path)
    run(["ssh-keygen", "-t", "ecdsa", "-b", "384", "-N", "", "-q", "-f", "node_key"], tmp_path)
    run(["ssh-keygen", "-t", "ecdsa", "-b", "384", "-N", "", "-q", "-f", "stranger_key"], tmp_path)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(tmp_path / "flwr"),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    port = free_port()
    (tmp_path / "flwr").mkdir()
    (tmp_path / "flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "tls"\n\n[superlink.tls]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{tmp_path / "ca.crt"}"\n'
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        link = spawn(
            [str(BIN / "flower-superlink"), "--ssl-ca-certfile", "ca.crt", "--ssl-certfile", "superlink.crt",
             "--ssl-keyfile", "superlink.key", "--enable-supernode-auth", "--host", "127.0.0.1", "--port", str(port),
             "--database", str(tmp_path / "state.db")],
            tmp_path, env, tmp_path / "superlink.log")
        procs.append(link)
        wait_port(port, link)
        out = run([str(BIN / "flwr"), "supernode", "register", "node_key.pub", "tls"], tmp_path, env)
        assert "registered" in out.stdout

        def supernode(key: str, log: str) -> subprocess.Popen[bytes]:
            proc = spawn(
                [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{port}", "--root-certificates", "ca.crt",
                 "--auth-supernode-private-key", key, "--isolation", "process", "--port", str(free_port()),
                 "--max-retries", "3"],
                tmp_path, env, tmp_path / log)
            procs.append(proc)
            return proc

        good = supernode("node_key", "good.log")
        stranger = supernode("stranger_key", "stranger.log")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "Activated node_id" not in (tmp_path / "superlink.log").read_text():
            time.sleep(0.5)
        assert "Activated node_id" in (tmp_path / "superlink.log").read_text()
        assert good.poll() is None  # the registered node stays connected over TLS
        assert stranger.wait(timeout=120) != 0  # the unregistered key is refused
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=20)
