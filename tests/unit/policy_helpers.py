"""Private memcached stores and the platform's policy helpers (roles/*/files), started for
real on loopback: what the gateways run, without a lab."""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MEMCACHED = shutil.which("memcached") or "/usr/bin/memcached"  # make host-deps installs it
# The shared module the helpers import, installed next to them by role common.
HELPER_ENV = {**os.environ, "PYTHONPATH": str(ROOT / "roles/common/files")}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Processes:
    """Started processes, stopped together."""

    def __init__(self):
        self.started = []

    def memcached(self):
        port = free_port()
        process = subprocess.Popen([MEMCACHED, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-u", "nobody",
                                    "-m", "8"])
        self.started.append(process)
        wait_port(port)
        return port, process

    def helper(self, script, config_path, text, port):
        """Run roles/<script> with a settings file; returns when it listens on port."""
        config_path.write_text(text)
        process = subprocess.Popen(["python3", str(ROOT / "roles" / script), str(config_path)], env=HELPER_ENV)
        self.started.append(process)
        wait_port(port)
        return process

    def gateway_pair(self, tmp_path, script, settings):
        """Two gateways, each with its store and the helper that reads it and writes both.
        `settings` is the helper's own part of the settings file. Returns the helpers'
        ports, the stores' ports and the stores' processes."""
        stores = [self.memcached() for _ in range(2)]
        helpers = []
        for local, _ in stores:
            port = free_port()
            self.helper(script, tmp_path / f"{Path(script).name}-{port}.conf",
                        f"# test\nlisten = 127.0.0.1:{port}\n{settings}local = 127.0.0.1:{local}\n"
                        + "".join(f"store = 127.0.0.1:{store}\n" for store, _ in stores), port)
            helpers.append(port)
        return helpers, [port for port, _ in stores], [process for _, process in stores]

    def stop(self):
        for process in self.started:
            process.terminate()
            process.wait(5)
