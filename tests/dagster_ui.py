"""`wmtp ui` (dagster dev) for tests: start it on a project, query its GraphQL API, look at it in headless
Chromium, and stop it leaving no process behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_port


def _descendant_pids(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class Ui:
    port: int
    proc: subprocess.Popen
    leftover: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def graphql(self, query: str, timeout: float = 30) -> dict:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())["data"]


@contextmanager
def running_ui(wmtp: Path, cwd: Path, env: dict[str, str], startup_s: float = 300) -> Iterator[Ui]:
    """`wmtp ui` on `cwd`'s project, once its GraphQL API answers with the code location loaded.

    Started with SIGINT ignored: `wmtp ui` restores it itself (dagster dev copies SIGINT's disposition onto
    SIGTERM). On exit it is stopped with SIGTERM; processes it left behind are killed and listed in
    `Ui.leftover`, for the caller to assert on.
    """
    port = free_port()
    proc = subprocess.Popen(
        [str(wmtp), "ui", "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    ui = Ui(port, proc)
    started: set[int] = set()
    try:
        deadline = time.monotonic() + startup_s
        while True:
            started |= _descendant_pids(proc.pid)
            try:
                if ui.graphql("{ assetNodes { id } }")["assetNodes"]:
                    break
            except (OSError, KeyError, TypeError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dagster dev did not answer on port {port} (exit code {proc.poll()})")
            time.sleep(2)
        yield ui
    finally:
        started |= _descendant_pids(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in started):
            time.sleep(0.5)
        ui.leftover = [p for p in started if _alive(p)]
        for pid in ui.leftover:
            os.kill(pid, signal.SIGKILL)


def chromium() -> str:
    """Debian's chromium (`make test` installs it when missing)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise AssertionError("chromium is not installed: `make test` installs Debian's package (apt-get install chromium)")
    return found


def _dismiss_community_dialog(page) -> None:
    """"Join the Dagster community" opens on a first visit; its Skip closes it."""
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.first.click()
        page.wait_for_timeout(1000)


def _graph_menu(page, item: str) -> None:
    """An entry of the asset graph's context menu (right click on the canvas)."""
    page.mouse.click(page.viewport_size["width"] // 2, 200, button="right")
    page.get_by_role("menuitem", name=re.compile(item)).first.click()
    page.wait_for_timeout(1000)


def _expand_sidebar_group(page, group: str) -> None:
    """Open a group in the sidebar's asset tree (its caret sits left of the group's button)."""
    for button in page.locator("button").all():
        box = button.bounding_box()
        if box and box["x"] < 600 and button.inner_text().strip().split("\n")[0] == group:
            page.mouse.click(box["x"] - 12, box["y"] + box["height"] / 2)
            page.wait_for_timeout(500)
            return
    raise AssertionError(f"group {group!r} is not in the asset graph's sidebar")


def screenshot_asset_graph(ui: Ui, names: Sequence[str], groups: Sequence[str], out: Path,
                           timeout_s: float = 180) -> set[str]:  # fmt: skip
    """Open the global asset graph, dismiss the first-visit dialog, lay the graph out top-down with every group
    expanded (the sidebar lists each asset's full name; long names are shortened in the graph's nodes), save a
    screenshot to `out`, and return the names of `names` the page renders."""
    from playwright.sync_api import sync_playwright

    wanted = set(names)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 2400, "height": 1500})
            page.goto(f"{ui.url}/asset-groups", wait_until="domcontentloaded")
            page.get_by_text("Materialize all").first.wait_for(timeout=timeout_s * 1000)
            page.wait_for_timeout(3000)
            _dismiss_community_dialog(page)
            _graph_menu(page, "Change graph to vertical orientation")
            _graph_menu(page, "Expand all groups")
            for group in reversed(sorted(groups)):  # bottom up: opening one moves the rows below it
                _expand_sidebar_group(page, group)
            page.get_by_role("img", name="zoom_out").locator("..").click()  # the whole graph in view
            page.wait_for_timeout(2000)
            _dismiss_community_dialog(page)  # it may open a few seconds after the page
            rendered = wanted & set(re.findall(r"[A-Za-z0-9_]+", page.inner_text("body")))
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            return rendered
        finally:
            browser.close()
