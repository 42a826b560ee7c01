#!/usr/bin/env bash
# Offline validation of deploy/kubernetes/ (the kustomize base), for CI machines without a cluster,
# kubectl or kustomize:
#   1. the kustomization: every file it names exists, and every file in the directory is named
#      (or is an ingredient listed below), so a resource cannot be left out by mistake;
#   2. every resource, the ConfigMap the configMapGenerator makes (built here as kustomize would,
#      less the hash suffix) and the example Secret, against the Kubernetes OpenAPI schemas of
#      each pinned version with kubernetes-validate --strict (unknown fields are errors). The
#      schemas ship inside the pinned PyPI package: nothing is downloaded at validation time.
#      The validator must first refuse a deliberately broken copy, or it checks nothing;
#   3. what a schema cannot see: probes on the admin port (/readyz, /healthz), a grace period
#      longer than preStop + 2 × shutdown_timeout_ms, non-root and a read-only root, the spool
#      on the volume claim, the config and secret mounts where hookbridge.toml expects them;
#   4. where kubectl is installed (optional; KUBECTL= skips it), the real `kubectl kustomize`
#      output, validated too;
#   5. `hookbridge check-config` on hookbridge.toml, with the example Secret's values as files.
# kubernetes-validate is installed from PyPI into a virtualenv under the state directory if absent.
# HOOKBRIDGE_BIN=path uses a built binary for step 5 instead of `cargo run`.
# Usage: scripts/check-kubernetes.sh [DIR]   (scripts/test.sh runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-deploy/kubernetes}
KUBERNETES_VALIDATE_VERSION=1.37.0
# The oldest Kubernetes the base supports, and the newest the pinned package knows.
KUBERNETES_VERSIONS="1.30.0 1.37.0"
# Files in $dir that kustomization.yaml does not list under resources/, and why.
INGREDIENTS="kustomization.yaml hookbridge.toml secret.example.yaml"
source scripts/pytool.sh
venv=$(pytool_venv kubernetes-validate "$KUBERNETES_VALIDATE_VERSION" kubernetes-validate)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

validate() {
  local v
  for v in $KUBERNETES_VERSIONS; do
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "$@" || return 1
  done
}

# 1 and 3, and the generated ConfigMap (written to $work/configmap.yaml) for 2.
"$venv/bin/python" - "$dir" "$work" "$INGREDIENTS" <<'PY'
import os, re, sys
import yaml

d, work, ingredients = sys.argv[1], sys.argv[2], sys.argv[3].split()
problems = []
k = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))
listed = list(k.get("resources") or [])
generated = [f for g in k.get("configMapGenerator") or [] for f in g.get("files") or []]
for f in listed + generated:
    if not os.path.isfile(os.path.join(d, f)):
        problems.append(f"kustomization.yaml names {f}, which does not exist")
for f in sorted(os.listdir(d)):
    if f not in listed and f not in ingredients:
        problems.append(f"{f} is in {d} but kustomization.yaml does not list it")
for f in ingredients:
    if not os.path.exists(os.path.join(d, f)):
        problems.append(f"ingredient {f} is missing")

# The ConfigMap as kustomize generates it (data key = file name), for the schema check.
cms = []
for g in k.get("configMapGenerator") or []:
    data = {os.path.basename(f): open(os.path.join(d, f)).read() for f in g.get("files") or []}
    cms.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": g["name"]}, "data": data})
with open(os.path.join(work, "configmap.yaml"), "w") as out:
    yaml.safe_dump_all(cms, out)

docs = {}
for f in listed:
    for doc in yaml.safe_load_all(open(os.path.join(d, f))):
        if doc:
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
sts = [v for (kind, _), v in docs.items() if kind == "StatefulSet"]
if len(sts) != 1:
    problems.append(f"expected one StatefulSet, found {len(sts)}")
    sts = [{"spec": {"template": {"spec": {"containers": [{}]}}}}]
spec = sts[0]["spec"]
pod = spec["template"]["spec"]
c = pod["containers"][0]
ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}

toml_name = generated[0] if generated else "hookbridge.toml"
toml = open(os.path.join(d, toml_name)).read()
def setting(name, default=None):
    m = re.search(rf'^{name}\s*=\s*"?([^"\n]+?)"?\s*(#.*)?$', toml, re.M)
    return m.group(1) if m else default
admin = setting("admin_listen")
if admin is None or ports.get("admin") != int(admin.rsplit(":", 1)[1]):
    problems.append(f"container port `admin` ({ports.get('admin')}) is not server.admin_listen ({admin})")
listen = setting("listen", "127.0.0.1:8080")
if ports.get("webhooks") != int(listen.rsplit(":", 1)[1]):
    problems.append(f"container port `webhooks` ({ports.get('webhooks')}) is not server.listen ({listen})")

def probe(name, path):
    p = (c.get(name) or {}).get("httpGet") or {}
    if p.get("path") != path or p.get("port") != "admin":
        problems.append(f"{name}: expected httpGet {path} on port admin, got {p or None}")
probe("readinessProbe", "/readyz")
probe("livenessProbe", "/healthz")
probe("startupProbe", "/healthz")

shutdown_s = int(setting("shutdown_timeout_ms", "10000")) / 1000
pre = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
sleep_s = int(pre[1]) if pre[:1] == ["sleep"] and len(pre) == 2 else None
if sleep_s is None:
    problems.append(f"preStop: expected [\"sleep\", SECONDS], got {pre}")
    sleep_s = 0
grace = pod.get("terminationGracePeriodSeconds", 30)
# Open requests and the background parts are each bounded by shutdown_timeout_ms (src/app.rs).
if grace <= sleep_s + 2 * shutdown_s:
    problems.append(f"terminationGracePeriodSeconds {grace} is not above preStop {sleep_s} s + 2 × shutdown_timeout_ms ({shutdown_s:g} s)")

sc, psc = c.get("securityContext") or {}, pod.get("securityContext") or {}
for key, want in [("readOnlyRootFilesystem", True), ("allowPrivilegeEscalation", False)]:
    if sc.get(key) is not want:
        problems.append(f"container securityContext.{key} must be {want}")
if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
    problems.append("container securityContext.capabilities.drop must be [ALL]")
if not (psc.get("runAsNonRoot") and psc.get("runAsUser", 0) != 0):
    problems.append("pod securityContext must run as a non-root user")
if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
    problems.append("pod securityContext.seccompProfile must be RuntimeDefault")
if "cpu" not in ((c.get("resources") or {}).get("requests") or {}) or "memory" not in ((c.get("resources") or {}).get("limits") or {}):
    problems.append("container resources need a cpu request and a memory limit")

mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts") or []}
claims = [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates") or []]
spool = setting("path")  # the only `path =` in the file is [spool] path
if not any(n in claims and spool and spool.startswith(mounts[n].rstrip("/") + "/") for n in mounts):
    problems.append(f"[spool] path {spool} is not on a volumeClaimTemplate's mount")
volumes = {v["name"]: v for v in pod.get("volumes") or []}
args = c.get("args") or []
conf = args[args.index("--config") + 1] if "--config" in args else ""
if not any("configMap" in volumes.get(n, {}) and conf == mounts[n].rstrip("/") + "/" + os.path.basename(toml_name) for n in mounts):
    problems.append(f"--config {conf} is not {toml_name} in the ConfigMap's mount")
secret_dirs = {mounts[n].rstrip("/") for n in mounts if "secret" in volumes.get(n, {})}
for path in re.findall(r"\$\{file:([^}]+)\}", toml):
    if os.path.dirname(path) not in secret_dirs:
        problems.append(f"{toml_name}: ${{file:{path}}} is not in a mounted Secret")

for p in problems:
    print(f"{d}: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
echo "ok -- kustomization lists every file; probes, shutdown timing, security context and mounts"

# A validator that accepts everything would pass every file: it must refuse a misspelt field
# (strict mode) and a wrong type.
sed 's/terminationGracePeriodSeconds:/terminationGracePeriodSecond:/' "$dir/statefulset.yaml" >"$work/broken-field.yaml"
sed 's/maxUnavailable: 1/maxUnavailable: [1]/' "$dir/poddisruptionbudget.yaml" >"$work/broken-type.yaml"
for broken in "$work/broken-field.yaml" "$work/broken-type.yaml"; do
  if cmp -s "$broken" "$dir/statefulset.yaml" || cmp -s "$broken" "$dir/poddisruptionbudget.yaml"; then
    echo "check-kubernetes: the self-test's edit did not apply to $(basename "$broken")" >&2
    exit 1
  fi
  if validate "$broken" >/dev/null 2>&1; then
    echo "check-kubernetes: kubernetes-validate accepted $(basename "$broken"); it checks nothing" >&2
    exit 1
  fi
done

files=()
for f in $(ls "$dir"); do
  [ "$f" = kustomization.yaml ] && continue
  case "$f" in *.yaml) files+=("$dir/$f") ;; esac
done
validate "${files[@]}" "$work/configmap.yaml"
echo "ok -- ${#files[@]} files and the generated ConfigMap, kubernetes-validate $KUBERNETES_VALIDATE_VERSION --strict, Kubernetes $KUBERNETES_VERSIONS"

kubectl=${KUBECTL-kubectl}   # KUBECTL= (empty) skips the render
if [ -n "$kubectl" ] && command -v "$kubectl" >/dev/null 2>&1; then
  "$kubectl" kustomize "$dir" >"$work/rendered.yaml"
  validate "$work/rendered.yaml"
  echo "ok -- kubectl kustomize output ($("$kubectl" version --client 2>/dev/null | grep -i kustomize || echo kustomize))"
else
  echo "note -- no kubectl: the kustomization was checked by listing, not rendered"
fi

# hookbridge.toml as the pod sees it: the Secret's keys as files (here under $work).
"$venv/bin/python" - "$dir/secret.example.yaml" "$work/secrets" <<'PY'
import os, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
os.makedirs(sys.argv[2])
for key, value in (doc.get("stringData") or {}).items():
    with open(os.path.join(sys.argv[2], key), "w") as f:
        f.write(value + "\n")
PY
echo "check-config -- $dir/hookbridge.toml, with secret.example.yaml's values as the secret files"
sed "s|/run/secrets/hookbridge/|$work/secrets/|g" "$dir/hookbridge.toml" >"$work/hookbridge.toml"
if [ -n "${HOOKBRIDGE_BIN:-}" ]; then
  "$HOOKBRIDGE_BIN" check-config --config "$work/hookbridge.toml"
else
  cargo run --locked --quiet --bin hookbridge -- check-config --config "$work/hookbridge.toml"
fi
