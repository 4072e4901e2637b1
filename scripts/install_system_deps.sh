#!/usr/bin/env bash
# System packages the project needs beyond PyPI. Idempotent: installs only what is missing.
# - bubblewrap (`bwrap`): the sandbox every agent load and episode runs in (evaluator/sandbox/).
#   Without it the evaluator refuses code-bearing agents and warns (README, Confinement).
# - chromium: the browser the Space's browser tests drive through Playwright (tests/space/); never
#   a browser downloaded by `playwright install`. Without it those tests skip, saying why.
set -euo pipefail

missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then
    echo "install_system_deps: bubblewrap ($(bwrap --version 2>/dev/null || echo bwrap)) and chromium are installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_system_deps: NOTE: missing ${missing[*]} and this is not root, so nothing is installed." >&2
    echo "  Install with your package manager (Debian/Ubuntu: sudo apt-get install ${missing[*]};" >&2
    echo "  Fedora: sudo dnf install ${missing[*]}). Until then: a weaker sandbox / browser tests skipped." >&2
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; }; then
        echo "install_system_deps: NOTE: apt-get could not install ${missing[*]}." >&2
        exit 0
    fi
elif command -v dnf >/dev/null 2>&1; then
    dnf install -y -q "${missing[@]}"
elif command -v apk >/dev/null 2>&1; then
    apk add --quiet "${missing[@]}"
else
    echo "install_system_deps: NOTE: no known package manager; install ${missing[*]} yourself." >&2
    exit 0
fi
echo "install_system_deps: installed ${missing[*]}"
