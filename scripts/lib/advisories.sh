# shellcheck shell=bash
# The RustSec advisory database for `cargo deny check advisories`, offline.
#
# cargo-deny clones https://github.com/RustSec/advisory-db into <db-path>/<dir named after the
# URL> and, with --disable-fetch, opens that clone as it is. Machines that cannot reach GitHub
# get a snapshot of the database as plain files instead; this turns it into such a clone.
#
# Where the snapshot is: $OPENBATCH_ADVISORY_DB, else ../shared/advisory-db beside the
# checkout, else /work/shared/advisory-db. Its SNAPSHOT file ("<commit> <date>") is printed, so
# a stale database shows in every run. Sets ADVISORIES_NOTE for the summary.

# The directory cargo-deny 0.20 derives from the default URL (`url_to_db_path`: the URL's last
# segment and the XxHash64 of the lower-cased URL, seed 0xca80de71).
ADVISORY_DB_DIR=advisory-db-3157b0e258782691

advisories_find() {
    local d
    for d in "${OPENBATCH_ADVISORY_DB:-}" "$ROOT/../shared/advisory-db" /work/shared/advisory-db; do
        if [ -n "$d" ] && [ -d "$d/crates" ]; then
            (cd "$d" && pwd)
            return 0
        fi
    done
    echo "no RustSec advisory database found: set OPENBATCH_ADVISORY_DB to a copy of" \
        "https://github.com/RustSec/advisory-db (looked in ../shared/advisory-db and" \
        "/work/shared/advisory-db)" >&2
    return 1
}

# advisories_prepare DIR: makes DIR/dbs/$ADVISORY_DB_DIR a one-commit git repository holding
# the snapshot and DIR/deny.toml a copy of deny.toml whose db-path is DIR/dbs, and prints
# what the snapshot is. deny.toml itself keeps cargo-deny's default (a fresh clone from
# GitHub) for whoever can reach it.
advisories_prepare() {
    local dir=$1 dbs=$1/dbs src snapshot date age epoch
    src=$(advisories_find) || return 1
    snapshot=$(cat "$src/SNAPSHOT" 2>/dev/null || echo "unknown unknown")
    date=${snapshot#* }
    age=""
    if epoch=$(date -d "$date" +%s 2>/dev/null); then
        age=" ($(( ($(date +%s) - epoch) / 86400 )) days old)"
    fi
    ADVISORIES_NOTE="advisories checked against the RustSec snapshot of $date$age, commit ${snapshot%% *} ($src)"
    echo "$ADVISORIES_NOTE"
    rm -rf "$dir"
    mkdir -p "$dbs/$ADVISORY_DB_DIR"
    awk -v db="$dbs" '{ print } /^\[advisories\]$/ { print "db-path = \"" db "\"" }' \
        "$ROOT/deny.toml" >"$dir/deny.toml"
    grep -q '^db-path = ' "$dir/deny.toml" || {
        echo "deny.toml has no [advisories] section" >&2
        return 1
    }
    cp -R "$src/." "$dbs/$ADVISORY_DB_DIR/"
    (
        cd "$dbs/$ADVISORY_DB_DIR" &&
            git init -q &&
            git add -A &&
            GIT_AUTHOR_DATE="$date 00:00:00 +0000" GIT_COMMITTER_DATE="$date 00:00:00 +0000" \
                git -c user.name=openbatch -c user.email=ci@openbatch.invalid \
                commit -qm "RustSec snapshot $snapshot"
    ) || {
        echo "could not turn $src into a git repository for cargo-deny" >&2
        return 1
    }
}
