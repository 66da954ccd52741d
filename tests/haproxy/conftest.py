"""A private HAProxy for the lb_pool_ratio tests.

Three dummy "gateways" (threads that greet and echo, holding their connections open)
sit behind two frontends: SMTP (backend submission) and IMAP (backends imap and pop3).
HAProxy runs in the foreground with its admin socket in a temporary directory; the split
starts at 2:1 through `disabled` server lines, as the loadbalancer role renders it.
"""

import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from module_runner import module_runner  # noqa: E402

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
SERVERS = ["gw1", "gw2", "gw3"]
POOLS = {"smtp": ["submission"], "pop": ["imap", "pop3"]}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EchoServer:
    """Greets with its name, then echoes lines; counts open connections."""

    def __init__(self, name):
        self.name, self.port = name, free_port()
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.open = 0
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        self.open += 1
        try:
            conn.sendall(f"hello from {self.name}\n".encode())
            while data := conn.recv(1024):
                conn.sendall(data)
        except OSError:
            pass
        finally:
            self.open -= 1
            conn.close()


def haproxy_config(tmp, backends, ports, split):
    lines = [
        # noreuseport: a port some other process took between free_port() and the bind makes
        # HAProxy fail (and the fixture retry), instead of both answering on it by turns.
        "global", f"  stats socket {tmp}/admin.sock mode 600 level admin", "  noreuseport", "",
        "defaults", "  mode tcp", "  timeout connect 2s", "  timeout client 60s", "  timeout server 60s", "",
        f"frontend smtp\n  bind 127.0.0.1:{ports['smtp']}\n  default_backend submission",
        f"frontend imap\n  bind 127.0.0.1:{ports['imap']}\n  default_backend imap",
        f"frontend pop3\n  bind 127.0.0.1:{ports['pop3']}\n  default_backend pop3", "",
    ]
    for pool, names in POOLS.items():
        for backend in names:
            lines.append(f"backend {backend}")
            for name, server in backends.items():
                disabled = "" if name in split[pool] else " disabled"
                lines.append(f"  server {name} 127.0.0.1:{server.port}{disabled}")
            lines.append("")
    return "\n".join(lines) + "\n"


@pytest.fixture
def haproxy(tmp_path):
    backends = {name: EchoServer(name) for name in SERVERS}
    for attempt in range(3):  # free ports are free when chosen, not always when bound
        proc, ports = start_haproxy(tmp_path, backends)
        if proc:
            break
    else:
        pytest.fail("HAProxy did not start on free ports three times")
    yield SimpleNamespace(socket=str(tmp_path / "admin.sock"), ports=ports, backends=backends, servers=SERVERS,
                          pools=POOLS)
    proc.terminate()
    proc.wait(10)
    for server in backends.values():
        server.sock.close()


def start_haproxy(tmp_path, backends):
    """(process, ports) of a HAProxy answering on new free ports, or (None, ports) when one
    of the ports was taken meanwhile."""
    ports = {"smtp": free_port(), "imap": free_port(), "pop3": free_port()}
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(tmp_path, backends, ports, {"smtp": SERVERS[:2], "pop": SERVERS[2:]}))
    check = subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 10
    while not (tmp_path / "admin.sock").exists():
        if proc.poll() is not None:
            error = proc.stderr.read().decode()
            assert "cannot bind" in error or "Address already in use" in error, error
            return None, ports
        assert time.time() < deadline, "HAProxy did not open its admin socket within 10 s"
        time.sleep(0.05)
    return proc, ports


@pytest.fixture
def run_module(monkeypatch):
    return module_runner(monkeypatch)
