#!/usr/bin/env bash
# Makes the local base image `local/debian:bookworm` (Debian bookworm, minbase) with
# debootstrap from Debian's own packages, for machines that cannot pull from image
# registries. The root file system is cached as a tarball under ~/.cache/tsweep/images/,
# so later runs (and fresh podman stores) only import it.
#
#   bash deploy/local/base-image.sh            # idempotent: does nothing when the image exists
#   TSWEEP_BASE_REFRESH=1 bash deploy/local/base-image.sh   # debootstrap again
#
# Needs root, debootstrap and podman (scripts/setup.sh installs them).
set -euo pipefail

TSWEEP_CACHE="${TSWEEP_CACHE:-$HOME/.cache/tsweep}"
SUITE="${TSWEEP_BASE_SUITE:-bookworm}"
MIRROR="${TSWEEP_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
IMAGE="${TSWEEP_BASE_IMAGE:-local/debian:$SUITE}"
# The layout version: bump it when what goes into the tarball changes (the cache is keyed by it).
LAYOUT=2
TARBALL="$TSWEEP_CACHE/images/debian-$SUITE-minbase-v$LAYOUT.tar.gz"
LOCAL="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/local/podman-env.sh
source "$LOCAL/podman-env.sh"

if [ "${TSWEEP_BASE_REFRESH:-0}" != 1 ] && podman image exists "$IMAGE" \
    && [ "$(podman image inspect "$IMAGE" --format '{{index .Labels "io.tsweep.base-layout"}}')" = "$LAYOUT" ]; then
  echo "base: $IMAGE exists"
  exit 0
fi

if [ "${TSWEEP_BASE_REFRESH:-0}" = 1 ] || [ ! -s "$TARBALL" ]; then
  command -v debootstrap >/dev/null || { echo "base: debootstrap is missing (run scripts/setup.sh)" >&2; exit 2; }
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  echo "base: debootstrap --variant=minbase $SUITE from $MIRROR (about 2 minutes)"
  started=$SECONDS
  if ! debootstrap --variant=minbase "$SUITE" "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log" >&2
    echo "base: debootstrap failed (log above)" >&2
    exit 1
  fi
  # Updates and security fixes come from the same archive as the packages; nothing of the
  # build machine (resolv.conf, hostname, package caches) stays in the image.
  cat >"$work/rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SOURCES
  # As Debian's own container images (debian:bookworm-slim): apt keeps no caches in image
  # layers, and dpkg installs no documentation, man pages or translations.
  cat >"$work/rootfs/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  cat >"$work/rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
DPKG
  find "$work/rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$work"/rootfs/usr/share/man/* "$work"/rootfs/usr/share/info/* "$work"/rootfs/usr/share/locale/* \
         "$work"/rootfs/var/cache/apt/*.bin "$work"/rootfs/var/cache/apt/archives/*.deb \
         "$work"/rootfs/var/lib/apt/lists/* "$work/rootfs/etc/resolv.conf" "$work/rootfs/etc/hostname"
  mkdir -p "$(dirname "$TARBALL")"
  tar --numeric-owner -C "$work/rootfs" -czf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
  echo "base: $TARBALL ($(du -h "$TARBALL" | cut -f1)) in $((SECONDS - started)) s"
fi

# A tarball import carries no image config: give it the PATH and shell that Debian's
# published images have, so that containers started from it find their programs.
podman import --quiet \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["bash"]' \
  --change "LABEL io.tsweep.base-layout=$LAYOUT" \
  "$TARBALL" "$IMAGE" >/dev/null
echo "base: imported $IMAGE from $TARBALL"
