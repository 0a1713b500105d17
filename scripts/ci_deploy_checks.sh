#!/usr/bin/env bash
# Tools the deploy checks (tests/test_deploy.py) need from the system.
#   scripts/ci_deploy_checks.sh --install-only   install them (quietly; a failure is not fatal: the
#                                                tests that need a missing tool skip and say why)
#   scripts/ci_deploy_checks.sh                  install, then run the deploy tests
# hadolint and the Kubernetes schemas come from PyPI through the project's dev extra, not from here.
set -uo pipefail
cd "$(dirname "$0")/.."

install_tools() {
  if command -v systemd-analyze >/dev/null 2>&1; then
    echo "systemd-analyze: $(systemd-analyze --version | head -n1)"
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "no apt-get: systemd-analyze cannot be installed; the systemd checks will be skipped"
    return 0
  fi
  # systemd brings systemd-analyze; it is only run offline here, never as PID 1.
  if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd) \
      >/dev/null 2>&1; then
    echo "systemd-analyze: $(systemd-analyze --version | head -n1)"
  else
    echo "systemd could not be installed: the systemd checks will be skipped"
  fi
}

install_tools
if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi
python="${PYTHON:-.venv/bin/python}"
exec "$python" -m pytest -q -p no:cacheprovider tests/test_deploy.py tests/test_config_example.py
