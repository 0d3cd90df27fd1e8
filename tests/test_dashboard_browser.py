"""The dashboard in a real browser: headless Chromium (Debian's, driven by Playwright) against
`dgdo run --demo N`, asserting what a person would see.

The browser is the system's `chromium` (scripts/install-deps.sh installs it; Playwright's own
browser download is never used). Every wait is on a DOM condition with a generous timeout: the
demo's first trips take seconds, and the machine is shared. Each test saves a screenshot in its
tmp_path (pytest prints the folder of a failing test; `--basetemp` keeps them somewhere known).

The map is a canvas: what it drew is mirrored on the canvas element as `data-drivers` (driver
markers drawn in view) and in the legend's counts, which is what these tests read.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from conftest import ROOT, LineReader, mint, new_state_dir, stack_env
from playwright.async_api import Browser, Dialog, Page, async_playwright, expect
from test_engine_death import answers, start_split, stop_split
from test_state_dir_faults import fill_up
from wsclient import AppClient

DRIVERS = 6
WAIT_MS = 60_000  # for the demo to produce what is awaited (first trips take a few seconds)


def chromium_path() -> str:
    found = os.environ.get("DGDO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "no chromium: scripts/install-deps.sh installs Debian's (make test runs it)"
    return found


class Run:
    """`dgdo run --demo N` as `make run` starts it, on a port of our choosing (it may be restarted)."""

    def __init__(self, port: int, state_dir: str, *extra: str) -> None:
        self.port = port
        self.state_dir = state_dir
        self.extra = extra  # more `dgdo run` flags
        self.instance = f"t{uuid.uuid4().hex[:8]}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.out: LineReader | None = None
        self.dashboard = ""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run", "--host", "127.0.0.1", "--port", str(self.port),
             "--demo", str(DRIVERS), "--status-interval", "0", "--instance", self.instance,
             "--state-dir", self.state_dir, *self.extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=stack_env(),
        )
        self.out = LineReader(self.proc.stdout)
        self.dashboard = self.out.wait_for(r"\[dgdo\] dashboard: (http://\S+/admin(\?token=\S+)?)$").group(1)
        self.out.wait_for(r"\[dgdo\] demo pid=")

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Ctrl-C, as a person stops `make run`
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def run(engine_bin: Path) -> Iterator[Run]:
    r = Run(free_port(), new_state_dir())
    r.start()
    yield r
    assert r.stop() == 0
    assert [p for p in os.listdir("/dev/shm") if r.instance in p] == []


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


async def new_page(browser: Browser) -> Page:
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(WAIT_MS)
    return page


async def test_dashboard_shows_the_demo_fleet_live_orders_and_numbers(run: Run, browser: Browser,
                                                                     tmp_path: Path) -> None:
    page = await new_page(browser)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(run.dashboard)
    try:
        await expect(page.locator("#conn-status")).to_have_text("live", timeout=WAIT_MS)
        assert "token=" not in page.url, "the token is taken out of the address bar"

        # Every demo driver is a marker on the map.
        await expect(page.locator("#map")).to_have_attribute("data-drivers", str(DRIVERS), timeout=WAIT_MS)
        await expect(page.locator("#stat-drivers-online")).to_have_text(str(DRIVERS), timeout=WAIT_MS)

        # Orders per minute: requested, then completed, above zero.
        await expect(page.locator("#rate-requested")).to_have_text(re.compile(r"^[1-9]"), timeout=WAIT_MS)
        await expect(page.locator("#rate-completed")).to_have_text(re.compile(r"^[1-9]"), timeout=WAIT_MS)
        await expect(page.locator("#conn-driver")).to_have_text(str(DRIVERS))

        # A live order on its way: in the table, its timeline on a click, gone once completed. One
        # accepted (or driving to the pickup) has seconds left before it completes: time to click it.
        assigned = page.locator('#orders tbody tr[data-status="accepted"], #orders tbody tr[data-status="arriving"]')
        await expect(assigned.first).to_be_visible(timeout=WAIT_MS)
        order_id = await assigned.first.get_attribute("data-order-id")
        assert order_id
        row = page.locator(f'#orders tbody tr[data-order-id="{order_id}"]')
        await row.click()
        await expect(page.locator("#timeline")).to_be_visible()
        await expect(page.locator("#timeline-id")).to_have_text(order_id)
        await expect(page.locator("#timeline-steps li").filter(has_text="started")).to_have_count(1)
        await page.screenshot(path=tmp_path / "dashboard.png")
        await expect(row).to_have_count(0, timeout=WAIT_MS)
        await expect(page.locator("#log li").filter(has_text=f"order {order_id} completed")).to_have_count(1)
        await expect(page.locator("#timeline-steps li").filter(has_text="completed")).to_have_count(1)

        # Hovering a driver marker tells who it is. The marker is found and the mouse moved onto it in
        # one turn of the page's loop: the demo's drivers move, and a redraw between reading a marker's
        # place and a mouse.move() from here put the mouse where the marker no longer was.
        driver = await page.evaluate("""() => {
            const m = window.dgdo.markers().find((m) => m.kind === 'driver');
            const map = document.getElementById('map'), r = map.getBoundingClientRect();
            const at = {bubbles: true, clientX: r.left + m.x, clientY: r.top + m.y};
            map.dispatchEvent(new MouseEvent('mousemove', at));
            return m.id;
        }""")
        await expect(page.locator("#tooltip")).to_contain_text(f"driver {driver}")
        assert errors == [], errors
    finally:
        await page.screenshot(path=tmp_path / "dashboard-end.png")
        print(f"screenshots in {tmp_path}")


async def test_an_operator_cancels_a_live_order_from_its_timeline(engine_bin: Path, browser: Browser,
                                                                  tmp_path: Path) -> None:
    """The way out for an order whose driver is gone for good: select it, Cancel order…, confirm.
    The passenger is told an operator canceled it, the page says it was, and the row goes."""
    r = Run(free_port(), new_state_dir(), "--exhausted-wait-s", "300", "--search-timeout-s", "600")
    r.start()
    p = None
    try:
        page = await new_page(browser)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(r.dashboard)
        await expect(page.locator("#conn-status")).to_have_text("live")
        # Far outside the demo's city: no driver within reach, so it searches until canceled.
        p = await AppClient.open(f"ws://127.0.0.1:{r.port}/ws/passenger/p-far")
        await p.expect("welcome")
        await p.send({"type": "ride_request", "pickup": {"lat": 40.0, "lon": 70.0},
                      "dropoff": {"lat": 40.01, "lon": 70.01}, "id": "r"})
        order_id = str((await p.expect("ack", id="r"))["order_id"])
        row = page.locator(f'#orders tbody tr[data-order-id="{order_id}"]')
        await row.click()
        await expect(page.locator("#timeline-id")).to_have_text(order_id)
        asked: list[str] = []

        async def confirm(dialog: Dialog) -> None:
            asked.append(dialog.message)
            await dialog.accept("driver unreachable")

        page.once("dialog", confirm)
        await page.locator("#timeline-cancel").click()
        update = await p.expect("order_update", order_id=int(order_id), status="canceled")
        assert update["reason"] == "operator_canceled"
        assert asked and f"Cancel order {order_id}?" in asked[0]
        await expect(page.locator("#timeline-result")).to_have_text("canceled by you")
        await expect(row).to_have_count(0)
        await expect(page.locator("#timeline-steps li").filter(has_text="canceled")).to_have_count(1)
        await expect(page.locator("#timeline-cancel")).to_be_hidden()  # an ended order has nothing to cancel
        await page.screenshot(path=tmp_path / "canceled.png")
        assert errors == [], errors
    finally:
        if p is not None:
            await p.close()
        assert r.stop() == 0


BAD_TOKENS = {
    "garbage": "The admin token was refused",
    mint("admin", "ops", ttl_s=-60): "Your admin link expired. Get a new one with dgdo token --role admin --sub ops",
    mint("driver", "d-001"): "not an admin token",
    "": "No admin token given",
}


async def test_a_bad_token_gets_a_clear_message_and_a_place_to_paste_one(run: Run, browser: Browser,
                                                                         tmp_path: Path) -> None:
    for i, (token, says) in enumerate(BAD_TOKENS.items()):
        page = await new_page(browser)
        await page.goto(f"{run.base}/admin?token={token}")
        await expect(page.locator("#auth")).to_be_visible()
        await expect(page.locator("#auth-message")).to_contain_text(says)
        await expect(page.locator("#conn-status")).to_have_attribute("data-state", "auth")
        await page.screenshot(path=tmp_path / f"bad-token-{i}.png")
        if i < len(BAD_TOKENS) - 1:
            await page.close()
    # Pasting a good one (into the last page, which had none) connects.
    good = run.dashboard.split("token=", 1)[1]
    await page.fill("#auth-token", good)
    await page.click("#auth-form button[type=submit]")
    await expect(page.locator("#conn-status")).to_have_text("live")
    await expect(page.locator("#auth")).to_be_hidden()


async def test_an_admin_link_that_expires_while_open_asks_for_a_new_one_instead_of_reconnecting(
        run: Run, browser: Browser, tmp_path: Path) -> None:
    """The sidecar closes a connection when its token expires (4401, "token expired"): the page says
    how to mint a new token and waits for one; it does not try again with the one that ran out."""
    page = await new_page(browser)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    await page.goto(f"{run.base}/admin?token={mint('admin', 'ops-7', ttl_s=2)}")
    await expect(page.locator("#conn-status")).to_have_text("live", timeout=WAIT_MS)
    # At the token's exp plus the 5 s of clock skew allowed: within 8 s of minting.
    await expect(page.locator("#auth")).to_be_visible(timeout=30_000)
    await expect(page.locator("#auth-message")).to_contain_text(
        "Your admin link expired. Get a new one with dgdo token --role admin --sub ops-7")
    await expect(page.locator("#auth-message code")).to_have_text("dgdo token --role admin --sub ops-7")
    await expect(page.locator("#conn-status")).to_have_attribute("data-state", "auth")
    await expect(page.locator("#conn-status")).to_have_text("token expired")
    await page.screenshot(path=tmp_path / "expired.png")
    assert len(sockets) == 1
    assert await page.evaluate("sessionStorage.length + localStorage.length") == 0  # the spent token is forgotten
    # A new token connects again.
    await page.fill("#auth-token", mint("admin", "ops-7"))
    await page.click("#auth-form button[type=submit]")
    await expect(page.locator("#conn-status")).to_have_text("live", timeout=WAIT_MS)
    await expect(page.locator("#auth")).to_be_hidden()
    assert len(sockets) == 2


async def test_the_page_reconnects_by_itself_when_the_sidecar_restarts(run: Run, browser: Browser,
                                                                      tmp_path: Path) -> None:
    page = await new_page(browser)
    await page.goto(run.dashboard)
    await expect(page.locator("#map")).to_have_attribute("data-drivers", str(DRIVERS))
    assert run.stop() == 0
    await expect(page.locator("#conn-status")).to_have_attribute("data-state", "reconnecting")
    with contextlib.suppress(Exception):
        await page.screenshot(path=tmp_path / "reconnecting.png")
    run.start()  # same port, same state dir: a new sidecar, engine and demo
    await expect(page.locator("#conn-status")).to_have_text("live")
    await expect(page.locator("#map")).to_have_attribute("data-drivers", str(DRIVERS))
    await expect(page.locator("#auth")).to_be_hidden()


async def test_with_auth_off_the_printed_link_opens_the_dashboard_without_asking_for_a_token(
        engine_bin: Path, browser: Browser, tmp_path: Path) -> None:
    """`dgdo run --insecure-no-auth` prints the dashboard's address with no token in it (there is
    none to give): the page connects, rather than ask for a token the server does not want."""
    r = Run(free_port(), new_state_dir(), "--insecure-no-auth")
    r.start()
    try:
        assert "token=" not in r.dashboard
        page = await new_page(browser)
        await page.goto(r.dashboard)
        await expect(page.locator("#conn-status")).to_have_text("live", timeout=WAIT_MS)
        await expect(page.locator("#auth")).to_be_hidden()
        await expect(page.locator("#map")).to_have_attribute("data-drivers", str(DRIVERS), timeout=WAIT_MS)
        await page.screenshot(path=tmp_path / "no-auth.png")
    finally:
        assert r.stop() == 0


async def test_the_page_does_not_show_a_silent_connection_as_live(run: Run, browser: Browser, tmp_path: Path) -> None:
    """A connection that stops carrying anything never closes by itself: a wedged sidecar, or a
    half-open TCP connection after a network drop or a laptop's sleep. system_stats comes about
    once a second, so a page that hears nothing for long knows, says so and connects again."""
    page = await new_page(browser)
    await page.goto(run.dashboard)
    await expect(page.locator("#conn-status")).to_have_text("live", timeout=WAIT_MS)
    assert run.proc is not None
    run.proc.send_signal(signal.SIGSTOP)  # the sidecar (worker 1 of dgdo run): its sockets stay open
    try:
        await expect(page.locator("#conn-status")).not_to_have_attribute("data-state", "live", timeout=30_000)
        await page.screenshot(path=tmp_path / "silent.png")
    finally:
        run.proc.send_signal(signal.SIGCONT)
    await expect(page.locator("#conn-status")).to_have_text("live", timeout=WAIT_MS)
    await expect(page.locator("#map")).to_have_attribute("data-drivers", str(DRIVERS), timeout=WAIT_MS)


# A passenger's cancel reason is the one free text an app sends (64 bytes; every id is pattern-checked).
# Put into the page as HTML it would run where the admin token is kept. The engine keeps only why
# the order ended (`passenger_canceled`), and the page puts every string in as text anyway.
MARKUP_REASON = '<img src=x onerror="window.pwned=1"><b id=pwned>hi</b>'


async def test_an_apps_text_reaches_the_page_as_text_never_as_markup(run: Run, browser: Browser,
                                                                    tmp_path: Path) -> None:
    page = await new_page(browser)
    response = await page.goto(run.dashboard)
    assert response is not None
    headers = response.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert (headers["x-content-type-options"], headers["referrer-policy"]) == ("nosniff", "no-referrer")
    await expect(page.locator("#conn-status")).to_have_text("live")

    p = await AppClient.open(f"{run.url}/ws/passenger/markup-p", token=mint("passenger", "markup-p"))
    try:
        await p.expect("welcome")
        await p.send({"type": "ride_request", "id": "r1", "pickup": {"lat": 38.5598, "lon": 68.7870},
                      "dropoff": {"lat": 38.5750, "lon": 68.7950}})
        order_id = (await p.expect("ack", id="r1"))["order_id"]
        await p.send({"type": "order_cancel", "order_id": order_id, "reason": MARKUP_REASON, "id": "c1"})
        await p.expect("ack", id="c1")
    finally:
        await p.close()
    await page.locator("#log-search").fill(str(order_id))  # (the log shows the newest 300 lines)
    line = page.locator("#log li").filter(has_text=f"order {order_id} canceled")
    await expect(line).to_contain_text("(passenger_canceled)")
    assert "onerror" not in await page.locator("#log").inner_text()
    assert await page.locator("#log img, #log b, #timeline img, #pwned").count() == 0
    assert await page.evaluate("() => window.pwned") is None
    await page.screenshot(path=tmp_path / "markup-reason.png")


async def test_the_engine_pill_names_a_full_journal_disk_and_goes_back_once_there_is_room(
    engine_bin: Path, small_disk: str, browser: Browser, tmp_path: Path
) -> None:
    """The engine holds on a full disk (test_state_dir_faults.py): the pill says why, not only that
    the engine is silent, so the operator knows to free space rather than restart anything, and
    for how long; once there is room it is back to "engine up" by itself."""
    args = ("--state-dir", f"{small_disk}/state", "--fsync", "batch")
    # A heartbeat timeout longer than the test: the pill goes amber on the engine's own word (its
    # ENGINE_STATS), not because its heartbeat stopped.
    s = start_split(engine_bin, *args, sidecar_args=("--engine-timeout-s", "60"))
    pax = None
    try:
        page = await new_page(browser)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(f"http://127.0.0.1:{s.port}/admin?token={mint('admin', 'ops')}")
        pill = page.locator("#engine-status")
        await expect(pill).to_have_text("engine up", timeout=WAIT_MS)
        await expect(pill).to_have_attribute("data-state", "up", timeout=WAIT_MS)

        pax = await AppClient.open(f"{s.url}/ws/passenger/pill")
        await pax.expect("welcome")
        filler, flood = await fill_up(small_disk, pax)
        held = re.compile(r"^journal not writable \(No space left on device\) for \d+ s$")
        await expect(pill).to_have_text(held, timeout=WAIT_MS)
        await expect(pill).to_have_attribute("data-state", "silent", timeout=WAIT_MS)
        # For how long: it counts on while the engine holds.
        await expect(pill).to_have_text(re.compile(r" for [1-9]\d* s$"), timeout=WAIT_MS)
        await page.screenshot(path=tmp_path / "journal-full.png")

        filler.unlink()
        await expect(pill).to_have_text("engine up", timeout=WAIT_MS)
        await expect(pill).to_have_attribute("data-state", "up", timeout=WAIT_MS)
        await page.screenshot(path=tmp_path / "journal-back.png")
        assert errors == [], errors
        # Each ride request has its answer now (an order, or "retry"); read, else the client's full
        # queue keeps the close handshake unread until its timeout.
        assert len(await answers(pax, flood)) == len(flood)
    finally:
        if pax is not None:
            await pax.close()
        stop_split(s)
