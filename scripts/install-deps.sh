#!/usr/bin/env bash
# Installs the system packages the build and the tests need (Debian/Ubuntu), only when missing.
# Idempotent and non-interactive: CI runs it on a fresh machine with no stdin.
#   --build   only what building the engine (without its tests) and the venv needs: what
#             `make install` asks for on a production host, which gets no test tools.
set -euo pipefail

build_only=false
[ "${1:-}" = "--build" ] && build_only=true

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
# The engine reads its config file (TOML) with toml++, used header-only.
[ -f /usr/include/toml++/toml.h ] || need+=(libtomlplusplus-dev)
# The interpreter the Makefile makes the venvs from ($PYTHON): venv and the headers the ring's cffi
# module compiles against.
py="${PYTHON:-python3}"
"$py" -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
"$py" -c 'import sysconfig, os, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' \
  || need+=(python3-dev)

if ! $build_only; then
  # Debian's libgtest-dev ships the headers, the built libraries and GTestConfig.cmake.
  compgen -G '/usr/lib/*/cmake/GTest/GTestConfig.cmake' >/dev/null || need+=(libgtest-dev)
  # The unit tests check systemd/ with systemd-analyze (verify, security) and systemd-sysusers.
  command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
  # The dashboard's browser test drives Debian's Chromium through Playwright (no browser download).
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  fc-list 2>/dev/null | grep -qi dejavu || need+=(fonts-dejavu-core)
  # The TLS proxy test runs Debian's nginx (as the test user, on a free port) in front of two workers.
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
  # The TLS tests and bench/tls make throwaway certificates with the openssl CLI.
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  # tests/test_metrics_exposition.py lints /metrics with promtool, which Debian ships in prometheus.
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
fi

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "install-deps: need root (or sudo) to install: ${need[*]}" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
# We want promtool, not a Prometheus server: on a host run by systemd the package starts one.
if [[ " ${need[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
# Likewise nginx: the proxy test starts its own, as the test user; a system one on port 80 is not ours to run.
if [[ " ${need[*]} " == *" nginx-light "* ]] && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true
fi
