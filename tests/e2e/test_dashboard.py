"""The operators' dashboard (issue 20) in a real browser: Debian's chromium,
driven by Playwright, against a real instance. Screenshots of the main views
go to build/screenshots (CI artifacts)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from certs import make_pki
from playwright.sync_api import Browser, Page, expect, sync_playwright

import turnout
from turnout.errors import InvalidArgumentError

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
# What a headless browser on a CI machine without a network needs: no
# sandbox (containers run as root), nothing fetched in the background.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000
expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def dashboard(client: turnout.Client) -> Iterator[turnout.Dashboard]:
    served = client.serve_dashboard(port=0)
    yield served
    served.stop()


@pytest.fixture
def page(browser: Browser, dashboard: turnout.Dashboard) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    opened.goto(dashboard.url)
    yield opened
    context.close()


def shot(page: Page, name: str, full_page: bool = True) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


def replies(text: str) -> Callable[[Any], str]:
    def reply(request: Any) -> str:
        return text

    return reply


class Slow:
    """Takes a while to start, so a restart is long enough to be seen."""

    def __init__(self) -> None:
        time.sleep(2)
        print("slow replica ready")

    def __call__(self, request: Any) -> str:
        return "ok"


class Slower:
    """Takes long enough to start that its log can be opened meanwhile."""

    def __init__(self) -> None:
        print("slower replica starting", flush=True)
        time.sleep(5)
        print("slower replica ready", flush=True)

    def __call__(self, request: Any) -> str:
        return "ok"


def two_backends(client: turnout.Client, unique: Callable[[str], str]) -> tuple[str, str, str]:
    name, a, b = unique("split"), unique("blue"), unique("green")
    client.create_backend(a, replies("blue"))
    client.create_backend(b, replies("green"))
    client.create_endpoint(name, a, route=f"/{name}")
    return name, a, b


def card(page: Page, endpoint: str) -> Any:
    return page.locator(f'article[data-endpoint="{endpoint}"]')


def test_the_page_lists_the_endpoints_and_replicas_the_test_made(
    client: turnout.Client, page: Page, unique: Callable[[str], str]
) -> None:
    backend, name = unique("slow"), unique("listed")
    rules = {"min_replicas": 2, "max_replicas": 4}
    client.create_backend(backend, Slow, config={"autoscaling_config": rules})
    client.create_endpoint(name, backend, route=f"/{name}", methods=["GET", "POST"])
    shadow = unique("copy")
    client.create_backend(shadow, replies("ok"))
    client.shadow_traffic(name, shadow, 0.5)
    for _ in range(5):
        requests.get(f"{client.http_address}/{name}", timeout=10).raise_for_status()

    endpoint = card(page, name)
    expect(endpoint).to_contain_text(f"/{name}")
    expect(endpoint).to_contain_text("GET, POST")
    expect(endpoint).to_contain_text(f"{backend} 100%")
    expect(endpoint.get_by_role("table", name=f"Shadows of {name}")).to_contain_text("50%")
    rows = page.locator(f'article[data-backend="{backend}"] tbody tr')
    expect(rows).to_have_count(2)
    for replica in client.list_replicas(backend):
        row = page.locator(f'tr[data-replica="{replica.replica_id}"]')
        expect(row.locator("[data-state]")).to_have_text("running")
        expect(row).to_contain_text(str(replica.pid))
    # The requests show up in the figures (routers report about once a second).
    expect(endpoint.locator(".summary")).to_contain_text("5 requests", timeout=WAIT_MS)

    # The charts: a point every 5 s; requests until the latency line has three.
    latency = endpoint.locator('path[data-series="p50"]')

    def segments() -> int:
        return str(latency.get_attribute("d")).count("L") if latency.count() else 0

    with requests.Session() as http:
        deadline = time.monotonic() + 40
        round_ = 0
        while segments() < 2 and time.monotonic() < deadline:
            round_ += 1
            for _ in range(3 + round_ % 7):
                http.get(f"{client.http_address}/{name}", timeout=10)
            time.sleep(0.3)
    assert segments() >= 2
    expect(endpoint.locator('path[data-series="requests_per_s"]')).to_have_count(1)
    expect(endpoint.get_by_role("table", name=f"Shadows of {name}")).to_contain_text("100%")

    first = client.list_replicas(backend)[0].replica_id
    page.get_by_role("button", name=f"Show log of {first}").click()
    expect(page.locator("#log")).to_contain_text("slow replica ready")
    expect(page.get_by_role("group", name=f"Autoscaling of {backend}")).to_contain_text(
        "min 2 · max 4"
    )
    # A rollout under way, for the overview's picture too.
    new = unique("slow-v2")
    client.create_backend(new, Slow)
    client.rollout(name, new, steps=[0.25, 1.0], step_s=300)
    rollout = page.get_by_role("group", name=f"Rollout of {name}")
    expect(rollout).to_contain_text(f"step 1 of 2 (25% to {new})")
    with requests.Session() as http:
        for _ in range(40):
            http.get(f"{client.http_address}/{name}", timeout=10)
    expect(rollout.locator('tr[data-window="new"]')).to_contain_text(new)
    page.wait_for_timeout(2000)
    shot(page, "overview")
    client.get_rollout(name).abort()


def talks(request: Any) -> str:
    print(f"handled {request.args.get('n', '?')}", flush=True)
    return "ok"


def test_the_log_view_follows_a_replica_through_the_controller(
    client: turnout.Client, page: Page, dashboard: turnout.Dashboard, unique: Callable[[str], str]
) -> None:
    backend = unique("talks")
    client.create_backend(backend, talks)
    client.create_endpoint(backend, backend, route=f"/{backend}")
    (replica,) = client.list_replicas(backend)
    requests.get(f"{client.http_address}/{backend}?n=first", timeout=10).raise_for_status()
    page.get_by_role("button", name=f"Show log of {replica.replica_id}").click()
    log = page.locator("#log")
    expect(log).to_contain_text("handled first")
    expect(page.locator("#log-path")).to_contain_text("read by the controller")
    # Lines written while it is open show up without a reload, after the others.
    for n in range(3):
        requests.get(f"{client.http_address}/{backend}?n=later{n}", timeout=10)
    expect(log).to_contain_text("handled later2")
    text = log.inner_text()
    assert text.count("handled first") == 1
    assert text.index("handled first") < text.index("handled later0") < text.index("later2")

    # The API: the last lines, then from next_offset only what was written since.
    bearer = {"Authorization": f"Bearer {dashboard.token}"}
    where = _api(dashboard, f"/api/log?replica={quote(replica.replica_id)}")
    tail = requests.get(f"{where}&lines=1", headers=bearer, timeout=10).json()
    assert len(tail["lines"]) == 1 and tail["lines"][0].endswith("handled later2")
    quiet = requests.get(f"{where}&offset={tail['next_offset']}", headers=bearer, timeout=10)
    assert quiet.json()["lines"] == []
    requests.get(f"{client.http_address}/{backend}?n=last", timeout=10)
    deadline = time.monotonic() + 10
    lines: list[str] = []
    while not lines and time.monotonic() < deadline:
        more = requests.get(f"{where}&offset={tail['next_offset']}", headers=bearer, timeout=10)
        lines = more.json()["lines"]
        time.sleep(0.1)
    assert len(lines) == 1 and lines[0].endswith("handled last") and not more.json()["reset"]
    bad = requests.get(f"{where}&offset=-1", headers=bearer, timeout=10)
    assert bad.status_code == 400 and "offset must be an integer" in bad.json()["message"]


def test_a_traffic_change_made_with_the_sliders_reaches_the_instance_and_its_requests(
    client: turnout.Client, page: Page, unique: Callable[[str], str]
) -> None:
    name, a, b = two_backends(client, unique)
    page.get_by_role("button", name=f"Edit traffic of {name}").click()
    # By keyboard: 30 steps of 1 % to the green backend; blue gives them up.
    slider = page.get_by_label(f"Share of {b} in percent")
    slider.focus()
    for _ in range(30):
        page.keyboard.press("ArrowRight")
    expect(page.get_by_label(f"Weight of {a}")).to_have_value("0.7")
    expect(page.locator("#traffic-sum")).to_have_text("Sum of weights: 1")
    shot(page, "traffic-editor", full_page=False)
    page.get_by_role("button", name="Review change…").click()
    expect(page.locator("#confirm-text")).to_contain_text(f"{a} 0.70, {b} 0.30")
    expect(page.locator("#confirm-text")).to_contain_text(f"now {a} 1.00")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#notice")).to_contain_text(f"Traffic of {name} set")
    expect(card(page, name)).to_contain_text(f"{b} 30%")

    assert client.list_endpoints()[name]["traffic"] == pytest.approx({a: 0.7, b: 0.3})
    with requests.Session() as http:
        answers = [http.get(f"{client.http_address}/{name}", timeout=10).text for _ in range(200)]
    # 200 draws at 0.3: 60 expected, 30..90 is more than four deviations each way.
    assert 30 <= answers.count("green") <= 90
    assert answers.count("blue") + answers.count("green") == 200


def test_weights_the_api_refuses_show_its_error_and_change_nothing(
    client: turnout.Client, page: Page, unique: Callable[[str], str]
) -> None:
    name, a, b = two_backends(client, unique)
    page.get_by_role("button", name=f"Edit traffic of {name}").click()
    page.get_by_label(f"Weight of {a}").fill("0.5")
    expect(page.locator("#traffic-sum")).to_contain_text("only weights that sum to 1")
    page.get_by_role("button", name="Review change…").click()
    page.get_by_role("button", name="Apply").click()
    error = page.locator("#confirm-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("InvalidArgumentError: traffic weights must sum to 1, got 0.5")
    shot(page, "api-error")
    assert client.list_endpoints()[name]["traffic"] == {a: 1.0}


def test_a_killed_replica_shows_as_restarting_then_running(
    client: turnout.Client, page: Page, unique: Callable[[str], str]
) -> None:
    backend = unique("killed")
    client.create_backend(backend, Slower)
    (replica,) = client.list_replicas(backend)
    row = page.locator(f'tr[data-replica="{replica.replica_id}"]')
    expect(row.locator("[data-state]")).to_have_text("running")
    os.kill(replica.pid, signal.SIGKILL)

    expect(row.locator("[data-state]")).to_have_text("restarting")
    expect(row).to_contain_text("process exited with code -9")
    shot(page, "restarting")
    # The controller reads running replicas' logs: the view says so, and
    # shows the new process's log once it runs.
    page.get_by_role("button", name=f"Show log of {replica.replica_id}").click()
    expect(page.locator("#log")).to_contain_text("its log shows here once it runs")
    expect(row.locator("[data-state]")).to_have_text("running")
    expect(page.locator("#log")).to_contain_text("slower replica ready")
    expect(page.locator("#log-path")).to_contain_text("read by the controller")
    (again,) = client.list_replicas(backend)
    expect(row).to_contain_text(str(again.pid))
    assert again.pid != replica.pid and again.restarts == 1


def sleeps(request: Any) -> str:
    time.sleep(float(request.args.get("s", "0")))
    return "slept"


def test_requests_in_flight_show_on_their_replica(
    client: turnout.Client, page: Page, unique: Callable[[str], str]
) -> None:
    backend = unique("sleepy")
    client.create_backend(backend, sleeps, config={"max_concurrent_queries": 4})
    client.create_endpoint(backend, backend, route=f"/{backend}")
    (replica,) = client.list_replicas(backend)
    cell = page.locator(f'tr[data-replica="{replica.replica_id}"] td').nth(4)
    expect(cell).to_have_text("0")
    with ThreadPoolExecutor(2) as pool:
        calls = [
            pool.submit(requests.get, f"{client.http_address}/{backend}?s=6", timeout=30)
            for _ in range(2)
        ]
        expect(cell).to_have_text("2")
        assert [call.result().text for call in calls] == ["slept", "slept"]
    expect(cell).to_have_text("0")


def test_an_autoscaled_backend_shows_its_rules_counts_and_last_decision(
    client: turnout.Client, page: Page, unique: Callable[[str], str]
) -> None:
    backend = unique("scaled")
    rules = {"max_replicas": 2, "target_ongoing_requests": 1, "upscale_delay_s": 0.5}
    client.create_backend(backend, sleeps, config={"autoscaling_config": rules})
    client.create_endpoint(backend, backend, route=f"/{backend}")
    box = page.get_by_role("group", name=f"Autoscaling of {backend}")
    expect(box).to_contain_text("min 1 · max 2 · target 1 requests in flight per replica")
    expect(box).to_contain_text("Desired 1 · running 1")
    expect(box).to_contain_text("Last decision: none yet (it starts at 1)")
    # Three requests in flight at a target of 1 ask for 3: max_replicas caps it at 2.
    give_up = time.monotonic() + 60
    with ThreadPoolExecutor(3) as pool:

        def load() -> None:
            while time.monotonic() < give_up and not done.is_set():
                requests.get(f"{client.http_address}/{backend}?s=0.5", timeout=30)

        done = threading.Event()
        calls = [pool.submit(load) for _ in range(3)]
        try:
            expect(box).to_contain_text("Last decision: scaled up at ", timeout=45_000)
            expect(box).to_contain_text("1 -> 2")
            expect(box).to_contain_text("Desired 2 · running 2", timeout=30_000)
            header = page.locator(f'article[data-backend="{backend}"] header')
            expect(header).to_contain_text("2 of 2 replicas running (autoscaled)")
            shot(page, "autoscaling")
        finally:
            done.set()
            for call in calls:
                call.result()
    status = client.autoscaling_status(backend)
    assert status is not None and status["last_decision"] == "up"
    assert status["last_reason"] in box.inner_text()
    # A fixed count replaces the rules: the confirmation says so first.
    page.get_by_role("button", name=f"Scale {backend}").click()
    page.get_by_label("Number of replicas", exact=True).fill("1")
    page.get_by_role("button", name="Review change…").click()
    expect(page.locator("#confirm-text")).to_contain_text(
        "This turns autoscaling off (it keeps 1..2 replicas now)."
    )
    page.get_by_role("button", name="Cancel").last.click()


def test_a_rollout_shows_its_step_and_windows_and_pauses_resumes_and_aborts_from_the_page(
    client: turnout.Client, page: Page, dashboard: turnout.Dashboard, unique: Callable[[str], str]
) -> None:
    name, a, b = two_backends(client, unique)
    client.rollout(name, b, steps=[0.5, 1.0], step_s=120)
    box = page.get_by_role("group", name=f"Rollout of {name}")
    state = box.locator("[data-rollout-state]")
    expect(state).to_have_text("stepping")
    expect(box).to_contain_text(f"{a} → {b}")
    expect(box).to_contain_text(f"step 1 of 2 (50% to {b}), 120 s each (steps 50%, 100%)")
    # The windows judged: requests to each side, as the controller counted them.
    new = box.locator('tr[data-window="new"]')
    expect(new).to_contain_text(b)
    expect(box.locator('tr[data-window="old"]')).to_contain_text(a)

    def counted() -> int:
        info = client.get_rollout(name).info()
        return int(info["new"]["requests"]) if info["new"] else 0

    with requests.Session() as http:
        deadline = time.monotonic() + 30
        while counted() < 5 and time.monotonic() < deadline:
            for _ in range(5):
                http.get(f"{client.http_address}/{name}", timeout=10).raise_for_status()
            time.sleep(0.5)
    time.sleep(2)  # the routers' last reports are in
    fresh = counted()
    assert fresh >= 5
    expect(new.locator("td").nth(2)).to_have_text(str(fresh))
    shot(page, "rollout")

    page.get_by_role("button", name=f"Pause the rollout of {name}").click()
    expect(page.locator("#confirm-text")).to_have_text(
        f"Pause the rollout of {name} from {a} to {b} at step 1 of 2 (50% to {b}): "
        f"the traffic stays {a} 0.50, {b} 0.50 until it is resumed."
    )
    page.get_by_role("button", name="Apply").click()
    expect(state).to_have_text("paused")
    assert client.get_rollout(name).state == "paused"

    page.get_by_role("button", name=f"Resume the rollout of {name}").click()
    expect(page.locator("#confirm-text")).to_contain_text("timed again from the start (120 s)")
    page.get_by_role("button", name="Apply").click()
    expect(state).to_have_text("stepping")
    assert client.get_rollout(name).state == "stepping"

    page.get_by_role("button", name=f"Abort the rollout of {name}").click()
    expect(page.locator("#confirm-text")).to_have_text(
        f"Abort the rollout of {name} from {a} to {b}: all traffic goes back to {a} "
        f"(now {a} 0.50, {b} 0.50)."
    )
    page.get_by_role("button", name="Apply").click()
    expect(state).to_have_text("aborted")
    expect(box).to_contain_text("Last rollout")
    expect(box.get_by_role("button")).to_have_count(0)
    assert client.list_endpoints()[name]["traffic"] == {a: 1.0}

    # The API's own refusals, as from Python.
    bearer = {"Authorization": f"Bearer {dashboard.token}"}
    again = requests.post(
        _api(dashboard, "/api/rollout/resume"), json={"endpoint": name}, headers=bearer, timeout=10
    )
    assert again.status_code == 409 and again.json()["error"] == "InUseError"
    assert "has no paused rollout to resume" in again.json()["message"]
    none = requests.post(
        _api(dashboard, "/api/rollout/pause"), json={"endpoint": a}, headers=bearer, timeout=10
    )
    assert none.status_code == 404


def fails(request: Any) -> str:
    raise RuntimeError("the new version is broken")


def test_a_rolled_back_rollout_shows_its_verdict_and_the_breach(
    client: turnout.Client, page: Page, unique: Callable[[str], str]
) -> None:
    name, a, broken = unique("guarded"), unique("good"), unique("broken")
    client.create_backend(a, replies("good"))
    client.create_backend(broken, fails)
    client.create_endpoint(name, a, route=f"/{name}")
    rollout = client.rollout(
        name, broken, steps=[0.5, 1.0], step_s=60, slo={"max_error_rate": 0.01, "min_requests": 5}
    )
    with requests.Session() as http:
        deadline = time.monotonic() + 40
        while rollout.state == "stepping" and time.monotonic() < deadline:
            for _ in range(5):
                http.get(f"{client.http_address}/{name}", timeout=10)
            time.sleep(0.2)
    assert rollout.state == "rolled_back"
    info = rollout.info()
    box = page.get_by_role("group", name=f"Rollout of {name}")
    expect(box.locator("[data-rollout-state]")).to_have_text("rolled back")
    expect(box).to_contain_text("Last rollout")
    expect(box.locator(".verdict")).to_have_text(info["verdict"])
    (breach,) = info["evidence"]
    expect(box.get_by_role("list", name="Evidence")).to_have_text(
        f"{breach['bound']}: {breach['value']:.4g} (limit {breach['limit']:.4g})"
    )
    expect(box.locator('tr[data-window="new"] td').nth(3)).to_have_text(str(info["new"]["errors"]))
    expect(box.get_by_role("button")).to_have_count(0)
    expect(card(page, name)).to_contain_text(f"{a} 100%")
    shot(page, "rolled-back")


def test_the_keyboard_reaches_every_change_and_escape_gives_the_focus_back(
    client: turnout.Client, page: Page, unique: Callable[[str], str]
) -> None:
    name, a, _ = two_backends(client, unique)
    edit = page.get_by_role("button", name=f"Edit traffic of {name}")
    expect(edit).to_be_visible()
    for _ in range(200):  # Tab until the button has the focus
        if edit.evaluate("node => node === document.activeElement"):
            break
        page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name=f"Traffic of {name}")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_label(f"Share of {a} in percent")).to_be_focused()
    # The list behind is redrawn with each new chart point (every 5 s)...
    page.wait_for_timeout(6000)
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    # ...and the focus still goes back to the button, as after each redraw.
    expect(edit).to_be_focused()
    page.wait_for_timeout(6000)
    expect(edit).to_be_focused()


def test_scaling_and_removing_a_shadow_from_the_page(
    client: turnout.Client, page: Page, unique: Callable[[str], str]
) -> None:
    name, a, b = two_backends(client, unique)
    client.shadow_traffic(name, b, 0.25)
    page.get_by_role("button", name=f"Scale {b}").click()
    page.get_by_label("Number of replicas", exact=True).fill("2")
    page.get_by_role("button", name="Review change…").click()
    expect(page.locator("#confirm-text")).to_have_text(
        f"Scale {b} from 1 to 2 replicas (the dialog waits until they run)."
    )
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#notice")).to_contain_text(f"{b} scaled to 2 replicas")
    assert [r.state for r in client.list_replicas(b)] == ["RUNNING", "RUNNING"]
    expect(page.locator(f'article[data-backend="{b}"] tbody tr')).to_have_count(2)

    page.get_by_role("button", name=f"Remove shadow {b} of {name}").click()
    expect(page.locator("#confirm-text")).to_contain_text(f"Stop copying 25% of {name}'s")
    page.get_by_role("button", name="Apply").click()
    expect(card(page, name)).to_contain_text("No shadows.")
    assert client.list_endpoints()[name]["shadows"] == {}


def test_the_page_says_so_when_the_instance_has_nothing_yet(browser: Browser) -> None:
    from turnout.instance import LocalInstance

    instance = LocalInstance.start("127.0.0.1", 0)
    empty = turnout.Client(instance.address, _instance=instance)
    try:
        served = empty.serve_dashboard(port=0)
        context = browser.new_context()
        opened = context.new_page()
        opened.goto(served.url)
        expect(opened.locator("#endpoints")).to_contain_text("No endpoints yet")
        expect(opened.locator("#backends")).to_contain_text("No backends yet")
        shot(opened, "empty")
        # The instance goes away: the page says so and keeps what it showed.
        empty.shutdown()
        expect(opened.locator("#problem")).to_contain_text("does not answer", timeout=WAIT_MS)
        context.close()
    finally:
        empty.shutdown()


# ---- the JSON API without a browser ---------------------------------------------


def _api(dashboard: turnout.Dashboard, path: str) -> str:
    return dashboard.url.split("/?")[0] + path


def test_the_api_wants_the_token_same_origin_changes_and_json(dashboard: turnout.Dashboard) -> None:
    overview = _api(dashboard, "/api/overview")
    refused = requests.get(overview, timeout=10)
    assert refused.status_code == 401 and "printed" in refused.json()["message"]
    bearer = {"Authorization": f"Bearer {dashboard.token}"}
    assert requests.get(overview, headers=bearer, timeout=10).status_code == 200
    # Another site's page posting with the operator's cookie is refused.
    foreign = requests.post(
        _api(dashboard, "/api/traffic"),
        json={"endpoint": "x", "traffic": {}},
        headers={**bearer, "Origin": "http://evil.example"},
        timeout=10,
    )
    assert foreign.status_code == 403
    form = requests.post(
        _api(dashboard, "/api/traffic"), data="endpoint=x", headers=bearer, timeout=10
    )
    assert form.status_code == 415
    # The opening URL sets the cookie and takes the token out of the address.
    with requests.Session() as session:
        opened = session.get(dashboard.url, timeout=10)
        assert opened.url == _api(dashboard, "/") and "Turnout" in opened.text
        assert session.get(overview, timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/api/traffic", [1], 400, "the request body must be a JSON object"),
        ("/api/traffic", {"traffic": {}}, 400, "needs 'endpoint'"),
        ("/api/traffic", {"endpoint": "nope", "traffic": {"x": 1}}, 404, "nope"),
        ("/api/scale", {"backend": "b", "num_replicas": "2"}, 400, "must be an integer"),
        ("/api/scale", {"backend": "nope", "num_replicas": 1}, 404, "nope"),
        ("/api/shadow/remove", {"endpoint": "nope", "backend": "b"}, 404, "no endpoint 'nope'"),
        ("/api/rollout/abort", {"endpoint": 3}, 400, "endpoint must be an endpoint's name"),
        ("/api/rollout/pause", {"endpoint": "nope"}, 404, "nope"),
    ],
)
def test_bad_changes_get_the_status_and_message_of_the_api(
    dashboard: turnout.Dashboard, path: str, body: Any, status: int, message: str
) -> None:
    reply = requests.post(
        _api(dashboard, path),
        json=body,
        headers={"Authorization": f"Bearer {dashboard.token}"},
        timeout=10,
    )
    assert reply.status_code == status
    assert message in reply.json()["message"]


def test_the_log_of_an_unknown_replica_is_a_404(dashboard: turnout.Dashboard) -> None:
    reply = requests.get(
        _api(dashboard, "/api/log?replica=nope%231"),
        headers={"Authorization": f"Bearer {dashboard.token}"},
        timeout=10,
    )
    assert reply.status_code == 404 and "no replica 'nope#1'" in reply.json()["message"]


def test_beyond_loopback_without_https_and_a_taken_port_are_refused(client: turnout.Client) -> None:
    with pytest.raises(InvalidArgumentError, match="without HTTPS"):
        client.serve_dashboard(port=0, host="0.0.0.0")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InvalidArgumentError, match=f"cannot listen on 127.0.0.1:{port}"):
            client.serve_dashboard(port=port)
    with pytest.raises(TypeError, match="port must be an int"):
        client.serve_dashboard(port="80")  # type: ignore[arg-type]


def test_beyond_loopback_it_serves_https_and_a_secure_cookie(
    client: turnout.Client, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path)
    served = client.serve_dashboard(port=0, host="0.0.0.0", https=(pki.good.cert, pki.good.key))
    try:
        assert served.url.startswith("https://")
        with requests.Session() as session:
            opened = session.get(
                f"https://127.0.0.1:{served.port}/?token={served.token}",
                allow_redirects=False,
                timeout=10,
                verify=str(pki.ca),
            )
            opened.close()  # back to the pool: the session closes it
            assert opened.status_code == 303
            cookie = opened.headers["Set-Cookie"]
            assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
            overview = session.get(
                f"https://127.0.0.1:{served.port}/api/overview", timeout=10, verify=str(pki.ca)
            )
            assert overview.status_code == 200
    finally:
        served.stop()


def _cli(*args: str, token: str | None) -> subprocess.Popen[str]:
    env = {**os.environ, "TURNOUT_TOKEN": token or ""}
    return subprocess.Popen(
        [sys.executable, "-m", "turnout.cli", "dashboard", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_turnout_dashboard_prints_its_url_and_stops_on_sigterm(client: turnout.Client) -> None:
    command = _cli("--address", client.controller_address, "--port", "0", token=client.token)
    try:
        assert command.stdout is not None
        line = command.stdout.readline()
        assert line.startswith(
            f"Turnout dashboard of {client.controller_address}: http://127.0.0.1:"
        )
        with requests.Session() as browser:
            page = browser.get(line.split(": ", 1)[1].strip(), timeout=10)
            assert page.status_code == 200 and "<title>Turnout dashboard</title>" in page.text
        command.send_signal(signal.SIGTERM)
        assert command.wait(timeout=20) == 0
    finally:
        command.kill()
        command.communicate(timeout=20)


def test_turnout_dashboard_refuses_to_listen_beyond_loopback_without_https(
    client: turnout.Client,
) -> None:
    command = _cli("--address", client.controller_address, "--host", "0.0.0.0", token=client.token)
    _, err = command.communicate(timeout=60)
    assert command.returncode == 2
    assert "refusing to serve the dashboard on 0.0.0.0 without HTTPS" in err


def test_init_with_dashboard_prints_the_url_of_a_page_that_answers(tmp_path: Path) -> None:
    program = tmp_path / "program.py"
    program.write_text(
        "import requests, sys, turnout as serve\n"
        "serve.init(http_port=0, dashboard=True)\n"
        "sys.stderr.flush()\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    run = subprocess.Popen(
        [sys.executable, str(program)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert run.stdout is not None and run.stderr is not None and run.stdin is not None
        assert run.stdout.readline() == "ready\n"
        line = next(x for x in run.stderr if x.startswith("Turnout dashboard: "))
        url = line.split(": ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:")
        with requests.Session() as browser:
            assert "Turnout dashboard" in browser.get(url, timeout=10).text
        run.stdin.write("\n")
        run.stdin.flush()
        assert run.wait(timeout=60) == 0
    finally:
        run.kill()
        run.communicate(timeout=30)
