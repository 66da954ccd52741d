"""Podman helpers: the bench image, throwaway containers on the lab network, cgroup CPU."""

import json
import subprocess
import time
import uuid
from pathlib import Path

BASE_IMAGE = "localhost/ispmail-lab-base:bookworm"
# The lab base image with every package the bench containers run (built once, reused;
# `podman rmi` it after a Debian point release to pick up new packages).
BENCH_IMAGE = "localhost/ispmail-bench:bookworm"
PACKAGES = ["postfix", "amavisd-new", "spamassassin", "clamav-daemon", "clamav-milter", "rspamd", "redis-server",
            "unbound", "procps", "python3"]


def podman(*args, check=True, stdin=None):
    result = subprocess.run(["podman", *args], check=False, capture_output=True, text=True, input=stdin)
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])}...: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip()


def sh(container, command, check=True, stdin=None):
    return podman("exec", "-i", container, "sh", "-c", command, check=check, stdin=stdin)


def pipe(source, source_command, target, target_command):
    """Run source_command in one container and feed its output to target_command in another."""
    producer = subprocess.Popen(["podman", "exec", source, "sh", "-c", source_command], stdout=subprocess.PIPE)
    consumer = subprocess.run(["podman", "exec", "-i", target, "sh", "-c", target_command], stdin=producer.stdout,
                              capture_output=True, text=True)
    producer.stdout.close()
    if producer.wait() != 0 or consumer.returncode != 0:
        raise RuntimeError(f"copy {source} -> {target} failed: {consumer.stderr.strip()}")


def subprocess_run(command):
    return subprocess.run(command, check=False, capture_output=True, text=True)


def image_exists(image):
    return subprocess.run(["podman", "image", "exists", image], check=False).returncode == 0


def ensure_image(lab_name, rebuild=False, log=print):
    """The bench image: the lab base image plus PACKAGES (daemons not started, not enabled)."""
    if image_exists(BENCH_IMAGE) and not rebuild:
        return BENCH_IMAGE
    log(f"building {BENCH_IMAGE} (apt-get install {' '.join(PACKAGES)})")
    name = start(lab_name, "build", image=BASE_IMAGE)
    try:
        sh(name, "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && "
                 "echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections && "
                 "export DEBIAN_FRONTEND=noninteractive && apt-get -qq update && "
                 f"apt-get -qq install -y --no-install-recommends {' '.join(PACKAGES)} >/dev/null && "
                 "apt-get clean && rm -rf /var/lib/apt/lists/* /var/lib/clamav/*")
        podman("commit", "--quiet", "--change", f"LABEL ispmail.lab={lab_name}", name, BENCH_IMAGE)
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
    return BENCH_IMAGE


def start(lab_name, role, image=BENCH_IMAGE, volumes=()):
    """A throwaway container on the lab network, labelled so `make lab-destroy` removes leftovers."""
    name = f"{lab_name}-bench-{role}-{uuid.uuid4().hex[:6]}"
    podman("run", "--detach", *[f"--volume={volume}" for volume in volumes], "--name", name, "--hostname", f"bench-{role}.example.net", "--network",
           f"{lab_name}-net", "--no-hosts", "--label", f"ispmail.lab={lab_name}", "--label", "ispmail.bench=1",
           "--ulimit=nofile=4096:4096", "--ulimit=nproc=4096:4096", "--entrypoint", "sleep", image, "infinity")
    return name


def remove(*names):
    for name in names:
        if name:
            podman("rm", "-f", "-t", "0", name, check=False)


def address(container, lab_name):
    return podman("inspect", "--format", f'{{{{(index .NetworkSettings.Networks "{lab_name}-net").IPAddress}}}}',
                  container)


class CpuMeter:
    """CPU seconds each container used, from its cgroup (cgroup v2 cpu.stat, else v1 cpuacct)."""

    def __init__(self, containers):
        self.files = {}
        for container in containers:
            path = podman("inspect", "--format", "{{.State.CgroupPath}}", container).strip()
            for candidate in (f"/sys/fs/cgroup/unified{path}/cpu.stat", f"/sys/fs/cgroup{path}/cpu.stat",
                              f"/sys/fs/cgroup/cpuacct{path}/cpuacct.usage"):
                if Path(candidate).exists():
                    self.files[container] = Path(candidate)
                    break
            else:
                raise RuntimeError(f"no CPU accounting found for {container} ({path})")

    def read(self):
        usage = {}
        for container, path in self.files.items():
            text = path.read_text()
            if path.name == "cpu.stat":
                usage[container] = int(text.split("usage_usec ", 1)[1].split()[0]) / 1e6
            else:
                usage[container] = int(text) / 1e9
        return usage

    @staticmethod
    def delta(before, after):
        return {name: after[name] - before[name] for name in before}


# CPU seconds per systemd unit inside a container (its cgroup), summed over its processes:
# utime, stime and the children's cutime, cstime, so daemons that exited still count
# (Postfix's master holds those of the smtpd and cleanup processes it reaped).
UNIT_CPU = r"""
import json, os
tick, units = os.sysconf("SC_CLK_TCK"), {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat, cgroup = open(f"/proc/{pid}/stat").read(), open(f"/proc/{pid}/cgroup").read()
    except OSError:
        continue
    lines = [line.split(":", 2) for line in cgroup.splitlines()]
    unit = next((path.rsplit("/", 1)[-1] for _, name, path in lines if name in ("name=systemd", "")), "?")
    units[unit] = units.get(unit, 0) + sum(int(f) for f in stat[stat.rfind(")") + 2:].split()[11:15]) / tick
print(json.dumps(units))
"""


def unit_cpu(container):
    """{unit: CPU seconds so far} in a container with systemd."""
    return json.loads(podman("exec", "-i", container, "python3", "-", stdin=UNIT_CPU))


def unit_cpu_since(before):
    """{container: {unit: CPU seconds since before}}, units that used some."""
    since = {}
    for container, units in before.items():
        now = unit_cpu(container)
        since[container] = {unit: round(value - units.get(unit, 0.0), 3) for unit, value in now.items()
                            if value - units.get(unit, 0.0) >= 0.005}
    return since


def wait(predicate, timeout, interval=0.5, what="the benchmark"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return time.time()
        time.sleep(interval)
    raise TimeoutError(f"{what} did not finish within {timeout} s")
