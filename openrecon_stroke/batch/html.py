"""The cohort's visual reports, as fMRIPrep users expect them.

* :func:`subject_page`: one self-contained HTML page per subject/session (every picture inline as
  a PNG data URI, no script): findings, the lesion/anomaly overlay mosaic, the brain mask outline
  mosaic, the report page image, warnings, stage times and the source files.
* :func:`index_page`: the cohort index, one row per subject/session with a thumbnail and a link
  to its page; a click on a column heading sorts by it (``index.html#sort=lesion_volume_ml``
  opens it sorted, ``-`` in front for descending).
"""

from __future__ import annotations

import base64
import html
from datetime import datetime

from .. import APP_NAME, __version__
from ..render import RUO

_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f6f6f6;color:#222}
header{background:#1f2d3d;color:#fff;padding:14px 24px} header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c8d2dc;font-size:13px}
.ruo{background:#a00000;color:#fff;font-weight:bold;text-align:center;padding:6px;letter-spacing:.5px}
main{padding:16px 24px;max-width:1400px} section{background:#fff;border:1px solid #ddd;border-radius:6px;
margin:0 0 16px;padding:12px 16px} h2{font-size:17px;margin:0 0 8px;color:#1f2d3d}
img.fig{max-width:100%;height:auto;display:block;background:#000} .cap{font-size:12px;color:#555;margin:4px 0 0}
table{border-collapse:collapse;font-size:14px} td,th{border-bottom:1px solid #e4e4e4;padding:4px 10px;text-align:left}
th{background:#eef1f4} .warn{color:#8a4b00} ul.warn li{margin:2px 0} .failed{color:#a00000;font-weight:bold}
.ok{color:#176b2c} .partial{color:#8a4b00;font-weight:bold} code{font-size:12px}
th.sortable{cursor:pointer;user-select:none} th.sortable:after{content:' \\2195';color:#999}
"""


def data_uri(png_bytes: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def _ml(v) -> str:
    try:
        return f"{float(v):.2f} mL"
    except (TypeError, ValueError):
        return "n/a"


def _head(title: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="generator" content="{_e(APP_NAME)} {_e(__version__)}">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
    )


def subject_page(job_id: str, report: dict, figures: list[tuple[str, bytes, str]]) -> str:
    """The HTML page of one subject/session.

    Args:
        job_id: ``sub-01_ses-1``.
        report: the session's report (``report_dict`` plus its ``batch`` block).
        figures: ``(heading, png bytes, caption)`` in the order shown.
    """
    f = report.get("findings", {})
    b = report.get("batch", {})
    an = f.get("anomaly") if isinstance(f.get("anomaly"), dict) else {}
    rows = [
        ("Status", b.get("status", "ok")),
        ("Lesions", f.get("lesion_count", "n/a")),
        ("Lesion volume", _ml(f.get("lesion_volume_ml"))),
        ("Anomaly load", _ml(an.get("load_ml")) if an else "n/a"),
    ]
    for k, v in f.items():
        if k.startswith("brain_volume_ml_"):
            rows.append((f"Brain volume ({k.rsplit('_', 1)[-1].upper()})", _ml(v)))
    for k, v in (f.get("models") or {}).items():
        rows.append((f"Model: {k}", v))
    rows.append(("Pipeline", f"{report.get('pipeline', '')} ({APP_NAME} {report.get('version', '')})"))
    rows.append(("Processing time", f"{b.get('time_s', 0):.1f} s on {b.get('host', '?')} (pid {b.get('pid', '?')})"))
    parts = [
        _head(f"{job_id}: {APP_NAME} report"),
        f"<header><h1>{_e(job_id)}</h1><p>{_e(APP_NAME)} {_e(__version__)} &middot; "
        f'{_e(b.get("finished", ""))}</p></header><div class="ruo">{_e(RUO)}</div><main>',
        '<section id="summary"><h2>Summary</h2><table>',
    ]
    parts += [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows]
    parts.append("</table></section>")
    for heading, png, caption in figures:
        parts.append(
            f'<section class="figure"><h2>{_e(heading)}</h2><img class="fig" alt="{_e(heading)}" '
            f'src="{data_uri(png)}"><p class="cap">{_e(caption)}</p></section>'
        )
    warnings = report.get("warnings") or []
    parts.append(f'<section id="warnings"><h2>Warnings ({len(warnings)})</h2>')
    parts.append(
        '<ul class="warn">' + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>" if warnings else "<p>none</p>"
    )
    parts.append(
        '</section><section id="stages"><h2>Stages</h2><table><tr><th>stage</th><th>status</th><th>time</th></tr>'
    )
    status = report.get("stage_status", {})
    for name, t in (report.get("timings_s") or {}).items():
        st = status.get(name, "")
        parts.append(
            f'<tr><td>{_e(name)}</td><td class="{"ok" if st in ("ok", "") else "failed"}">{_e(st)}</td>'
            f"<td>{float(t):.1f} s</td></tr>"
        )
    parts.append('</table></section><section id="sources"><h2>Inputs and outputs</h2><table>')
    for c, uri in (b.get("sources") or {}).items():
        parts.append(f"<tr><th>source {_e(c)}</th><td><code>{_e(uri)}</code></td></tr>")
    for name in b.get("outputs") or []:
        parts.append(f"<tr><th>output</th><td><code>{_e(name)}</code></td></tr>")
    parts.append("</table></section></main></body></html>\n")
    return "".join(parts)


#: Columns of the cohort index: (key in a row, heading, numeric).
INDEX_COLUMNS = (
    ("id", "Subject / session", False),
    ("status", "Status", False),
    ("lesion_count", "Lesions", True),
    ("lesion_volume_ml", "Lesion volume (mL)", True),
    ("anomaly_load_ml", "Anomaly load (mL)", True),
    ("time_s", "Time (s)", True),
    ("warnings", "Warnings", True),
)

_SORT_JS = """
(function(){
  var table=document.getElementById('cohort'), body=table.tBodies[0];
  function key(row,col,num){var v=row.cells[col].getAttribute('data-v');
    if(num){var x=parseFloat(v);return isNaN(x)?-Infinity:x;} return v||'';}
  function sort(name,desc){
    var ths=table.tHead.rows[0].cells, col=-1, num=false;
    for(var i=0;i<ths.length;i++){
      if(ths[i].getAttribute('data-key')===name){col=i;num=ths[i].getAttribute('data-num')==='1';}}
    if(col<0)return;
    var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){var x=key(a,col,num),y=key(b,col,num);return (x<y?-1:x>y?1:0)*(desc?-1:1);});
    rows.forEach(function(r){body.appendChild(r);});
    table.setAttribute('data-sorted',(desc?'-':'')+name);
  }
  var ths=table.tHead.rows[0].cells;
  for(var i=0;i<ths.length;i++){(function(th){th.addEventListener('click',function(){
    var n=th.getAttribute('data-key'), cur=table.getAttribute('data-sorted');
    sort(n,cur===n);});})(ths[i]);}
  var m=/sort=(-?)([a-z_]+)/.exec(location.hash); if(m){sort(m[2],m[1]==='-');}
})();
"""


def index_page(rows: list[dict], title: str = "") -> str:
    """The cohort index. Each row: ``id`` (page link target ``<id>.html``), ``status``,
    ``lesion_count``, ``lesion_volume_ml``, ``anomaly_load_ml``, ``time_s``, ``warnings``,
    ``thumbnail`` (relative path of a PNG or None), ``error`` (for failures)."""
    n_ok = sum(1 for r in rows if r.get("status") != "failed")
    parts = [
        _head(f"{APP_NAME} cohort report"),
        f"<header><h1>{_e(title or 'Cohort report')}</h1><p>{len(rows)} subject/session(s), "
        f"{n_ok} processed, {len(rows) - n_ok} failed &middot; {_e(APP_NAME)} {_e(__version__)} &middot; "
        f'{datetime.now():%Y-%m-%d %H:%M}</p></header><div class="ruo">{_e(RUO)}</div><main><section>'
        "<p>Click a column heading to sort; click a subject to open its report.</p>"
        '<table id="cohort"><thead><tr><th>Overlay</th>',
    ]
    parts += [f'<th class="sortable" data-key="{k}" data-num="{int(num)}">{_e(h)}</th>' for k, h, num in INDEX_COLUMNS]
    parts.append("</tr></thead><tbody>")
    for r in rows:
        thumb = f'<img alt="{_e(r["id"])}" height="96" src="{_e(r["thumbnail"])}">' if r.get("thumbnail") else ""
        cells = []
        for k, _, num in INDEX_COLUMNS:
            v = r.get(k)
            if k == "id":
                shown = (
                    f'<a href="{_e(r["id"])}.html">{_e(v)}</a>'
                    if r.get("status") != "failed"
                    else f'{_e(v)}<br><span class="failed">{_e(r.get("error", ""))[:300]}</span>'
                )
            elif k == "status":
                cls = "ok" if v == "ok" else "failed" if v == "failed" else "partial"
                shown = f'<span class="{cls}">{_e(v)}</span>'
            elif num and isinstance(v, float):
                shown = f"{v:.2f}"
            else:
                shown = _e("n/a" if v is None else v)
            cells.append(f'<td data-v="{_e("" if v is None else v)}">{shown}</td>')
        parts.append(f'<tr data-id="{_e(r["id"])}"><td>{thumb}</td>{"".join(cells)}</tr>')
    parts.append(f"</tbody></table></section></main><script>{_SORT_JS}</script></body></html>\n")
    return "".join(parts)
