#!/usr/bin/env bash
# Builds the herd-aggregator container image without any image registry:
# a rootfs tarball (release binary, the glibc libraries ldd names, passwd and
# group with the herd user, the sample config, the default rule pack under
# /etc/herd/rules, the state directory) is ADDed
# to a FROM scratch image (packaging/Dockerfile.aggregator).
#
#   packaging/build-image.sh [--binary PATH] [--tag NAME:TAG]
#
# Without --binary it runs `cargo build --release -p herd-aggregator` first.
# Safe to run again: the tag is simply moved to the new image.
set -euo pipefail

die() { echo "build-image.sh: $*" >&2; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tag=herd-aggregator:dev
binary=
while [ $# -gt 0 ]; do
    case $1 in
        --binary) binary=${2:?--binary needs a path}; shift 2 ;;
        --tag) tag=${2:?--tag needs NAME:TAG}; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

# Fixed ids, so a volume keeps working across image rebuilds.
herd_uid=10001
herd_gid=10001

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon (is it running, and may this user use it?)"
command -v ldd >/dev/null || die "ldd is missing (install libc-bin)"

if [ -z "$binary" ]; then
    command -v cargo >/dev/null || die "cargo is missing: install Rust or pass --binary PATH"
    (cd "$repo" && cargo build --release -p herd-aggregator) || die "cargo build --release -p herd-aggregator failed"
    binary=${CARGO_TARGET_DIR:-$repo/target}/release/herd-aggregator
fi
[ -x "$binary" ] || die "$binary is not an executable file"
"$binary" --version >/dev/null || die "$binary does not run on this machine"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
context=$work/context
umask 022
mkdir "$context"
mkdir -m 0755 "$root"
mkdir -p "$root"/{usr/bin,etc/herd,var/lib/herd-aggregator,tmp}

install -m 0755 "$binary" "$root/usr/bin/herd-aggregator"
if command -v strip >/dev/null; then strip --strip-unneeded "$root/usr/bin/herd-aggregator"; fi
install -m 0644 "$repo/packaging/aggregator.toml" "$root/etc/herd/aggregator.toml"
# The default rule pack, which the sample config's [rules] files loads.
install -d "$root/etc/herd/rules"
install -m 0644 "$repo"/packaging/rules/*.yml "$root/etc/herd/rules/"

# Shared libraries at the paths the binary asks for (the loader included);
# none for a static binary.
libs=$(ldd "$binary" 2>/dev/null | awk '/=> \// { print $3 } /^[[:space:]]*\// { print $1 }' || true)
for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done

cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
herd:x:$herd_uid:$herd_gid:Herd aggregator:/var/lib/herd-aggregator:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
cat >"$root/etc/group" <<EOF
root:x:0:
herd:x:$herd_gid:
nogroup:x:65534:
EOF
# glibc resolves names through NSS (files and dns are built into glibc >= 2.34).
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"

# Owners go into the tarball itself, so no root is needed here: everything
# root-owned, then the state directory and /tmp appended with their own.
tar --numeric-owner --owner=0 --group=0 -C "$root" \
    --exclude=./var/lib/herd-aggregator --exclude=./tmp -cf "$context/rootfs.tar" .
chmod 0750 "$root/var/lib/herd-aggregator"
chmod 1777 "$root/tmp"
tar --numeric-owner --owner="$herd_uid" --group="$herd_gid" --no-recursion -C "$root" \
    -rf "$context/rootfs.tar" ./var/lib/herd-aggregator
tar --numeric-owner --owner=0 --group=0 --no-recursion -C "$root" -rf "$context/rootfs.tar" ./tmp

cp "$repo/packaging/Dockerfile.aggregator" "$context/Dockerfile"
# The legacy builder needs nothing but the daemon; BuildKit needs buildx.
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi
previous=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
if ! docker build -t "$tag" "$context" >"$work/build.log" 2>&1; then
    cat "$work/build.log" >&2
    die "docker build failed (output above)"
fi
# The image must at least start: a missing library shows up here, not in production.
docker run --rm "$tag" --version >/dev/null || die "$tag was built but its binary does not start (missing library?)"
# Drop the image this tag used to name, unless a container still uses it.
current=$(docker image inspect -f '{{.Id}}' "$tag")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
    docker image rm "$previous" >/dev/null 2>&1 || true
fi
echo "built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{ printf "%.1f MB", $1 / 1e6 }'))"
