"""Classification quality over the labelled documents of ../shared/corpus, through the fleet.

Runs one FAST classify batch over every file with a `label` in manifest.json, with one rule per
label written the way a user would write it (fixed here, never tuned to individual files), and
prints accuracy, macro-F1, accuracy per language (the manifest's `lang:` and `non-latin:` tags;
English otherwise), a confusion table, calibration (accuracy within confidence bins), and the
workers' CPU per document (parse and classify; their processes' pids in var/fleet/pids) and
their resident memory after the batch.
Reads DOCFLEET_API_URL / DOCFLEET_API_KEY (deploy/local/fleet up).

    deploy/local/classify-eval [path/to/shared]
"""
import collections
import json
import os
import pathlib
import sys
import time

from llama_cloud import LlamaCloud

RULES = json.loads((pathlib.Path(__file__).resolve().parent / "classify-rules.json").read_text())

shared = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parents[2] / "../shared").resolve()
corpus = shared / "corpus"
files = [f for f in json.loads((corpus / "manifest.json").read_text())["files"] if f.get("label")]
client = LlamaCloud(api_key=os.environ["DOCFLEET_API_KEY"], base_url=os.environ["DOCFLEET_API_URL"], timeout=300)
d = client.beta.directories.create(name=f"classify-eval-{int(time.time())}")


def worker_pids():
    pids = pathlib.Path(os.environ.get("DOCFLEET_FLEET_DIR", pathlib.Path(__file__).resolve().parents[2] / "var/fleet")) / "pids"
    return {f.read_text().strip() for f in pids.glob("worker-*.pid")}


def worker_rss_mb():
    """Resident memory of each worker process (its parser children apart), in MB."""
    sizes = []
    for pid in sorted(worker_pids()):
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
        kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        sizes.append(round(kb / 1024))
    return sizes


def worker_cpu():
    """CPU seconds the fleet's worker processes and their parser children have used so far."""

    def stat(pid):
        try:
            return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None

    workers = worker_pids()
    total = 0
    for pid in (p.name for p in pathlib.Path("/proc").iterdir() if p.name.isdigit()):
        fields = stat(pid)
        if fields and (pid in workers or fields[1] in workers):
            # utime, stime, and what its ended children used
            total += sum(int(x) for x in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def language(f):
    for tag in f.get("tags", []):
        if tag.startswith(("lang:", "non-latin:")):
            return tag.split(":", 1)[1]
    return "en"


label = {}
for f in files:
    p = corpus / f["path"]
    label[client.beta.directories.files.upload(d.id, upload_file=(p.name, p.read_bytes())).id] = f
cpu_before = worker_cpu()
job = client.beta.batch.create(directory_id=d.id, job_config={"rules": RULES, "mode": "FAST"})
while client.beta.batch.get_status(job.id).job.status not in ("completed", "failed", "cancelled"):
    time.sleep(0.5)
cpu = worker_cpu() - cpu_before

rows = []
for item in client.beta.batch.job_items.list(job.id, limit=500):
    truth = label[item.item_id]["label"]
    r = client.classify.get(item.job_id)
    got = r.result.type if r.result else "(failed)"
    conf = r.result.confidence if r.result else 0.0
    rows.append((label[item.item_id]["path"], truth, got, conf))
lang = {f["path"]: language(f) for f in files}

n = len(rows)
acc = sum(t == g for _, t, g, _ in rows) / n
labels = sorted({t for _, t, _, _ in rows} | {g for _, _, g, _ in rows})
f1s = []
for lab in sorted({t for _, t, _, _ in rows}):
    tp = sum(t == lab and g == lab for _, t, g, _ in rows)
    fp = sum(t != lab and g == lab for _, t, g, _ in rows)
    fn = sum(t == lab and g != lab for _, t, g, _ in rows)
    p = tp / (tp + fp) if tp + fp else 0.0
    rc = tp / (tp + fn) if tp + fn else 0.0
    f1s.append(2 * p * rc / (p + rc) if p + rc else 0.0)
print(f"{n} documents, accuracy {acc:.3f}, macro-F1 {sum(f1s) / len(f1s):.3f}")
print(f"workers' CPU per document (parse and classify): {1000 * cpu / n:.0f} ms")
print(f"workers' resident memory after the batch (MB, parser children apart): {worker_rss_mb()}")
print("\nper language (documents, accuracy; non-English misses answered with confidence >= 0.5):")
for code in sorted(set(lang.values()), key=lambda c: (c != "en", c)):
    mine = [(t == g, c) for p, t, g, c in rows if lang[p] == code]
    sure_misses = sum(1 for ok, c in mine if not ok and c >= 0.5)
    extra = f", {sure_misses} sure misses" if code != "en" else ""
    print(f"  {code}: {len(mine):>3}, accuracy {sum(ok for ok, _ in mine) / len(mine):.3f}{extra}")
print("\nconfusion (rows: truth, columns: predicted):")
short = [l[:6] for l in labels]
print(" " * 12 + " ".join(f"{s:>6}" for s in short))
for t in labels:
    counts = collections.Counter(g for _, tt, g, _ in rows if tt == t)
    if counts:
        print(f"{t:>12}" + " ".join(f"{counts.get(g, 0):>6}" for g in labels))
print("\ncalibration (confidence bin: answers, accuracy):")
for lo, hi in [(0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.01)]:
    b = [(t == g) for _, t, g, c in rows if lo <= c < hi]
    if b:
        print(f"  [{lo:.1f}, {min(hi, 1.0):.1f}): {len(b):>3} answers, accuracy {sum(b) / len(b):.3f}")
print("\nmisclassified:")
for path, t, g, c in rows:
    if t != g:
        print(f"  {path} ({lang[path]}): {t} -> {g} ({c:.2f})")
