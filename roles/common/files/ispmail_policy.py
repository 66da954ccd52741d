"""What the platform's policy helpers share: their settings files, and counters in the
gateways' memcached stores.

Used by ispmail-auth-policy (failed logins) and ispmail-send-limit (outbound mail per
subscriber). A count is written to every gateway's store and read from the local one, so
each gateway sees the platform-wide count without a shared database. Every store call
gives up after TIMEOUT and reports failure by its result, never by raising: a helper
that cannot reach a store must not stop mail or logins.
"""

import ipaddress
import socket
import syslog
import threading

TIMEOUT = 0.5


def read_settings(path, defaults):
    """`key = value` lines over defaults. Integer defaults take integers (at least 1);
    `local` is one store and `store` may repeat ("host:port"), `ignore` networks may
    repeat; any other key must be in defaults. Errors name the file and line."""
    settings = dict(defaults, stores=[], ignored=[])
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = (part.strip() for part in line.partition("="))
            where = f"{path}:{number}"
            if not sep:
                raise ValueError(f"{where}: expected key = value")
            if key in ("local", "store"):
                host, _, port = value.rpartition(":")
                if key == "store":
                    settings["stores"].append((host, int(port)))
                else:
                    settings["local"] = (host, int(port))
            elif key == "ignore":
                settings["ignored"].append(ipaddress.ip_network(value, strict=False))
            elif key in defaults and isinstance(defaults[key], int):
                settings[key] = int(value)
                if settings[key] < 1:
                    raise ValueError(f"{where}: {key} must be positive")
            elif key in defaults:
                settings[key] = value
            else:
                raise ValueError(f"{where}: unknown setting {key}")
    return settings


def exchange(store, lines, complete):
    """Send lines to one memcached ((host, port)); its reply lines once complete(bytes)."""
    with socket.create_connection(store, timeout=TIMEOUT) as conn:
        conn.sendall("".join(line + "\r\n" for line in lines).encode())
        reply = b""
        while not complete(reply):
            chunk = conn.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.decode(errors="replace").splitlines()


def add(store, key, amount, ttl, slide):
    """Add amount to key (created with ttl as expiry); slide: push the expiry out again."""
    commands = [f"add {key} 0 {ttl} 1", "0", f"incr {key} {amount}"] + ([f"touch {key} {ttl}"] if slide else [])
    try:
        reply = exchange(store, commands, lambda data: data.count(b"\r\n") >= len(commands) - 1)
    except OSError as exc:
        syslog.syslog(syslog.LOG_WARNING, f"memcached {store[0]}:{store[1]}: {exc}")
        return False
    if len(reply) < 2 or not reply[1].strip().isdigit():
        syslog.syslog(syslog.LOG_WARNING, f"memcached {store[0]}:{store[1]} answered {reply!r}")
        return False
    return True


def add_everywhere(stores, keys, amount, ttl, slide):
    """add() to every key in every store at once; waits at most a few timeouts."""
    threads = [threading.Thread(target=add, args=(store, key, amount, ttl, slide)) for store in stores for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 4)


def put(store, key, text, ttl):
    """Set key to text with ttl as expiry in one store; False when it did not answer."""
    try:
        reply = exchange(store, [f"set {key} 0 {ttl} {len(text.encode())}", text], lambda data: b"\r\n" in data)
    except OSError as exc:
        syslog.syslog(syslog.LOG_WARNING, f"memcached {store[0]}:{store[1]}: {exc}")
        return False
    return reply[:1] == ["STORED"]


def put_everywhere(stores, key, text, ttl):
    """put() in every store at once; waits at most a few timeouts."""
    threads = [threading.Thread(target=put, args=(store, key, text, ttl)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 4)


def value(store, key):
    """The count under key in one store: 0 when there is none, None when the store is down."""
    try:
        # "VALUE <key> <flags> <bytes>", the data, "END"; or only "END".
        reply = exchange(store, [f"get {key}"], lambda data: data.endswith(b"END\r\n"))
    except OSError as exc:
        syslog.syslog(syslog.LOG_WARNING, f"memcached {store[0]}:{store[1]}: {exc}")
        return None
    if len(reply) >= 2 and reply[0].startswith("VALUE ") and reply[1].strip().isdigit():
        return int(reply[1])
    return 0
