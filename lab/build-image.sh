#!/usr/bin/env bash
# Build the lab's images once, no registry needed: a systemd base with debootstrap, then on
# it the packages the roles install (lab/image_packages.py reads them from the roles), so a
# new lab converges without 13 hosts running dpkg at once on the same cores.
# The Debian mirror is taken from the host's own apt sources, so none is written here.
# Usage: build-image.sh BASE_IMAGE [PACKAGES_IMAGE]; the second reads LAB_IMAGE_SPEC
# (image_packages.py's JSON) and LAB_ULIMITS ("nofile=N:N nproc=N:N"). Prints "built" when
# it made an image.
set -euo pipefail

image=${1:?usage: build-image.sh BASE_IMAGE [PACKAGES_IMAGE]}
packages_image=${2:-}
suite=${LAB_SUITE:-bookworm}

# The packages' own units are turned off in the image: each role enables what its host
# runs, as on a production host where only that role's packages are installed.
build_packages_image() {
    podman image exists "$packages_image" && { echo "lab image $packages_image present, not rebuilt"; return; }
    local builder="${packages_image//[^a-zA-Z0-9]/-}-build"
    podman rm -f "$builder" >/dev/null 2>&1 || true
    echo "installing the roles' packages into $packages_image"
    # Within the host's hard limits, as the lab's containers (LAB_ULIMITS: inventory lab_ulimits).
    local limits=()
    for limit in ${LAB_ULIMITS:-}; do limits+=(--ulimit "$limit"); done
    podman run --name "$builder" "${limits[@]}" -e LAB_IMAGE_SPEC="$LAB_IMAGE_SPEC" "$image" python3 -c '
import glob, json, os, subprocess
spec = json.loads(os.environ["LAB_IMAGE_SPEC"])
def run(*args, **kw):
    subprocess.run(args, check=True, **kw)
def links():
    return set(subprocess.run(["find", "/etc/systemd/system", "-type", "l"], check=True,
                              capture_output=True, text=True).stdout.split())
def rc_links():
    return set(glob.glob("/etc/rc[2-5].d/S*"))
run("debconf-set-selections", input="\n".join(spec["debconf"]) + "\n", text=True)
# Nothing starts while the image is made (no systemd runs in it).
with open("/usr/sbin/policy-rc.d", "w") as f:
    f.write("#!/bin/sh\nexit 101\n")
os.chmod("/usr/sbin/policy-rc.d", 0o755)
before, rc_before = links(), rc_links()
env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
run("apt-get", "-qq", "update", env=env)
run("apt-get", "install", "-y", "-qq", *spec["packages"], env=env, stdout=subprocess.DEVNULL)
def owner_of(path):
    found = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
    return found.stdout.split(":")[0]
def owner(unit):
    return owner_of("/lib/systemd/system/" + unit)
units = sorted({os.path.basename(path) for path in links() - before if ".wants/" in path or ".requires/" in path})
units = [unit for unit in units if owner(unit) not in spec["every_host"]]
run("systemctl", "disable", "--quiet", "--no-reload", *units)
# Init scripts without a unit of their own (clamav-milter): systemd makes units of those
# started in runlevels 2-5, so a host whose roles never use one still ran it at boot.
scripts = sorted({os.path.basename(path)[3:] for path in rc_links() - rc_before
                  if not os.path.exists("/lib/systemd/system/" + os.path.basename(path)[3:] + ".service")})
scripts = [name for name in scripts if owner_of("/etc/init.d/" + name) not in spec["every_host"]]
for name in scripts:
    run("update-rc.d", name, "disable")
print("units left to the roles:", " ".join(units + scripts))
os.remove("/usr/sbin/policy-rc.d")
# No host shares a key: ssl-cert made one for the image.
for path in ("/etc/ssl/private/ssl-cert-snakeoil.key", "/etc/ssl/certs/ssl-cert-snakeoil.pem"):
    if os.path.exists(path):
        os.remove(path)
run("apt-get", "clean")
'
    podman commit --quiet \
        --change 'CMD ["/sbin/init"]' \
        --change 'STOPSIGNAL SIGRTMIN+3' \
        "$builder" "$packages_image" >/dev/null
    podman rm "$builder" >/dev/null
    echo "lab image $packages_image built"
    # Images of an older package list (one a running lab still uses stays).
    for old in $(podman images --format '{{.Repository}}:{{.Tag}}' "${packages_image%:*}"); do
        [ "$old" = "$packages_image" ] || podman rmi "$old" >/dev/null 2>&1 || true
    done
}

if podman image exists "$image"; then
    echo "lab image $image present, not rebuilt"
    [ -z "$packages_image" ] || build_packages_image
    exit 0
fi

mirror=${LAB_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | grep -v -- '-security' | grep -oE 'https?://[^ ]+/debian/?' | head -n 1 || true)
fi
[ -n "$mirror" ] || { echo "no Debian mirror found in the host's apt sources; set LAB_MIRROR" >&2; exit 1; }

root=$(mktemp -d /var/tmp/ispmail-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT

packages=systemd,systemd-sysv,dbus,python3,python3-apt,iproute2,procps,ca-certificates,netcat-openbsd,less
echo "debootstrap $suite from $mirror into $root"
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >/dev/null

# Units that cannot work in a container would only leave failed units behind; apt's
# own timers would take the package lock in the middle of a deploy.
for unit in systemd-remount-fs.service getty@tty1.service console-getty.service \
            systemd-udevd.service systemd-udev-trigger.service systemd-firstboot.service \
            sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
            apt-daily.timer apt-daily-upgrade.timer; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
rm -f "$root/etc/machine-id" && touch "$root/etc/machine-id"
echo 'APT::Install-Recommends "false";' > "$root/etc/apt/apt.conf.d/90lab-no-recommends"
# A mirror's passing hiccup must not fail a deploy (or CI).
echo 'Acquire::Retries "5";' > "$root/etc/apt/apt.conf.d/90lab-retries"
# Same Debian sources as the host (with updates and security), package lists filled in.
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/debian.sources"
    : > "$root/etc/apt/sources.list"
fi
chroot "$root" apt-get -qq update
rm -rf "$root"/var/cache/apt/archives/*.deb

tar -C "$root" -c . | podman import \
    --change 'CMD ["/sbin/init"]' \
    --change 'STOPSIGNAL SIGRTMIN+3' \
    --change 'ENV container=podman' \
    - "$image" >/dev/null
echo "lab image $image built"
[ -z "$packages_image" ] || build_packages_image
