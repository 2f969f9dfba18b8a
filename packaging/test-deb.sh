#!/usr/bin/env bash
# Builds the Debian package with cargo-deb, installs it with dpkg -i, checks
# what landed where, verifies the unit with systemd-analyze (when present),
# checks the packaged binary has no simulators (the `sim` feature is off for
# the package), upgrades a child with it against the simulators of a
# development build, and removes the package again.
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
# DT_RELR relocations in the packaged binary (build.rs; the package depends
# on glibc 2.36, which applies them).
OTABRIDGE_RELR=1 "$cargo_deb" --quiet
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

# The package is built without the `sim` feature: no simulator, no broker.
out=$(/usr/bin/otabridge demo 2>&1) && fail "the installed binary runs the demo: $out"
echo "$out" | grep -q "without the simulators" || fail "installed demo: $out"
echo "installed binary: no simulators ($(stat -c %s /usr/bin/otabridge) bytes)"

# The installed binary does the whole job, as the service user would: the
# simulated platform and a simulated CoAP child come from a development
# build (default features), as docs/integrating.md describes.
cargo build --quiet --bin otabridge
sim="$CARGO_TARGET_DIR/debug/otabridge"
bench=$(mktemp -d)
chmod 755 "$bench"
head -c 150000 /dev/urandom > "$bench/fw-2.0.0.bin"
"$sim" sim coap-child --listen 127.0.0.1:0 --version 1.0.0 --next-version 2.0.0 >"$bench/child.log" 2>&1 &
child_pid=$!
addr=
for _ in $(seq 200); do
  addr=$(sed -n 's/^coap child listening on \([^ ]*\) .*/\1/p' "$bench/child.log")
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$bench/child.log"; fail "sim coap-child did not start"; }
"$sim" sim iotda --listen 127.0.0.1:0 --out "$bench/sim" --timeout-secs 300 \
    --upgrade "node-1=$bench/fw-2.0.0.bin@2.0.0" >"$bench/iotda.log" 2>&1 &
iotda_pid=$!
for _ in $(seq 200); do grep -qs '^\[download\]' "$bench/sim/platform.toml" && break; sleep 0.1; done
{ cat "$bench/sim/platform.toml"; printf '\n[state]\ndir = "%s/state"\n\n[coap]\nlisten = "127.0.0.1:0"\n\n[[child]]\ndevice_id = "node-1"\ntransport = "coap"\naddress = "%s"\n' "$bench" "$addr"; } > "$bench/gateway.toml"
chmod -R a+rX "$bench"
install -d -o otabridge -m 700 "$bench/state"
runuser -u otabridge -- /usr/bin/otabridge run --config "$bench/gateway.toml" >"$bench/gateway.log" 2>&1 &
gateway_pid=$!
iotda_rc=0
wait "$iotda_pid" || iotda_rc=$?
kill "$gateway_pid" "$child_pid" 2>/dev/null || true
wait "$gateway_pid" "$child_pid" 2>/dev/null || true
if [ "$iotda_rc" != 0 ] || ! grep -q "1 of 1 upgrade(s) succeeded" "$bench/iotda.log"; then
  cat "$bench/iotda.log" "$bench/gateway.log"
  fail "the installed gateway did not upgrade the simulated child"
fi
rm -rf "$bench"
echo "installed gateway: 1 of 1 upgrade(s) succeeded against sim iotda and sim coap-child"

dpkg --purge otabridge >/dev/null || fail "dpkg --purge"
trap - EXIT
[ ! -e /usr/bin/otabridge ] || fail "/usr/bin/otabridge left after purge"
[ ! -e /var/lib/otabridge ] || fail "/var/lib/otabridge left after purge"
echo "test-deb: ok"
