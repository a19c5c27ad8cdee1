"""The operator's line page and review in the browser (issue 14, points 1-2): real HTTP on 127.0.0.1 against a
runner sorting a folder, and a real headless Chromium for the page's own script."""

import json
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request

import pytest

from edge.review import LABEL_SUFFIX, ReviewQueue
from edge.sources import Capture, FolderSource
from edge.ui import LineUI

from helpers import HeldBackRun, belt_folder

TOKEN = "s3cret-token"
COUNTED = ("items", "per_class", "per_bin", "per_reason", "recheck", "late", "failed", "frames_skipped", "alarms")


def _request(url, data=None, headers=None):
    """(status, body bytes) of a real HTTP request; error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _status(base):
    code, body = _request(base + "api/status")
    assert code == 200
    return json.loads(body)


def _post_label(base, stem, label, token=None):
    headers = {"Content-Type": "application/json", **({"X-Token": token} if token is not None else {})}
    code, body = _request(base + "api/label", json.dumps({"stem": stem, "label": label}).encode(), headers)
    return code, json.loads(body)


def _serve(runner, token=None):
    ui = LineUI(runner, token)
    address = ui.serve("127.0.0.1", 0)
    assert re.fullmatch(r"ui http://127\.0\.0\.1:\d+/", address)
    return ui, address.split(" ", 1)[1]


def _label_files(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(LABEL_SUFFIX))


def test_status_and_the_page_without_script_equal_the_summary(tmp_path, tiny_export, write_config, make_runner):
    folder = belt_folder(tmp_path, tiny_export, 6)
    runner, _ = make_runner(write_config(), tiny_export["int8"])
    ui, base = _serve(runner)
    sorting = HeldBackRun(runner, folder, 5)  # mid-run: the last frame is held back
    try:
        during = _status(base)
    finally:
        summary = sorting.finish()
    try:
        after = _status(base)
        code, page = _request(base)
        script = _request(base + "static/ui.js")
    finally:
        ui.close()
    assert during["running"] is True and during["items"] == 5 < summary["items"] == 6
    assert after["running"] is False
    for key in COUNTED:
        assert after[key] == summary[key], key
    assert after["latency_ms"] == summary["latency_ms"] and after["model_sha256"] == runner.model.sha256
    assert after["labels"] == tiny_export["labels"] and after["drift"] is None and after["items_per_s"] > 0
    assert after["recheck_share"] == pytest.approx(summary["recheck"] / summary["items"])  # window 200 > 6 items
    assert len(after["review"]) == min(summary["per_reason"]["uncertain"], 8)

    # The page itself (no script run) carries every figure: the cells the script would refresh.
    assert code == 200
    cells = dict(re.findall(r'data-key="([^"]+)" data-fmt="[^"]*">([^<]*)</td>', page.decode()))
    assert cells["items"] == str(summary["items"]) and cells["recheck"] == str(summary["recheck"])
    for label in tiny_export["labels"]:
        assert cells[f"per_class.{label}"] == str(summary["per_class"].get(label, 0))
    for name in runner.config.bin_codes():
        assert cells[f"per_bin.{name}"] == str(summary["per_bin"].get(name, 0))
    assert cells["latency_ms.p50"] == f"{summary['latency_ms']['p50']:.2f}"
    assert runner.model.sha256 in page.decode() and '<script src="/static/ui.js"' in page.decode()
    assert script[0] == 200 and b"/api/status" in script[1]


def test_drift_banner_shows_the_monitors_message(tmp_path, tiny_export, write_config, make_runner):
    class Drift:  # the interface of edge/drift.py's monitor that the page reads
        def status(self):
            return {"alarm": True, "message": "mean confidence fell from 0.91 to 0.62"}

    runner, _ = make_runner(write_config(), tiny_export["int8"])
    ui, base = _serve(runner)
    try:
        _, quiet = _request(base)
        runner.drift = Drift()
        status, (_, loud) = _status(base), _request(base)
    finally:
        ui.close()
    assert status["drift"]["alarm"] is True and status["running"] is True and status["items"] == 0
    assert re.search(rb'id="drift" class="banner" hidden', quiet)
    assert re.search(rb'id="drift" class="banner" >', loud) and b"mean confidence fell from 0.91 to 0.62" in loud


def test_the_page_says_when_sorting_is_paused(tmp_path, tiny_export, write_config, make_runner):
    """An OPC UA Stop pauses sorting (Sorter.pause): the page's header and /api/status say so, and why; a single job
    too; nothing while it sorts (fails on 9070975: no `mode`)."""
    runner, _ = make_runner(write_config(), tiny_export["int8"])
    ui, base = _serve(runner)
    try:
        sorting = _status(base)
        runner.pause("opcua Stop")
        paused, (_, page) = _status(base), _request(base)
        runner.single_job()
        single = _status(base)
    finally:
        ui.close()
    assert sorting["mode"] is None and paused["mode"] == "paused: opcua Stop" and single["mode"] == "single job"
    assert re.search(rb'<span id="mode" data-key="mode" data-fmt="mode">\(paused: opcua Stop\)</span>', page)


def test_labels_need_the_token_and_an_allowed_label(tmp_path, tiny_export, write_config, make_runner,
                                                    uncertain_model):
    folder = belt_folder(tmp_path, tiny_export, 5)
    runner, _ = make_runner(write_config(), uncertain_model)
    runner.run(Capture(FolderSource(folder, runner.clock), runner.clock, runner.events))  # 5 uncertain items
    review_dir = runner.review.directory
    ui, base = _serve(runner, TOKEN)
    off, off_base = _serve(runner)  # a second page without a token: labelling is off
    try:
        stems = [item["stem"] for item in _status(base)["review"]]
        assert len(stems) == 5
        code, page = _request(base + "review")
        assert code == 200 and all(stem in page.decode() for stem in stems)
        code, jpeg = _request(base + f"review/{stems[0]}.jpg")
        assert code == 200 and jpeg[:2] == b"\xff\xd8"
        assert _request(base + "review/nothere.jpg")[0] == 404

        labels = tiny_export["labels"]
        refusals = [
            (off_base, stems[0], labels[0], TOKEN, 403, "labelling is off"),
            (base, stems[0], labels[0], None, 403, "wrong or missing token"),
            (base, stems[0], labels[0], "s3cret-tokeN", 403, "wrong or missing token"),
            (base, stems[0], "slag", TOKEN, 400, "is not one of"),
            (base, stems[0], "Discard", TOKEN, 400, "is not one of"),
            (base, "../../etc/passwd", labels[0], TOKEN, 400, "not a review item name"),
            (base, "0000000000000_00000099", labels[0], TOKEN, 404, "is gone"),
        ]
        for address, stem, label, token, expected, message in refusals:
            code, body = _post_label(address, stem, label, token)
            assert (code, message in body["error"]) == (expected, True), (stem, label, token, body)
        assert _label_files(review_dir) == []  # nothing written by any refusal
        code, _ = _request(base + "review/label", urllib.parse.urlencode({"pick": f"{stems[1]}|{labels[0]}"}).encode())
        assert code == 403 and _label_files(review_dir) == []

        answers = {stems[0]: labels[1], stems[1]: "discard", stems[2]: "unknown"}
        for stem, label in answers.items():
            code, body = _post_label(base, stem, label, TOKEN)
            assert code == 200 and body["label"] == label
        form = urllib.parse.urlencode({"token": TOKEN, "pick": f"{stems[3]}|{labels[2]}"}).encode()
        code, _ = _request(base + "review/label", form)  # the page's form without script: back to /review
        assert code == 200
        answers[stems[3]] = labels[2]
    finally:
        off.close()
        ui.close()
    assert _label_files(review_dir) == sorted(stem + LABEL_SUFFIX for stem in answers)
    assert not [n for n in os.listdir(review_dir) if n.startswith(".")]  # no temporary file left behind
    for stem, label in answers.items():
        with open(os.path.join(review_dir, stem + LABEL_SUFFIX)) as handle:
            answer = json.load(handle)
        assert set(answer) == {"label", "labelled_at", "model_sha256", "source"}
        assert answer["label"] == label and answer["model_sha256"] == runner.model.sha256 and answer["source"] == "ui"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", answer["labelled_at"])
    assert [item["label"] for item in ui.review_items(4)] == [answers[s] for s in stems[:4]]


def test_a_label_file_belongs_to_its_item_in_the_queue(tmp_path):
    """STEM.label.json is not an item of its own and is removed with its item when the queue is trimmed."""
    from PIL import Image

    directory = str(tmp_path / "review")
    queue = ReviewQueue(directory, max_items=3, max_mb=5)
    image = Image.new("RGB", (8, 8), (120, 60, 30))
    stems = [f"17000000000{n:02d}_{n:08d}" for n in range(3)]
    for stem in stems:
        queue.add(stem, image, {"seq": 1, "labels": ["a", "b"], "model_sha256": "f" * 64})
    for stem in stems:
        queue.write_label(stem, "a", "f" * 64)
    reopened = ReviewQueue(directory, max_items=3, max_mb=5)
    assert len(reopened) == 3 and reopened.recent(5) == stems[::-1]
    reopened.add("1700000000099_00000099", image, {"seq": 2})
    assert sorted(os.listdir(directory)) == sorted(
        [f"{s}{suffix}" for s in stems[1:] for suffix in (".jpg", ".json", LABEL_SUFFIX)]
        + ["1700000000099_00000099.jpg", "1700000000099_00000099.json"]
    )
    assert len(ReviewQueue(directory, max_items=1, max_mb=5)) == 1
    assert sorted(os.listdir(directory)) == ["1700000000099_00000099.jpg", "1700000000099_00000099.json"]
    with pytest.raises(FileNotFoundError):
        reopened.write_label(stems[0], "a", "f" * 64)  # trimmed: no orphan answer is written
    assert _label_files(directory) == []
    (tmp_path / "review" / (stems[1] + LABEL_SUFFIX)).write_text("{}")  # written as its item was trimmed (a race)
    assert len(ReviewQueue(directory, max_items=3, max_mb=5)) == 1 and _label_files(directory) == []


def test_ui_flags_through_the_cli(tmp_path, tiny_export, write_config, capsys, monkeypatch):
    from edge.runner import main, parse_args

    monkeypatch.setenv("MINERALNET_UI_TOKEN", "from-env")
    assert parse_args(["--model", "m", "--init-config", "c.toml"]).ui_token == "from-env"
    assert parse_args(["--model", "m", "--init-config", "c.toml", "--ui-token", "x"]).ui_token == "x"
    monkeypatch.delenv("MINERALNET_UI_TOKEN")
    assert parse_args(["--model", "m", "--init-config", "c.toml"]).ui_token is None

    folder = belt_folder(tmp_path, tiny_export, 2)
    argv = ["--model", tiny_export["int8"], "--source", f"folder:{folder}", "--config", write_config(),
            "--events", str(tmp_path / "events.jsonl")]
    assert main(argv + ["--ui-port", "0", "--ui-token", TOKEN]) == 0
    start = [json.loads(line) for line in open(tmp_path / "events.jsonl")][0]
    assert start["type"] == "start" and re.fullmatch(r"ui http://127\.0\.0\.1:\d+/", start["listening"][-1])
    assert "listening: ui http://127.0.0.1:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(argv + ["--ui-port", "70000"])
    assert "--ui-port must be a TCP port number" in capsys.readouterr().err
    taken = __import__("socket").socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        assert main(argv + ["--ui-port", str(taken.getsockname()[1])]) == 2
    finally:
        taken.close()
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("runner: --ui-port ") and "pass a free port" in error


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,700"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.slow
def test_the_page_in_a_real_browser(tmp_path, tiny_export, write_config, make_runner, uncertain_model):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    folder = belt_folder(tmp_path, tiny_export, 6)
    runner, _ = make_runner(write_config(), uncertain_model)
    ui, base = _serve(runner, TOKEN)
    sorting = HeldBackRun(runner, folder, 5)
    wait = WebDriverWait(browser, 30)

    def cell(key):
        return browser.find_element(By.CSS_SELECTOR, f'[data-key="{key}"]').text

    try:
        browser.get(base)
        wait.until(lambda _: browser.find_element(By.TAG_NAME, "body").get_attribute("data-refreshed"))
        assert cell("items") == "5" and "running" in browser.find_element(By.ID, "state").text
        summary = sorting.finish()
        wait.until(lambda _: cell("items") == str(summary["items"]) and "stopped" in cell("running"))
        for label in tiny_export["labels"]:
            assert cell(f"per_class.{label}") == str(summary["per_class"].get(label, 0))
        for name in runner.config.bin_codes():
            assert cell(f"per_bin.{name}") == str(summary["per_bin"].get(name, 0))
        assert cell("recheck") == str(summary["recheck"]) == "6" and cell("alarms") == str(summary["alarms"])
        assert len(browser.find_elements(By.CSS_SELECTOR, "#recent img")) == 6

        browser.get(base + "review")  # no token: refused, nothing written
        browser.find_element(By.ID, "token").clear()
        browser.find_element(By.CSS_SELECTOR, "li.item button").click()
        wait.until(lambda _: "403" in browser.find_element(By.ID, "message").text)
        assert "wrong or missing token" in browser.find_element(By.ID, "message").text
        assert _label_files(runner.review.directory) == []

        browser.get(base + "review?token=" + TOKEN)  # kept by the page, taken out of the address bar
        wait.until(lambda _: "token=" not in browser.current_url)
        items = browser.find_elements(By.CSS_SELECTOR, "li.item")
        stems = [li.get_attribute("data-stem") for li in items[:2]]
        choices = [b.get_attribute("data-label") for b in items[0].find_elements(By.TAG_NAME, "button")]
        ActionChains(browser).send_keys("2").perform()  # the highlighted (first) item: the second choice
        wait.until(lambda _: "done" in items[0].get_attribute("class"))
        items[1].find_elements(By.TAG_NAME, "button")[-1].click()  # one click: discard
        wait.until(lambda _: "done" in items[1].get_attribute("class"))
    finally:
        sorting.finish()
        browser.quit()
        ui.close()
    answers = {}
    for stem in stems:
        with open(os.path.join(runner.review.directory, stem + LABEL_SUFFIX)) as handle:
            answers[stem] = json.load(handle)["label"]
    assert answers == {stems[0]: choices[1], stems[1]: "discard"} and choices[-2:] == ["unknown", "discard"]
    assert _label_files(runner.review.directory) == sorted(stem + LABEL_SUFFIX for stem in stems)
