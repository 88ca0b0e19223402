"""Drives a real headless Chromium through JupyterLab or the Notebook 7 UI.

The lab tests run it inside the laptop's network namespace as the laptop user
(`python -c SOURCE`, since the laptop user may not be able to read the repo),
so the browser reaches Jupyter only through nbremote's forward on 127.0.0.1,
exactly as a user's browser would. It takes one JSON command per line on
stdin and answers each with one JSON line on stdout:

    {"cmd": "open", "url": URL, "ui": "lab" | "notebook"}
        load the UI from URL, create a notebook, wait for its kernel to be idle
    {"cmd": "run", "code": CODE}
        type CODE into the notebook's empty last cell, run it, return its output
    {"cmd": "start", "code": CODE}
        type CODE into the empty last cell and run it; answer once its first output shows
    {"cmd": "close_page"}
        close the notebook's tab, as a closed laptop lid or browser does
    {"cmd": "reopen", "url": URL}
        open URL (a notebook's own) in a new tab and wait for its cells
    {"cmd": "outputs", "index": N, "until": TEXT, "timeout": S}
        the output of code cell N, once it holds TEXT (or at once without "until")
    {"cmd": "wait_kernel", "states": [...], "timeout": S}
        wait until the page shows the kernel in one of these states
    {"cmd": "location"}
        the page's current URL
    {"cmd": "screenshot"}
    {"cmd": "quit"}

Every answer has "ok"; a failed step answers {"ok": false, "error": ...} with
a screenshot (base64 PNG) of the page as it was, and the driver carries on.
Chromium runs from Debian's package, or where there is none (Ubuntu has it only
as a snap) the build `playwright install chromium` put in the lab folder, named
by $NBREMOTE_CHROMIUM; its background networking is off, so nothing but the
page's own requests leaves it.

Needs: playwright (PyPI) and a Chromium (see tests/lab/test_browser.py).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
import tempfile
import time
import traceback

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("NBREMOTE_CHROMIUM") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
VIEWPORT = {"width": 1280, "height": 800}
# Two shared cores run Chromium, ssh, sshd, Jupyter and the kernel together:
# loading JupyterLab alone took 15 s on a busy one.
LOAD_TIMEOUT_MS = 120_000
KERNEL_TIMEOUT_MS = 120_000
OUTPUT_TIMEOUT_MS = 60_000

PANEL = ".jp-NotebookPanel:visible"
KERNEL_STATUS = f"{PANEL} .jp-Notebook-ExecutionIndicator"
KERNEL_NAME = f"{PANEL} .jp-Toolbar-kernelName"


class Driver:
    def __init__(self, playwright, profile_dir: str):
        # A persistent context on a fresh, empty profile directory: nothing of
        # an earlier run (cookies, a token) can help this one along.
        self.context = playwright.chromium.launch_persistent_context(
            profile_dir, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, viewport=VIEWPORT
        )
        self.page = self.context.pages[0] if self.context.pages else self.context.new_page()
        self.dialogs: list[str] = []
        self.console: list[str] = []
        self._watch(self.page)

    def _watch(self, page) -> None:
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"[:300]))

    # ------------------------------------------------------------- commands

    def open(self, url: str, ui: str) -> dict:
        began = time.monotonic()
        self.page.goto(url, wait_until="domcontentloaded", timeout=LOAD_TIMEOUT_MS)
        if ui == "lab":
            card = self.page.locator('.jp-LauncherCard[data-category="Notebook"]').first
            card.wait_for(state="visible", timeout=LOAD_TIMEOUT_MS)
            loaded = time.monotonic() - began
            card.click()
        elif ui == "notebook":
            # The Notebook 7 file browser opens a new notebook in a new tab.
            new = self.page.locator('[data-jp-item-name="new-dropdown"] .lm-MenuBar-item')
            new.wait_for(state="visible", timeout=LOAD_TIMEOUT_MS)
            loaded = time.monotonic() - began
            with self.context.expect_page(timeout=LOAD_TIMEOUT_MS) as opened:
                new.click()
                # The server's default kernel, as a user picks it from New.
                self.page.locator('.lm-Menu-item[data-command="notebook:create-new"]').first.click()
            self.page = opened.value
            self._watch(self.page)
            self.page.set_viewport_size(VIEWPORT)
        else:
            raise ValueError(f"unknown ui {ui!r}")
        self.page.locator(f"{PANEL} .jp-CodeCell").first.wait_for(timeout=LOAD_TIMEOUT_MS)
        # Until the notebook's session starts, the toolbar says "No Kernel"
        # and the indicator shows a default "idle" that means nothing yet.
        self.page.locator(KERNEL_NAME).filter(has_not_text="No Kernel").first.wait_for(timeout=KERNEL_TIMEOUT_MS)
        status = self._wait_kernel(["idle"], KERNEL_TIMEOUT_MS)
        return {
            "loaded_s": round(loaded, 2),
            "ready_s": round(time.monotonic() - began, 2),
            "page_url": self.page.url,
            "kernel": status,
        }

    def _kernel_status(self) -> str:
        return self.page.locator(KERNEL_STATUS).first.get_attribute("data-status") or ""

    def _wait_kernel(self, states: list[str], timeout_ms: float) -> str:
        selector = ", ".join(f'{KERNEL_STATUS}[data-status="{s}"]' for s in states)
        self.page.locator(selector).first.wait_for(timeout=timeout_ms)
        return self._kernel_status()

    def wait_kernel(self, states: list[str], timeout: float) -> dict:
        began = time.monotonic()
        status = self._wait_kernel(states, timeout * 1000)
        return {"kernel": status, "waited_s": round(time.monotonic() - began, 2)}

    def _dismiss_connection_error(self) -> None:
        # After an outage JupyterLab may have shown "Server Connection Error";
        # a user closes it and carries on, and the answer reports that it was
        # shown. Any other dialog stays, and the step fails on it.
        dialog = self.page.locator(".jp-Dialog", has_text="Server Connection Error")
        if dialog.count() and dialog.first.is_visible():
            self.dialogs.append("Server Connection Error")
            dialog.first.get_by_role("button", name="Close").click()
            dialog.first.wait_for(state="detached", timeout=10_000)

    def _type_and_run(self, code: str):
        cells = self.page.locator(f"{PANEL} .jp-CodeCell")
        # Pinned by index: running the cell adds a new last one.
        cell = cells.nth(cells.count() - 1)
        editor = cell.locator(".cm-content")
        if editor.inner_text().strip():
            raise RuntimeError(f"the notebook's last cell is not empty: {editor.inner_text()!r}")
        editor.click()
        self.page.keyboard.insert_text(code)
        self.page.keyboard.press("Shift+Enter")
        cell.locator(".jp-OutputArea-output").first.wait_for(timeout=OUTPUT_TIMEOUT_MS)
        return cell

    def start(self, code: str) -> dict:
        self._dismiss_connection_error()
        cell = self._type_and_run(code)
        return {"output": cell.locator(".jp-OutputArea-output").all_inner_texts()}

    def close_page(self) -> dict:
        self.page.close()
        return {}

    def reopen(self, url: str) -> dict:
        began = time.monotonic()
        self.page = self.context.new_page()
        self._watch(self.page)
        self.page.goto(url, wait_until="domcontentloaded", timeout=LOAD_TIMEOUT_MS)
        self.page.locator(f"{PANEL} .jp-CodeCell").first.wait_for(timeout=LOAD_TIMEOUT_MS)
        return {"ready_s": round(time.monotonic() - began, 2), "page_url": self.page.url}

    def outputs(self, index: int, until: str = "", timeout: float = 0) -> dict:
        cell = self.page.locator(f"{PANEL} .jp-CodeCell").nth(index)
        texts = cell.locator(".jp-OutputArea-output")
        deadline = time.monotonic() + timeout
        while until and until not in "".join(texts.all_inner_texts()) and time.monotonic() < deadline:
            self.page.wait_for_timeout(200)
        return {"output": texts.all_inner_texts(), "prompt": cell.locator(".jp-InputArea-prompt").inner_text()}

    def run(self, code: str) -> dict:
        self._dismiss_connection_error()
        began = time.monotonic()
        cell = self._type_and_run(code)
        # The prompt turns from [*] to [N] once the kernel says the cell is done.
        prompt = cell.locator(".jp-InputArea-prompt")
        deadline = time.monotonic() + OUTPUT_TIMEOUT_MS / 1000
        while "*" in prompt.inner_text() or not any(c.isdigit() for c in prompt.inner_text()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cell did not finish: prompt {prompt.inner_text()!r}")
            self.page.wait_for_timeout(100)
        return {
            "output": cell.locator(".jp-OutputArea-output").all_inner_texts(),
            "prompt": prompt.inner_text().strip(),
            "run_s": round(time.monotonic() - began, 2),
        }

    def location(self) -> dict:
        return {"page_url": self.page.url}

    def screenshot(self) -> str:
        return base64.b64encode(self.page.screenshot(full_page=True)).decode()

    def close(self) -> None:
        self.context.close()


def serve(driver: Driver, stdin, stdout) -> None:
    for line in stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        cmd = request.pop("cmd")
        try:
            if cmd == "quit":
                answer = {"ok": True}
            elif cmd == "screenshot":
                answer = {"ok": True, "png": driver.screenshot()}
            else:
                answer = {"ok": True, **getattr(driver, cmd)(**request)}
        except (PlaywrightError, RuntimeError, TimeoutError, ValueError) as exc:
            answer = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc(limit=4),
                "console": driver.console[-30:],
            }
            try:
                answer["png"] = driver.screenshot()
            except PlaywrightError as shot_failed:
                answer["error"] += f" (and no screenshot: {shot_failed})"
        answer["dialogs"] = list(driver.dialogs)
        stdout.write(json.dumps(answer) + "\n")
        stdout.flush()
        if cmd == "quit":
            return


def main() -> None:
    profile = tempfile.mkdtemp(prefix="nbr-chromium-")
    try:
        with sync_playwright() as playwright:
            driver = Driver(playwright, profile)
            sys.stdout.write(
                json.dumps(
                    {
                        "ok": True,
                        "ready": True,
                        "browser": driver.context.browser.version if driver.context.browser else "",
                    }
                )
                + "\n"
            )
            sys.stdout.flush()
            try:
                serve(driver, sys.stdin, sys.stdout)
            finally:
                driver.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
