#!/bin/sh
# Build an s390x sysroot holding zgetdump (Debian's s390-tools) and the libraries it needs, to
# run it under qemu-user on x86-64 (spec sa-dump-formats.md section 9). Needs root for apt-get
# install of qemu-user-static; the s390x packages are fetched with a private apt state (Debian
# sid, s390x only) and unpacked with dpkg -x: nothing is installed for s390x on the host.
#   tests/oracle/zgetdump-sysroot.sh [DIR]        (default: tests/oracle/sysroot)
# tests/test_zgetdump_oracle.py uses DIR (or $SADUMP_ZGETDUMP_SYSROOT) when it exists and skips
# otherwise. CI does not build it: the oracle is a developer's check.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=${1:-$here/sysroot}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
command -v qemu-s390x-static >/dev/null || apt-get install -y qemu-user-static
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$root"
echo "deb [arch=s390x signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main" > "$work/sources.list"
apt="-o Dir::Etc::SourceList=$work/sources.list -o Dir::Etc::SourceParts=/dev/null
     -o Dir::State::Lists=$work/lists -o Dir::Cache=$work/cache
     -o APT::Architecture=s390x -o APT::Architectures::=s390x"
# shellcheck disable=SC2086
apt-get $apt update
# zgetdump's NEEDED (readelf -d) and theirs; gconv-modules-extra has EBCDIC-US (VMDUMP)
cd "$work"
# shellcheck disable=SC2086
apt-get $apt download s390-tools zlib1g libfuse3-4 libglib2.0-0t64 libssl3t64 libc6 \
    libc-gconv-modules-extra libpcre2-8-0 libffi8 libzstd1 libgcc-s1 libatomic1 libmount1 \
    libselinux1 libblkid1
for d in ./*.deb; do dpkg -x "$d" "$root"; done
ln -sfn usr/lib "$root/lib"
qemu-s390x-static -L "$root" "$root/usr/sbin/zgetdump" -v
