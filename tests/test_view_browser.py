"""`stepdpo view` pages in a real headless Chromium (the browser tier: scripts/test-browser.sh installs Debian's
`chromium` and runs `pytest -m browser`). Each page kind is loaded, its rendered DOM checked and a screenshot
saved under the test's tmp dir; state in the URL hash (#q=..&f=..&p=..) drives search, filter and paging."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest

from test_view import eval_records, localized_records, metrics_records, pairs_records, write_jsonl
from stepdpo_cli.view import write_view

pytestmark = pytest.mark.browser

BROWSER = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser") \
    or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not BROWSER:
        pytest.skip("no chromium on PATH: run scripts/test-browser.sh (installs Debian's chromium)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", f"--user-data-dir={profile}"]

    class Chromium:
        def dom(self, page: str, fragment: str = "") -> str:
            """The DOM after load (the page's script has rendered its first page)."""
            proc = subprocess.run([BROWSER, *flags, "--dump-dom", f"file://{page}" + (f"#{fragment}" if fragment
                                                                                     else "")],
                                  capture_output=True, timeout=120)
            assert proc.returncode == 0, proc.stderr.decode()[-2000:]
            return proc.stdout.decode()

        def screenshot(self, page: str, png: str, height: int = 1600) -> None:
            proc = subprocess.run([BROWSER, *flags, f"--screenshot={png}", f"--window-size=1280,{height}",
                                   f"file://{page}"], capture_output=True, timeout=120)
            assert proc.returncode == 0 and os.path.getsize(png) > 10_000, proc.stderr.decode()[-2000:]

    return Chromium()


def _page(tmp_path, name, rows, **kw) -> str:
    data = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    out = str(tmp_path / f"{name}.html")
    write_view([data], out, **kw)
    return out


def _items(dom: str) -> str:
    """The rendered list only (the inline script's source holds the same markup as string literals)."""
    return dom[dom.index('<main id="items">'):dom.index("</main>")]


def _cards(dom: str, kind: str) -> list[str]:
    return re.findall(rf'<article class="card {kind}">(.*?)</article>', _items(dom), re.S)


def test_pairs_page(browser, tmp_path):
    page = _page(tmp_path, "pairs", pairs_records(120))
    dom = browser.dom(page)
    cards = _cards(dom, "pair")
    assert len(cards) == 50
    assert '<span id="count">120 of 120 matching</span>' in dom and '<span id="page">page 1 / 3</span>' in dom
    # pair p1: chosen " 7 times 3 is 21, so the total is 1 + 21 = 22." vs rejected "... 22, ... 1 + 22 = 23."
    assert re.findall(r'<ins class="add">(.*?)</ins>', cards[1]) == ["21,", "21", "22."]
    assert re.findall(r'<del class="del">(.*?)</del>', cards[1]) == ["22,", "22", "23."]
    assert "error at step 2" in cards[1] and "rollout (hf:ckpt/sft)" in cards[1]
    assert "(empty)" in cards[9] and "<del" not in cards[9]  # an empty rejected: nothing to strike out
    browser.screenshot(page, str(tmp_path / "pairs.png"))

    found = _cards(browser.dom(page, "q=p7%2F&f=&p=1"), "pair")  # search by id
    assert len(found) == 1 and "p7/s0/c0" in found[0]
    found = _cards(browser.dom(page, "q=what%20is%204%20%2B&f=&p=1"), "pair")  # search by text
    assert len(found) == 2 and all("What is 4 +" in c for c in found)  # p4 and p101 (101 % 97 == 4)
    math_dom = browser.dom(page, "q=&f=MATH&p=2")  # filter by dataset, second page
    assert '<span id="count">60 of 120 matching</span>' in math_dom
    assert len(_cards(math_dom, "pair")) == 10 and 'data-page="2"' in math_dom
    assert all(">MATH<" in c for c in _cards(math_dom, "pair"))


def test_localized_page(browser, tmp_path):
    rows = localized_records()
    page = _page(tmp_path, "localized", rows)
    dom = browser.dom(page)
    cards = _cards(dom, "localized")
    assert len(cards) == len(rows)
    wrong = re.findall(r'<li class="wrong">(.*?)<', _items(dom))
    assert wrong == ["Then 12 + 5 = 18."] * sum(r["localize_status"] == "error_found" for r in rows)
    assert _items(dom).count('<li class="after">') == len(wrong)  # step 3 comes after the error
    assert 'data-group="localize status"' in dom and 'data-group="first error step"' in dom
    undecided = _cards(browser.dom(page, "q=&f=undecided&p=1"), "localized")
    assert len(undecided) == 2 and all("undecided" in c and "class=\"wrong\"" not in c for c in undecided)
    browser.screenshot(page, str(tmp_path / "localized.png"))


def test_eval_page(browser, tmp_path):
    rows = eval_records()
    page = _page(tmp_path, "eval", rows)
    dom = browser.dom(page)
    assert re.findall(r'<svg class="chart bars" data-group="([^"]+)"', dom) == [
        "accuracy (95% Wilson interval)", "by dataset", "by level", "by subject"]
    assert dom.count('<rect class="bar"') == 1 + 1 + 5 + 2
    cards = _cards(dom, "eval")  # the default filter lists the wrong answers
    assert len(cards) == sum(not r["correct"] for r in rows) == 14
    assert '<span class="prediction">1</span>' in cards[0] and '<span class="answer">0</span>' in cards[0]
    assert len(_cards(browser.dom(page, "q=&f=&p=1"), "eval")) == 40
    browser.screenshot(page, str(tmp_path / "eval.png"))


def test_metrics_page(browser, tmp_path):
    a = write_jsonl(tmp_path / "metrics-dpo.jsonl", metrics_records())
    b = write_jsonl(tmp_path / "metrics-stepdpo.jsonl", metrics_records(0.2))
    page = str(tmp_path / "metrics.html")
    write_view([a, b], page)
    dom = browser.dom(page)
    charts = re.findall(r'<svg class="chart line" data-metric="([^"]+)"', dom)
    assert charts[:4] == ["reward accuracy", "reward margin (chosen - rejected)", "loss", "learning rate"]
    assert dom.count('<polyline class="series"') == 2 * len(charts)
    assert _items(dom).count('<tr class="card metric">') == 50 and '<span id="page">page 1 / 3</span>' in dom
    browser.screenshot(page, str(tmp_path / "metrics.png"), height=1200)


def test_ten_thousand_pairs_first_page_under_two_seconds(browser, tmp_path):
    page = _page(tmp_path, "pairs10k", pairs_records(10_000))
    assert os.path.getsize(page) > 4_000_000
    browser.dom(page)  # warm the browser's disk cache and fonts: the measured load is a user's second look
    started = time.perf_counter()
    dom = browser.dom(page)
    wall = time.perf_counter() - started
    render_ms = int(re.search(r'data-render-ms="(\d+)"', dom).group(1))  # performance.now() at first render
    assert len(_cards(dom, "pair")) == 50 and "10000 of 10000 matching" in dom
    assert render_ms < 2000, render_ms
    print(f"10,000 pairs: first page rendered {render_ms} ms after navigation start; browser run {wall:.1f} s")
    browser.screenshot(page, str(tmp_path / "pairs10k.png"), height=900)
