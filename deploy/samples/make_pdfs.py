"""Writes a small text-layer PDF (Helvetica, one text block per page) with no dependencies."""
import sys

def pdf(pages, title):
    objs = []
    def add(body):
        objs.append(body)
        return len(objs)
    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    pages_id = len(objs) + 1 + 2 * len(pages)  # placeholder computed after
    kids = []
    page_objs = []
    for lines in pages:
        ops = ["BT", "/F1 12 Tf", "14 TL", "72 740 Td"]
        for i, line in enumerate(lines):
            esc = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            size = 18 if i == 0 else 12
            ops.append(f"/F1 {size} Tf ({esc}) Tj T*")
            if i == 0:
                ops.append("T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        content = add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        page_objs.append(content)
    pages_obj_index = len(objs) + len(pages) + 1
    for content in page_objs:
        kids.append(add(b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>" % (pages_obj_index, font, content)))
    assert len(objs) + 1 == pages_obj_index
    add(b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % k for k in kids) + b"] /Count %d >>" % len(kids))
    info = add(b"<< /Title (" + title.encode("latin-1") + b") /Producer (docfleet samples) >>")
    catalog = add(b"<< /Type /Catalog /Pages %d 0 R >>" % pages_obj_index)
    return serialize(objs, catalog, info)


def serialize(objs, root, info=None):
    """A PDF file of numbered object bodies (from 1), with a correct xref table."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for o in offsets:
        out += b"%010d 00000 n \n" % o
    trailer = b"/Size %d /Root %d 0 R" % (len(objs) + 1, root)
    if info is not None:
        trailer += b" /Info %d 0 R" % info
    out += b"trailer\n<< %s >>\nstartxref\n%d\n%%%%EOF\n" % (trailer, xref)
    return bytes(out)

invoice = [
    ["INVOICE 1042", "Acme Widgets Ltd, 12 Harbour Road, Bristol", "Bill to: Northwind Traders", "Invoice date: 2026-11-01",
     "Line items:", "  20 x Steel widget at 4.50 = 90.00", "  5 x Brass fitting at 3.00 = 15.00", "Subtotal: 105.00"],
    ["Payment terms", "VAT 20%: 21.00", "Total due: 126.00 EUR", "Please pay within 30 days to IBAN DE89 3704 0044 0532 0130 00.",
     "Thank you for your business."],
]
resume = [
    ["Jane Doe - Curriculum Vitae", "Senior software engineer, Berlin", "Work experience:",
     "  2019-2026 Platform engineer at Example GmbH: queues, Kubernetes, Rust.",
     "  2015-2019 Backend developer at Sample AG.", "Education: MSc Computer Science, TU Berlin.",
     "Skills: Rust, Python, distributed systems, PostgreSQL.", "References available on request."],
]
if __name__ == "__main__":
    open(sys.argv[1] + "/invoice-1042.pdf", "wb").write(pdf(invoice, "Invoice 1042"))
    open(sys.argv[1] + "/jane-doe-cv.pdf", "wb").write(pdf(resume, "Jane Doe CV"))
