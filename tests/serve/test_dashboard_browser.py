"""The dashboard in headless Chromium against a real `tunewright serve` (tiny model, jobs on, --runs, API key).

One browser walks the pages in order: key, data check, upload, new job, live job page, report,
compare, playground. On every page: no console errors, no request to another host, no horizontal
scrolling at 1280x800 and at 375 px, and every control named in the accessibility tree; a
screenshot of each page at both widths is saved under $TUNEWRIGHT_ARTIFACTS (or a pytest tmp dir).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from browser import BROWSER_FLAGS, CHROMEDRIVER, CHROMIUM
from helpers import write_jsonl
from servers import DASHBOARD_KEY as KEY
from servers import bad_file, sum_rows

pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                                reason="chromium and chromium-driver are not installed (`make browser` installs them)")
WIDTHS = ((1280, 800), (375, 800))
CONTROL_ROLES = {"button", "textbox", "combobox", "checkbox", "spinbutton", "link", "listbox", "radio", "slider", "searchbox"}


class Page:
    """The browser, the server's URL, where screenshots go, and what earlier steps created."""

    def __init__(self, driver, base: str, shots: Path):
        self.driver, self.base, self.shots, self.made = driver, base, shots, {}

    def go(self, hash_: str) -> None:
        self.driver.get(f"{self.base}/#/{hash_}") if not self.driver.current_url.startswith(self.base) else \
            self.driver.execute_script("location.hash = arguments[0]", f"#/{hash_}")

    def wait(self, condition, timeout: float = 60, what: str = ""):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = condition()
            except Exception:  # noqa: BLE001  # the element is not there yet, or was just redrawn
                value = None
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what or condition}")

    def css(self, selector: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def check(self, name: str) -> None:
        """Screenshots at both widths, no horizontal scroll, labelled controls, no console errors, same-origin only."""
        for width, height in WIDTHS:
            self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
            time.sleep(0.3)
            scroll, client = self.driver.execute_script(
                "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            assert scroll <= client, f"{name} scrolls sideways at {width}px ({scroll} > {client})"
            self.driver.save_screenshot(str(self.shots / f"{name}-{width}.png"))
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
        assert unlabelled_controls(self.driver) == [], name
        shown = self.driver.execute_script("return document.getElementById('view').innerText")
        assert not {"null", "undefined", "NaN", "[object Object]"} & set(shown.split()), f"{name} shows a JavaScript placeholder"
        assert [e for e in self.driver.get_log("browser") if e["level"] == "SEVERE"] == [], name
        fetched = self.driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(url.startswith(self.base) for url in fetched), fetched


def unlabelled_controls(driver) -> list[str]:
    """Controls in Chromium's accessibility tree with no accessible name (what a screen reader would not announce)."""
    driver.execute_cdp_cmd("Accessibility.enable", {})
    nodes = driver.execute_cdp_cmd("Accessibility.getFullAXTree", {})["nodes"]
    missing = []
    for node in nodes:
        role = (node.get("role") or {}).get("value")
        if node.get("ignored") or role not in CONTROL_ROLES:
            continue
        if not str((node.get("name") or {}).get("value") or "").strip():
            missing.append(f"{role} {node.get('backendDOMNodeId')}")
    return missing


@pytest.fixture(scope="module")
def page(tmp_path_factory, dashboard_server):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    tmp = tmp_path_factory.mktemp("dash-browser")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*BROWSER_FLAGS, f"--user-data-dir={tmp / 'profile'}", "--window-size=1280,800"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    shots = Path(os.environ.get("TUNEWRIGHT_ARTIFACTS") or tmp / "screenshots") / "dashboard"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        yield Page(driver, dashboard_server, shots)
    finally:
        driver.quit()


def test_key_is_asked_once_and_a_wrong_key_says_so(page):
    page.go("jobs")
    page.wait(lambda: page.css("#key-dialog").get_attribute("open") is not None, what="the key dialog")
    page.css("#key-input").send_keys("not-the-key")
    page.css("#key-save").click()
    message = page.wait(lambda: page.css("#key-error").text, what="the wrong-key message")
    assert "did not accept this API key" in message
    refused = page.driver.get_log("browser")  # the 401 is the only error, and expected here
    assert all("401" in e["message"] for e in refused if e["level"] == "SEVERE")
    page.css("#key-input").send_keys(KEY)
    page.css("#key-save").click()
    page.wait(lambda: "Fine-tuning jobs" in page.css("#view").text, what="the jobs page")
    assert page.css("#key-dialog").get_attribute("open") is None
    assert page.driver.execute_script("return sessionStorage.getItem('tunewright.apiKey')") == KEY
    page.check("jobs-empty")


def upload(page, path: Path) -> str:
    """Drop `path` on the data page (through its file input), check it, upload it; returns the file id."""
    page.css("#data-file").send_keys(str(path))
    button = page.wait(lambda: path.name in page.css("#data-report h2").text and page.css("#upload").is_enabled() and page.css("#upload"),
                       what=f"the check report of {path.name}")
    button.click()
    status = page.wait(lambda: "Uploaded as" in page.css("#upload-status").text and page.css("#upload-status").text,
                       what="the upload")
    return status.split("Uploaded as ")[1].split(".")[0]


def test_data_check_shows_the_bad_row_then_good_files_upload(page, tmp_path):
    page.go("data")
    page.wait(lambda: page.css("#data-file"), what="the data page")
    page.css("#data-file").send_keys(str(bad_file(tmp_path / "bad.jsonl")))
    bad = page.wait(lambda: page.css("#bad-rows").text, what="the bad rows")
    assert "bad.jsonl:3: messages:" in bad
    assert page.css("#report-rows").text == "4" and not page.driver.find_elements("css selector", "#upload")
    page.check("data-bad-row")
    page.made["train"] = upload(page, write_jsonl(tmp_path / "train.jsonl", sum_rows(24)))
    assert "svg" in page.css("#data-report").get_attribute("innerHTML")  # the token-length histogram
    page.made["val"] = upload(page, write_jsonl(tmp_path / "val.jsonl", sum_rows(3, start=60)))
    assert page.made["train"].startswith("file-") and page.made["val"].startswith("file-")
    page.check("data-uploaded")


def test_new_job_from_the_form_trains_with_a_live_curve_and_a_report(page):
    from selenium.webdriver.support.select import Select

    page.go(f"new?training_file={page.made['train']}")
    page.wait(lambda: page.css("#job-training"), what="the new job form")
    page.made["base"] = page.css("#job-model").get_attribute("value")
    Select(page.css("#job-validation")).select_by_value(page.made["val"])
    page.css("#job-batch").clear()
    page.css("#job-batch").send_keys("4")
    # long enough to outlast several 1.5 s polls on an idle machine (8 steps finished between two polls in CI)
    page.css("#job-steps").send_keys("400")
    page.css("#job-suffix").send_keys("browser")
    page.css("#job-evaluate").click()
    assert page.css("#job-epochs").get_attribute("value") == "auto"
    page.css("#job-check").click()
    assert page.wait(lambda: page.css("#preview-steps").text, what="the estimate") == "400"
    assert "GB" in page.css("#preview-memory").text or "MB" in page.css("#preview-memory").text
    page.check("new-job")
    page.css("#job-create").click()
    job_id = page.wait(lambda: page.driver.execute_script("return location.hash").split("#/jobs/")[1], what="the job page")
    page.made["job"] = job_id
    seen = set()
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        points = page.driver.execute_script("const f = document.querySelector('#loss-chart figure'); return f ? +f.dataset.points : 0")
        seen.add(points)
        status = page.driver.execute_script("const s = document.getElementById('job-status'); return s ? s.textContent : ''")
        if status in ("succeeded", "failed", "cancelled"):
            break
        if points and len(seen) == 2:
            page.check("job-running")
        time.sleep(0.4)
    assert status == "succeeded", page.css("#view").text[-2000:]
    assert len({p for p in seen if p}) >= 2, f"the curve never grew while watched: {sorted(seen)}"  # live, not on reload
    frame = page.wait(lambda: page.css("#report iframe"), timeout=60, what="the embedded report")
    page.driver.switch_to.frame(frame)
    rows = page.driver.find_elements("css selector", "#metrics tbody tr")
    page.driver.switch_to.default_content()
    assert rows, "the report frame has no metric rows"
    page.made["model"] = page.css("#fine-tuned-model").text
    assert page.made["model"].startswith("ft:") and page.driver.find_elements("css selector", "#checkpoints table")
    page.check("job-succeeded")


def test_compare_overlays_two_runs_and_highlights_differences(page):
    page.go(f"compare?ids=cli-a,{page.made['job']}")
    page.wait(lambda: page.css("#compare-hparams"), what="the compare page")
    lines = page.driver.find_elements("css selector", "#compare-curves polyline")
    assert {line.get_attribute("data-series") for line in lines} >= {"cli-a training loss", f"{page.made['job']} training loss"}
    assert "differs" in page.css('#compare-hparams tr[data-key="train.max_steps"]').get_attribute("class")  # 3 vs 400
    assert "differs" not in (page.css('#compare-hparams tr[data-key="method"]').get_attribute("class") or "")
    assert "loss" in page.css("#compare-eval").text
    page.check("compare")


def test_playground_streams_base_and_tuned_side_by_side(page):
    page.go(f"playground?right={page.made['model']}")
    page.wait(lambda: page.css("#prompt"), what="the playground")
    assert page.css("#right-model").get_attribute("value") == page.made["model"]
    page.css("#prompt").send_keys("What is 2 plus 2?")
    page.css("#temperature").clear()
    page.css("#temperature").send_keys("1")  # greedy, the tiny random model answers only newlines
    page.css("#send").click()
    page.wait(lambda: all(page.css(f"#{side}-answer").get_attribute("data-done") == "true" for side in ("left", "right")),
              timeout=120, what="both answers")
    assert page.css("#left-answer").text.strip() and page.css("#right-answer").text.strip()
    page.check("playground")


def test_jobs_and_runs_pages_list_the_job_and_the_cli_run(page):
    page.go("jobs")
    row = page.wait(lambda: page.driver.find_element("link text", page.made["job"]), what="the job in the list")
    assert "succeeded" in row.find_element("xpath", "ancestor::tr").text
    page.check("jobs")
    page.go("runs")
    link = page.wait(lambda: page.driver.find_element("link text", "cli-a"), what="the runs list")
    assert page.driver.find_elements("link text", page.made["job"])  # the job's run is listed beside the CLI run
    page.check("runs")
    link.click()
    page.wait(lambda: page.css("#report iframe"), what="the CLI run's report")
    assert int(page.css("#loss-chart figure").get_attribute("data-points")) >= 3
    buttons = page.css("#exports").text
    assert "Export merged Hugging Face folder" in buttons and "Export GGUF + Modelfile" in buttons and "Download run (zip)" in buttons
    page.check("run")


def test_a_running_job_is_cancelled_from_its_page(page):
    import httpx

    job = httpx.post(f"{page.base}/v1/fine_tuning/jobs", headers={"Authorization": f"Bearer {KEY}"}, timeout=60, json={
        "model": page.made["base"], "training_file": page.made["train"],
        "tunewright": {"settings": {"train.max_steps": 5000}}}).json()
    page.go(f"jobs/{job['id']}")
    button = page.wait(lambda: page.driver.find_element("css selector", f'button[aria-label="Cancel {job["id"]}"]'), what="the cancel button")
    button.click()
    page.wait(lambda: page.css("#job-status").text == "cancelled", what="the cancelled status")
    assert not page.driver.find_elements("css selector", f'button[aria-label="Cancel {job["id"]}"]')
    page.check("job-cancelled")
