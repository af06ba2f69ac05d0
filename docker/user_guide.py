"""Write the user guide PDF that ships beside the image in the OpenRecon package.

    python docker/user_guide.py --out dist/OpenRecon_<vendor>_<name>_V<version>.pdf

The text is generated from the same definitions as the manifest (parameters, pipelines,
version, resources), so the guide cannot drift from the app. The PDF is written directly
(PDF 1.4, the standard Helvetica and Courier fonts, no dependencies) and is deterministic:
the same code gives the same bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openrecon_stroke import APP_NAME, __version__  # noqa: E402
from openrecon_stroke import manifest as mf  # noqa: E402
from openrecon_stroke.params import PARAMETERS  # noqa: E402
from openrecon_stroke.pipeline_registry import DEFAULT_PIPELINE, PIPELINE_NAMES  # noqa: E402

# --------------------------------------------------------------------------------------------
# a minimal PDF writer: pages of positioned text lines
# --------------------------------------------------------------------------------------------
PAGE_W, PAGE_H = 595.0, 842.0  # A4 in points
MARGIN = 56.0
BOTTOM = 64.0
FONTS = {"body": "Helvetica", "bold": "Helvetica-Bold", "mono": "Courier"}

# Helvetica advance widths (1/1000 em) for the printable ASCII range 32..126.
_HELV = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278,
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556,
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778,
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556,
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556,
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
]

_REPLACE = {"\u2264": "<=", "\u2265": ">=", "\u2192": "->", "\u00d7": "x", "\u2026": "...",
            "\u2011": "-", "\u2212": "-", "\u00b3": "3"}


def _clean(text: str) -> str:
    for a, b in _REPLACE.items():
        text = text.replace(a, b)
    return text


def text_width(text: str, font: str, size: float) -> float:
    if font == "mono":
        return 0.6 * size * len(text)
    w = sum(_HELV[ord(c) - 32] if 32 <= ord(c) <= 126 else 556 for c in text)
    return w * size / 1000.0 * (1.06 if font == "bold" else 1.0)


def wrap(text: str, font: str, size: float, width: float) -> list[str]:
    """Greedy word wrap to ``width`` points (long words are split)."""
    lines, cur = [], ""
    for word in _clean(text).split():
        trial = f"{cur} {word}" if cur else word
        if text_width(trial, font, size) <= width:
            cur = trial
            continue
        if cur:
            lines.append(cur)
        while text_width(word, font, size) > width:
            n = max(1, int(len(word) * width / text_width(word, font, size)))
            lines.append(word[:n])
            word = word[n:]
        cur = word
    if cur:
        lines.append(cur)
    return lines or [""]


def _pdf_string(text: str) -> bytes:
    raw = _clean(text).encode("cp1252", errors="replace")
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


class Document:
    """Flowing text: headings, paragraphs, bullet items and fixed-width tables, paginated."""

    def __init__(self, footer: str):
        self.footer = footer
        self.pages: list[list[tuple]] = []
        self._new_page()

    def _new_page(self):
        self.pages.append([])
        self.y = PAGE_H - MARGIN

    def _line(self, text: str, font: str, size: float, x: float = 0.0, leading: float | None = None):
        leading = leading or size * 1.3
        if self.y - leading < BOTTOM:
            self._new_page()
        self.y -= leading
        self.pages[-1].append((MARGIN + x, self.y, font, size, text))

    def space(self, pts: float):
        self.y -= pts

    def keep(self, pts: float):
        """Start a new page unless ``pts`` points still fit on this one."""
        if self.y - pts < BOTTOM:
            self._new_page()

    def title(self, text: str):
        for ln in wrap(text, "bold", 20, PAGE_W - 2 * MARGIN):
            self._line(ln, "bold", 20, leading=26)
        self.space(6)

    def heading(self, text: str):
        self.space(10)
        self.keep(60)
        self._line(text, "bold", 13, leading=18)
        self.space(2)

    def para(self, text: str, font: str = "body", size: float = 10, indent: float = 0.0):
        for ln in wrap(text, font, size, PAGE_W - 2 * MARGIN - indent):
            self._line(ln, font, size, x=indent)
        self.space(4)

    def bullet(self, text: str, size: float = 10):
        lines = wrap(text, "body", size, PAGE_W - 2 * MARGIN - 14)
        for i, ln in enumerate(lines):
            if i == 0:
                self._line("-", "body", size, x=4)
                self.pages[-1].append((MARGIN + 14, self.y, "body", size, ln))
            else:
                self._line(ln, "body", size, x=14)
        self.space(2)

    def table(self, header: list[str], rows: list[list[str]], widths: list[int], size: float = 8.0):
        """Monospaced table; ``widths`` in characters; cells wrap inside their column."""
        char = 0.6 * size

        def emit(cells, font):
            wrapped = [wrap(c, "mono", size, w * char) for c, w in zip(cells, widths)]
            n = max(len(w) for w in wrapped)
            self.keep(n * size * 1.25 + 2)
            for k in range(n):
                parts = [(w[k] if k < len(w) else "").ljust(cw) for w, cw in zip(wrapped, widths)]
                self._line(" ".join(parts).rstrip(), font, size, leading=size * 1.25)
            self.space(2)

        emit(header, "mono")
        self._line("-" * (sum(widths) + len(widths) - 1), "mono", size, leading=size * 0.9)
        for r in rows:
            emit(r, "mono")
        self.space(4)

    # ---- serialisation --------------------------------------------------------------------
    def to_pdf(self, title: str) -> bytes:
        font_names = list(FONTS)
        objects: list[bytes] = []  # object n is objects[n - 1]

        def add(body: bytes) -> int:
            objects.append(body)
            return len(objects)

        catalog = add(b"")  # filled in below
        pages_obj = add(b"")
        font_ids = {k: add(b"<< /Type /Font /Subtype /Type1 /BaseFont /" + FONTS[k].encode()
                           + b" /Encoding /WinAnsiEncoding >>") for k in font_names}
        font_res = b" ".join(b"/F%d %d 0 R" % (i + 1, font_ids[k]) for i, k in enumerate(font_names))
        page_ids = []
        total = len(self.pages)
        for n, items in enumerate(self.pages, 1):
            ops = []
            footer = f"{self.footer}    page {n} of {total}"
            for x, y, font, size, text in items + [(MARGIN, 36.0, "body", 8, footer)]:
                f = font_names.index(font) + 1
                ops.append(b"BT /F%d %.1f Tf %.2f %.2f Td %s Tj ET" % (f, size, x, y, _pdf_string(text)))
            ops.append(b"0.6 w %.1f 48 m %.1f 48 l S" % (MARGIN, PAGE_W - MARGIN))
            stream = b"\n".join(ops)
            content = add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
            page_ids.append(add(b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %d %d] /Resources << /Font << %s >> >> "
                                b"/Contents %d 0 R >>" % (pages_obj, PAGE_W, PAGE_H, font_res, content)))
        objects[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages_obj
        objects[pages_obj - 1] = (b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % p for p in page_ids)
                                  + b"] /Count %d >>" % total)
        info = add(b"<< /Title " + _pdf_string(title) + b" /Producer " + _pdf_string(f"{APP_NAME} user_guide.py")
                   + b" >>")

        out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
        offsets = []
        for i, body in enumerate(objects, 1):
            offsets.append(len(out))
            out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
        xref = len(out)
        out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
        for off in offsets:
            out += b"%010d 00000 n \n" % off
        out += (b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n"
                % (len(objects) + 1, catalog, info, xref))
        return bytes(out)


# --------------------------------------------------------------------------------------------
# the guide's content
# --------------------------------------------------------------------------------------------
#: Returned series: (series name suffix, what it holds, the UI parameter that switches it).
OUTPUTS = (
    ("(original name)", "the input images, unchanged, sent first", "sendoriginal"),
    ("_BRAINMASK", "brain mask from HD-BET (1 = brain), on the input grid", "sendbrainmask"),
    ("_HEADMASK", "foreground (head) mask; headmask pipeline only", "sendmask"),
    ("_LESION", "lesion mask (1 = lesion), on the input grid", "sendlesion"),
    ("_ANOMALY", "anomaly map: difference to a pseudo-healthy brain", "sendanomaly"),
    ("_OVERLAY", "colour overlay: anatomy in grey, lesion and anomaly map in colour", "sendoverlay"),
    ("_REPORT", "one-page summary image: lesions, anomaly load, timings, warnings", "sendreport"),
)


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def build_document() -> Document:
    m = mf.build_manifest()
    rec = m["reconstruction"]
    base = mf.package_basename()
    doc = Document(f"{APP_NAME} {__version__} user guide - research use only")
    doc.title(f"{APP_NAME} {__version__}: user guide")
    doc.para(f"OpenRecon app '{mf.NAME}' by '{mf.VENDOR}'. Package {base}.zip (image {mf.image_tag()}).")
    doc.heading("Research use only")
    doc.para(mf.RESEARCH_NOTICE, font="bold")
    doc.para("The results are computed automatically and have not been validated for clinical use. "
             "Always read the original images.")

    doc.heading("What the app does")
    doc.para("The scanner streams each selected image series over MRD (ISMRMRD 1.4.1) to this app "
             f"(port {rec['port']}). The app assembles each series into a volume with its exact "
             "geometry, runs the selected pipeline and sends new series back, which appear on the "
             "console next to the originals. Series of one study sent on separate connections "
             "(T1-weighted and FLAIR) are combined for up to 2 hours.")
    doc.para("Pipelines (UI parameter 'config'):")
    notes = {
        DEFAULT_PIPELINE: "the stroke pipeline: input check, preprocessing, brain extraction (HD-BET), "
                          "lesion segmentation and anomaly map where models are installed, overlay and "
                          "report (default)",
        "headmask": "input check and a foreground (head) mask only: a quick geometry check for a new "
                    "installation",
        "passthrough": "returns the images unchanged (connection test)",
    }
    for name in PIPELINE_NAMES:
        doc.bullet(f"{name}: {notes.get(name, 'see the project documentation')}")

    doc.heading("Inputs")
    for t in (
        "Magnitude images of the head: a T1-weighted and/or a FLAIR series, 3D or multi-slice 2D, any "
        "orientation (oblique included). The contrast is read from the protocol (TI, name) unless set "
        "with the 'contrast' parameter.",
        "Each series on its own MRD connection, or both on one. Missing or irregular slice geometry is "
        "reported as a TEXT message and in the report page.",
        "UI parameter values arrive as text; a value that cannot be read falls back to its default "
        "and the console receives a message saying so.",
    ):
        doc.bullet(t)

    doc.heading("UI parameters")
    rows = []
    for p in PARAMETERS:
        if p.kind == "choice":
            rng = ", ".join(c for c, _ in p.choices)
        elif p.kind in ("int", "double"):
            rng = f"{_fmt(p.minimum)} to {_fmt(p.maximum)}" + (f" {p.unit}" if p.unit else "")
        else:
            rng = ""
        rows.append([p.id, p.label, p.kind, _fmt(p.default), rng])
    doc.table(["id", "label", "type", "default", "values / range"], rows, [15, 22, 7, 16, 30])
    for p in PARAMETERS:
        doc.keep(30)
        doc.para(f"{p.id} ({p.label})", font="bold", size=9.5)
        doc.para(p.information, size=9.5, indent=12)

    doc.heading("Outputs")
    doc.para("Each derived result is its own series: the input series name plus the suffix below, "
             "its own series number, never the identity of the input series. Masks are sent as "
             "segmentations on the input grid; the overlay is RGB.")
    doc.table(["series suffix", "content", "switched by"], [list(o) for o in OUTPUTS], [16, 50, 14])

    doc.heading("Installation and resources")
    for t in (
        f"The package {base}.zip holds the image ({base}.tar, docker save format) and this guide "
        f"({base}.pdf). The image carries the OpenRecon manifest as the label {mf.LABEL_KEY}.",
        f"Runs on the CPU (can_use_gpu: {str(rec['can_use_gpu']).lower()}); needs at least "
        f"{rec['min_required_memory']} MB memory and {rec['min_count_required_cpu_cores']} CPU cores.",
        "All models are inside the image; the app makes no network connections.",
        "A package with the same version number does not reinstall: raise the version for every "
        "new build.",
    ):
        doc.bullet(t)

    doc.heading("Sources and licences")
    doc.para(m["general"]["regulatory_information"]["additional_relevant_information"])
    doc.para(f"{APP_NAME} is distributed under the Apache-2.0 licence.")
    return doc


def write_user_guide(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(build_document().to_pdf(f"{APP_NAME} {__version__} user guide"))
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--out", default=f"dist/{mf.package_basename()}.pdf", help="PDF file to write")
    args = ap.parse_args(argv)
    print(write_user_guide(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
