"""report.html in headless Chromium: every chart draws, the row table sorts and filters, no console errors.

Drives the system Chromium through the Python `playwright` package (no browser
download). Skips with the reason when either is missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from synthetic_runs import make_empty_run, make_rounds_run, make_run, make_single_point_run

from mlabench.report.html import write_report

# Chromium is a dozen processes: under pytest-xdist it takes turns with the other process-heavy modules.
pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("processes")]

CHROMIUM = os.environ.get("MLABENCH_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set MLABENCH_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        try:
            instance = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        except Exception as exc:  # a broken install should skip with the reason, not error
            pytest.skip(f"Chromium at {CHROMIUM} did not start: {str(exc).splitlines()[0]}")
        yield instance
        instance.close()


def open_page(browser: Any, html: Path) -> tuple[Any, list[str]]:
    """Load the page and collect console errors and uncaught exceptions."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.goto(html.as_uri(), wait_until="load")
    return page, problems


def chart_states(page: Any) -> dict[str, int]:
    """Each plotly div -> how many svg.main-svg it drew (0 means it did not render)."""
    page.wait_for_function(
        "Array.from(document.querySelectorAll('.plotly-graph-div'))"
        ".every(d => d.querySelector('svg.main-svg'))", timeout=20_000,
    )
    return page.evaluate(
        "Object.fromEntries(Array.from(document.querySelectorAll('.plotly-graph-div'))"
        ".map(d => [d.id, d.querySelectorAll('svg.main-svg').length]))"
    )


def test_full_report_renders_every_chart(browser: Any, tmp_path: Path) -> None:
    html = write_report(make_run(tmp_path / "run"))
    page, problems = open_page(browser, html)
    states = chart_states(page)
    assert set(states) == {"chart-tradeoff", "chart-latency", "chart-kv", "chart-speedup", "chart-roofline",
                           "chart-rank"}
    assert all(n > 0 for n in states.values()), states
    # Filter: one oom row; "not ok" shows every failed/skipped/unsupported row.
    total = page.locator("#rows tbody tr").count()
    page.fill("#row-filter", "out of memory")
    assert page.inner_text("#row-count") == f"1 of {total} rows"
    page.fill("#row-filter", "")
    page.select_option("#status-filter", "!ok")
    shown = page.locator("#rows tbody tr:visible").count()
    assert 0 < shown < total
    # Sort: clicking latency_ms orders the visible numbers.
    page.select_option("#status-filter", "ok")
    page.click("#rows th[data-col='latency_ms']")
    column = page.evaluate(
        "(() => { const i = Array.from(document.querySelectorAll('#rows th')).findIndex(h => h.dataset.col === "
        "'latency_ms'); return Array.from(document.querySelectorAll('#rows tbody tr'))"
        ".filter(r => r.style.display !== 'none').map(r => Number(r.cells[i].dataset.v)); })()"
    )
    assert column == sorted(column) and len(column) > 10
    assert problems == []
    page.close()


@pytest.mark.parametrize("kind", ["single", "empty"])
def test_small_reports_render_cleanly(browser: Any, tmp_path: Path, kind: str) -> None:
    run = make_single_point_run(tmp_path / "run") if kind == "single" else make_empty_run(tmp_path / "run")
    page, problems = open_page(browser, write_report(run))
    if kind == "single":
        states = chart_states(page)
        assert states and all(n > 0 for n in states.values()), states
        # The lone point is drawn as a marker, not an empty axis.
        assert page.locator("#chart-latency .scatterlayer .point").count() >= 1
    else:
        assert page.locator(".plotly-graph-div").count() == 0
        assert "has no rows" in page.inner_text("body")
    assert problems == []
    page.close()


def test_rounds_report_draws_tradeoff_and_round_spread(browser: Any, tmp_path: Path) -> None:
    html = write_report(make_rounds_run(tmp_path / "run", rounds=4, seed=0, claims=False))
    page, problems = open_page(browser, html)
    states = chart_states(page)
    assert {"chart-tradeoff", "chart-rounds"} <= set(states) and all(n > 0 for n in states.values()), states
    assert page.locator("table.headline").count() >= 1
    # The Pareto front is drawn as a line in the trade-off panel.
    assert page.evaluate("document.getElementById('chart-tradeoff').data.some(t => t.name === 'Pareto front')")
    assert not problems, problems


def test_compare_html_draws_the_ratio_chart(browser: Any, tmp_path: Path) -> None:
    from mlabench.compare import GateSettings, compare_paths
    from mlabench.compare.html import render_html

    base = make_rounds_run(tmp_path / "a", rounds=4, seed=0, claims=False, ab_job="j")
    cand = make_rounds_run(tmp_path / "b", rounds=4, seed=1, claims=False, ab_job="j", slowdown=1.3,
                           slow=lambda k: k["variant"] == "gqa")
    out = tmp_path / "compare.html"
    out.write_text(render_html(compare_paths(base, cand, GateSettings())), encoding="utf-8")
    page, problems = open_page(browser, out)
    states = chart_states(page)
    assert set(states) == {"chart-ratio"} and states["chart-ratio"] > 0
    points = page.evaluate("document.getElementById('chart-ratio').data.reduce((n, t) => n + t.x.length, 0)")
    assert points > 10
    assert "FAIL" in page.inner_text("#sec-verdict")
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=False)
    assert not problems, problems
