#!/usr/bin/env python3
"""Scores page text against the references of a corpus (word-F1, ../shared/tools/text_f1.py),
beside PyMuPDF and plain pdftotext on the same files, for issue 34's targets.

    score.py CORPUS_DIR TEXT_DIR [SHARED_DIR]

CORPUS_DIR holds manifest.json (this folder, or ../shared/corpus); TEXT_DIR holds
`<file name>.txt` per file, as `cargo run --release -p docfleet-worker --example parse_files --
--text TEXT_DIR ...` writes it. Prints per-file F1 of docfleet, PyMuPDF and pdftotext, means
over all references and over the consensus subset, the files below 0.9 that PyMuPDF or pdftotext
read at >= 0.95, and PyMuPDF's pages/s.
"""
import json
import pathlib
import subprocess
import sys
import time

corpus, texts = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
shared = pathlib.Path(sys.argv[3]) if len(sys.argv) > 3 else pathlib.Path(__file__).resolve().parents[2] / "../shared"
sys.path.insert(0, str(shared.resolve() / "tools"))
from text_f1 import word_f1  # noqa: E402  (the project's own measure)

try:
    import pymupdf
except ImportError:
    pymupdf = None

rows, mupdf_secs, mupdf_pages = [], 0.0, 0
for f in json.loads((corpus / "manifest.json").read_text())["files"]:
    truth = f.get("truth")
    if f.get("format") != "pdf" or not truth or not truth.get("usable"):
        continue
    path = corpus / f["path"]
    ref = (corpus / truth["path"]).read_text(encoding="utf-8", errors="replace")
    ours = texts / (path.name + ".txt")
    got = ours.read_text(encoding="utf-8", errors="replace") if ours.exists() else None
    other = None
    if pymupdf:
        t = time.perf_counter()
        with pymupdf.open(path) as doc:
            other = "\n".join(p.get_text() for p in doc)
            mupdf_pages += len(doc)
        mupdf_secs += time.perf_counter() - t
    plain = subprocess.run(["pdftotext", "-enc", "UTF-8", str(path), "-"], capture_output=True).stdout.decode("utf-8", "replace")
    rows.append({
        "path": f["path"], "consensus": truth.get("consensus", True),
        "ours": None if got is None else word_f1(got, ref),
        "pymupdf": None if other is None else word_f1(other, ref),
        "pdftotext": word_f1(plain, ref),
    })

fmt = lambda v: "  -  " if v is None else f"{v:.3f}"
print(f"{'docfleet':>8} {'PyMuPDF':>8} {'pdftotext':>9}  file")
for r in sorted(rows, key=lambda r: (r["ours"] is not None, r["ours"] or 0)):
    print(f"{fmt(r['ours']):>8} {fmt(r['pymupdf']):>8} {fmt(r['pdftotext']):>9}  {r['path']}")
for name, subset in (("all references", rows), ("consensus", [r for r in rows if r["consensus"]])):
    print(f"\nmean word-F1 over {name} ({len(subset)} files):")
    for tool in ("ours", "pymupdf", "pdftotext"):
        v = [r[tool] if r[tool] is not None else 0.0 for r in subset]
        print(f"  {'docfleet' if tool == 'ours' else tool:<9} {sum(v) / max(len(v), 1):.4f}")
bad = [r for r in rows if (r["ours"] or 0) < 0.9 and max(r["pymupdf"] or 0, r["pdftotext"]) >= 0.95]
print(f"\nbelow 0.9 where PyMuPDF or pdftotext read >= 0.95 ({len(bad)}):")
for r in bad:
    print(f"  {fmt(r['ours'])}  {r['path']}")
if mupdf_secs:
    print(f"\nPyMuPDF: {mupdf_pages} pages in {mupdf_secs:.2f} s, {mupdf_pages / mupdf_secs:.0f} pages/s (one thread)")
