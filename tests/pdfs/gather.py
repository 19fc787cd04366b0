#!/usr/bin/env python3
"""Gathers the enlarged PDF set (issue 34) from snapshots of public repositories.

The files are copied unmodified, as ../shared/corpus did, and each gets a manifest entry with
its source repository, commit, path, licence and sha256. References are made the same way:
`pdftotext -layout` for text PDFs that open cleanly, and an independent engine (PyMuPDF) marks
the consensus subset (its text agrees with the reference at word-F1 >= 0.9), where the
reference itself is not in doubt.

    gather.py OUT_DIR SHARED_DIR owner/name=GIT_DIR [owner/name=GIT_DIR ...]

Needs poppler-utils and PyMuPDF (pip install pymupdf). Run once; what it wrote is committed.
"""
import fnmatch
import hashlib
import json
import pathlib
import subprocess
import sys

# Per source: licence, which paths to take, and which to leave (too big, or many pages of
# one generator's output that add nothing the others do not).
SOURCES = {
    "jsvine/pdfplumber": {
        "licence": "MIT (repo licence; test PDFs are public documents: US/CA government reports, "
                   "court transcripts, bug-report attachments)",
        "take": ["tests/pdfs/*.pdf", "tests/pdfs/*/*.pdf", "examples/pdfs/*.pdf"],
        "leave": [],
    },
    "docling-project/docling": {
        "licence": "MIT (repo licence; test data: arXiv pages, generated and scanned samples)",
        "take": ["tests/data/pdf/*.pdf", "tests/data/pdf/*/*.pdf", "tests/data_scanned/*.pdf",
                 "docs/examples/data/*.pdf", "tests/data/odf/*.pdf"],
        "leave": [],
    },
    "pdfcpu/pdfcpu": {
        "licence": "Apache-2.0 (repo licence; testdata holds public papers, slides and books, "
                   "samples are pdfcpu's own output)",
        "take": ["pkg/testdata/*.pdf", "pkg/testdata/*.PDF", "pkg/testdata/pdf20/*.pdf",
                 "pkg/samples/basic/UserFont_*.pdf", "pkg/samples/basic/TextRotateDemo.pdf",
                 "pkg/samples/basic/AnnotationDemo.pdf", "pkg/samples/fonts/user/*_SMP.pdf",
                 "pkg/samples/form/demo/english*.pdf", "pkg/samples/form/demo/arabic*.pdf",
                 "pkg/samples/form/demo/chinese*.pdf"],
        "leave": ["pkg/testdata/WaldenFull.pdf", "pkg/testdata/gobook.0.pdf"],
    },
}
MAX_BYTES = 1_600_000
MAX_TOTAL = 45_000_000


def run(*cmd, timeout=60):
    return subprocess.run(cmd, capture_output=True, timeout=timeout)


def pdfinfo(path):
    r = run("pdfinfo", str(path))
    info = {}
    for line in r.stdout.decode("utf-8", "replace").splitlines():
        k, _, v = line.partition(":")
        info[k.strip()] = v.strip()
    err = r.stderr.decode("utf-8", "replace").strip() or None
    return info, err if (r.returncode or err) else None


def main():
    out, shared = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    sys.path.insert(0, str(shared / "tools"))
    from text_f1 import word_f1
    import pymupdf

    known = {f["sha256"] for f in json.loads((shared / "corpus/manifest.json").read_text())["files"]}
    (out / "files").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(exist_ok=True)
    entries, sources, total = [], {}, 0
    for arg in sys.argv[3:]:
        repo, git = arg.split("=", 1)
        spec = SOURCES[repo]
        commit = run("git", "-C", git, "rev-parse", "HEAD").stdout.decode().strip()
        sources[repo] = {"commit": commit, "licence": spec["licence"]}
        listing = run("git", "-C", git, "ls-tree", "-r", "-l", "HEAD").stdout.decode().splitlines()
        for line in listing:
            meta, path = line.split("\t", 1)
            if not meta.split()[3].isdigit():
                continue  # a submodule, or an object the snapshot lacks
            size = int(meta.split()[3])
            if not any(fnmatch.fnmatch(path, g) for g in spec["take"]) or path in spec["leave"]:
                continue
            if size > MAX_BYTES or total + size > MAX_TOTAL:
                continue
            data = run("git", "-C", git, "show", f"HEAD:{path}").stdout
            digest = hashlib.sha256(data).hexdigest()
            if digest in known:
                continue
            known.add(digest)
            name = f"{repo.split('/')[1]}__{path.replace('/', '_')}"
            if not name.lower().endswith(".pdf"):
                continue
            name = name[:-4] + ".pdf"
            target = out / "files" / name
            target.write_bytes(data)
            total += size
            info, err = pdfinfo(target)
            pages = int(info.get("Pages", "0") or 0)
            entry = {
                "path": f"files/{name}", "source_repo": repo, "source_path": path,
                "source_commit": commit, "licence": spec["licence"], "format": "pdf",
                "bytes": size, "sha256": digest, "pages": pages,
                "encrypted": info.get("Encrypted", "no").startswith("yes"),
                "pdfinfo_error": err, "needs_ocr": False, "truth": None,
            }
            ref = run("pdftotext", "-layout", "-enc", "UTF-8", str(target), "-")
            text = ref.stdout.decode("utf-8", "replace")
            words = len(text.split())
            if ref.returncode or pages == 0:
                entry["note"] = "does not open cleanly: a robustness case, no reference"
            elif words < 5 * pages:
                entry["needs_ocr"] = True
                entry["note"] = "little or no text layer: an OCR case, no reference"
            else:
                try:
                    with pymupdf.open(target) as doc:
                        other = "\n".join(p.get_text() for p in doc)
                    agree = word_f1(other, text)
                except Exception as e:  # noqa: BLE001  (a file PyMuPDF refuses is still a case)
                    other, agree = "", 0.0
                    entry["note"] = f"PyMuPDF: {e}"
                truth = out / "truth" / (name[:-4] + ".pdftotext.txt")
                truth.write_text(text, encoding="utf-8")
                entry["truth"] = {
                    "path": f"truth/{truth.name}", "kind": "pdftotext reference",
                    "tool": "pdftotext -layout (" + run("pdftotext", "-v").stderr.decode().split("\n")[0] + ")",
                    "pymupdf_f1": round(agree, 4), "consensus": agree >= 0.9, "usable": True,
                }
            entries.append(entry)
    manifest = {
        "description": "Public PDFs docfleet was not tuned on (issue 34), copied unmodified. "
                       "References: pdftotext -layout; consensus: PyMuPDF agrees at F1 >= 0.9.",
        "sources": sources, "files": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(entries)} files, {total / 1e6:.1f} MB, "
          f"{sum(1 for e in entries if e['truth'])} with references, "
          f"{sum(1 for e in entries if e['truth'] and e['truth']['consensus'])} in consensus")


if __name__ == "__main__":
    main()
