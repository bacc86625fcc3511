"""A real headless browser for the console's tests: Debian's chromium and chromium-driver
(installed by `make install`), driven by selenium. Nothing is downloaded at test time:
the driver's path is given, so selenium's manager is never asked for one."""

from __future__ import annotations

import base64
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: where the tests save their screenshots: a temporary directory, or, with
#: DEOSSFS_SCREENSHOTS=DIR (`make screenshots`: docs/console), the pictures docs/console.md
#: shows - a test run does not rewrite files of the checkout
SCREENSHOTS = Path(os.environ.get("DEOSSFS_SCREENSHOTS")
                   or Path(tempfile.gettempdir()) / "deossfs-console-screenshots")
T = TypeVar("T")


def available() -> bool:
    return os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)


class Browser:
    """One headless Chromium with a fresh profile (no cookies, no cache)."""

    def __init__(self, *, width: int = 1280, height: int = 900, insecure: bool = False) -> None:
        os.environ.setdefault("SE_OFFLINE", "true")  # selenium's manager never goes online
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = Path(tempfile.mkdtemp(prefix="deossfs-chromium-"))
        self.downloads = self.profile / "downloads"
        self.downloads.mkdir()
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--no-first-run",
                         "--disable-dev-shm-usage", f"--user-data-dir={self.profile / 'profile'}",
                         f"--window-size={width},{height}"):
            options.add_argument(argument)
        options.add_experimental_option("prefs", {
            "download.default_directory": str(self.downloads), "download.prompt_for_download": False,
            "profile.default_content_setting_values.automatic_downloads": 1})
        if insecure:
            options.accept_insecure_certs = True
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(120)
        # the viewport exactly as asked: a headless window is never narrower than 500 px
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.driver.execute_cdp_cmd("Page.setDownloadBehavior",
                                    {"behavior": "allow", "downloadPath": str(self.downloads)})

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    # ---- finding and acting ----------------------------------------------------------------

    def get(self, url: str) -> None:
        self.driver.get(url)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.TAG_NAME, "body").text

    @property
    def path(self) -> str:
        return httpx.URL(self.driver.current_url).path

    def fill(self, css: str, value: str) -> None:
        field = self.find(css)
        field.clear()
        field.send_keys(value)

    def wait(self, probe: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = probe()
            except Exception as exc:  # noqa: BLE001 - a page mid-reload: look again
                last = exc
            if last and not isinstance(last, Exception):
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")

    def no_alert(self) -> bool:
        from selenium.common.exceptions import NoAlertPresentException

        try:
            self.driver.switch_to.alert  # noqa: B018 - raises when there is none
        except NoAlertPresentException:
            return True
        return False

    def drop_files(self, zone_css: str, paths: list[Path]) -> None:
        """Drop files on an element as a person drags them from a file manager: a
        `drop` event whose DataTransfer holds the files (WebDriver cannot drag from the
        desktop; the files are picked through a file input made for the purpose)."""
        self.driver.execute_script(
            "const input = document.createElement('input'); input.type = 'file';"
            "input.multiple = true; input.id = 'test-drop-source'; input.hidden = true;"
            "document.body.append(input);")
        self.find("#test-drop-source").send_keys("\n".join(str(p) for p in paths))
        self.driver.execute_script(
            "const zone = document.querySelector(arguments[0]);"
            "const source = document.getElementById('test-drop-source');"
            "const transfer = new DataTransfer();"
            "for (const file of source.files) transfer.items.add(file);"
            "for (const type of ['dragenter', 'dragover', 'drop'])"
            "  zone.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: transfer}));"
            "source.remove();", zone_css)

    def screenshot(self, name: str, at: str | None = None) -> None:
        """A window's worth of the page, from its top or from the element `at`, down to
        the page's end at most (no empty space below it: the docs' pictures stay small)."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        top, width, height = self.driver.execute_script(
            "if (arguments[0]) document.querySelector(arguments[0]).scrollIntoView();"
            "const top = window.scrollY;"
            "return [top, window.innerWidth, Math.min(window.innerHeight,"
            " Math.ceil(document.body.getBoundingClientRect().bottom))];", at)
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "clip": {"x": 0, "y": top, "width": width, "height": max(height, 1), "scale": 1}})
        (SCREENSHOTS / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))

    def download(self, name: str, timeout: float = 120) -> Path:
        """The file `name` once Chromium has finished downloading it."""
        target = self.downloads / name

        def done() -> Path | None:
            partial = [p for p in self.downloads.iterdir() if p.name.endswith(".crdownload")]
            return target if target.exists() and not partial else None

        return self.wait(done, timeout, f"the download of {name}")


def inline_scripts(html: str) -> list[str]:
    """<script> elements with a body (the console's CSP forbids them)."""
    return [m for m in re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S) if m.strip()]
