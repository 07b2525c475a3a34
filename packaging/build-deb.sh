#!/usr/bin/env bash
# Builds herd-agent_<version>_<arch>.deb with plain dpkg-deb (no cargo-deb,
# no debhelper) from the release binary, systemd/herd-agent.service,
# packaging/agent.toml (as the conffile /etc/herd/agent.toml) and the
# maintainer scripts in packaging/deb/.
#
#   packaging/build-deb.sh [--binary PATH] [--out-dir DIR]
#
# Without --binary it runs `cargo build --profile agent -p herd-agent` first.
# The version is the one the binary reports. Output: DIR (default target/deb).
set -euo pipefail

die() { echo "build-deb.sh: $*" >&2; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
binary=
out_dir=${CARGO_TARGET_DIR:-$repo/target}/deb
while [ $# -gt 0 ]; do
    case $1 in
        --binary) binary=${2:?--binary needs a path}; shift 2 ;;
        --out-dir) out_dir=${2:?--out-dir needs a directory}; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

command -v dpkg-deb >/dev/null || die "dpkg-deb is missing (apt-get install dpkg)"
if [ -z "$binary" ]; then
    command -v cargo >/dev/null || die "cargo is missing: install Rust or pass --binary PATH"
    # The `agent` profile: built for size (see Cargo.toml).
    (cd "$repo" && cargo build --profile agent -p herd-agent) || die "cargo build --profile agent -p herd-agent failed"
    binary=${CARGO_TARGET_DIR:-$repo/target}/agent/herd-agent
fi
[ -x "$binary" ] || die "$binary is not an executable file"
version=$("$binary" --version | awk '{ print $2 }')
[ -n "$version" ] || die "cannot read the version from '$binary --version'"
arch=$(dpkg --print-architecture)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg=$work/herd-agent
umask 022
install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" "$pkg/etc/herd" "$pkg/usr/share/doc/herd-agent"
install -m 0755 "$binary" "$pkg/usr/bin/herd-agent"
# Debian ships binaries stripped; the symbols stay in target/ for debugging.
if command -v strip >/dev/null; then strip --strip-unneeded "$pkg/usr/bin/herd-agent"; fi
install -m 0644 "$repo/systemd/herd-agent.service" "$pkg/lib/systemd/system/herd-agent.service"
install -m 0644 "$repo/packaging/agent.toml" "$pkg/etc/herd/agent.toml"
install -m 0644 "$repo/packaging/deb/copyright" "$pkg/usr/share/doc/herd-agent/copyright"
install -m 0644 "$repo/packaging/deb/conffiles" "$pkg/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "$repo/packaging/deb/$script" "$pkg/DEBIAN/$script"
done

# Library dependencies: dpkg-shlibdeps when dpkg-dev is there, else the
# newest glibc symbol version the binary uses.
depends=
if command -v dpkg-shlibdeps >/dev/null; then
    mkdir -p "$work/src/debian"
    printf 'Source: herd\n\nPackage: herd-agent\nArchitecture: any\n' >"$work/src/debian/control"
    depends=$(cd "$work/src" && dpkg-shlibdeps -O "$pkg/usr/bin/herd-agent" 2>/dev/null | sed -n 's/^shlibs:Depends=//p') || true
fi
if [ -z "$depends" ]; then
    glibc=$(objdump -T "$pkg/usr/bin/herd-agent" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1) || true
    depends="libc6${glibc:+ (>= $glibc)}"
fi
depends="$depends, passwd"

installed_kb=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$installed_kb/" \
    -e "s/@DEPENDS@/$depends/" "$repo/packaging/deb/control.in" >"$pkg/DEBIAN/control"

mkdir -p "$out_dir"
deb=$out_dir/herd-agent_${version}_${arch}.deb
# --root-owner-group: files owned by root without fakeroot.
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null || die "dpkg-deb --build failed"
echo "$deb"
