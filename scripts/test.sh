#!/usr/bin/env bash
# Runs ALL of OpenBatch's tests on a fresh machine:
#   formatting, clippy, build, Rust tests (unit + integration through real
#   HTTP), and the end-to-end tests with the official `openai` Python SDK.
#
# PostgreSQL: uses $DATABASE_URL if set; else the server on 127.0.0.1:5432;
# else a throwaway cluster (initdb from /usr/lib/postgresql/*/bin) that is
# removed at exit. Tests create their own databases from that URL.
#
# Usage: ./scripts/test.sh [--quick]
#   --quick  the loop while developing: formatting, doc links, clippy with the .sqlx/ check,
#            and `cargo test` (unit + integration, on both storage backends) against the local
#            PostgreSQL and a moto S3 server. No cargo deny, no deploy-file validation, no
#            Python/browser e2e (the venv is made once, for moto).
set -euo pipefail

QUICK=false
case "${1:-}" in
"") ;;
--quick) QUICK=true ;;
*)
    echo "usage: $0 [--quick]" >&2
    exit 2
    ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# shellcheck source=scripts/lib/pg.sh
. "$ROOT/scripts/lib/pg.sh"
# shellcheck source=scripts/lib/sqlx.sh
. "$ROOT/scripts/lib/sqlx.sh"
# shellcheck source=scripts/lib/advisories.sh
. "$ROOT/scripts/lib/advisories.sh"

SECONDS=0
section() {
    printf '\n==== %s ==== (t+%ss)\n' "$*" "$SECONDS"
}
die() {
    printf '\nFAILED: %s\n' "$*" >&2
    exit 1
}

# --- PostgreSQL -------------------------------------------------------------
section "PostgreSQL"
PG_TMP=$(mktemp -d "${TMPDIR:-/tmp}/openbatch-test-pg.XXXXXX")
LOG_TMP=$(mktemp -d "${TMPDIR:-/tmp}/openbatch-test-logs.XXXXXX")
cleanup() {
    local rc=$?
    sqlx_cleanup || true
    if [ -n "${S3_PID:-}" ]; then
        kill "$S3_PID" 2>/dev/null || true
    fi
    rm -rf -- "$LOG_TMP"
    if [ -n "${PG_THROWAWAY_DIR:-}" ]; then
        echo "stopping throwaway PostgreSQL" >&2
        pg_stop_throwaway "$PG_THROWAWAY_DIR" || true
    fi
    # Unused temp dir (throwaway not needed): remove it.
    if [ -d "$PG_TMP" ] && [ -z "$(ls -A "$PG_TMP" 2>/dev/null)" ]; then
        rmdir "$PG_TMP" 2>/dev/null || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A throwaway cluster only holds test data: no need to fsync it.
export PG_THROWAWAY_CONF=${PG_THROWAWAY_CONF:-"fsync = off
synchronous_commit = off
full_page_writes = off"}
pg_provision "$PG_TMP" || die "could not provision PostgreSQL"
psql_bin=$(pg_tool psql 2>/dev/null) || psql_bin=""
if [ -n "$psql_bin" ]; then
    "$psql_bin" "$DATABASE_URL" -XAtqc 'select version()' ||
        die "cannot connect to DATABASE_URL=$DATABASE_URL"
fi
# Show the URL without any password.
echo "DATABASE_URL=$(printf '%s' "$DATABASE_URL" | sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#')"

# --- Rust -------------------------------------------------------------------
command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup)"
# Builds never need a live database: the query macros read .sqlx/ (but see clippy below).
export SQLX_OFFLINE=${SQLX_OFFLINE:-true}

section "cargo fmt --check"
cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: rustup component add rustfmt"
cargo fmt --all -- --check || die "code is not formatted: run 'cargo fmt --all'"

section "doc links (README.md, docs/, bench/)"
python3 scripts/check-doc-links.py || die "a relative link in the Markdown points nowhere"

section "structure (import layers of src/ and the console, size limits)"
python3 scripts/check-layers.py || die "an import runs up a layer or closes a circle (docs/architecture.md)"
python3 scripts/check-sizes.py || die "a file, function or handler in src/ is over its size limit (docs/architecture.md)"

section "cargo clippy --all-targets -- -D warnings, and .sqlx/ up to date"
cargo clippy --version >/dev/null 2>&1 || die "clippy missing: rustup component add clippy"
# The one compile that also checks .sqlx/: the query macros run online against a scratch
# database migrated from migrations/ and write their offline data to a temp dir, which must
# equal the committed one (scripts/lib/sqlx.sh).
mkdir "$LOG_TMP/sqlx"
sqlx_online "$LOG_TMP/sqlx" cargo clippy --all-targets -- -D warnings ||
    die "clippy found problems (or a statement does not match the migrated schema)"
sqlx_diff "$LOG_TMP/sqlx" >"$LOG_TMP/sqlx.diff" || {
    head -n 60 "$LOG_TMP/sqlx.diff"
    die ".sqlx/ does not match the statements in src/: run scripts/sqlx-prepare.sh and commit .sqlx/"
}
echo ".sqlx/ up to date"

# Not in the quick loop: the supply-chain check (it may install cargo-deny) and the bins the
# e2e tests need (cargo test builds its own).
if ! $QUICK; then
    # --- Supply chain (deny.toml) -------------------------------------------------
    section "cargo deny (licenses, bans, sources, advisories)"
    CARGO_DENY_VERSION=0.20.2
    if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
        # From crates.io, built once per machine and kept in ~/.cargo/bin (several minutes).
        echo "installing cargo-deny $CARGO_DENY_VERSION (cargo install --locked)"
        cargo install cargo-deny --locked --version "$CARGO_DENY_VERSION" ||
            die "cargo install cargo-deny failed"
    fi
    cargo deny --log-level error check licenses bans sources ||
        die "cargo deny: a dependency's licence, source or a banned crate (see deny.toml)"
    # Advisories are checked offline against a snapshot of the RustSec database (GitHub, where it
    # lives, is out of reach here): scripts/lib/advisories.sh finds it, prints its date and makes
    # it the clone cargo-deny opens. `--offline` is what keeps cargo-deny from fetching the
    # database; it also keeps `cargo metadata` offline, so every crate of every target (crates.io
    # is reachable) is fetched first.
    advisories_prepare "$LOG_TMP/advisories" || die "no RustSec advisory database to check against"
    cargo fetch --locked --quiet || die "cargo fetch failed"
    cargo deny --offline --config "$LOG_TMP/advisories/deny.toml" check advisories ||
        die "cargo deny: a dependency has a security advisory (fix it, or justify an ignore in deny.toml)"

    section "cargo build --bins"
    cargo build --bins || die "build failed"
    OPENBATCH_BIN=$ROOT/target/debug/openbatch
    [ -x "$OPENBATCH_BIN" ] || die "build did not produce $OPENBATCH_BIN"
    export OPENBATCH_BIN
fi

# --- Python venv: the e2e tests' SDK, and moto's S3 server for the Rust tests -----------
section "Python venv (.venv from tests/e2e/requirements.txt)"
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || die "python3 not found"
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
    echo "creating .venv"
    rm -rf .venv
    "$PYTHON" -m venv .venv || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
fi
# Reinstall only when requirements.txt changed since the last successful install.
req_hash=$(sha256sum tests/e2e/requirements.txt | cut -d' ' -f1)
if [ "$(cat .venv/.requirements.sha256 2>/dev/null || true)" != "$req_hash" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -r tests/e2e/requirements.txt ||
        die "pip install -r tests/e2e/requirements.txt failed"
    echo "$req_hash" >.venv/.requirements.sha256
else
    echo "requirements unchanged; .venv up to date"
fi
[ -x .venv/bin/pytest ] || die ".venv has no pytest: add pytest to tests/e2e/requirements.txt"
[ -x .venv/bin/moto_server ] || die ".venv has no moto_server: add moto[server] to tests/e2e/requirements.txt"

# --- S3 server ----------------------------------------------------------------
# A real S3 API (moto's server mode, in memory) for the storage.backend = "s3" pass below:
# every test database keeps its objects under a prefix of its own in one bucket.
section "S3 server (moto)"
S3_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.venv/bin/moto_server -H 127.0.0.1 -p "$S3_PORT" >"$LOG_TMP/moto.log" 2>&1 &
S3_PID=$!
export OPENBATCH_TEST_MOTO=$ROOT/.venv/bin/moto_server
export OPENBATCH_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT OPENBATCH_TEST_S3_BUCKET=openbatch-test
export AWS_ENDPOINT_URL=$OPENBATCH_TEST_S3_ENDPOINT AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
s3_request() { # METHOD PATH: succeeds on a 2xx answer
    python3 -c 'import sys, urllib.request as u; u.urlopen(u.Request(sys.argv[2], method=sys.argv[1]), timeout=5)' "$1" "$OPENBATCH_TEST_S3_ENDPOINT/$2" 2>/dev/null
}
for _ in $(seq 1 150); do
    s3_request GET "" && break
    kill -0 "$S3_PID" 2>/dev/null || die "moto_server exited: $(tail -n 5 "$LOG_TMP/moto.log")"
    sleep 0.2
done
s3_request PUT "$OPENBATCH_TEST_S3_BUCKET" || die "could not create the test bucket on moto_server"
echo "S3 endpoint $OPENBATCH_TEST_S3_ENDPOINT, bucket $OPENBATCH_TEST_S3_BUCKET"

section "cargo test"
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
# CARGO_TEST_ARGS: extra arguments, e.g. "-- --test-threads=1" (word-split on purpose)
# shellcheck disable=SC2086
cargo test ${CARGO_TEST_ARGS:-} 2>&1 | tee "$LOG_TMP/cargo-test.log" || die "Rust tests failed"

# Again with file content in the bucket (tests/api/helpers/storage.rs): the modules whose tests
# write or read content (uploads, the engine's input and output, results, retries, deletion and
# expiry, outages). The rest (keys, limits, idempotency, webhooks, …) never touch content, and
# a second run of them would only add minutes; `storage::` brings its own S3 servers and ran
# above. S3_TEST_ARGS: extra arguments for this pass's test binary, e.g. "--test-threads=1"
# (word-split on purpose).
S3_MODULES="files:: uploads:: cli:: engine:: chunks:: crash:: poison:: wedge:: memory::
    live_results:: fair_slots:: retry:: retry_limits:: maintenance:: abuse_clients::"
section "cargo test --test api, storage.backend = s3"
# shellcheck disable=SC2086
OPENBATCH_TEST_STORAGE=s3 cargo test --test api -- $S3_MODULES ${S3_TEST_ARGS:-} 2>&1 |
    tee -a "$LOG_TMP/cargo-test.log" || die "Rust tests failed on the s3 backend"

if $QUICK; then
    section "quick checks passed (${SECONDS}s); the full suite: ./scripts/test.sh"
    exit 0
fi

# --- Deployment files (no Docker engine here: validated offline) -------------
section "deploy files (scripts/validate-deploy.sh)"
bash scripts/validate-deploy.sh || die "deployment files are invalid"

# --- Python end-to-end tests (official openai SDK) ---------------------------
section "Python e2e tests (tests/e2e)"
[ -d tests/e2e ] || die "tests/e2e does not exist"
[ -f tests/e2e/requirements.txt ] || die "tests/e2e/requirements.txt does not exist"

# The console tests drive Debian's Chromium through its ChromeDriver (Selenium).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    echo "installing chromium and chromium-driver (console browser tests)"
    command -v apt-get >/dev/null || die "chromium and chromedriver are missing and apt-get is not available"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq chromium chromium-driver >/dev/null; } ||
        die "apt-get install chromium chromium-driver failed"
fi
# Screenshots of every console page, kept with the test output.
export OPENBATCH_E2E_SCREENSHOTS=${OPENBATCH_E2E_SCREENSHOTS:-$ROOT/target/console-screenshots}
rm -rf "$OPENBATCH_E2E_SCREENSHOTS"

set +e
# PYTEST_ARGS: extra arguments, e.g. "-x -k idempotency" (word-split on purpose)
# shellcheck disable=SC2086
.venv/bin/pytest tests/e2e -q --junitxml="$LOG_TMP/e2e.xml" ${PYTEST_ARGS:-}
rc=$?
set -e
case $rc in
0) ;;
5) die "pytest collected no tests in tests/e2e (exit code 5)" ;;
*) die "Python e2e tests failed (pytest exit code $rc)" ;;
esac

section "all tests passed (${SECONDS}s)"
echo "$ADVISORIES_NOTE"
echo "console screenshots: $OPENBATCH_E2E_SCREENSHOTS"
# One closing line counting every test run: cargo's "test result:" lines
# plus pytest's junit report.
python3 - "$LOG_TMP/cargo-test.log" "$LOG_TMP/e2e.xml" <<'PY' || echo "(could not count the tests)"
import re, sys, xml.etree.ElementTree as ET
passed = failed = skipped = 0
for line in open(sys.argv[1], errors="replace"):
    m = re.search(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", line)
    if m:
        passed += int(m[1]); failed += int(m[2]); skipped += int(m[3])
rust = passed
root = ET.parse(sys.argv[2]).getroot()
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
for s in suites:
    t, f, e, k = (int(s.get(a, 0)) for a in ("tests", "failures", "errors", "skipped"))
    passed += t - f - e - k; failed += f + e; skipped += k
print(f"(rust: {rust} passed; python e2e: {passed - rust} passed)")
print(f"{passed} passed, {failed} failed, {skipped} skipped")
PY
