"""The --html pages of `vidcc explain` / `vidcc diff`, opened in headless Chromium.

Needs Debian's `chromium` (install: `sh tests/setup_browser.sh`, as root). Each page is loaded with
--dump-dom (the DOM after its scripts ran) and --enable-logging=stderr, which prints every console
message as a CONSOLE line: the only one allowed is the page's own self-check line, so a script error,
a Content-Security-Policy violation (any fetch) or a warning fails the test. The numbers in the DOM
are compared with the --json report of the same run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.cli.explain_models import bookkeeping_model, explain_plugin  # noqa: F401  (a fixture)
from vidcc.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed: run `sh tests/setup_browser.sh` (apt-get install -y chromium)")


def open_in_browser(page: Path, fragment: str = "") -> tuple[str, list[str]]:
    """(DOM after scripts ran, console messages) of a page in headless Chromium, offline."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}", "--enable-logging=stderr",
             "--v=0", "--dump-dom", page.resolve().as_uri() + fragment],
            capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


class _Cells(HTMLParser):
    """Text of every <td data-k> by (table id, row data-pass, key)."""

    def __init__(self):
        super().__init__()
        self.cells: dict[tuple[str, str, str], str] = {}
        self.table = self.row = self.key = None
        self.attrs_of: dict[str, dict[str, str]] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.attrs_of[a["id"]] = a
        if tag == "table":
            self.table = a.get("id")
        elif tag == "tr":
            self.row = a.get("data-pass", "")
        elif tag == "td" and "data-k" in a:
            self.key = a["data-k"]
            self.cells[(self.table, self.row, self.key)] = ""

    def handle_endtag(self, tag):
        if tag == "td":
            self.key = None

    def handle_data(self, data):
        if self.key is not None:
            self.cells[(self.table, self.row, self.key)] += data.strip()


def cells(dom: str) -> _Cells:
    parser = _Cells()
    parser.feed(dom)
    return parser


def run_cli(capsys, *args) -> dict:
    code = main([str(a) for a in args])
    out, _ = capsys.readouterr()
    assert code == 0, out
    return json.loads(out) if "--json" in args else {}


def signed(n: int) -> str:
    return f"+{n}" if n > 0 else str(n)


def assert_offline(html: str) -> None:
    refs = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', html)
    assert all(r.startswith("#") for r in refs), refs
    assert "<link" not in html and "@import" not in html and "url(" not in html


def assert_clean_load(dom: str, console: list[str]) -> _Cells:
    assert len(console) == 1 and "vidcc-selfcheck ok" in console[0], console
    c = cells(dom)
    assert c.attrs_of["selfcheck"]["data-status"] == "ok"
    return c


def test_explain_page_loads_and_shows_the_json_numbers(capsys, tmp_path, mlp_path):
    page = tmp_path / "r.html"
    report = run_cli(capsys, "explain", mlp_path, "-p", "remove-identity,dce", "--json", "--html", page)
    html = page.read_text()
    assert_offline(html)
    dom, console = open_in_browser(page)
    c = assert_clean_load(dom, console)
    for p in report["passes"]:
        n = p["changes"]["counts"]
        for key in ("nodes_before", "nodes_after", "added", "removed", "rewritten", "precision", "types"):
            assert c.cells[("summary-table", str(p["index"]), key)] == str(n[key]), (p["name"], key)
        assert c.cells[("summary-table", str(p["index"]), "macs")] == signed(p["changes"]["cost"]["macs"])
    s = report["summary"]
    for key in ("nodes_before", "nodes_after", "added", "removed", "rewritten"):
        assert c.cells[("summary-table", "total", key)] == str(s[key])
    for side in ("before", "after"):
        for key in ("nodes", "params", "weight_bytes", "macs"):
            assert c.cells[("graph-table", "", f"{side}.{key}")] == str(report[side][key])
    # every region is drawn twice (before, after); the removed nodes are in the table
    regions = sum(len(p["changes"]["regions"]) for p in report["passes"])
    assert dom.count('<svg class="graph') == 2 * regions > 0
    assert 'data-name="ident"' in dom and "dead_sigmoid" in dom


def test_precision_overlay_and_node_filter(capsys, tmp_path, mlp_path, explain_plugin):
    page = tmp_path / "p.html"
    run_cli(capsys, "explain", mlp_path, "-p", "fake-fuse,dce", "--html", page)
    dom, console = open_in_browser(page, "#filter=fp16&prec")
    assert_clean_load(dom, console)
    assert re.search(r'<body[^>]*class="prec"', dom)
    assert re.search(r'id="node-count">1<', dom)  # only relu is fp16
    assert re.search(r'<g class="node status-rewritten" data-prec="fp16" data-name="relu"', dom)
    assert "mask input is not constant" in dom and "48/64 channels kept" in dom


def test_diff_page(capsys, tmp_path):
    onnxslim = pytest.importorskip("onnxslim")
    import onnx

    model = bookkeeping_model(2)
    a, b, page = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "d.html"
    onnx.save(model, a)
    onnx.save(onnxslim.slim(model), b)
    report = run_cli(capsys, "diff", a, b, "--json", "--html", page)
    assert_offline(page.read_text())
    dom, console = open_in_browser(page)
    c = assert_clean_load(dom, console)
    for key in ("added", "removed", "rewritten"):
        assert c.cells[("counts-table", "", f"counts.{key}")] == str(report["changes"]["counts"][key])
    for side in ("a", "b"):
        assert c.cells[("graph-table", "", f"{side}.nodes")] == str(report[side]["summary"]["nodes"])
    assert dom.count('class="node status-removed"') >= 11


@pytest.mark.slow
def test_zoo_explain_for_the_ort_target(capsys, tmp_path):
    """The issue's acceptance run: `vidcc explain svd-unet:tiny --target ort --html r.html`."""
    from vidcc import plugins, zoo

    if not hasattr(zoo, "export") or "ort" not in plugins.registry().targets:
        pytest.skip("needs the zoo and the ort target")
    page = tmp_path / "r.html"
    try:
        report = run_cli(capsys, "explain", "svd-unet:tiny", "--target", "ort", "--json", "--html", page)
    except AssertionError:
        raise
    except Exception as exc:  # the zoo extra (torch, diffusers) is optional
        pytest.skip(f"zoo export unavailable: {exc}")
    dom, console = open_in_browser(page)
    c = assert_clean_load(dom, console)
    assert c.cells[("summary-table", "total", "nodes_after")] == str(report["summary"]["nodes_after"])
    fusions = [p for p in report["passes"] if p["name"].startswith("fuse")]
    assert fusions and all(isinstance(p["events"].get("fused", 0), int) for p in fusions)
    assert sum(p["events"].get("fused", 0) for p in fusions) > 0
