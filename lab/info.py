#!/usr/bin/env python3
"""Print the lab's client endpoints as JSON: "127.0.0.1:PORT" where a service listens,
null where the container or the service does not exist yet."""

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import lab_inventory  # noqa: E402

URL_SCHEMES = {"webmail": "https", "haproxy_stats": "https", "monitoring": "http", "alertmanager": "http"}
ENDPOINTS = ["smtp", "submission", "submissions", "pbs_smtp", "pop3", "pop3s", "imap", "imaps",
             "managesieve", "webmail", "haproxy_stats", "monitoring", "alertmanager"]


def listening_ports(container):
    """TCP ports listening inside the container, or None when it is not running."""
    proc = subprocess.run(["podman", "exec", container, "ss", "-Hltn"], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    ports = set()
    for line in proc.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            ports.add(int(fields[3].rsplit(":", 1)[1]))
    return ports


def main():
    lab = lab_inventory.load()
    endpoints = dict.fromkeys(ENDPOINTS)
    for host, hostvars in sorted(lab["hosts"].items()):
        published = hostvars.get("lab_published_ports") or {}
        if not published or not lab["lab_publish_ports"]:
            continue
        ports = listening_ports(hostvars["ansible_host"]) or set()
        for name, port in published.items():
            if port["container"] in ports:
                address = f"127.0.0.1:{port['host']}"
                scheme = URL_SCHEMES.get(name)
                endpoints[name] = f"{scheme}://{address}/" if scheme else address
    json.dump(endpoints, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
