"""report.html in a real browser: headless Chromium (Debian's ``chromium`` package) loads the
page, every embedded figure must decode (``naturalWidth > 0``), the interactive frontier
answers a mouse hover and a legend click, and the page requests nothing.

The set-up installs Chromium with apt-get when it is missing and the tests run as root (CI
machines here); otherwise the test is skipped and says why. Nothing is fetched by the page
itself: it is self-contained, and Chromium runs with its background networking off.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmark.report import FIGURES
from benchmark.report.html import CSP

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
# Appended to a copy of the page: after load, list each image's decoded size in the DOM,
# which --dump-dom then prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify([...document.images].map(
      i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})));
  document.body.appendChild(out);
});
</script>"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    """Path of a Chromium binary, installing Debian's package when possible."""
    path = find_chromium()
    if path:
        return path
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(
            "Chromium is not installed and the tests are not root: cannot apt-get "
            "install chromium (install it to run the page test)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(
            ["apt-get", "update", "-qq"], check=True, env=env, timeout=600, capture_output=True
        )
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
            check=True,
            env=env,
            timeout=900,
            capture_output=True,
        )
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"apt-get install chromium failed (no package registry?): {e}")
    path = find_chromium()
    if path is None:
        pytest.skip("apt-get installed chromium but no chromium binary is on PATH")
    return path


def run_chromium(binary: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_report_figures_load_in_chromium(chromium, tmp_path, fake_report):
    sweep = fake_report.folder
    page = (sweep / "report.html").read_text()
    probe_page = tmp_path / "probe.html"  # the page is self-contained: it works anywhere
    probe_page.write_text(page.replace("</body>", PROBE + "</body>"))

    done = run_chromium(
        chromium, tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe_page.as_uri()
    )
    match = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert match, f"no probe output; chromium exit {done.returncode}: {done.stderr[-2000:]}"
    images = json.loads(html.unescape(match.group(1)))
    assert sorted(i["alt"] for i in images) == sorted(FIGURES)
    for image in images:
        assert image["complete"] and image["width"] > 300 and image["height"] > 200, image

    # A screenshot of the real page (no probe) renders too: what a person opening it sees.
    shot = tmp_path / "report.png"
    done = run_chromium(
        chromium,
        tmp_path,
        "--window-size=1280,2000",
        f"--screenshot={shot}",
        (sweep / "report.html").as_uri(),
    )
    assert shot.is_file() and shot.stat().st_size > 50_000, done.stderr[-2000:]


# Before anything else runs: record every request the page's Content-Security-Policy refused
# (it allows inline scripts, styles and data: images only, so any load is a violation).
LISTEN = """<script>window.__refused = [];
document.addEventListener("securitypolicyviolation",
  e => window.__refused.push(e.violatedDirective + " " + e.blockedURI));</script>"""
# After load: hover the SSD w/ MobileNet v1, 300 px point of the latency frontier with a real
# mousemove at its pixel, read plotly's hover box, then click the first legend entry (SSD).
INTERACT = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const out = {};
  const gd = document.getElementById("frontier-latency");
  const points = gd.data.filter(t => t.hovertext);  // one trace of points per meta-architecture
  out.traces = points.map(t => [t.name, t.meta]);
  const t = points[0], i = t.hovertext.findIndex(h => h.includes("MobileNet v1, 300 px"));
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  gd.querySelector(".nsewdrag").dispatchEvent(new MouseEvent("mousemove", {bubbles: true,
    clientX: box.left + xa._offset + xa.l2p(xa.d2l(t.x[i])),
    clientY: box.top + ya._offset + ya.l2p(t.y[i])}));
  setTimeout(() => {
    out.hover = [...gd.querySelectorAll(".hoverlayer .hovertext text")].map(e => e.textContent);
    const points = () => gd.querySelectorAll(".scatterlayer .point").length;
    out.before = points();
    const entry = [...gd.querySelectorAll(".legend .traces")].find(g => g.textContent === "SSD");
    const toggle = entry.querySelector(".legendtoggle");
    toggle.dispatchEvent(new MouseEvent("mousedown", {bubbles: true}));
    toggle.dispatchEvent(new MouseEvent("mouseup", {bubbles: true}));
    setTimeout(() => {
      out.visible = gd._fullData.filter(d => d.hovertext).map(d => d.visible);
      out.after = points();
      out.resources = performance.getEntriesByType("resource").map(r => r.name);
      out.refused = window.__refused;
      // Sort "All configurations" by latency: one click ascending, a second descending.
      const table = [...document.querySelectorAll("h2")]
        .find(h => h.textContent === "All configurations").nextElementSibling;
      const heads = [...table.querySelectorAll("thead th")];
      const col = heads.findIndex(h => h.textContent.startsWith("latency (ms)"));
      const column = () => [...table.tBodies[0].rows].map(r => parseFloat(r.cells[col].dataset.v));
      heads[col].click();
      out.ascending = column();
      heads[col].click();
      out.descending = column();
      const pre = document.createElement("pre");
      pre.id = "probe";
      pre.textContent = JSON.stringify(out);
      document.body.appendChild(pre);
    }, 1000);
  }, 300);
}, 500));
</script>"""


def _interact(chromium: str, tmp: Path, page: str) -> dict:
    probe_page = tmp / "interact.html"
    page = page.replace("<head>", "<head>" + LISTEN, 1).replace("</body>", INTERACT + "</body>")
    probe_page.write_text(page)
    done = run_chromium(
        chromium,
        tmp,
        "--virtual-time-budget=15000",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # even a request the page made would fail
        "--dump-dom",
        probe_page.as_uri(),
    )
    match = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert match, f"no probe output; chromium exit {done.returncode}: {done.stderr[-2000:]}"
    return json.loads(html.unescape(match.group(1)))


def test_interactive_frontier_hover_legend_offline(chromium, tmp_path, fake_report):
    """Hover shows the configuration and its numbers (the fake's SSD w/ MobileNet v1 at 300 px:
    AP 0.32 * 0.78 * 0.70 * 0.84 = 14.7 %, latency 12 ms, 3 GMACs, 40 + 25 = 65 MiB; see
    report_fakes.fake_result), a legend click hides that meta-architecture's points, a table
    header click sorts by the raw numbers (again: reversed), and the page loads nothing: no
    resource fetched, no request refused by its policy."""
    page = (fake_report.folder / "report.html").read_text()
    out = _interact(chromium, tmp_path, page)
    assert [name for name, _ in out["traces"]] == [
        "SSD",
        "DSSD",
        "RefineDet",
        "Faster R-CNN",
        "R-FCN",
    ]
    assert [family for _, family in out["traces"]] == ["single-shot"] * 3 + ["two-stage"] * 2
    hover = " ".join(out["hover"])
    for text in (
        "SSD w/ MobileNet v1, 300 px",
        "AP 14.7%",
        "latency 12.0 ms",
        "multiply-adds 3.00 GMACs",
        "peak memory 65.0 MiB",
    ):
        assert text in hover, (text, hover)
    assert out["visible"][0] == "legendonly" and all(v is True for v in out["visible"][1:])
    assert out["before"] - out["after"] == 8  # SSD's points gone: 4 extractors x 2 sizes
    assert len(out["ascending"]) == 89 and out["ascending"] == sorted(out["ascending"])
    assert out["descending"] == sorted(out["ascending"], reverse=True)
    assert out["resources"] == [] and out["refused"] == []


def test_offline_check_sees_a_request(chromium, tmp_path):
    """The check above can fail: under the report's own policy (``html.CSP``), an external
    image is refused and the listener sees it (a small page: the check, not the report)."""
    page = tmp_path / "request.html"
    page.write_text(
        f'<html><head><meta http-equiv="Content-Security-Policy" content="{CSP}">{LISTEN}'
        '</head><body><img src="http://127.0.0.1:9/x.png" alt="x"><script>'
        'window.addEventListener("load", () => setTimeout(() => {'
        'const pre = document.createElement("pre"); pre.id = "probe";'
        "pre.textContent = JSON.stringify({refused: window.__refused});"
        "document.body.appendChild(pre); }, 300));</script></body></html>"
    )
    done = run_chromium(
        chromium, tmp_path, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()
    )
    match = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert match, f"no probe output; chromium exit {done.returncode}: {done.stderr[-2000:]}"
    refused = json.loads(html.unescape(match.group(1)))["refused"]
    assert any("127.0.0.1:9" in r for r in refused), refused
