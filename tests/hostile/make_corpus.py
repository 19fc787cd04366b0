#!/usr/bin/env python3
"""Writes the hostile corpus: files made to hurt a parser, generated so nothing large is
committed. Standard library only.

    python3 tests/hostile/make_corpus.py <folder>

Prints one JSON line per file: name, size, and the job parameters it is run with.
"""
import json
import struct
import sys
import zipfile
import zlib
from pathlib import Path

# The project's one PDF writer (object bodies in, a file with a correct xref table out).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy" / "samples"))
from make_pdfs import serialize  # noqa: E402


def pdf(objects, root=1):
    return serialize(objects, root)


def stream(dictionary, data):
    return b"<< %s /Length %d >>\nstream\n" % (dictionary, len(data)) + data + b"\nendstream"


def pages_pdf(n, page_body, extra=()):
    """Catalog (1), Pages (2), n pages (3..), then `extra` objects; `page_body(i)` gives each
    page's dictionary entries beyond /Type, /Parent and /MediaBox."""
    first_extra = 3 + n
    kids = b" ".join(b"%d 0 R" % (3 + i) for i in range(n))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Count %d /Kids [%s] >>" % (n, kids),
    ]
    for i in range(n):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] %s >>"
            % page_body(i, first_extra)
        )
    objects.extend(extra)
    return pdf(objects)


def blank_pdf(path):
    path.write_bytes(pages_pdf(2000, lambda i, x: b""))


def scanned_pdf(path):
    # One grey page image with dark bars (text-like ink, no words), drawn on all 300 pages.
    w, h = 1275, 1650
    rows = []
    for y in range(h):
        ink = (y // 24) % 3 == 0 and 150 < y < h - 150
        row = bytes(40 if ink and (x // 9) % 5 else 235 for x in range(w)) if ink else b"\xeb" * w
        rows.append(row)
    image = stream(
        b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
        b"/BitsPerComponent 8 /Filter /FlateDecode" % (w, h),
        zlib.compress(b"".join(rows), 9),
    )
    draw = stream(b"", b"q 612 0 0 792 0 0 cm /Im0 Do Q")
    n = 300
    path.write_bytes(
        pages_pdf(
            n,
            lambda i, x: b"/Contents %d 0 R /Resources << /XObject << /Im0 %d 0 R >> >>"
            % (x + 1, x),
            [image, draw],
        )
    )


def docx_bomb(path):
    # word/document.xml inflates to 1 GiB from about a megabyte.
    para = b"<w:p><w:r><w:t>bomb</w:t></w:r></w:p>" * 1024
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>',
        )
        with z.open("word/document.xml", "w", force_zip64=True) as f:
            f.write(
                b'<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
            )
            for _ in range((1 << 30) // len(para)):
                f.write(para)
            f.write(b"</w:body></w:document>")


def col(i):
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(65 + r) + s
    return s


def xlsx_million(path):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
            "</Types>",
        )
        z.writestr(
            "_rels/.rels",
            '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/>'
            "</Relationships>",
        )
        z.writestr(
            "xl/workbook.xml",
            '<?xml version="1.0"?><workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
            'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
            '<sheets><sheet name="Cells" sheetId="1" r:id="rId1"/></sheets></workbook>',
        )
        z.writestr(
            "xl/_rels/workbook.xml.rels",
            '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/>'
            "</Relationships>",
        )
        cols = [col(c) for c in range(1000)]
        with z.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as f:
            f.write(
                b'<?xml version="1.0"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
            )
            for r in range(1, 1001):
                cells = "".join(f'<c r="{c}{r}"><v>{r}</v></c>' for c in cols)
                f.write(f'<row r="{r}">{cells}</row>'.encode())
            f.write(b"</sheetData></worksheet>")


def big_csv(path):
    line = b"a value in the only column of a long table\n"
    with open(path, "wb") as f:
        chunk = line * ((8 << 20) // len(line))
        for _ in range(25):
            f.write(chunk)


def images_pdf(path):
    n = 10_000
    images = [
        stream(
            b"/Type /XObject /Subtype /Image /Width 2 /Height 2 /ColorSpace /DeviceGray "
            b"/BitsPerComponent 8",
            bytes([i % 256, 255 - i % 256, (i // 256) % 256, 128]),
        )
        for i in range(n)
    ]
    # Images are objects 5.. (catalog, pages, one page, its content come first).
    names = b" ".join(b"/I%d %d 0 R" % (i, 5 + i) for i in range(n))
    ops = b"".join(
        b"q 4 0 0 4 %d %d cm /I%d Do Q\n" % (6 * (i % 100), 6 * (i // 100), i) for i in range(n)
    )
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Count 1 /Kids [3 0 R] >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /XObject << " + names + b" >> >> >>",
        stream(b"", ops),
    ] + images
    path.write_bytes(pdf(objects))


def endless_stream_pdf(path):
    # A content stream that claims a gigabyte, has no end marker, and whose operators loop
    # back on themselves with nested saves; no xref table.
    body = b"q " * 500_000 + b"BT /F1 12 Tf (" + b"(" * 200_000
    path.write_bytes(
        b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
        b"2 0 obj\n<< /Type /Pages /Count 1 /Kids [3 0 R] >>\nendobj\n"
        b"3 0 obj\n<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>\nendobj\n"
        b"4 0 obj\n<< /Length 1073741824 >>\nstream\n" + body
    )


def nested_html(path):
    depth = 50 * 1024 * 1024 // len("<div>")
    with open(path, "wb") as f:
        f.write(b"<!doctype html><html><body>")
        chunk = b"<div>" * 65536
        for _ in range(depth // 65536):
            f.write(chunk)
        f.write(b"deep</body></html>")


def tiff_frames(path):
    n = 10_000
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    entry_count = 8
    ifd_size = 2 + entry_count * 12 + 4
    for i in range(n):
        ifd_at = len(out)
        pixel_at = ifd_at + ifd_size
        next_at = 0 if i == n - 1 else pixel_at + 2  # one pixel, padded to even
        entries = [
            (256, 3, 1, 1),  # ImageWidth
            (257, 3, 1, 1),  # ImageLength
            (258, 3, 1, 8),  # BitsPerSample
            (259, 3, 1, 1),  # Compression: none
            (262, 3, 1, 1),  # Photometric: black is zero
            (273, 4, 1, pixel_at),  # StripOffsets
            (278, 3, 1, 1),  # RowsPerStrip
            (279, 4, 1, 1),  # StripByteCounts
        ]
        out += struct.pack("<H", entry_count)
        for tag, typ, count, value in entries:
            if typ == 3:
                out += struct.pack("<HHIHH", tag, typ, count, value, 0)
            else:
                out += struct.pack("<HHII", tag, typ, count, value)
        out += struct.pack("<I", next_at)
        out += bytes([i % 256, 0])
    path.write_bytes(bytes(out))


def inflate_bomb_pdf(path):
    # One page whose content stream inflates to 2 GiB of spaces from about 2 MB.
    c = zlib.compressobj(9)
    spaces = b" " * (64 << 20)
    data = b"".join(c.compress(spaces) for _ in range(32)) + c.flush()
    content = stream(b"/Filter /FlateDecode", data)
    path.write_bytes(pages_pdf(1, lambda i, x: b"/Contents %d 0 R" % x, [content]))


CORPUS = [
    ("blank-2000-pages.pdf", blank_pdf, {"max_pages": 1}),
    ("scanned-300-pages.pdf", scanned_pdf, {}),
    ("zip-bomb.docx", docx_bomb, {}),
    ("million-cells.xlsx", xlsx_million, {}),
    ("one-column-200mib.csv", big_csv, {}),
    ("ten-thousand-images.pdf", images_pdf, {"images_to_save": ["embedded"]}),
    ("endless-stream.pdf", endless_stream_pdf, {}),
    ("nested-50mb.html", nested_html, {}),
    ("ten-thousand-frames.tiff", tiff_frames, {}),
    ("inflate-bomb.pdf", inflate_bomb_pdf, {}),
]


def main():
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    only = set(sys.argv[2:])
    for name, make, parameters in CORPUS:
        if only and name not in only:
            continue
        path = folder / name
        if not path.exists():
            make(path)
        print(json.dumps({"name": name, "bytes": path.stat().st_size, "parameters": parameters}))


if __name__ == "__main__":
    main()
