"""PDFs for the builder's tests, made here byte by byte: a plain one-page document, and hostile
ones, small files whose one Flate-compressed content stream draws a line of text thousands of
times."""

from __future__ import annotations

import zlib

PHRASE = "lorem ipsum dolor sit amet"
SHOW = f"BT /F1 12 Tf 0 0 Td ({PHRASE}) Tj ET\n".encode()


def pdf_bomb(repeats: int, pages: int = 1) -> bytes:
    """A PDF whose ``pages`` pages all draw one Flate-compressed content stream: ``SHOW``,
    ``repeats`` times."""
    stream = zlib.compress(SHOW * repeats, 9)
    kids = " ".join(f"{5 + n} 0 R" for n in range(pages)).encode()
    page = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R "
        b"/Resources << /Font << /F1 4 0 R >> >> >>"
    )
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        *[page] * pages,
    ]
    return pdf_file(objects)


def one_page_pdf(text: str) -> bytes:
    """A one-page PDF whose content stream draws ``text`` in Helvetica."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    return pdf_file(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        ]
    )


def pdf_file(objects: list[bytes]) -> bytes:
    """A PDF file of ``objects`` (numbered from 1, the first the catalog), with its xref."""
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n" % (len(objects) + 1)
    out += b"%d\n%%%%EOF\n" % xref
    return bytes(out)
