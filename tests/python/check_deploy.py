"""Checks deploy/: Dockerfiles lint clean, the compose file is coherent, every Kustomize overlay
renders and validates against Kubernetes (and KEDA) schemas, and docfleet's own invariants hold.
Run by tests/tests/deploy.rs with the repository root as argument; exits non-zero on a problem.
"""
import json
import pathlib
import subprocess
import sys
import tempfile

import jsonschema
import yaml

root = pathlib.Path(sys.argv[1]).resolve()
venv_bin = pathlib.Path(sys.executable).parent
problems = []


def problem(msg):
    problems.append(msg)
    print("PROBLEM:", msg)


# 1. Dockerfiles.
for df in sorted((root / "deploy/docker").glob("*.Dockerfile")):
    r = subprocess.run([str(venv_bin / "hadolint"), str(df)], capture_output=True, text=True)
    if r.returncode != 0:
        problem(f"hadolint {df.name}: {r.stdout}{r.stderr}")
    text = df.read_text()
    for must in ("USER 10001", "HEALTHCHECK", "AS build"):
        if must not in text:
            problem(f"{df.name} lacks {must!r}")

# 2. Compose.
compose_path = root / "deploy/compose.yaml"
compose = yaml.safe_load(compose_path.read_text())
services = compose.get("services", {})
for name, svc in services.items():
    build = svc.get("build")
    if build:
        ctx = (compose_path.parent / build["context"]).resolve()
        if not (ctx / build["dockerfile"]).is_file():
            problem(f"compose {name}: {build['dockerfile']} missing under {ctx}")
    for dep in svc.get("depends_on", {}):
        if dep not in services:
            problem(f"compose {name}: depends on unknown service {dep}")
    for vol in svc.get("volumes", []):
        src = vol.split(":")[0]
        if not src.startswith((".", "/")) and src not in (compose.get("volumes") or {}):
            problem(f"compose {name}: volume {src} not declared")
for needed in ("rabbitmq", "redis", "dispatcher", "worker"):
    if needed not in services:
        problem(f"compose: no {needed} service")
if "--appendonly" not in " ".join(services.get("redis", {}).get("command", [])):
    problem("compose: Redis without AOF")

# 3. The Grafana dashboard queries only metrics docfleet exports.
import re
dash = json.loads((root / "deploy/grafana/docfleet.json").read_text())
exported = set(re.findall(r'register\(\s*"([a-z_]+)"', (root / "shared/src/metrics.rs").read_text()))
for panel in dash["panels"]:
    for t in panel["targets"]:
        for name in re.findall(r"docfleet_([a-z_]+?)(?:_total|_bucket|_sum|_count)?\b", t["expr"]):
            if name not in exported:
                problem(f"dashboard panel {panel['title']!r} queries unknown metric docfleet_{name}")

# 4. Kustomize overlays.
keda = json.loads((root / "tests/python/keda_schema.json").read_text())
k8s = root / "deploy/k8s"
with tempfile.TemporaryDirectory() as tmp:
    variants = {p.name: p for p in sorted((k8s / "overlays").iterdir()) if p.is_dir()}
    for name, path in variants.items():
        r = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
        if r.returncode != 0:
            problem(f"kustomize {name}: {r.stderr}")
            continue
        docs = [d for d in yaml.safe_load_all(r.stdout) if d]
        rendered = pathlib.Path(tmp) / f"{name}.yaml"
        core = [d for d in docs if not d["apiVersion"].startswith("keda.sh/")]
        rendered.write_text(yaml.safe_dump_all(core))
        v = subprocess.run([str(venv_bin / "kubernetes-validate"), "--strict", "--quiet", str(rendered)],
                           capture_output=True, text=True)
        if v.returncode != 0:
            problem(f"kubernetes-validate {name}: {v.stdout}{v.stderr}")
        for d in docs:
            if d["apiVersion"].startswith("keda.sh/"):
                try:
                    jsonschema.validate(d, keda[d["kind"]])
                except (jsonschema.ValidationError, KeyError) as e:
                    problem(f"{name}: KEDA {d['kind']}: {e}")
        by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
        timing = by[("ConfigMap", "docfleet-timing")]["data"]
        deadline, drain = int(timing["ITEM_DEADLINE_SECS"]), int(timing["DRAIN_SECS"])
        grace, consumer_ms = int(timing["TERMINATION_GRACE_SECS"]), int(timing["RABBITMQ_CONSUMER_TIMEOUT_MS"])
        if not deadline < drain < grace:
            problem(f"{name}: need item deadline {deadline} < drain {drain} < grace {grace}")
        if not deadline * 1000 < consumer_ms:
            problem(f"{name}: item deadline {deadline}s must be below the consumer timeout {consumer_ms}ms")
        worker = by[("Deployment", "docfleet-worker")]
        if worker["spec"]["template"]["spec"].get("terminationGracePeriodSeconds") != grace:
            problem(f"{name}: worker grace period is not docfleet-timing's {grace}")
        # OCR and image extraction write scratch files, and libraries expect a writable /tmp:
        # every container with a read-only root needs a /tmp volume.
        for d in docs:
            if d["kind"] not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
                continue
            for c in d["spec"]["template"]["spec"]["containers"]:
                read_only = c.get("securityContext", {}).get("readOnlyRootFilesystem")
                mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
                if read_only and "/tmp" not in mounts:
                    problem(f"{name}: {d['metadata']['name']}/{c['name']} has a read-only root and no /tmp volume")
        scalers = [d for d in docs if d["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")
                   and d["spec"]["scaleTargetRef"]["name"] == "docfleet-worker"]
        if len(scalers) != 1:
            problem(f"{name}: workers must be scaled by exactly one ScaledObject or HPA, found {len(scalers)}")
        if name != "without-keda" and (not scalers or scalers[0]["kind"] != "ScaledObject"):
            problem(f"{name}: workers are not scaled by KEDA")
        for d in docs:
            if d["kind"] != "Deployment":
                continue
            for c in d["spec"]["template"]["spec"]["containers"]:
                res = c.get("resources", {})
                if not res.get("requests") or not res.get("limits"):
                    problem(f"{name}: {d['metadata']['name']}/{c['name']} lacks resource requests or limits")
                # docfleet's own pods and the services the dev overlay runs beside them.
                for probe in ("readinessProbe", "livenessProbe"):
                    if probe not in c:
                        problem(f"{name}: {d['metadata']['name']} lacks a {probe}")
            if "terminationGracePeriodSeconds" not in d["spec"]["template"]["spec"]:
                problem(f"{name}: {d['metadata']['name']} sets no termination grace period")
        # The store: a bucket with no shared volume at all, or a volume every replica mounts.
        config = by[("ConfigMap", "docfleet-config")]["data"]
        pods = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("docfleet-")]
        claims = [d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == "docfleet-store"]
        if config.get("DOCFLEET__STORE__BACKEND") == "s3":
            for field in ("BUCKET", "ENDPOINT"):
                if not config.get(f"DOCFLEET__STORE__S3__{field}"):
                    problem(f"{name}: an S3 store without DOCFLEET__STORE__S3__{field}")
            if claims:
                problem(f"{name}: an S3 store still claims the store volume")
            for d in pods:
                for v in d["spec"]["template"]["spec"].get("volumes", []):
                    if "persistentVolumeClaim" in v:
                        problem(f"{name}: {d['metadata']['name']} mounts a volume claim with an S3 store")
        else:
            if len(claims) != 1 or "ReadWriteMany" not in claims[0]["spec"].get("accessModes", []):
                if name != "local":
                    problem(f"{name}: a local-folder store needs one ReadWriteMany docfleet-store claim")
            for d in pods:
                volumes = d["spec"]["template"]["spec"].get("volumes", [])
                if not any(v.get("persistentVolumeClaim", {}).get("claimName") == "docfleet-store" for v in volumes):
                    problem(f"{name}: {d['metadata']['name']} does not mount the store")
        for pdb in ("docfleet-dispatcher", "docfleet-worker"):
            if ("PodDisruptionBudget", pdb) not in by:
                problem(f"{name}: no PodDisruptionBudget {pdb}")
        print(f"{name}: {len(docs)} objects checked")

if problems:
    sys.exit(f"{len(problems)} problem(s)")
print("deploy checks ok")
