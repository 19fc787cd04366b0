"""Parse quality over ../shared/corpus through the real fleet.

Uploads every corpus file, runs one parse batch, and compares each file's text with its
reference in corpus/truth/ (only references whose manifest `usable` flag is true) using the
project's measure, ../shared/tools/text_f1.py (word-level F1, NFKC, CJK/Thai per character).
Prints per-file F1, the mean by format, which files fall short, and every file that failed
with its message. Reads DOCFLEET_API_URL / DOCFLEET_API_KEY (deploy/local/fleet up).

    deploy/local/quality [path/to/shared]
"""
import collections
import json
import os
import pathlib
import sys
import time

from llama_cloud import LlamaCloud

shared = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parents[2] / "../shared").resolve()
sys.path.insert(0, str(shared / "tools"))
from text_f1 import word_f1  # noqa: E402  (the project's own measure)

TARGETS = {"pdf": 0.98, "ocr": 0.85}
corpus = shared / "corpus"
manifest = json.loads((corpus / "manifest.json").read_text())
files = manifest["files"]

client = LlamaCloud(api_key=os.environ["DOCFLEET_API_KEY"], base_url=os.environ["DOCFLEET_API_URL"], timeout=300)
d = client.beta.directories.create(name=f"quality-{int(time.time())}")
by_id = {}
for f in files:
    path = corpus / f["path"]
    up = client.beta.directories.files.upload(d.id, upload_file=(path.name, path.read_bytes()))
    by_id[up.id] = f
job = client.beta.batch.create(directory_id=d.id, page_size=200,
                               job_config={"job_name": "parse_raw_file_job", "parameters": {"type": "parse"}})
t0 = time.time()
while True:
    st = client.beta.batch.get_status(job.id)
    if st.job.status in ("completed", "failed", "cancelled"):
        break
    time.sleep(0.5)
print(f"batch {job.id}: {st.job.status}, {st.job.processed_items}/{st.job.total_items} in {time.time() - t0:.1f} s,"
      f" {st.job.failed_items} failed")

scores = collections.defaultdict(list)
short, failed = [], []
for item in client.beta.batch.job_items.list(job.id, limit=500):
    f = by_id[item.item_id]
    if item.status != "completed":
        failed.append((f["path"], item.status, item.error_message or item.skip_reason))
        continue
    truth = f.get("truth") or {}
    if not truth.get("usable"):
        # Scans are judged against the upstream OCR ground truth where the source has one.
        upstream = f.get("upstream_truth") or []
        if not upstream:
            continue
        truth = upstream[0]
    r = client.parsing.get(item.job_id, expand=["text"])
    got = "\n".join(p.text for p in r.text.pages)
    ref = (corpus / truth["path"]).read_text(encoding="utf-8", errors="replace")
    score = word_f1(got, ref)
    kind = "ocr" if f.get("needs_ocr") else f["format"]
    scores[kind].append(score)
    print(f"  {score:.3f}  {f['path']}")
    if score < TARGETS.get(kind, 0.9):
        short.append((f["path"], score))

print("\nmean word-F1 by kind (target):")
for kind, v in sorted(scores.items()):
    print(f"  {kind:<6} {sum(v) / len(v):.3f} over {len(v)} files (target {TARGETS.get(kind, '-')})")
print(f"\nbelow target ({len(short)}):")
for p, s in sorted(short, key=lambda x: x[1]):
    print(f"  {s:.3f}  {p}")
print(f"\nnot parsed ({len(failed)}), each with its message:")
for p, status, msg in failed:
    print(f"  {status:<8} {p}: {msg}")
