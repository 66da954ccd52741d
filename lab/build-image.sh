#!/usr/bin/env bash
# Build the lab's systemd base image once with debootstrap (no registry is needed).
# The Debian mirror is taken from the host's own apt sources, so none is written here.
# Usage: build-image.sh IMAGE_NAME
set -euo pipefail

image=${1:?usage: build-image.sh IMAGE_NAME}
suite=${LAB_SUITE:-bookworm}

if podman image exists "$image"; then
    echo "lab image $image present, not rebuilt"
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
