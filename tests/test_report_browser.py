"""report.html in a real headless Chromium (Debian's `chromium`): every table fits the page,
every figure decodes, the tables sort, and a screenshot is taken of the whole page.

The page is loaded with a small script added to a copy of it that measures the laid-out page
and writes what it found into the DOM, which `--dump-dom` prints. Without chromium the test
is skipped, saying so; `.ci/run` installs chromium and sets MHC_REQUIRE_CHROMIUM=1, which
turns that skip into a failure, so CI never passes without looking at the page.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from report_helpers import full_report

WIDTH = 1024  # a small laptop window: the report's column is narrower than its 1100 px maximum here

# Measures after load: a table or preformatted block wider than the body's content box (or
# scrolling inside itself), a page that scrolls sideways, images that did not decode; then
# sorts the first table by its third column both ways. Output: JSON in <pre id="layout-check">.
CHECK = r"""<script>
window.addEventListener("load", function () {
  var body = document.body, style = getComputedStyle(body);
  var right = body.getBoundingClientRect().right - parseFloat(style.paddingRight);
  var out = {viewport: document.documentElement.clientWidth, scroll: document.documentElement.scrollWidth,
             right: right, tables: 0, images: 0, wide: [], broken: []};
  document.querySelectorAll("table, pre").forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (el.tagName === "TABLE") out.tables++;
    if (r.right > right + 1 || el.scrollWidth > el.clientWidth + 2)
      out.wide.push({tag: el.tagName, right: Math.round(r.right), text: el.textContent.slice(0, 80)});
  });
  document.querySelectorAll("img").forEach(function (img) {
    out.images++;
    if (!img.complete || img.naturalWidth === 0) out.broken.push(img.alt || img.src.slice(0, 80));
  });
  var table = document.querySelector("table.sortable");
  if (table && table.tHead.rows[0].cells.length > 2) {
    var th = table.tHead.rows[0].cells[2];
    var column = function () { return Array.prototype.map.call(table.tBodies[0].rows, function (r) { return r.cells[2].textContent; }); };
    th.click(); out.ascending = column();
    th.click(); out.descending = column();
  }
  var pre = document.createElement("pre");
  pre.id = "layout-check";
  pre.textContent = JSON.stringify(out);
  body.appendChild(pre);
});
</script>"""


@pytest.fixture(scope="module")
def chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = "chromium is not installed (apt-get install chromium): report.html is not checked in a browser"
        if os.environ.get("MHC_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"MHC_REQUIRE_CHROMIUM=1 but {reason}")
        pytest.skip(reason)
    return found


def run_chromium(chromium, tmp_path, *args) -> str:
    profile = tmp_path / "chromium-profile"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={profile}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def layout(chromium, page: Path, tmp_path) -> dict:
    """What CHECK found on `page`, laid out in a WIDTH-pixel window."""
    probe = tmp_path / f"probe-{page.name}"
    probe.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    dom = run_chromium(chromium, tmp_path, f"--window-size={WIDTH},900", "--virtual-time-budget=15000", "--dump-dom",
                       probe.as_uri())
    found = re.search(r'<pre id="layout-check">(.*?)</pre>', dom, re.S)
    assert found, "the check script did not run: " + dom[-500:]
    return json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"'))


def test_the_check_sees_a_table_off_the_page_and_a_broken_image(chromium, tmp_path):
    """The measure itself: a page that is wrong in both ways is caught in both ways."""
    bad = tmp_path / "bad.html"
    cells = "".join(f"<td>column_{i}_value_without_breaks</td>" for i in range(20))
    bad.write_text(f"<!doctype html><html><body style='max-width:600px'><table><tr>{cells}</tr></table>"
                   "<img alt='missing' src='data:image/png;base64,AAAA'></body></html>")
    found = layout(chromium, bad, tmp_path)
    assert [w["tag"] for w in found["wide"]] == ["TABLE"] and found["broken"] == ["missing"]


def test_report_html_fits_the_page_in_chromium_and_its_tables_sort(chromium, tmp_path_factory, data_cache, tmp_path):
    report = full_report(tmp_path_factory.mktemp("browser") / "runs", data_cache, seeds=(0,))
    page = report / "report.html"
    found = layout(chromium, page, tmp_path)
    assert found["wide"] == [], f"wider than the page at {WIDTH} px: {found['wide']}"
    assert found["tables"] >= 6 and found["images"] >= 6, found
    assert found["scroll"] <= found["viewport"], "the page scrolls sideways"
    assert found["broken"] == [], f"figures that do not decode: {found['broken']}"

    def numbers(cells):
        return [float(c.split(" ")[0]) for c in cells]

    up, down = numbers(found["ascending"]), numbers(found["descending"])
    assert up == sorted(up) and down == sorted(up, reverse=True) and len(up) >= 2
    shot = tmp_path / "report.png"
    run_chromium(chromium, tmp_path, f"--window-size={WIDTH},4000", f"--screenshot={shot}", page.as_uri())
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
