"""The faults: each one is injected with podman on the host (or a command inside one
container) and repaired the same way. prepare() runs first and may say why a fault cannot
run; recovered() lists what is still wrong after the repair (empty: all back)."""

import subprocess
import time

import containers  # tests/bench/side_by_side: podman(), sh()
from delivery import queue_sizes

FAULT_TABLE = "resilience_fault"  # nftables table of the network cut, nothing else in it


def _sh(container, command, check=True, stdin=None):
    return containers.sh(container, command, check=check, stdin=stdin)


def _ok(container, command):
    return subprocess.run(["podman", "exec", container, "sh", "-c", command], capture_output=True,
                          check=False).returncode == 0


class Fault:
    name = ""
    description = ""

    def __init__(self, lab, host):
        self.lab, self.host, self.container = lab, host, lab.container(host)
        self.notes = {}  # facts for the report (queue sizes after a restart, units, ...)

    def prepare(self):
        """None when the fault can run, else why not (a sentence for the report)."""
        return None

    def inject(self):
        raise NotImplementedError

    def repair(self):
        raise NotImplementedError

    def watch(self):
        """Called about every second while the fault lasts (timings for the notes)."""

    def recovered(self):
        return []


class ServiceFault(Fault):
    """systemctl stop of some units inside one container, then start. A unit's socket is
    stopped with it where one exists, or systemd would start the daemon on the next connect."""

    def __init__(self, lab, host, name, units, description):
        super().__init__(lab, host)
        self.name, self.units, self.description = name, list(units), description

    def prepare(self):
        inactive = [u for u in self.units if not _ok(self.container, f"systemctl is-active --quiet {u}")]
        if inactive:
            return f"{', '.join(inactive)} not active on {self.host} before the fault"
        self.units += [f"{u}.socket" for u in self.units
                       if _ok(self.container, f"systemctl is-active --quiet {u}.socket")]
        self.notes["units"] = self.units
        return None

    def inject(self):
        _sh(self.container, f"systemctl stop {' '.join(self.units)}")

    def repair(self):
        _sh(self.container, f"systemctl start {' '.join(self.units)}")

    def recovered(self):
        return [f"{self.host}: {u} not active" for u in self.units
                if not _ok(self.container, f"systemctl is-active --quiet {u}")]


class ContainerFault(Fault):
    """A whole host down and up again: it must come back by itself (services enabled, port
    rules loaded). What ran before is compared with what runs after."""

    def __init__(self, lab, host, name, description, hard):
        super().__init__(lab, host)
        self.name, self.description, self.hard = name, description, hard

    def _state(self):
        # A socket-activated service counts as back when its socket listens: it starts on first use.
        units = _sh(self.container, "systemctl list-units --type=service,socket --state=active --no-legend --plain "
                                    "| awk '{print $1}'", check=False).split()
        units = [u.removesuffix(".socket") + ".service" if u.endswith(".socket") else u for u in units]
        failed = _sh(self.container, "systemctl list-units --state=failed --no-legend --plain | awk '{print $1}'",
                     check=False).split()
        tables = [line for line in _sh(self.container, "nft list tables", check=False).splitlines()
                  if FAULT_TABLE not in line]
        return set(units), set(failed), set(tables)

    def inject(self):
        self.before_units, self.before_failed, self.before_tables = self._state()
        self.notes["queue_before"] = queue_sizes(self.container)
        if self.hard:
            containers.podman("kill", self.container)  # SIGKILL to systemd: a power cut
        else:
            containers.podman("stop", "--time", "60", self.container)  # a clean shutdown

    def repair(self):
        if containers.podman("inspect", "--format", "{{.State.Running}}", self.container) != "true":
            containers.podman("start", self.container)

    def recovered(self):
        state = _sh(self.container, "systemctl is-system-running", check=False).strip()
        if state not in ("running", "degraded"):
            # Starting: name the units whose jobs hold the boot up.
            jobs = _sh(self.container, "systemctl list-jobs --no-legend", check=False).split("\n") \
                if state == "starting" else []
            units = [line.split()[1] for line in jobs if len(line.split()) > 1]
            waiting = f" (jobs: {', '.join(units[:6])})" if units else ""
            return [f"{self.host}: systemd {state or 'not answering'}{waiting}"]
        units, failed, tables = self._state()
        problems = [f"{self.host}: {u} active before, not after" for u in sorted(self.before_units - units)]
        problems += [f"{self.host}: {u} failed" for u in sorted(failed - self.before_failed)]
        problems += [f"{self.host}: nftables {t} missing" for t in sorted(self.before_tables - tables)]
        if not problems:
            self.notes["queue_after_start"] = queue_sizes(self.container)
        return problems


class MailboxServerFault(ContainerFault):
    """A mailbox server stopped: the gateways' agents move its slots to the others (decision
    0010). Back, it serves nothing until the slots are given back; recovered() does that
    (ispmail-takeover failback on the first gateway) and waits until it holds them again."""

    def __init__(self, lab, host, name, description, hard):
        super().__init__(lab, host, name, description, hard)
        self.failback_started = None

    def _held(self, host):
        lines = _sh(self.lab.container(host), f"cat {self.lab.inventory['platform_mailbox_held_slots_file']}", check=False).splitlines()
        return {int(line) for line in lines[1:] if line.strip().isdigit()}

    def inject(self):
        self.home = self._held(self.host)
        self.others = [h for h in self.lab.groups["mailbox"] if h != self.host]
        self.notes["home_slots"] = len(self.home)
        self.stopped_at = time.monotonic()
        super().inject()

    def watch(self):
        self._note_takeover()

    def _note_takeover(self):
        """Seconds from the stop until the others held every slot of this server."""
        if "takeover_seconds" not in self.notes and self.home:
            held = set().union(*(self._held(h) for h in self.others))
            if self.home <= held:
                self.notes["takeover_seconds"] = round(time.monotonic() - self.stopped_at, 1)

    def recovered(self):
        self._note_takeover()
        problems = super().recovered()
        if problems or not self.home:
            return problems
        if not self._held(self.host) >= self.home:
            gateway = self.lab.container(self.lab.groups["gateway"][0])
            now = time.monotonic()
            if self.failback_started is None:
                self.notes.setdefault("takeover_seconds", None)  # never seen complete
                self.failback_started = now
            # Again every 20 s: refused (exit 2) while the gateway does not see the server up yet.
            if now - getattr(self, "failback_tried", 0) >= 20:
                self.failback_tried = now
                self.notes.setdefault("failback_tries", []).append(
                    _sh(gateway, f"ispmail-takeover failback {self.host}", check=False).strip())
            return [f"{self.host}: its {len(self.home - self._held(self.host))} slots not given back yet"]
        if self.failback_started is not None:
            self.notes.setdefault("failback_seconds", round(time.monotonic() - self.failback_started, 1))
        return []


class NetworkCut(Fault):
    """Everything between one gateway and one mailbox server dropped, in the gateway's own
    network namespace, in a table of its own (deleting it restores exactly what was)."""

    def __init__(self, lab, gateway, mailbox):
        super().__init__(lab, gateway)
        self.mailbox = mailbox
        self.name = "net-gateway-mailbox"
        self.description = f"packets between {gateway} and {mailbox} dropped (nftables on {gateway})"

    def prepare(self):
        if not _ok(self.container, "command -v nft"):
            return f"no nft in {self.host}"
        return None

    def inject(self):
        address = self.lab.address(self.mailbox)
        rules = (f"table inet {FAULT_TABLE}\ndelete table inet {FAULT_TABLE}\n"
                 f"table inet {FAULT_TABLE} {{\n"
                 f"  chain output {{ type filter hook output priority -10; policy accept; ip daddr {address} drop; }}\n"
                 f"  chain input {{ type filter hook input priority -10; policy accept; ip saddr {address} drop; }}\n"
                 "}\n")
        _sh(self.container, "nft -f -", stdin=rules)

    def repair(self):
        if _ok(self.container, f"nft list table inet {FAULT_TABLE}"):
            _sh(self.container, f"nft delete table inet {FAULT_TABLE}")

    def recovered(self):
        return [f"{self.host}: table {FAULT_TABLE} still there"] \
            if _ok(self.container, f"nft list table inet {FAULT_TABLE}") else []


def queue_full_possible(inside, host_store):
    """Whether the queue's filesystem can be filled on its own. inside, host_store: (size,
    available, type) of the queue directory in the container and of podman's storage on the
    host. None when it can, else why not."""
    size, available, fstype = inside
    if abs(size - host_store[0]) <= host_store[0] * 0.01:
        return (f"the queues are on the container's {fstype} root, whose size is that of the host's filesystem "
                f"under podman's storage ({size / 2**30:.0f} GiB, {available / 2**30:.0f} GiB free): no size "
                "limit, so filling it would fill the host's disk, shared by every lab container and the host")
    if available > 2 * 2**30:
        return f"the queue's filesystem has {available / 2**30:.0f} GiB free: too much to fill for a test"
    return None


class QueueFull(Fault):
    """A big file on the filesystem that holds one of a gateway's queues (the lab gives the std
    instance an ext4 disk of its own, lab_disks), removed on repair; the queue's own files are
    never touched (Postfix answers 452 when space runs out, it loses nothing)."""

    FILL = "resilience-fill"

    def __init__(self, lab, gateway):
        super().__init__(lab, gateway)
        self.name = "queue-full"
        self.description = f"the filesystem of one of {gateway}'s Postfix queues filled up"
        self.fill = None

    def prepare(self):
        store = containers.podman("info", "--format", "{{.Store.GraphRoot}}")
        outside = _df(subprocess.run(["df", "-B1", "--output=size,avail,fstype", store], capture_output=True,
                                     text=True, check=False).stdout.splitlines()[-1])
        queues = _sh(self.container, "ls -d /var/spool/postfix-*", check=False).split() or ["/var/spool"]
        reasons = {}
        for queue in queues:
            inside = _df(_sh(self.container, f"df -B1 --output=size,avail,fstype {queue} | tail -n 1"))
            reasons[queue] = queue_full_possible(inside, outside)
            if reasons[queue] is None:
                # The file goes in the queue directory's top level, where Postfix looks at nothing.
                self.fill, self.inside = f"{queue}/{self.FILL}", inside
                self.notes.update(queue=queue, df_inside=inside)
                return None
        self.notes.update(df_host_store=outside)
        return f"not possible in this lab because {reasons[queues[0]]} (and so for every queue of {self.host})"

    def inject(self):
        # Leave 1 MiB: Postfix then refuses new mail (452) and keeps what it has.
        size = max(0, self.inside[1] - 2**20)
        _sh(self.container, f"fallocate -l {size} {self.fill}")

    def repair(self):
        _sh(self.container, f"rm -f {self.fill}")

    def recovered(self):
        return [f"{self.host}: {self.fill} still there"] if self.fill and _ok(self.container, f"test -e {self.fill}") \
            else []


class QueueThreshold(Fault):
    """The gateway's queues made "full" for Postfix where the filesystem cannot be filled:
    every instance's queue_minfree (the free space below which smtpd refuses with 452 4.3.1
    Insufficient system storage, the same answer as on a full disk) is set above the space
    that is free, and put back on repair. Mail already queued stays and waits."""

    def __init__(self, lab, gateway):
        super().__init__(lab, gateway)
        self.name = "queue-threshold"
        self.description = (f"{gateway}'s Postfix instances find their queue filesystem full "
                            "(queue_minfree above the free space)")
        self.saved = {}

    def prepare(self):
        dirs = _sh(self.container, "ls -d /etc/postfix /etc/postfix-* 2>/dev/null", check=False).split()
        self.dirs = [d for d in dirs if _ok(self.container, f"test -f {d}/main.cf")]
        if not self.dirs:
            return f"no Postfix instance on {self.host}"
        self.notes["instances"] = self.dirs
        return None

    def inject(self):
        for config in self.dirs:
            explicit = _sh(self.container, f"postconf -c {config} -n queue_minfree", check=False).strip()
            self.saved[config] = explicit.partition("=")[2].strip() if explicit else None
            queue = _sh(self.container, f"postconf -c {config} -h queue_directory").strip()
            free = int(_sh(self.container, f"df -B1 --output=avail {queue} | tail -n 1").strip())
            _sh(self.container, f"postconf -c {config} -e queue_minfree={queue_minfree_above(free)} "
                                f"&& {_reload_if_running(config)}")

    def repair(self):
        for config, value in self.saved.items():
            restore = f"-e queue_minfree={value}" if value is not None else "-X queue_minfree"
            _sh(self.container, f"postconf -c {config} {restore} && {_reload_if_running(config)}")
        self.saved = {}

    def recovered(self):
        return [f"{self.host}: {config} still has queue_minfree {value}" for config in getattr(self, "dirs", [])
                for value in [_sh(self.container, f"postconf -c {config} -h queue_minfree", check=False).strip()]
                if value.isdigit() and int(value) > 2**40]


def _reload_if_running(config):
    return f"{{ ! postfix -c {config} status 2>/dev/null || postfix -c {config} reload; }}"


def queue_minfree_above(free):
    """A queue_minfree that no free space of this host reaches: 1 TiB above it."""
    return free + 2**40


def _df(line):
    size, available, fstype = line.split()
    return int(size), int(available), fstype


def all_faults(lab, gateway, mailbox):
    """Every fault, in the order a full run injects them: one daemon at a time first, the
    network, then whole hosts (a host that does not come back taints what follows)."""
    spam, ldap = lab.groups["spamcheck"][0], lab.groups["ldap"]
    faults = [
        ServiceFault(lab, spam, "rspamd", ["rspamd"], f"rspamd stopped on {spam}"),
        ServiceFault(lab, gateway, "clamd", ["clamav-daemon"], f"clamd (clamav-daemon) stopped on {gateway}"),
        ServiceFault(lab, spam, "redis", ["redis-server"], f"Redis stopped on {spam}"),
        ServiceFault(lab, gateway, "memcached", ["memcached"], f"memcached stopped on {gateway}"),
        ServiceFault(lab, spam, "resolver", ["unbound"], f"the resolver (unbound) stopped on {spam}"),
    ]
    faults += [ServiceFault(lab, host, f"slapd-{host}", ["slapd"], f"LDAP provider {host}: slapd stopped")
               for host in ldap]
    faults += [
        NetworkCut(lab, gateway, mailbox),
        QueueFull(lab, gateway),
        QueueThreshold(lab, gateway),
        MailboxServerFault(lab, mailbox, "mailbox-stop",
                           f"mailbox server {mailbox} stopped (podman stop): its slots taken over, then given back",
                           hard=False),
        ContainerFault(lab, gateway, "gateway-kill", f"gateway {gateway} killed (podman kill), then started",
                       hard=True),
    ]
    return {fault.name: fault for fault in faults}


# --short: one pass in about 5 minutes, a fault of each kind (the full run's order).
# make test's pass: one fault per tier that holds mail or logins (the resolver and clamd
# have integration tests of their own: test_spamcheck, test_restart).
SHORT = ["rspamd", "slapd-ldap1", "net-gateway-mailbox", "mailbox-stop", "gateway-kill"]
