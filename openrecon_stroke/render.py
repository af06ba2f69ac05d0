"""Pictures for people: the colour overlay volume and the one-page report image.

Both are plain uint8 RGB arrays; :mod:`openrecon_stroke.outputs` and
:mod:`openrecon_stroke.dicom_export` decide how they travel.

Orientation: an overlay slice is the grid's ``(ny, nx)`` plane exactly as the input arrives
(rows along ``phase_dir``, columns along ``read_dir``), so the scanner shows it like the input.
Nothing is flipped; the legend is drawn in the same pixel space, so it reads upright wherever
the input does. Text uses Pillow's built-in scalable font (ASCII only: the font has no glyphs
for dashes, "greater or equal" or micro signs, so text is reduced to ASCII before drawing).
"""

from __future__ import annotations

import math
import textwrap
import unicodedata
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

#: Lesion: translucent red fill, opaque yellow outline.
LESION_FILL = (255, 40, 40)
LESION_ALPHA = 0.45
LESION_OUTLINE = (255, 225, 0)
#: Anomaly map: "ice" ramp from blue (at the threshold) to cyan and white (at the top).
ANOMALY_RAMP = ((0, 70, 255), (0, 220, 255), (220, 255, 255))
ANOMALY_ALPHA = (0.35, 0.75)
#: Default anomaly display threshold and span (normalised units) when the stage says nothing.
ANOMALY_THRESHOLD = 2.0
ANOMALY_SPAN = 3.0

RUO = "RESEARCH USE ONLY - not for diagnosis"

_ASCII = {
    "\u2013": "-",
    "\u2014": "-",
    "\u2212": "-",
    "\u2265": ">=",
    "\u2264": "<=",
    "\u00b5": "u",
    "\u03bc": "u",
    "\u00b3": "3",
    "\u00b2": "2",
    "\u00d7": "x",
    "\u00b1": "+/-",
    "\u2026": "...",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u00b0": " deg",
}


def ascii_text(s) -> str:
    """``s`` as printable ASCII (the built-in font has no other glyphs)."""
    s = "".join(_ASCII.get(c, c) for c in str(s))
    s = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode("ascii")
    return "".join(c if c.isprintable() else " " for c in s)


def font(size: float):
    """Pillow's scalable built-in font at ``size`` pixels (bitmap font on old Pillow)."""
    size = max(6, int(round(size)))
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


# --------------------------------------------------------------------------------------------
# Overlay volume
# --------------------------------------------------------------------------------------------
def grey_window(data: np.ndarray, head: np.ndarray | None = None) -> tuple[float, float]:
    """Robust display window (1st and 99th percentile) inside the head.

    ``head`` is a boolean mask of where to measure; by default voxels above a tenth of the
    99.5th percentile (air and background excluded)."""
    d = np.nan_to_num(np.asarray(data, dtype=np.float32))
    if head is None or not np.any(head):
        top = float(np.percentile(d, 99.5)) if d.size else 1.0
        head = d > 0.1 * top if top > 0 else np.ones(d.shape, bool)
    vals = d[head]
    if vals.size == 0:
        vals = d.ravel()
    if vals.size > 2_000_000:  # a subsample is as good and much faster
        vals = vals[:: vals.size // 1_000_000]
    lo, hi = (float(v) for v in np.percentile(vals, [1.0, 99.0]))
    if not hi > lo:
        lo, hi = float(vals.min()), float(vals.max())
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def _ramp(t: np.ndarray | np.floating) -> np.ndarray:
    """Colours (..., 3) float for t in [0, 1] along :data:`ANOMALY_RAMP`."""
    stops = np.asarray(ANOMALY_RAMP, dtype=np.float32)
    x = np.clip(t, 0, 1) * (len(stops) - 1)
    i = np.minimum(x.astype(int), len(stops) - 2)
    f = (x - i)[..., None]
    return stops[i] * (1 - f) + stops[i + 1] * f


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """In-plane border of a ``(nz, ny, nx)`` mask (each slice on its own)."""
    m = np.asarray(mask, bool)
    st = np.zeros((1, 3, 3), bool)
    st[0] = ndimage.generate_binary_structure(2, 1)
    inner = ndimage.binary_erosion(m, structure=st, iterations=max(1, int(width)), border_value=0)
    return m & ~inner


@dataclass
class Legend:
    """What the overlay legend lists (``None``: that layer is absent)."""

    lesion: str | None = None  # e.g. "Lesion" or "Lesion (none found)"
    anomaly: str | None = None  # e.g. "Anomaly >= 2.0"
    note: str | None = "Research use only"


def legend_patch(legend: Legend, ny: int, nx: int, spacing_xy=(1.0, 1.0)) -> np.ndarray | None:
    """RGBA uint8 legend sized for an ``ny`` x ``nx`` slice, or None when it does not fit.

    The font scales with the slice (about 1/21 of its smaller side, at least 7 px); with
    non-square pixels the patch is stretched so that it looks right on the display. On small
    slices the note line goes first; a legend that still covers too much is left out."""
    patch = _legend_patch(legend, ny, nx, spacing_xy)
    if patch is None and legend.note:
        patch = _legend_patch(Legend(legend.lesion, legend.anomaly, None), ny, nx, spacing_xy)
    return patch


def _legend_patch(legend: Legend, ny: int, nx: int, spacing_xy) -> np.ndarray | None:
    rows = []
    if legend.lesion:
        rows.append(("lesion", legend.lesion))
    if legend.anomaly:
        rows.append(("anomaly", legend.anomaly))
    if legend.note:
        rows.append(("note", legend.note))
    if not rows:
        return None
    dx, dy = (float(s) for s in spacing_xy)
    aspect = dy / dx if dx > 0 and dy > 0 else 1.0  # displayed height of one pixel row / column width
    # size the text in display units (columns), then squeeze rows for non-square pixels
    short = min(nx, ny * aspect)
    size = max(7, int(round(short / 21)))
    f = font(size)
    line_h = int(round(size * 1.35))
    sw = int(round(size * 1.1))  # swatch width
    pad = max(2, size // 3)
    widths = [f.getlength(ascii_text(t)) for _, t in rows]
    w = int(pad * 3 + sw + max(widths))
    h = int(pad * 2 + line_h * len(rows))
    img = Image.new("RGBA", (w, h), (0, 0, 0, 150))
    d = ImageDraw.Draw(img)
    for n, (kind, text) in enumerate(rows):
        y0 = pad + n * line_h
        top, bot = y0 + (line_h - sw) // 2, y0 + (line_h - sw) // 2 + sw - 1
        if kind == "lesion":
            d.rectangle(
                (pad, top, pad + sw - 1, bot),
                fill=LESION_FILL + (255,),
                outline=LESION_OUTLINE + (255,),
                width=max(1, size // 8),
            )
        elif kind == "anomaly":
            for c in range(sw):
                col = tuple(int(v) for v in _ramp(np.float32(c / max(sw - 1, 1))))
                d.line((pad + c, top, pad + c, bot), fill=col + (255,))
        d.text(
            (pad * 2 + sw, y0 + (line_h - size) // 2 - size // 8),
            ascii_text(text),
            font=f,
            fill=(255, 255, 255, 255) if kind != "note" else (255, 170, 170, 255),
        )
    if abs(aspect - 1.0) > 0.05:
        img = img.resize((w, max(1, int(round(h / aspect)))), Image.Resampling.BILINEAR)
    arr = np.asarray(img)
    if arr.shape[1] > 0.75 * nx or arr.shape[0] > 0.45 * ny:
        return None
    return arr


def overlay_volume(
    anatomy: np.ndarray,
    lesion: np.ndarray | None = None,
    anomaly: np.ndarray | None = None,
    *,
    anomaly_threshold: float = ANOMALY_THRESHOLD,
    anomaly_max: float | None = None,
    head: np.ndarray | None = None,
    spacing_xy=(1.0, 1.0),
    legend: Legend | None = None,
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """``(nz, ny, nx, 3)`` uint8: anatomy in grey, anomaly above its threshold as a translucent
    blue-cyan map, lesions as translucent red with a yellow outline, a legend in the top-left
    corner of every slice.

    Args:
        anatomy: ``(nz, ny, nx)`` image the colours go on (the input).
        lesion: same-shape mask (non-zero = lesion) or None.
        anomaly: same-shape float map or None; shown where ``>= anomaly_threshold``, colour
            saturating at ``anomaly_max`` (default threshold + 3).
        head: where to measure the grey window (default: above a tenth of the 99.5th percentile).
        spacing_xy: pixel size (dx, dy) in mm, to keep legend text proportional on screen.
        legend: what to list; default from which layers are given.
        window: explicit (lo, hi) grey window.
    """
    a = np.asarray(anatomy)
    lo, hi = window or grey_window(a, head)
    top = (
        anomaly_max if anomaly_max is not None and anomaly_max > anomaly_threshold else anomaly_threshold + ANOMALY_SPAN
    )
    width = 1 if min(a.shape[1:]) < 384 else 2
    out = np.empty(a.shape + (3,), np.uint8)
    for z0 in range(0, a.shape[0], _CHUNK):  # slabs: bounded memory on large volumes
        sl = slice(z0, z0 + _CHUNK)
        out[sl] = _colour(
            a[sl],
            None if lesion is None else lesion[sl],
            None if anomaly is None else anomaly[sl],
            lo,
            hi,
            anomaly_threshold,
            top,
            width,
        )
    if legend is None:
        legend = Legend(
            lesion=None if lesion is None else ("Lesion" if np.any(lesion) else "Lesion (none found)"),
            anomaly=None if anomaly is None else f"Anomaly >= {anomaly_threshold:g}",
        )
    patch = legend_patch(legend, a.shape[1], a.shape[2], spacing_xy)
    if patch is not None:
        ph, pw = patch.shape[:2]
        m = max(1, min(a.shape[1:]) // 64)
        region = out[:, m : m + ph, m : m + pw].astype(np.float32)
        alpha = patch[..., 3:4].astype(np.float32) / 255.0
        out[:, m : m + ph, m : m + pw] = np.rint(region * (1 - alpha) + patch[..., :3] * alpha).astype(np.uint8)
    return out


_CHUNK = 16


def _colour(a, lesion, anomaly, lo, hi, threshold, top, width) -> np.ndarray:
    grey = np.clip((np.nan_to_num(a.astype(np.float32)) - lo) / (hi - lo), 0, 1) * 255.0
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if anomaly is not None:
        m = np.nan_to_num(np.asarray(anomaly, dtype=np.float32))
        on = m >= threshold
        if on.any():
            t = (m[on] - threshold) / (top - threshold)
            alpha = (ANOMALY_ALPHA[0] + (ANOMALY_ALPHA[1] - ANOMALY_ALPHA[0]) * np.clip(t, 0, 1))[:, None]
            rgb[on] = rgb[on] * (1 - alpha) + _ramp(t) * alpha
    if lesion is not None:
        les = np.asarray(lesion) > 0
        if les.any():
            rgb[les] = rgb[les] * (1 - LESION_ALPHA) + np.asarray(LESION_FILL, np.float32) * LESION_ALPHA
            rgb[outline(les, width)] = LESION_OUTLINE
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def key_slice(
    lesion: np.ndarray | None,
    anomaly: np.ndarray | None = None,
    threshold: float = ANOMALY_THRESHOLD,
    nz: int | None = None,
) -> int:
    """The slice that shows most: largest lesion area, else most anomaly, else the middle."""
    for m in (
        (np.asarray(lesion) > 0) if lesion is not None else None,
        (np.nan_to_num(anomaly) >= threshold) if anomaly is not None else None,
    ):
        if m is not None and m.any():
            return int(np.argmax(m.reshape(m.shape[0], -1).sum(axis=1)))
    n = (
        nz
        if nz is not None
        else (lesion.shape[0] if lesion is not None else anomaly.shape[0] if anomaly is not None else 1)
    )
    return n // 2


# --------------------------------------------------------------------------------------------
# Report page
# --------------------------------------------------------------------------------------------
@dataclass
class PageContent:
    """What the report page says; every field is optional."""

    title: str = ""
    subtitle: str = ""
    sections: list | None = None  # [(heading, [line, ...]), ...]; a line may be (text, colour)
    warnings: list | None = None  # [str, ...]
    footer: str = ""
    image: np.ndarray | None = None  # (h, w, 3) uint8 key-slice picture
    image_caption: str = ""
    image_aspect: float = 1.0  # displayed height / width of one pixel (dy / dx)


WHITE = (240, 240, 240)
GREY = (170, 170, 170)
HEAD = (120, 200, 255)
WARN = (255, 190, 60)
BANNER = (170, 0, 0)


def _wrap(text: str, f, width_px: float) -> list[str]:
    """Word-wrap ``text`` to ``width_px`` with font ``f``; very long words are cut."""
    text = ascii_text(text)
    avg = max(f.getlength("abcdefghijklmnopqrstuvwxyz") / 26, 1.0)
    chars = max(8, int(width_px / avg))
    out = []
    for para in text.splitlines() or [""]:
        lines = textwrap.wrap(para, chars, break_long_words=True, break_on_hyphens=False) or [""]
        for ln in lines:
            while f.getlength(ln) > width_px and len(ln) > 4:  # the estimate was too generous
                cut = max(4, int(len(ln) * width_px / f.getlength(ln)) - 1)
                out.append(ln[:cut])
                ln = ln[cut:]
            out.append(ln)
    return out


def report_page(content: PageContent, size: int = 1024) -> np.ndarray:
    """Render the report as an RGB uint8 ``(size, size, 3)`` image: title, a red
    research-use-only banner, a key-slice picture top right, sections, warnings (as many as
    fit, then a count of the rest), footer. Never raises for long or odd text."""
    s = size / 1024.0
    img = Image.new("RGB", (size, size), (0, 0, 0))
    d = ImageDraw.Draw(img)
    f_title, f_banner, f_head, f_body, f_small = (font(v * s) for v in (34, 30, 23, 19, 16))
    margin = int(28 * s)
    y = margin
    d.text((margin, y), ascii_text(content.title)[:80], font=f_title, fill=WHITE)
    y += int(42 * s)
    if content.subtitle:
        for ln in _wrap(content.subtitle, f_small, size - 2 * margin)[:2]:
            d.text((margin, y), ln, font=f_small, fill=GREY)
            y += int(21 * s)
    y += int(6 * s)
    bh = int(48 * s)
    d.rectangle((0, y, size, y + bh), fill=BANNER)
    tw = f_banner.getlength(RUO)
    d.text(
        ((size - tw) / 2, y + (bh - 30 * s) / 2 - 3 * s),
        RUO,
        font=f_banner,
        fill=(255, 255, 255),
        stroke_width=max(1, int(s)),
        stroke_fill=(255, 255, 255),
    )
    y += bh + int(16 * s)
    top_y = y

    # key-slice picture, top right
    text_right = size - margin
    if content.image is not None and content.image.ndim == 3 and content.image.shape[2] == 3:
        box = int(380 * s)
        pic = Image.fromarray(np.ascontiguousarray(content.image.astype(np.uint8)))
        h0, w0 = content.image.shape[:2]
        disp_h = h0 * (content.image_aspect if content.image_aspect > 0 else 1.0)
        scale = box / max(w0, disp_h)
        pw, ph = max(1, int(round(w0 * scale))), max(1, int(round(disp_h * scale)))
        pic = pic.resize((pw, ph), Image.Resampling.BILINEAR)
        px = size - margin - pw
        img.paste(pic, (px, top_y))
        d.rectangle((px - 1, top_y - 1, px + pw, top_y + ph), outline=GREY)
        cy = top_y + ph + int(4 * s)
        for ln in _wrap(content.image_caption, f_small, pw)[:2]:
            d.text((px, cy), ln, font=f_small, fill=GREY)
            cy += int(20 * s)
        text_right = px - int(20 * s)
        pic_bottom = cy
    else:
        pic_bottom = top_y
    footer_h = int(56 * s)
    bottom = size - footer_h
    line_h = int(25 * s)

    def width_at(yy):
        return (text_right if yy < pic_bottom + 4 else size - margin) - margin

    # the warnings (e.g. "experimental model: do not interpret") must never be pushed off the
    # page by long sections: keep room for their heading and up to 6 of their lines
    warnings = [w for w in (content.warnings or []) if str(w).strip()]
    warn_lines = 0
    for w in warnings:  # wrap only as many as the reserve can hold (there may be hundreds)
        warn_lines += len(_wrap("- " + str(w), f_body, size - 2 * margin - int(12 * s)))
        if warn_lines >= 6:
            break
    reserve = int(31 * s) + min(warn_lines, 6) * line_h if warnings else 0
    sections_bottom = bottom - reserve

    for heading, lines in content.sections or []:
        if y + line_h * 2 > sections_bottom:
            break
        d.text((margin, y), ascii_text(heading).upper(), font=f_head, fill=HEAD)
        y += int(31 * s)
        for ln in lines or []:
            colour = WHITE
            if isinstance(ln, tuple):
                ln, colour = ln
            for part in _wrap(ln, f_body, width_at(y) - int(12 * s)):
                if y + line_h > sections_bottom:
                    break
                d.text((margin + int(12 * s), y), part, font=f_body, fill=colour)
                y += line_h
        y += int(10 * s)

    if warnings and y + line_h * 2 <= bottom:
        d.text((margin, y), f"WARNINGS ({len(warnings)})", font=f_head, fill=WARN)
        y += int(31 * s)
        shown = 0
        for n, w in enumerate(warnings):
            parts = _wrap("- " + str(w), f_body, width_at(y) - int(12 * s))
            last = n == len(warnings) - 1
            room = (bottom - y) // line_h - (0 if last else 1)  # keep a line for "... and N more"
            if len(parts) > room:
                if room < 1:
                    break
                parts = parts[:room]
                parts[-1] = parts[-1][: max(0, len(parts[-1]) - 3)] + "..."
            for part in parts:
                d.text((margin + int(12 * s), y), part, font=f_body, fill=WARN)
                y += line_h
            shown += 1
        if shown < len(warnings):
            d.text(
                (margin + int(12 * s), y),
                f"... and {len(warnings) - shown} more warning(s): see the text report",
                font=f_body,
                fill=WARN,
            )
    d.line((margin, size - footer_h + int(8 * s), size - margin, size - footer_h + int(8 * s)), fill=GREY)
    for n, ln in enumerate(_wrap(content.footer, f_small, size - 2 * margin)[:2]):
        d.text((margin, size - footer_h + int(14 * s) + n * int(19 * s)), ln, font=f_small, fill=GREY)
    return np.asarray(img, dtype=np.uint8).copy()


def fmt_ml(v) -> str:
    """A volume in mL with sensible precision (``?`` when not a number)."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "?"
    if not math.isfinite(x):
        return "?"
    return f"{x:.2f} mL" if abs(x) < 10 else f"{x:.1f} mL"
