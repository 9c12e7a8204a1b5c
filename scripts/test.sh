#!/usr/bin/env bash
# Runs gantry's whole test suite on a Debian machine, installing what it needs first:
# the peers the tests check gantry against (umoci, skopeo, runc, crun, oci-image-tool, the
# distribution registry, podman for `podman load`), the tools they call (jq, zstd, pigz,
# busybox-static, file, git, openssl, htpasswd; newuidmap, setpriv and useradd for the
# rootless tests; getfattr/setfattr and getcap/setcap for extended attributes and file
# capabilities) and nothing else.
# Missing tools fail the run; no test is ever skipped. Run as root (runc and umoci unpack
# need it), or with sudo available for the package install.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(umoci skopeo runc crun oci-image-tool docker-registry podman jq zstd pigz gzip tar
          busybox-static file git openssl apache2-utils uidmap util-linux passwd attr libcap2-bin)
TOOLS=(umoci skopeo runc crun oci-image-tool docker-registry podman jq zstd pigz gzip tar busybox
       file git openssl htpasswd newuidmap newgidmap setpriv useradd getfattr setfattr getcap
       setcap)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
for t in "${TOOLS[@]}"; do
  PATH="$PATH:/usr/sbin:/sbin" command -v "$t" >/dev/null || { echo "test.sh: $t is still missing" >&2; exit 1; }
done
if [ "$(id -u)" != 0 ]; then
  echo "test.sh: the interop tests run runc and umoci unpack, which need root" >&2
  exit 1
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
