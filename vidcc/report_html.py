"""One standalone, offline HTML page for an explain or diff report.

Everything is inline: CSS, a few lines of plain JS (node filter, precision overlay, self-check), the SVG
drawings of each changed region (vidcc.graph_svg) and the report itself as JSON. A Content-Security-
Policy forbids every fetch, so a page that tried to load something would fail loudly in the console.
The self-check compares the numbers shown with the embedded report and writes its verdict into
#selfcheck (data-status="ok" or "fail"), which is what the headless-browser test reads.
"""

from __future__ import annotations

import json
import os
import tempfile
from html import escape
from pathlib import Path
from typing import Any

from vidcc.errors import VidccError
from vidcc.events import describe, group
from vidcc.graph_svg import svg

LIST_LIMIT = 300  # node names listed per category in a pass before "... and N more"
TABLE_LIMIT = 50_000  # rows of the node table (a page, not a database)


def fmt(n: Any) -> str:
    return "" if n is None else str(n)


def signed(n: int) -> str:
    return f"+{n}" if n > 0 else str(n)


# ---- pieces --------------------------------------------------------------------------------------

def _ref(r: dict[str, Any]) -> str:
    return f'<code>{escape(r["name"])}</code> <span class="op">{escape(r["op"])}</span>'


def _list(label: str, cls: str, items: list[str]) -> str:
    if not items:
        return ""
    shown = items[:LIST_LIMIT]
    more = f'<li class="more">... and {len(items) - len(shown)} more</li>' if len(items) > len(shown) else ""
    return (f'<div class="list {cls}"><h4>{label} <span class="n">{len(items)}</span></h4><ul>'
            + "".join(f"<li>{i}</li>" for i in shown) + more + "</ul></div>")


def _ops(delta: dict[str, int]) -> str:
    if not delta:
        return ""
    cells = "".join(f'<span class="chip {"neg" if d < 0 else "pos"}">{escape(op)} {signed(d)}</span>'
                    for op, d in sorted(delta.items(), key=lambda kv: (-abs(kv[1]), kv[0])))
    return f'<div class="ops"><h4>op histogram</h4>{cells}</div>'


def changes_html(ch: dict[str, Any]) -> str:
    c = ch["cost"]
    parts = [
        _list("removed", "removed", [_ref(r) for r in ch["removed"]]),
        _list("added", "added", [_ref(r) for r in ch["added"]]),
        _list("rewritten", "rewritten", [f'{_ref(r)} <span class="what">{escape(", ".join(r["what"]))}'
                                         + (f' ({escape(", ".join(r["attrs"]))})' if r.get("attrs") else "")
                                         + "</span>" for r in ch["rewritten"]]),
        _list("precision", "precision", [f'{_ref(r)} {escape(fmt(r["from"]) or "unassigned")} &rarr; '
                                         f'{escape(fmt(r["to"]) or "unassigned")}' for r in ch["precision"]]),
        _ops(ch["ops_delta"]),
    ]
    if ch["counts"]["types"]:
        parts.append(f'<p class="dim">tensor types inferred or changed: {ch["counts"]["types"]}</p>')
    if any(c[k] for k in ("params", "weight_bytes", "constants", "macs")):
        parts.append(f'<p class="cost">params {signed(c["params"])}, weight bytes {signed(c["weight_bytes"])}, '
                     f'constants {signed(c["constants"])}, MACs {signed(c["macs"])}'
                     + (f' ({c["macs_unknown"]} changed nodes of unknown cost)' if c["macs_unknown"] else "") + "</p>")
    parts.append(regions_html(ch))
    return "".join(parts)


def regions_html(ch: dict[str, Any]) -> str:
    if not ch["regions"]:
        return ""
    out = ['<div class="regions"><h4>changed regions, before &rarr; after</h4>']
    for r in ch["regions"]:
        b, a = r["before"], r["after"]
        note = ""
        if b["context_omitted"] or a["context_omitted"]:
            note = f'<p class="note">{b["context_omitted"] + a["context_omitted"]} more neighbours not drawn</p>'
        rid = r["id"]
        before_svg = svg(b["nodes"], b["edges"], label=f"region {rid} before")
        after_svg = svg(a["nodes"], a["edges"], label=f"region {rid} after")
        out.append(f'<div class="region" data-region="{rid}"><div class="side"><h5>before</h5>{before_svg}</div>'
                   f'<div class="arrow">&rarr;</div><div class="side"><h5>after</h5>{after_svg}</div>{note}</div>')
    if ch["regions_omitted"]:
        out.append(f'<p class="note">{ch["regions_omitted"]} more regions not drawn (see the lists above)</p>')
    out.append("</div>")
    return "".join(out)


def details_html(details: list[Any]) -> str:
    out = []
    for kind, items in group(details).items():
        shown = items[:LIST_LIMIT]
        more = f'<li class="more">... and {len(items) - len(shown)} more</li>' if len(items) > len(shown) else ""
        out.append(f'<div class="list event-{escape(kind)}"><h4>{escape(kind)} <span class="n">{len(items)}</span></h4>'
                   "<ul>" + "".join(f"<li>{escape(describe(d))}</li>" for d in shown) + more + "</ul></div>")
    return "".join(out)


def node_table(rows: list[dict[str, Any]]) -> str:
    shown = rows[:TABLE_LIMIT]
    body = []
    for r in shown:
        prec = r.get("precision") or "none"
        by = ", ".join(dict.fromkeys(r.get("by", [])))
        search = " ".join((r["name"], r["op"], r["status"], prec, by)).lower()
        body.append(f'<tr class="status-{escape(r["status"])}" data-prec="{escape(prec)}" data-search="{escape(search)}">'
                    f'<td>{r["id"]}</td><td><code>{escape(r["name"])}</code></td><td>{escape(r["op"])}</td>'
                    f'<td class="prec">{escape(r.get("precision") or "")}</td><td>{escape(r["status"])}</td>'
                    f"<td>{escape(by)}</td></tr>")
    note = f'<p class="note">first {len(shown)} of {len(rows)} nodes</p>' if len(rows) > len(shown) else ""
    return ('<section id="nodes"><h2>nodes</h2><p><input id="node-filter" type="search" '
            'placeholder="filter: name, op, status, precision or pass" size="48"> '
            f'<span id="node-count">{len(shown)}</span> shown</p>{note}'
            '<table id="node-table"><thead><tr><th>id</th><th>name</th><th>op</th><th>precision</th><th>status</th>'
            '<th>changed by</th></tr></thead><tbody>' + "".join(body) + "</tbody></table></section>")


# ---- pages ---------------------------------------------------------------------------------------

_GRAPH_ROWS = (("nodes", "nodes"), ("params", "params"), ("weight_bytes", "weight bytes"), ("constants", "constants"),
               ("macs", "MACs"), ("nodes_with_unknown_cost", "nodes of unknown cost"))


def render_explain(report: dict[str, Any], nodes: list[dict[str, Any]]) -> str:
    s, b, a = report["summary"], report["before"], report["after"]
    rows = []
    for p in report["passes"]:
        ch = p["changes"]
        n = ch["counts"] if ch else {}
        cost = ch["cost"] if ch else {}
        state = "failed" if p["error"] else ("changed" if p["modified"] else "no change")
        rows.append(f'<tr data-pass="{p["index"]}" class="{"failed" if p["error"] else ""}">'
                    f'<td>{p["index"]}</td><td><a href="#pass-{p["index"]}">{escape(p["name"])}</a></td>'
                    f'<td>{state}</td><td data-k="nodes_before">{fmt(n.get("nodes_before"))}</td>'
                    f'<td data-k="nodes_after">{fmt(n.get("nodes_after"))}</td><td data-k="added">{fmt(n.get("added"))}</td>'
                    f'<td data-k="removed">{fmt(n.get("removed"))}</td><td data-k="rewritten">{fmt(n.get("rewritten"))}</td>'
                    f'<td data-k="precision">{fmt(n.get("precision"))}</td><td data-k="types">{fmt(n.get("types"))}</td>'
                    f'<td data-k="params">{signed(cost["params"]) if cost else ""}</td>'
                    f'<td data-k="macs">{signed(cost["macs"]) if cost else ""}</td>'
                    f'<td>{escape(", ".join(f"{k} {v}" for k, v in p["events"].items()))}</td>'
                    f'<td>{p["seconds"] * 1e3:.1f}</td></tr>')
    rows.append(f'<tr data-pass="total" class="total"><td></td><td>total</td><td>{s["modified"]}/{s["passes"]} changed</td>'
                f'<td data-k="nodes_before">{s["nodes_before"]}</td><td data-k="nodes_after">{s["nodes_after"]}</td>'
                f'<td data-k="added">{s["added"]}</td><td data-k="removed">{s["removed"]}</td>'
                f'<td data-k="rewritten">{s["rewritten"]}</td><td data-k="precision">{s["precision_changes"]}</td><td></td>'
                f'<td data-k="params">{signed(s["params"])}</td><td data-k="macs">{signed(s["macs"])}</td>'
                f'<td>{escape(", ".join(f"{k} {v}" for k, v in s["events"].items()))}</td>'
                f'<td>{s["seconds"] * 1e3:.1f}</td></tr>')
    graph_rows = "".join(
        f'<tr><th>{label}</th><td data-k="before.{k}">{b[k]}</td><td data-k="after.{k}">{a[k]}</td>'
        f"<td>{signed(a[k] - b[k])}</td></tr>"
        for k, label in _GRAPH_ROWS)
    at = f" (MACs at {escape(json.dumps(b['macs_at']))})" if b.get("macs_at") else ""
    passes = []
    for p in report["passes"]:
        ch = p["changes"]
        body = [f'<p class="error">{escape(p["error"])}</p>' if p["error"] else ""]
        if p["stats"]:
            body.append('<p class="stats">' + escape(", ".join(f"{k}={v}" for k, v in p["stats"].items())) + "</p>")
        body.append(details_html(p["details"]))
        if ch is not None:
            body.append(changes_html(ch))
        changed = bool(p["error"] or p["details"] or (ch and (ch["counts"]["added"] or ch["counts"]["removed"]
                                                              or ch["counts"]["rewritten"] or ch["counts"]["precision"])))
        passes.append(f'<details class="pass" id="pass-{p["index"]}" data-name="{escape(p["name"])}"'
                      f'{" open" if changed else ""}><summary><b>{p["index"]}. {escape(p["spec"])}</b> '
                      f'<span class="dim">[{escape(p["plugin"])}] {p["seconds"] * 1e3:.1f} ms'
                      f'{" lossy" if p["lossy"] else ""}</span></summary>{"".join(body) or "<p>no change</p>"}</details>')
    error = f'<p class="error">pipeline stopped: {escape(report["error"])}</p>' if report.get("error") else ""
    title = f"vidcc explain: {report['model']}"
    main = (
        f'<header><h1>{escape(title)}</h1><p>target <b>{escape(report["target"] or "none")}</b>, pipeline '
        f'<code>{escape(report["pipeline"] or "(empty)")}</code>, file <code>{escape(report["path"])}</code>, '
        f'vidcc {escape(report["vidcc"])}</p>{_controls()}</header>{error}'
        '<section id="summary"><h2>passes</h2><table id="summary-table"><thead><tr><th>#</th><th>pass</th>'
        '<th>result</th><th>nodes before</th><th>nodes after</th><th>added</th><th>removed</th><th>rewritten</th>'
        '<th>precision</th><th>types</th><th>params &Delta;</th><th>MACs &Delta;</th><th>events</th><th>ms</th></tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table>'
        f'<h2>graph</h2><table id="graph-table"><thead><tr><th></th><th>before</th><th>after</th><th>&Delta;</th>'
        f'</tr></thead><tbody>{graph_rows}</tbody></table><p class="note">{at}</p></section>'
        f'<section id="passes"><h2>what each pass did</h2>{"".join(passes)}</section>'
        + node_table(nodes))
    return _page(title, main, report)


def render_diff(report: dict[str, Any], nodes: list[dict[str, Any]]) -> str:
    a, b, m, ch = report["a"]["summary"], report["b"]["summary"], report["match"], report["changes"]
    graph_rows = "".join(
        f'<tr><th>{label}</th><td data-k="a.{k}">{a[k]}</td><td data-k="b.{k}">{b[k]}</td><td>{signed(b[k] - a[k])}</td></tr>'
        for k, label in _GRAPH_ROWS)
    counts = "".join(f'<tr><th>{k}</th><td data-k="counts.{k}">{ch["counts"][k]}</td></tr>'
                     for k in ("added", "removed", "rewritten", "precision"))
    matched = ", ".join(f"{k} {m[k]}" for k in ("name", "output", "structure", "neighbours"))
    title = "vidcc diff"
    main = (
        f'<header><h1>{title}</h1><p>A <code>{escape(report["a"]["path"])}</code><br>B '
        f'<code>{escape(report["b"]["path"])}</code><br>vidcc {escape(report["vidcc"])}</p>{_controls()}</header>'
        '<section id="summary"><h2>summary</h2><table id="graph-table"><thead><tr><th></th><th>A</th><th>B</th>'
        f'<th>&Delta;</th></tr></thead><tbody>{graph_rows}</tbody></table>'
        f'<table id="counts-table"><tbody>{counts}</tbody></table>'
        f'<p class="note">matched by {escape(matched)}; only in A {m["unmatched_a"]}, only in B {m["unmatched_b"]}</p>'
        f'</section><section id="passes"><h2>changes</h2><div class="pass">{changes_html(ch)}</div></section>'
        + node_table(nodes))
    return _page(title, main, report)


def _controls() -> str:
    legend = "".join(f'<span class="key status-{s}">{s}</span>' for s in ("removed", "added", "rewritten", "context"))
    precs = "".join(f'<span class="key prec-key" data-prec="{p}">{p}</span>' for p in ("fp32", "fp16", "bf16", "int8", "none"))
    return (f'<p class="controls">{legend} <label><input type="checkbox" id="prec-toggle"> precision overlay</label> '
            f'<span class="prec-legend">{precs}</span></p><p id="selfcheck" data-status="pending">self-check: pending</p>')


def _page(title: str, main: str, report: dict[str, Any]) -> str:
    # JSON inside <script>: escape <, > and & so no string in the report can end the element.
    data = json.dumps(report, sort_keys=True).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
            "script-src 'unsafe-inline'; img-src data:\">"
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>{main}"
            f'<script type="application/json" id="vidcc-report">{data}</script><script>{_JS}</script></body></html>\n')


def write_page(path: str | os.PathLike, text: str) -> Path:
    """Write atomically: a temporary file in the same directory, renamed into place."""
    path = Path(path)
    if not path.parent.is_dir():
        raise VidccError(f"cannot write '{path}': directory '{path.parent}' does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a report is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 1.5em 3em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
h4{margin:.6em 0 .2em;font-size:1em}h5{margin:.2em 0}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}
#summary-table td:nth-child(2){text-align:left}#node-table td,#node-table th{text-align:left}
tr.total{font-weight:bold;background:#f6f6f6}tr.failed{background:#fee}
code{font:12px ui-monospace,monospace}.op{color:#555}.dim,.note{color:#777}.error{color:#b00}
details.pass{border:1px solid #ddd;border-radius:6px;margin:.5em 0;padding:.3em .8em}
details.pass>summary{cursor:pointer}
.list ul{margin:.1em 0;padding-left:1.4em;max-height:16em;overflow:auto}.n{color:#777;font-weight:normal}
.list.removed h4{color:#b22}.list.added h4{color:#282}.list.rewritten h4{color:#a70}
.event-refused h4{color:#a70}.event-fused h4{color:#282}
.chip{display:inline-block;border-radius:4px;padding:0 6px;margin:2px;font-size:12px}
.chip.neg{background:#fdd}.chip.pos{background:#dfd}
.region{display:flex;align-items:flex-start;gap:1em;overflow:auto;border-top:1px dashed #ddd;padding:.5em 0}
.side{flex:0 0 auto}.arrow{align-self:center;font-size:2em;color:#999}
svg.graph text{font:11px ui-monospace,monospace;text-anchor:middle;fill:#222}svg.graph text.op{font-weight:bold}
svg.graph .edge{fill:none;stroke:#999;stroke-width:1.2}
.node rect{stroke-width:2;fill:#fff}
.status-removed rect{fill:#fdd;stroke:#c33}.status-added rect{fill:#dfd;stroke:#2a2}
.status-rewritten rect{fill:#ffefc2;stroke:#d90}.status-context rect{fill:#f3f3f3;stroke:#aaa}
.key{display:inline-block;padding:0 6px;margin:0 2px;border-radius:4px;border:2px solid}
.key.status-removed{background:#fdd;border-color:#c33}.key.status-added{background:#dfd;border-color:#2a2}
.key.status-rewritten{background:#ffefc2;border-color:#d90}.key.status-context{background:#f3f3f3;border-color:#aaa}
.prec-legend{display:none}body.prec .prec-legend{display:inline}.prec-key{border-color:#888}
body.prec [data-prec=fp32] rect,body.prec .prec-key[data-prec=fp32],body.prec tr[data-prec=fp32] td.prec{fill:#cfe3ff;background:#cfe3ff}
body.prec [data-prec=fp16] rect,body.prec .prec-key[data-prec=fp16],body.prec tr[data-prec=fp16] td.prec{fill:#ffd59e;background:#ffd59e}
body.prec [data-prec=bf16] rect,body.prec .prec-key[data-prec=bf16],body.prec tr[data-prec=bf16] td.prec{fill:#e5ccff;background:#e5ccff}
body.prec [data-prec=int8] rect,body.prec .prec-key[data-prec=int8],body.prec tr[data-prec=int8] td.prec{fill:#c8f0e0;background:#c8f0e0}
body.prec [data-prec=none] rect,body.prec .prec-key[data-prec=none]{fill:#fff;background:#fff}
#node-table tr.status-removed td{color:#b22;text-decoration:line-through}#node-table tr.status-added td{color:#282}
#node-table tr.status-rewritten td{color:#a70}
#selfcheck{font-size:12px;color:#777}#selfcheck[data-status=fail]{color:#b00;font-weight:bold}
"""

# Plain JS, no libraries. The self-check recomputes from the embedded JSON what each marked cell must show.
_JS = r"""
(function () {
  var box = document.getElementById('selfcheck');
  function fail(msg) { box.dataset.status = 'fail'; box.textContent = 'self-check: ' + msg; }
  window.addEventListener('error', function (e) { fail('script error: ' + e.message); });
  var R = JSON.parse(document.getElementById('vidcc-report').textContent);
  function signed(n) { return n > 0 ? '+' + n : String(n); }
  function str(v) { return v === null || v === undefined ? '' : String(v); }
  var want = [];
  var GRAPH_KEYS = ['nodes', 'params', 'weight_bytes', 'constants', 'macs', 'nodes_with_unknown_cost'];
  function expect(sel, value) { want.push([sel, value]); }
  if (R.kind === 'explain') {
    R.passes.forEach(function (p) {
      var row = '#summary-table tr[data-pass="' + p.index + '"] td[data-k="';
      var n = p.changes ? p.changes.counts : {}, c = p.changes ? p.changes.cost : null;
      ['nodes_before', 'nodes_after', 'added', 'removed', 'rewritten', 'precision', 'types'].forEach(function (k) {
        expect(row + k + '"]', str(n[k]));
      });
      expect(row + 'params"]', c ? signed(c.params) : '');
      expect(row + 'macs"]', c ? signed(c.macs) : '');
    });
    var s = R.summary, t = '#summary-table tr[data-pass="total"] td[data-k="';
    ['nodes_before', 'nodes_after', 'added', 'removed', 'rewritten'].forEach(function (k) { expect(t + k + '"]', str(s[k])); });
    expect(t + 'precision"]', str(s.precision_changes));
    expect(t + 'params"]', signed(s.params));
    expect(t + 'macs"]', signed(s.macs));
    GRAPH_KEYS.forEach(function (k) {
      expect('#graph-table td[data-k="before.' + k + '"]', str(R.before[k]));
      expect('#graph-table td[data-k="after.' + k + '"]', str(R.after[k]));
    });
  } else {
    GRAPH_KEYS.forEach(function (k) {
      expect('#graph-table td[data-k="a.' + k + '"]', str(R.a.summary[k]));
      expect('#graph-table td[data-k="b.' + k + '"]', str(R.b.summary[k]));
    });
    ['added', 'removed', 'rewritten', 'precision'].forEach(function (k) {
      expect('#counts-table td[data-k="counts.' + k + '"]', str(R.changes.counts[k]));
    });
  }
  var bad = [];
  want.forEach(function (w) {
    var el = document.querySelector(w[0]);
    var got = el ? el.textContent.trim() : '(missing)';
    if (got !== w[1]) { bad.push(w[0] + ' shows ' + got + ', report has ' + w[1]); }
  });
  if (bad.length) { fail(bad.length + ' mismatches: ' + bad.join('; ')); }
  else if (box.dataset.status !== 'fail') {
    box.dataset.status = 'ok';
    box.textContent = 'self-check: ok, ' + want.length + ' numbers match the embedded report';
  }
  console.log('vidcc-selfcheck ' + box.dataset.status + ' ' + want.length);

  var toggle = document.getElementById('prec-toggle');
  toggle.addEventListener('change', function () { document.body.classList.toggle('prec', toggle.checked); });
  var filter = document.getElementById('node-filter'), count = document.getElementById('node-count');
  var rows = Array.prototype.slice.call(document.querySelectorAll('#node-table tbody tr'));
  filter.addEventListener('input', function () {
    var q = filter.value.trim().toLowerCase(), shown = 0;
    rows.forEach(function (r) {
      var hit = !q || r.dataset.search.indexOf(q) >= 0;
      r.hidden = !hit;
      if (hit) { shown++; }
    });
    count.textContent = String(shown);
  });
  // deep links: page.html#filter=Conv&prec pre-fills the filter and turns the precision overlay on
  var hash = new URLSearchParams(location.hash.slice(1));
  if (hash.has('filter')) { filter.value = hash.get('filter'); filter.dispatchEvent(new Event('input')); }
  if (hash.has('prec')) { toggle.checked = true; toggle.dispatchEvent(new Event('change')); }
})();
"""
