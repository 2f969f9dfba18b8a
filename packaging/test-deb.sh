#!/usr/bin/env bash
# Builds the Debian package with cargo-deb, installs it with dpkg -i, checks
# what landed where, verifies the unit with systemd-analyze (when present),
# runs the installed binary's demo, and removes the package again.
# Run as root on a Debian/Ubuntu machine: `bash packaging/test-deb.sh`.
# .ci/run runs it. CARGO_DEB may name a cargo-deb binary; otherwise it is
# installed (once) under $OTABRIDGE_TOOLS.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/otabridge-target}"
tools="${OTABRIDGE_TOOLS:-/var/tmp/otabridge-tools}"
cargo_deb="${CARGO_DEB:-$tools/bin/cargo-deb}"
if [ ! -x "$cargo_deb" ]; then
  echo "installing cargo-deb into $tools (once)"
  cargo install --quiet --locked --root "$tools" cargo-deb
fi

fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }

deb_dir="$CARGO_TARGET_DIR/debian"
rm -f "$deb_dir"/otabridge_*.deb "$deb_dir"/otabridge-dbgsym_*.ddeb
"$cargo_deb" --quiet
deb=$(ls "$deb_dir"/otabridge_*.deb)
echo "built $(basename "$deb") ($(du -h "$deb" | cut -f1))"

# dpkg -i does not fetch dependencies: the package's own (libc6, adduser).
if ! command -v adduser >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq adduser >/dev/null
fi

# A leftover installation from an earlier run would hide a missing file.
if dpkg -s otabridge >/dev/null 2>&1; then dpkg --purge otabridge >/dev/null; fi
dpkg -i "$deb" >/dev/null || fail "dpkg -i $deb"
trap 'dpkg --purge otabridge >/dev/null 2>&1 || true' EXIT

dpkg -s otabridge | grep -q '^Status: install ok installed' || fail "not installed"
for f in /usr/bin/otabridge /lib/systemd/system/otabridge.service \
         /usr/share/man/man1/otabridge.1.gz /usr/share/man/man1/otabridge-run.1.gz \
         /usr/share/doc/otabridge/config.md /usr/share/doc/otabridge/examples/iotda.toml \
         /usr/share/doc/otabridge/copyright; do
  [ -e "$f" ] || fail "$f is missing"
done
getent passwd otabridge >/dev/null || fail "no otabridge user"
[ "$(stat -c '%U %a' /var/lib/otabridge)" = "otabridge 700" ] || fail "/var/lib/otabridge: $(stat -c '%U %a' /var/lib/otabridge)"
[ "$(stat -c '%G %a' /etc/otabridge)" = "otabridge 750" ] || fail "/etc/otabridge: $(stat -c '%G %a' /etc/otabridge)"
file_size=$(stat -c %s /usr/bin/otabridge)
[ "$file_size" -lt 40000000 ] || fail "the packaged binary is not stripped ($file_size bytes)"

/usr/bin/otabridge --version | grep -q "^otabridge $(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)$" \
  || fail "otabridge --version: $(/usr/bin/otabridge --version)"
zcat /usr/share/man/man1/otabridge.1.gz | grep -q '^\.SH "EXIT STATUS"' || fail "man page content"

if command -v systemd-analyze >/dev/null; then
  # Documentation=man:otabridge(1) is checked only when man is installed.
  man_opt=--man=no
  command -v man >/dev/null && man_opt=--man=yes
  systemd-analyze verify "$man_opt" /lib/systemd/system/otabridge.service \
    || fail "systemd-analyze verify"
  echo "systemd-analyze verify ($man_opt): ok"
else
  echo "systemd-analyze not available: unit not verified"
fi

# The installed binary does the whole job, as the service user would.
out=$(cd / && runuser -u otabridge -- /usr/bin/otabridge demo --children 2 --smp-children 1 \
        --coap-children 2 --image-size 65536 2>&1) || { echo "$out"; fail "installed demo"; }
echo "$out" | grep -q "5 of 5 children ended as expected" || { echo "$out"; fail "demo table"; }
echo "installed demo: 5 of 5 children ended as expected"

dpkg --purge otabridge >/dev/null || fail "dpkg --purge"
trap - EXIT
[ ! -e /usr/bin/otabridge ] || fail "/usr/bin/otabridge left after purge"
[ ! -e /var/lib/otabridge ] || fail "/var/lib/otabridge left after purge"
echo "test-deb: ok"
