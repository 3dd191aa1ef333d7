"""report.html: one self-contained page that renders its metric table in a real browser without console errors."""
from __future__ import annotations

import json
import re

import pytest
from browser import BROWSER_FLAGS, CHROMEDRIVER, CHROMIUM

from tunewright.evaluate import evaluate
from tunewright.evaluate.report import (
    read_training_curve,
    render_report,
    results_table,
    write_outputs,
)


@pytest.fixture(scope="module")
def evaluated(adapter_run, test_file, tmp_path_factory):
    """A real base-vs-tuned evaluation of the tiny adapter run, with its eval/ folder."""
    out = tmp_path_factory.mktemp("report")
    results = evaluate(str(adapter_run), data=[str(test_file)], max_new_tokens=6, output_dir=out)
    write_outputs(results, out / "eval", adapter_run / "metrics.jsonl")
    return results, out / "eval" / "report.html"


def asset_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", html) + re.findall(r"url\(([^)]*)\)", html)


def test_report_is_self_contained(evaluated):
    results, path = evaluated
    html = path.read_text()
    assert asset_urls(html) and all(url.startswith("data:") for url in asset_urls(html))
    assert "<script" not in html and "@import" not in html
    assert 'id="metrics"' in html and 'id="loss-curve"' in html
    for key in results["comparison"]:
        assert f'data-metric="{key}"' in html
    assert "Improved most" in html and "Got worse most" in html


def test_answers_are_escaped(evaluated):
    results, _ = evaluated
    changed = json.loads(json.dumps(results))
    changed["examples"][0]["tuned_answer"] = "<script>alert('x')</script><b>bold</b>"
    changed["changed_most"] = {"improved": [0], "regressed": []}
    html = render_report(changed)
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html and "<b>bold</b>" not in html


def test_single_model_report_has_values_and_no_comparison(evaluated):
    results, _ = evaluated
    single = json.loads(json.dumps(results))
    single.update(sides={"tuned": "m"}, comparison={}, changed_most={"improved": [], "regressed": []})
    single["metrics"] = {"tuned": results["metrics"]["tuned"]}
    html = render_report(single)
    assert "Improved most" not in html and 'data-metric="loss"' in html and 'id="no-loss-curve"' in html
    assert [c.header for c in results_table(single).columns] == ["metric", "value"]


def test_training_curve_reads_train_and_eval_loss_and_skips_junk(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\nnot json\n{"step": 2, "loss": 1.5, "eval_loss": 1.7}\n{"loss": 9}\n'
                    '{"step": 3, "loss": NaN}\n[1, 2]\n')
    assert read_training_curve(path) == {"train": [(1, 2.0), (2, 1.5)], "eval": [(2, 1.7)]}
    assert read_training_curve(tmp_path / "missing.jsonl") == {"train": [], "eval": []}


def test_terminal_table_has_intervals_and_verdicts(evaluated):
    results, _ = evaluated
    table = results_table(results)
    assert [c.header for c in table.columns] == ["metric", "base", "tuned", "Δ", "95% CI", "verdict"]
    assert table.row_count == len(results["comparison"])


@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                    reason="chromium and chromium-driver are not installed (`make browser` installs them)")
def test_report_renders_in_headless_chromium(evaluated, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    results, path = evaluated
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(path.as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "#metrics tbody tr")
        assert len(rows) == len(results["comparison"])
        assert all(row.is_displayed() for row in rows)
        first = rows[0].find_elements(By.TAG_NAME, "td")
        assert first[0].text == "loss" and first[-1].text == results["comparison"]["loss"]["verdict"]
        assert driver.execute_script("return document.getElementById('loss-curve').naturalWidth") > 0
        fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(url.startswith("data:") for url in fetched), fetched
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
        driver.execute_script("console.error('probe-7f3a')")  # the check above can see errors at all
        assert any("probe-7f3a" in entry["message"] for entry in driver.get_log("browser"))
    finally:
        driver.quit()
