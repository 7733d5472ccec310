#!/usr/bin/env bash
# Installs the system packages the project needs, when they are missing and we may.
# Debian/Ubuntu with apt-get; as root (CI, dev containers) or with passwordless sudo.
set -euo pipefail

need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
# the local broker's TLS and SASL_SSL listeners: a CA and certificates of its own
command -v openssl >/dev/null 2>&1 || need+=(openssl)
{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || need+=(postgresql)
command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ] || need+=(golang-go)
if [ "${OUTREACH_BROWSER_TESTS:-1}" = "1" ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
fi
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)

[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
  echo "missing system packages: ${need[*]} — install them with apt-get (needs root)" >&2
  exit 1
fi
echo "installing system packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
