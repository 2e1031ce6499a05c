"""report.html in a real browser: headless Chromium (Debian's ``chromium`` package) loads the
page and every embedded figure must decode (``naturalWidth > 0``).

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
