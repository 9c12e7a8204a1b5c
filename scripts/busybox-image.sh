#!/usr/bin/env bash
# Builds a runnable busybox image with gantry, from Debian's busybox-static package, into the
# OCI layout ./busybox-oci (tag "latest"). With --run, also runs it with runc (via umoci).
#
#   scripts/busybox-image.sh --run
set -euo pipefail
cd "$(dirname "$0")/.."

need=(busybox-static)
[ "${1:-}" = "--run" ] && need+=(umoci runc jq)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo build --release --locked -p gantry
gantry=target/release/gantry
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One layer: the static busybox, its applet links, and an empty /tmp.
links=()
for applet in sh ls cat echo env uname; do links+=(--symlink "/bin/$applet=busybox"); done
"$gantry" layer --file /bin/busybox=/bin/busybox "${links[@]}" \
  --empty-dir /tmp --dir-mode 1777 --info "$work/busybox.json" >/dev/null
"$gantry" image --layer "$work/busybox.json" \
  --env PATH=/bin --entrypoint /bin/sh --cmd -c \
  --cmd 'echo "hello from a gantry image on $(uname -m)"' \
  -o busybox-oci -t latest --metadata "$work/image.json" >/dev/null
echo "built busybox-oci:latest $(jq -r .manifest.digest "$work/image.json" 2>/dev/null || true)"

if [ "${1:-}" = "--run" ]; then
  umoci unpack --image busybox-oci:latest "$work/bundle" >/dev/null
  jq '.process.terminal = false' "$work/bundle/config.json" > "$work/config.json"
  mv "$work/config.json" "$work/bundle/config.json"
  runc run -b "$work/bundle" "gantry-busybox-$$"
fi
