"""Classification quality over the labelled documents of ../shared/corpus, through the fleet.

Runs one FAST classify batch over every file with a `label` in manifest.json, with one rule per
label written the way a user would write it (fixed here, never tuned to individual files), and
prints accuracy, macro-F1, a confusion table, and calibration: accuracy within confidence bins.
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
label = {}
for f in files:
    p = corpus / f["path"]
    label[client.beta.directories.files.upload(d.id, upload_file=(p.name, p.read_bytes())).id] = f
job = client.beta.batch.create(directory_id=d.id, job_config={"rules": RULES, "mode": "FAST"})
while client.beta.batch.get_status(job.id).job.status not in ("completed", "failed", "cancelled"):
    time.sleep(0.5)

rows = []
for item in client.beta.batch.job_items.list(job.id, limit=500):
    truth = label[item.item_id]["label"]
    r = client.classify.get(item.job_id)
    got = r.result.type if r.result else "(failed)"
    conf = r.result.confidence if r.result else 0.0
    rows.append((label[item.item_id]["path"], truth, got, conf))

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
        print(f"  {path}: {t} -> {g} ({c:.2f})")
