"""vpopmail's data on the lab's old mail host (role lab_legacy): the domains' vpasswd files,
quotas, Maildir++ maildirsize and qmail-style Maildir names, shared by the v* commands,
vdelivermail and the qmail-pop3d stand-in (installed in /home/vpopmail/lib).

The layout is vpopmail's: /home/vpopmail/domains/<domain>/vpasswd, one line per user
`user:HASH:1:0:GECOS:/home/vpopmail/domains/<domain>/<user>:QUOTA` (an 8th clear-text field
of real vpopmail files is read and dropped), each user's Maildir in <dir>/Maildir.
The maps the lab's Postfix and Courier read are derived from the vpasswd files after every
change (sync_maps), as real vpopmail rebuilds vpasswd.cdb."""

import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

with warnings.catch_warnings():
    # Debian 12's Python 3.11 still has crypt (deprecated, gone in 3.13): the libc one
    # through ctypes otherwise. Both hash exactly as vpopmail's crypt(3) calls did.
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        from crypt import crypt as _crypt
    except ImportError:  # pragma: no cover - Python >= 3.13
        import ctypes
        import ctypes.util

        _libcrypt = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
        _libcrypt.crypt.restype = ctypes.c_char_p
        _libcrypt.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]

        def _crypt(word, salt):
            result = _libcrypt.crypt(word.encode(), salt.encode())
            return result.decode() if result else None

CONFIG = os.environ.get("VPOPMAIL_CONFIG", "/home/vpopmail/etc/lab-legacy.json")
SALT_CHARS = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
USER_RE = re.compile(r"^[a-z0-9][a-z0-9._+-]*$")
DOMAIN_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")
DES_RE = re.compile(r"^[./0-9A-Za-z]{13}$")
# Maildir++: maildirsize is recalculated when it grows past this or, when it says the quota
# is exceeded, when it is older than 15 minutes (deleting clients need not update it).
MAILDIRSIZE_MAX = 5120
MAILDIRSIZE_STALE = 15 * 60


class VpopmailError(Exception):
    """A command's error, printed as vpopmail prints its own."""


@dataclass
class Config:
    """Where things are; role lab_legacy writes it as JSON (lab-legacy.json)."""

    home: str = "/home/vpopmail"
    uid: int = 89
    gid: int = 89
    # Files regenerated from the vpasswd files, and the commands that compile them.
    postfix_domains: str = ""
    postfix_recipients: str = ""
    courier_userdb: str = ""
    rebuild_commands: list = field(default_factory=list)
    sendmail: str = "/usr/sbin/sendmail"

    @property
    def domains(self):
        return Path(self.home) / "domains"


def load_config(path=None):
    path = Path(path or CONFIG)
    if not path.exists():
        return Config()
    config = Config(**json.loads(path.read_text()))
    config.uid, config.gid = int(config.uid), int(config.gid)
    return config


# ---- passwords ---------------------------------------------------------------------------

def hash_password(password, method="md5"):
    """vpopmail's crypt: MD5-crypt ($1$, its default) or traditional DES (8 characters used)."""
    if method == "md5":
        salt = "$1$" + "".join(secrets.choice(SALT_CHARS) for _ in range(8))
    elif method == "des":
        salt = "".join(secrets.choice(SALT_CHARS) for _ in range(2))
    else:
        raise ValueError(method)
    return _crypt(password, salt)


def check_password(password, hashed):
    if not hashed or not (hashed.startswith("$") or DES_RE.match(hashed)):
        return False
    result = _crypt(password, hashed)
    return bool(result) and secrets.compare_digest(result, hashed)


# ---- vpasswd -----------------------------------------------------------------------------

@dataclass
class Account:
    name: str
    hash: str
    uid: str = "1"
    gid: str = "0"
    gecos: str = ""
    dir: str = ""
    quota: str = "NOQUOTA"

    def line(self):
        return ":".join([self.name, self.hash, self.uid, self.gid, self.gecos, self.dir, self.quota])


def parse_vpasswd_line(line):
    """One vpasswd line as an Account; None for blank or comment lines."""
    line = line.rstrip("\r\n")
    if not line.strip() or line.startswith("#"):
        return None
    fields = line.split(":")
    if len(fields) < 7:
        raise ValueError(f"vpasswd line with {len(fields)} fields: {line!r}")
    # An 8th field (the clear-text password real vpopmail may keep) is dropped.
    return Account(*fields[:7])


def parse_vpasswd(text):
    # Lines end at "\n" only (str.splitlines would also split a GECOS at \x85 or \x1c).
    return [account for account in map(parse_vpasswd_line, text.split("\n")) if account]


def format_vpasswd(accounts):
    return "".join(account.line() + "\n" for account in accounts)


def parse_quota(value):
    """vpasswd's QUOTA field as (bytes, messages): None where unlimited."""
    value = (value or "").strip()
    if not value or value.upper() == "NOQUOTA":
        return None, None
    size = count = None
    for part in value.split(","):
        part = part.strip()
        if part.isdigit():
            size = int(part)
        elif part[:-1].isdigit() and part[-1:] in "Ss":
            size = int(part[:-1])
        elif part[:-1].isdigit() and part[-1:] in "Cc":
            count = int(part[:-1])
        else:
            raise ValueError(f"quota {value!r}")
    return size, count


def format_quota(size=None, count=None):
    parts = ([f"{size}S"] if size is not None else []) + ([f"{count}C"] if count is not None else [])
    return ",".join(parts) or "NOQUOTA"


def split_address(address):
    """user@domain (vchkpw also takes user%domain) in lower case."""
    address = address.strip().lower()
    for separator in ("@", "%"):
        if separator in address:
            user, _, domain = address.rpartition(separator)
            return user, domain
    raise VpopmailError(f"{address}: not user@domain")


class Domains:
    """The vpopmail domains under <home>/domains."""

    def __init__(self, config):
        self.config = config

    def path(self, domain):
        return self.config.domains / domain

    def names(self):
        root = self.config.domains
        return sorted(p.name for p in root.iterdir() if (p / "vpasswd").is_file()) if root.is_dir() else []

    def accounts(self, domain):
        vpasswd = self.path(domain) / "vpasswd"
        return parse_vpasswd(vpasswd.read_text()) if vpasswd.is_file() else []

    def lookup(self, address):
        """The Account of user@domain, or None."""
        try:
            user, domain = split_address(address)
        except VpopmailError:
            return None
        if not DOMAIN_RE.match(domain):
            return None
        return next((a for a in self.accounts(domain) if a.name == user), None)

    # Changes: under the domain's lock, vpasswd rewritten whole (tmp + rename).
    def _locked(self, domain):
        lock = open(self.path(domain) / "vpasswd.lock", "a")
        fcntl.flock(lock, fcntl.LOCK_EX)
        return lock

    def _write_vpasswd(self, domain, accounts):
        vpasswd = self.path(domain) / "vpasswd"
        tmp = vpasswd.with_name(f".vpasswd.{os.getpid()}")
        tmp.write_text(format_vpasswd(accounts))
        os.chmod(tmp, 0o600)
        self._own(tmp)
        os.replace(tmp, vpasswd)

    def _own(self, path):
        if os.geteuid() == 0:
            os.lchown(path, self.config.uid, self.config.gid)

    def _mkdir(self, path, mode=0o700):
        path.mkdir(mode=mode)
        self._own(path)

    def make_maildir(self, maildir):
        self._mkdir(maildir)
        for sub in ("cur", "new", "tmp"):
            self._mkdir(maildir / sub)

    def add_domain(self, domain, postmaster_password=None, postmaster_hash=None):
        domain = domain.lower()
        if not DOMAIN_RE.match(domain):
            raise VpopmailError(f"{domain}: invalid domain name")
        path = self.path(domain)
        if path.exists():
            raise VpopmailError(f"Error: Domain {domain} already exists")
        if not self.config.domains.is_dir():
            self._mkdir(self.config.domains)
        self._mkdir(path)
        # What vadddomain writes: unknown users bounce through vdelivermail.
        qmail_default = path / ".qmail-default"
        qmail_default.write_text(f"| {self.config.home}/bin/vdelivermail '' bounce-no-mailbox\n")
        os.chmod(qmail_default, 0o600)
        self._own(qmail_default)
        self._write_vpasswd(domain, [])
        self.add_user("postmaster", domain, password=postmaster_password, hashed=postmaster_hash,
                      gecos="Postmaster")

    def delete_domain(self, domain):
        domain = domain.lower()
        path = self.path(domain)
        if not (path / "vpasswd").is_file():
            raise VpopmailError(f"Error: Domain {domain} does not exist")
        shutil.rmtree(path)

    def add_user(self, user, domain, password=None, hashed=None, gecos=None, quota_bytes=None):
        user, domain = user.lower(), domain.lower()
        if not USER_RE.match(user):
            raise VpopmailError(f"{user}: illegal user name")
        if not (self.path(domain) / "vpasswd").is_file():
            raise VpopmailError(f"Error: Domain {domain} does not exist")
        if hashed is None:
            if password is None:
                raise VpopmailError("no password given")
            hashed = hash_password(password)
        elif not (hashed.startswith("$") or DES_RE.match(hashed)):
            raise VpopmailError(f"{hashed!r} is not a crypt(3) hash")
        with self._locked(domain):
            accounts = self.accounts(domain)
            if any(a.name == user for a in accounts):
                raise VpopmailError(f"Error: User {user}@{domain} already exists")
            home = self.path(domain) / user
            account = Account(user, hashed, gecos=(gecos if gecos is not None else user).replace(":", " "),
                              dir=str(home), quota=format_quota(quota_bytes))
            self._mkdir(home)
            self.make_maildir(home / "Maildir")
            self._write_vpasswd(domain, accounts + [account])
        return account

    def delete_user(self, user, domain):
        user, domain = user.lower(), domain.lower()
        if not (self.path(domain) / "vpasswd").is_file():
            raise VpopmailError(f"Error: Domain {domain} does not exist")
        with self._locked(domain):
            accounts = self.accounts(domain)
            account = next((a for a in accounts if a.name == user), None)
            if account is None:
                raise VpopmailError(f"Error: User {user}@{domain} does not exist")
            self._write_vpasswd(domain, [a for a in accounts if a is not account])
            shutil.rmtree(account.dir, ignore_errors=True)

    # ---- the maps of the lab's Postfix and Courier --------------------------------------
    def sync_maps(self):
        """Rewrite the Postfix domain and recipient maps and Courier's userdb from every
        vpasswd, then run the commands that compile them (postmap, makeuserdb)."""
        config = self.config
        domains, recipients, userdb = [], [], []
        for domain in self.names():
            domains.append(f"{domain}\tOK\n")
            for account in self.accounts(domain):
                address = f"{account.name}@{domain}"
                recipients.append(f"{address}\tOK\n")
                fields = {"uid": config.uid, "gid": config.gid, "home": account.dir,
                          "mail": f"{account.dir}/Maildir", "systempw": account.hash}
                if parse_quota(account.quota) != (None, None):
                    fields["quota"] = account.quota
                userdb.append(address + "\t" + "|".join(f"{k}={v}" for k, v in fields.items()) + "\n")
        for target, lines, mode in ((config.postfix_domains, domains, 0o644),
                                    (config.postfix_recipients, recipients, 0o644),
                                    (config.courier_userdb, userdb, 0o600)):
            if target:
                write_atomically(Path(target), "".join(lines), mode)
        for command in config.rebuild_commands:
            subprocess.run(command, check=True)


def write_atomically(path, text, mode):
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# ---- Maildir ------------------------------------------------------------------------------

def unique_name(size, now=None, pid=None, host=None):
    """qmail's Maildir name as vpopmail writes it: <sec>.M<usec>P<pid>.<host>,S=<size>."""
    now = time.time() if now is None else now
    sec, usec = int(now), int(round((now - int(now)) * 1_000_000)) % 1_000_000
    host = (host or socket.gethostname()).replace("/", "\\057").replace(":", "\\072")
    return f"{sec}.M{usec}P{os.getpid() if pid is None else pid}.{host},S={size}"


def uidl(name):
    """qmail-pop3d's UIDL of a message: its file name up to the first ':'."""
    return name.split(":", 1)[0]


def folders(maildir):
    """The Maildir's INBOX ('') and its Maildir++ folders ('.Sent', '.Work.Projects' ...)."""
    maildir = Path(maildir)
    names = [""] + sorted(p.name for p in maildir.iterdir()
                          if p.name.startswith(".") and p.name not in (".", "..") and (p / "cur").is_dir())
    return names


def message_size(path):
    """S=<size> from a Maildir name, else the file's size."""
    match = re.search(r",S=(\d+)", path.name.split(":", 1)[0])
    if match:
        return int(match.group(1))
    return path.stat().st_size


def maildir_usage(maildir):
    """(bytes, messages) of every folder's new/ and cur/, as Maildir++ counts them."""
    total = count = 0
    maildir = Path(maildir)
    for folder in folders(maildir):
        for sub in ("new", "cur"):
            directory = maildir / folder / sub if folder else maildir / sub
            for entry in directory.iterdir():
                if entry.name.startswith("."):
                    continue
                try:
                    total += message_size(entry)
                except FileNotFoundError:
                    continue
                count += 1
    return total, count


def read_maildirsize(maildir):
    """(quota line, bytes, messages) from maildirsize, or None when there is none."""
    try:
        text = (Path(maildir) / "maildirsize").read_text()
    except FileNotFoundError:
        return None
    lines = text.splitlines()
    if not lines:
        return None
    size = count = 0
    for line in lines[1:]:
        parts = line.split()
        if len(parts) != 2:
            continue
        size += int(parts[0])
        count += int(parts[1])
    return lines[0].strip(), size, count


def write_maildirsize(maildir, quota):
    """maildirsize recalculated from the Maildir: '<quota>' then '<bytes> <count>'."""
    size, count = maildir_usage(maildir)
    write_atomically(Path(maildir) / "maildirsize", f"{quota}\n{size} {count}\n", 0o600)
    return size, count


def add_maildirsize(maildir, size, count=1):
    """One line appended, as Maildir++ writers do after a delivery (or a removal: negative)."""
    fd = os.open(Path(maildir) / "maildirsize", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, f"{size} {count}\n".encode())
    finally:
        os.close(fd)


def quota_allows(maildir, quota, size):
    """Whether a message of `size` bytes fits the Maildir++ quota; keeps maildirsize current."""
    limit_size, limit_count = parse_quota(quota)
    if limit_size is None and limit_count is None:
        return True
    quota_line = format_quota(limit_size, limit_count)
    path = Path(maildir) / "maildirsize"
    current = read_maildirsize(maildir)
    if (current is None or current[0] != quota_line or path.stat().st_size > MAILDIRSIZE_MAX):
        used, count = write_maildirsize(maildir, quota_line)
    else:
        _, used, count = current

    def fits(used, count):
        return ((limit_size is None or used + size <= limit_size)
                and (limit_count is None or count + 1 <= limit_count))

    if not fits(used, count) and time.time() - path.stat().st_mtime > MAILDIRSIZE_STALE:
        used, count = write_maildirsize(maildir, quota_line)
    return fits(used, count)
