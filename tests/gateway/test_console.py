"""The web console in a real headless browser (Chromium through selenium) against a real
gateway process on the session devnet: sign in, buckets, uploads by drag-and-drop (one in
S3 multipart parts), where the fragments are and whether their nodes answer, download,
share links, rename, delete, sign out, and accounts kept apart. The same tests save the
screenshots of docs/console.md. Bad input (forged sessions, missing CSRF tokens, wrong
secrets, hostile names, a tab closed mid-upload, expired links) is checked too, some with
plain HTTP where a browser adds nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from botocore.exceptions import ClientError

from ..harness import nodes_by_account
from .browser import Browser, available, inline_scripts
from .conftest import GatewayProcess, Gateways, S3Access, create_key, new_user

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not available(), reason="chromium and chromium-driver are not "
                                 "installed (make install installs them)")]
MIB = 1024 * 1024


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


class ConsoleClient:
    """The console over plain HTTP (httpx), signed in like a browser: for what needs no
    script (pages, forms, refusals)."""

    def __init__(self, base: str, cafile: str | None = None) -> None:
        self.base = base.rstrip("/")
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=cafile) if cafile else True
        self.http = httpx.Client(base_url=self.base, follow_redirects=False, timeout=60, verify=verify)

    def close(self) -> None:
        self.http.close()

    def signin(self, key_id: str, secret: str) -> httpx.Response:
        page = self.http.get("/console/signin")
        token = re.search(r'name="signin_token" value="([^"]+)"', page.text)
        assert token, page.text[:500]
        return self.http.post("/console/signin", data={"signin_token": token.group(1),
                                                      "access_key_id": key_id, "secret": secret})

    def csrf(self, page: str = "/console/buckets") -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', self.http.get(page).text)
        assert found
        return found.group(1)


def sign_in(browser: Browser, gateway_url: str, access: S3Access) -> None:
    browser.get(gateway_url + "/console/")
    browser.wait(lambda: browser.path == "/console/signin", 30, "the sign-in page")
    browser.fill("#access_key_id", access.access_key_id)
    browser.fill("#secret", access.secret)
    browser.find("#signin").click()
    browser.wait(lambda: browser.path == "/console/buckets", 30, "the buckets page")


def until_storing(s3: object, bucket: str, timeout: float = 150) -> None:
    """Wait until the gateway stores files on 12 nodes again (after a node was stopped)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            s3.put_object(Bucket=bucket, Key=".storing-again", Body=b"x" * 100)  # type: ignore[attr-defined]
        except ClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
            continue
        s3.delete_object(Bucket=bucket, Key=".storing-again")  # type: ignore[attr-defined]
        return


def random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as handle:
        left = size
        while left:
            piece = min(left, 4 * MIB)
            handle.write(os.urandom(piece))
            left -= piece
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    opened = Browser()
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(scope="module")
def access(gateways: Gateways) -> S3Access:
    if not gateways.main.alive:
        gateways.main.start()
    return create_key(gateways.main)


# ---- the walk through -------------------------------------------------------------------------


def test_console_walk_through(browser: Browser, gateway: GatewayProcess, gateways: Gateways,
                              access: S3Access, tmp_path: Path) -> None:
    s3 = access.client()
    url = gateway.url
    browser.get(url + "/console/buckets")
    assert browser.path == "/console/signin"  # no session: sign-in, not an error page
    browser.screenshot("signin")
    sign_in(browser, url, access)

    bucket = unique("console")
    browser.fill("#new-bucket", bucket)
    browser.find("#create-bucket").click()
    browser.wait(lambda: bucket in browser.text(), 30, "the new bucket in the list")
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]  # the same bucket S3 sees
    browser.screenshot("buckets")

    # two files by drag-and-drop: a small one with a hostile name, one over 64 MiB in parts
    hostile = "<img src=x onerror=alert(1)>.txt"
    small = tmp_path / hostile
    small.write_bytes(b"shared by the console\n" * 1000)
    big = random_file(tmp_path / "big.bin", 70 * MIB)
    browser.find(f'a[href="/console/b/{bucket}"]').click()
    browser.wait(lambda: browser.find("#dropzone"), 30, "the bucket page")
    browser.drop_files("#dropzone", [small, big])
    rows = browser.wait(lambda: len(browser.find_all("#uploads li")) == 2 and browser.find_all("#uploads li"),
                        30, "two uploads listed")
    assert {r.get_attribute("data-key") for r in rows} == {hostile, "big.bin"}
    big_row = '#uploads li[data-key="big.bin"]'

    def storing_with_fragments() -> bool:
        return bool(browser.find_all(f"{big_row} .frag")) or \
            browser.find(big_row).get_attribute("data-state") == "stored"

    browser.wait(storing_with_fragments, 300, "per-fragment progress of the big file")
    if browser.find(big_row).get_attribute("data-state") == "storing":
        browser.screenshot("upload-progress")
    browser.wait(lambda: all(r.get_attribute("data-state") == "stored"
                             for r in browser.find_all("#uploads li")), 300, "both uploads stored")
    browser.screenshot("bucket")
    assert browser.no_alert()
    # the name is shown as text, never markup
    assert hostile in browser.text()
    assert not browser.find_all("#objects img")
    # stored under the same names S3 reads, with the same bytes
    assert s3.get_object(Bucket=bucket, Key=hostile)["Body"].read() == small.read_bytes()
    head = s3.head_object(Bucket=bucket, Key="big.bin")
    assert head["ContentLength"] == big.stat().st_size and head["ETag"].strip('"').endswith("-5")

    # details: 12 fragments per segment, each with its node, all answering
    browser.find('#objects a.object[href*="big.bin"]').click()
    browser.wait(lambda: browser.find("#fid"), 30, "the details page")
    assert browser.find("#state").text == "stored"
    assert browser.find("#encryption").text == "on"
    segments = browser.find_all("#fragment-grid tbody tr")
    assert len(segments) == 3  # 70 MiB: three 32 MiB segments
    for row in segments:
        cells = row.find_elements("css selector", "td.fragment")
        assert len(cells) == 12
        assert all("reachable" in c.get_attribute("class").split() for c in cells)
    nodes = {c.get_attribute("data-node") for c in browser.find_all("td.fragment")}
    assert len(nodes) == 12 and len(browser.find_all("#nodes tr.node.reachable")) == 12
    browser.screenshot("object")

    # a node stops (frozen with SIGSTOP: it keeps its port, so every client of the shared
    # devnet finds it again once it goes on): its fragments are marked unreachable
    victim_account = browser.find("#segment-0 td.fragment").get_attribute("data-node")
    victim = nodes_by_account(gateways.devnet)[victim_account]
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        def marked() -> bool:
            browser.driver.refresh()
            down = {r.get_attribute("data-node") for r in browser.find_all("td.fragment.unreachable")}
            return down == {victim_account}

        browser.wait(marked, 60, "the stopped node marked unreachable", interval=2)
        assert len(browser.find_all("td.fragment.unreachable")) == 3
        assert [r.get_attribute("data-node") for r in browser.find_all("#nodes tr.node.unreachable")] \
            == [victim_account]
        browser.screenshot("object-node-down", at="#fragments-title")
    finally:
        os.kill(victim.pid, signal.SIGCONT)
        # the gateway avoids a node that failed it for a while (storage.node_penalty_seconds):
        # the tests after this one store again once it takes the node back
        until_storing(s3, bucket)

    # download (streamed by the console): the same bytes
    browser.find("#download").click()
    assert sha256(browser.download("big.bin", 300)) == sha256(big)

    # share link: opened by a browser without any session
    browser.get(f"{url}/console/b/{bucket}/share?key={quote(hostile, safe='')}")
    browser.find("#make-link").click()
    link = browser.wait(lambda: browser.find("#share-link").get_attribute("value"), 30, "the link")
    browser.find("#copy-link").click()
    browser.wait(lambda: browser.find("#copied").text == "Copied.", 10, "the copy confirmation")
    browser.screenshot("share")
    stranger = Browser()
    try:
        stranger.get(link)
        assert "shared by the console" in stranger.text()
        assert stranger.no_alert()
        # the same object with a link that expires in 2 s, after its expiry: S3's refusal
        browser.fill("#amount", "2")
        browser.find("#unit").send_keys("seconds")
        browser.find("#make-link").click()
        short = browser.wait(lambda: (value := browser.find("#share-link").get_attribute("value")) != link and value,
                             30, "a second link")
        time.sleep(3)
        stranger.get(short)
        assert "AccessDenied" in stranger.driver.page_source
        assert "shared by the console" not in stranger.driver.page_source
    finally:
        stranger.close()

    # rename within the bucket, into a name with `..`: the same FID (nothing uploaded again)
    browser.get(f"{url}/console/b/{bucket}/object?key=big.bin")
    fid = browser.find("#fid").text
    browser.find("#rename-link").click()
    browser.fill("#target", "a/../moved big.bin")
    browser.find("#rename").click()
    browser.wait(lambda: "Renamed" in browser.text(), 30, "the rename")
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="big.bin")
    assert s3.head_object(Bucket=bucket, Key="a/../moved big.bin")["ETag"] == head["ETag"]
    browser.get(f"{url}/console/b/{bucket}/object?key=" + quote("a/../moved big.bin", safe=""))
    assert browser.find("#fid").text == fid
    assert browser.find("#object-key").text == "a/../moved big.bin"

    # multi-select delete, with a confirmation
    browser.get(f"{url}/console/b/{bucket}")
    for box in browser.find_all('#objects input[name="item"]'):
        box.click()
    browser.find("#delete-selected").click()
    browser.wait(lambda: browser.find("#confirm-delete"), 30, "the confirmation")
    assert "folder a/" in browser.text() and hostile in browser.text()
    browser.screenshot("delete-confirm")
    browser.find("#confirm-delete").click()
    browser.wait(lambda: "Deleted 2 objects." in browser.text(), 60, "the delete")
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0

    # sign out: the session is over
    browser.find("#signout").click()
    browser.wait(lambda: browser.path == "/console/signin", 30, "the sign-in page")
    browser.get(url + f"/console/b/{bucket}")
    assert browser.path == "/console/signin"

    # a second account sees nothing of the first
    other = new_user(gateways.devnet, gateways.account.address)
    other_access = create_key(gateway, other.address)
    sign_in(browser, url, other_access)
    assert bucket not in browser.text()
    assert not browser.find_all("#buckets")
    browser.get(url + f"/console/b/{bucket}")
    assert "does not exist" in browser.text() and "Objects" not in browser.text()
    browser.find("#signout").click()
    browser.wait(lambda: browser.path == "/console/signin", 30, "the sign-in page")
    s3.delete_bucket(Bucket=bucket)


# ---- the tab closed mid-upload ---------------------------------------------------------------


def test_tab_closed_mid_upload_leaves_nothing(browser: Browser, gateway: GatewayProcess,
                                              access: S3Access, tmp_path: Path) -> None:
    s3 = access.client()
    bucket = unique("closed")
    s3.create_bucket(Bucket=bucket)
    big = random_file(tmp_path / "interrupted.bin", 48 * MIB)
    sign_in(browser, gateway.url, access)
    first = browser.driver.current_window_handle
    browser.driver.switch_to.new_window("tab")
    browser.get(f"{gateway.url}/console/b/{bucket}")
    # a slow link, so that the upload is still under way when the tab goes
    browser.driver.execute_cdp_cmd("Network.enable", {})
    browser.driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 4 * MIB})
    browser.drop_files("#dropzone", [big])

    def multipart_started() -> bool:
        return bool(s3.list_multipart_uploads(Bucket=bucket).get("Uploads"))

    browser.wait(multipart_started, 60, "the multipart upload to start")
    assert browser.find("#uploads li").get_attribute("data-state") == "sending"
    browser.driver.close()
    browser.driver.switch_to.window(first)
    browser.wait(lambda: not multipart_started(), 60, "the multipart upload to be aborted")
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    s3.delete_bucket(Bucket=bucket)


# ---- without a browser: refusals, pages, headers ------------------------------------------------


def test_forged_session_and_missing_csrf(gateway: GatewayProcess, access: S3Access) -> None:
    s3 = access.client()
    client = ConsoleClient(gateway.url)
    try:
        # a forged cookie: back to sign-in, no error page
        client.http.cookies.set("deossfs_console", "forged-" + "x" * 40, path="/console")
        answer = client.http.get("/console/buckets")
        assert answer.status_code == 303 and answer.headers["location"].startswith("/console/signin")
        client.http.cookies.clear()
        assert client.signin(access.access_key_id, access.secret).status_code == 303
        token = client.csrf()
        # no CSRF token: 403, nothing created
        name = unique("nocsrf")
        answer = client.http.post("/console/buckets/create", data={"name": name})
        assert answer.status_code == 403 and "nothing was changed" in answer.text
        answer = client.http.post("/console/buckets/create", data={"name": name, "csrf": "wrong" + token})
        assert answer.status_code == 403
        assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
        answer = client.http.post("/console/api/presign", json={"op": "put", "bucket": name, "key": "x"})
        assert answer.status_code == 403 and answer.json()["error"] == "csrf"
        # with it: created
        answer = client.http.post("/console/buckets/create", data={"name": name, "csrf": token})
        assert answer.status_code == 303
        assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
        # the headers of every page: no framing, no inline script, names escaped
        page = client.http.get("/console/buckets")
        csp = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
        assert not inline_scripts(page.text)
        # sign-out needs the token too
        assert client.http.post("/console/signout").status_code == 403
        assert client.http.get("/console/buckets").status_code == 200
        s3.delete_bucket(Bucket=name)
    finally:
        client.close()


def test_listing_pages_sorting_and_filter(gateway: GatewayProcess, access: S3Access) -> None:
    s3 = access.client()
    bucket = unique("pages")
    s3.create_bucket(Bucket=bucket)
    for index in range(230):
        s3.put_object(Bucket=bucket, Key=f"item-{index:04d}", Body=b"")
    s3.put_object(Bucket=bucket, Key="zz-largest", Body=b"x" * 1000)
    s3.put_object(Bucket=bucket, Key="folder/inside", Body=b"")
    client = ConsoleClient(gateway.url)
    try:
        client.signin(access.access_key_id, access.secret)
        first = client.http.get(f"/console/b/{bucket}")
        names = re.findall(r'class="object">([^<]+)</a>', first.text)
        # 100 rows a page, the folder among them (as S3 counts common prefixes in MaxKeys)
        assert names == [f"item-{i:04d}" for i in range(99)] and 'class="folder">folder/</a>' in first.text
        following = re.search(r'href="([^"]+)" id="next-page"', first.text)
        assert following
        second = client.http.get(following.group(1).replace("&amp;", "&"))
        assert re.findall(r'class="object">([^<]+)</a>', second.text)[0] == "item-0099"
        by_size = client.http.get(f"/console/b/{bucket}", params={"sort": "size", "order": "desc"})
        assert re.findall(r'class="object">([^<]+)</a>', by_size.text)[0] == "zz-largest"
        filtered = client.http.get(f"/console/b/{bucket}", params={"filter": "item-02"})
        assert re.findall(r'class="object">([^<]+)</a>', filtered.text) == [f"item-{i:04d}" for i in range(200, 230)]
        inside = client.http.get(f"/console/b/{bucket}", params={"prefix": "folder/"})
        assert re.findall(r'class="object">([^<]+)</a>', inside.text) == ["inside"]
        buckets = client.http.get("/console/buckets").text
        row = re.search(rf"{bucket}</a></td>\s*<td class=\"num\">(\d+)</td>", buckets)
        assert row and row.group(1) == "232", row  # 230 items, zz-largest, folder/inside
    finally:
        client.close()
        for item in s3.list_objects_v2(Bucket=bucket, MaxKeys=1000).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=item["Key"])
        s3.delete_bucket(Bucket=bucket)


# ---- HTTPS, session expiry, sign-in limits -------------------------------------------------------


@pytest.fixture(scope="module")
def tls_gateway(gateways: Gateways) -> Iterator[GatewayProcess]:
    with gateways.https("tls", "gateway.console_session=4") as process:
        yield process


def test_https_with_boto3_and_a_secure_cookie(tls_gateway: GatewayProcess) -> None:
    assert tls_gateway.url.startswith("https://")
    access = create_key(tls_gateway)
    cert = str(tls_gateway.cert)  # type: ignore[attr-defined]
    s3 = access.client()
    s3 = __import__("boto3").client(
        "s3", endpoint_url=tls_gateway.url, aws_access_key_id=access.access_key_id,
        aws_secret_access_key=access.secret, region_name="us-east-1", verify=cert,
        config=__import__("botocore.config", fromlist=["Config"]).Config(
            s3={"addressing_style": "path"}, signature_version="s3v4"))
    bucket = unique("tls")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="over-tls", Body=b"encrypted in transit")
    assert s3.get_object(Bucket=bucket, Key="over-tls")["Body"].read() == b"encrypted in transit"
    # an unverified certificate is refused by a client that verifies (the default CA store)
    with pytest.raises(httpx.ConnectError):
        httpx.get(tls_gateway.url + "/version")
    trusting = ssl.create_default_context(cafile=cert)
    assert httpx.get(tls_gateway.url + "/version", verify=trusting).json().startswith("deossfs")
    client = ConsoleClient(tls_gateway.url, cafile=cert)
    try:
        answer = client.signin(access.access_key_id, access.secret)
        assert answer.status_code == 303
        cookie = answer.headers["set-cookie"]
        assert "deossfs_console=" in cookie
        for attribute in ("HttpOnly", "Secure", "SameSite=strict", "Path=/console", "Max-Age=4"):
            assert attribute.lower() in cookie.lower(), cookie
        assert client.http.get("/console/buckets").status_code == 200
        session = client.http.cookies["deossfs_console"]
        # the session expires (gateway.console_session = 4 s): the cookie's Max-Age ends with
        # it, so a browser drops it and meets the sign-in page
        time.sleep(5)
        answer = client.http.get("/console/buckets")
        assert answer.status_code == 303 and "/console/signin" in answer.headers["location"]
        # a client that still sends the old cookie: back to sign-in too, told the session ended
        client.http.cookies.set("deossfs_console", session, domain="127.0.0.1", path="/console")
        answer = client.http.get("/console/buckets")
        assert answer.status_code == 303 and "why=expired" in answer.headers["location"]
        assert "deossfs_console=" in answer.headers["set-cookie"]  # told to forget it
        client.http.cookies.clear()
        assert "Your session has ended" in client.http.get(answer.headers["location"]).text
    finally:
        client.close()
    s3.delete_object(Bucket=bucket, Key="over-tls")
    s3.delete_bucket(Bucket=bucket)


def test_https_console_in_the_browser(tls_gateway: GatewayProcess) -> None:
    access = create_key(tls_gateway)
    browser = Browser(insecure=True)  # the test's own self-signed certificate
    try:
        sign_in(browser, tls_gateway.url, access)
        cookie = browser.driver.get_cookie("deossfs_console")
        assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    finally:
        browser.close()


def test_wrong_secret_then_rate_limited(tls_gateway: GatewayProcess) -> None:
    access = create_key(tls_gateway)
    client = ConsoleClient(tls_gateway.url, cafile=str(tls_gateway.cert))  # type: ignore[attr-defined]
    try:
        answer = client.signin(access.access_key_id, "not the secret")
        assert answer.status_code == 401
        assert "The access key or the secret is wrong" in answer.text
        for _ in range(4):
            assert client.signin(access.access_key_id, "still wrong").status_code == 401
        # limited now, even with the right secret
        answer = client.signin(access.access_key_id, access.secret)
        assert answer.status_code == 429 and "Too many failed sign-ins" in answer.text
        assert "deossfs_console=" not in answer.headers.get("set-cookie", "x")
    finally:
        client.close()


def test_console_off(gateways: Gateways) -> None:
    process = gateways.extra("noconsole", "gateway.console=false").start()
    try:
        answer = httpx.get(process.url + "/console/signin")
        assert answer.status_code == 404
        assert "deossfs" in httpx.get(process.url + "/version").text
    finally:
        process.stop()


def test_labelled_controls_and_narrow_window(gateway: GatewayProcess, access: S3Access) -> None:
    """Every control has a label a screen reader reads; the pages fit a phone's width."""
    s3 = access.client()
    bucket = unique("narrow")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="photos/2026/a-long-file-name-that-wraps.jpg", Body=b"x" * 100)
    narrow = Browser(width=400, height=900)
    try:
        sign_in(narrow, gateway.url, access)
        for page in ("/console/buckets", f"/console/b/{bucket}", f"/console/b/{bucket}?prefix=photos/2026/",
                     "/console/territory"):
            narrow.get(gateway.url + page)
            unlabelled = narrow.driver.execute_script(
                "return [...document.querySelectorAll('input:not([type=hidden]), select, button')]"
                ".filter(e => !e.labels?.length && !e.getAttribute('aria-label') && !e.textContent.trim()"
                " && !e.classList.contains('visually-hidden')).map(e => e.outerHTML)")
            assert unlabelled == [], (page, unlabelled)
            assert narrow.driver.execute_script("return window.innerWidth") == 400
            width = narrow.driver.execute_script("return document.documentElement.scrollWidth")
            wide = narrow.driver.execute_script(
                "return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect()"
                ".right > 401).map(e => e.tagName + '.' + e.className + '#' + e.id).slice(0, 8)")
            assert width <= 400, (page, width, wide)
        narrow.get(gateway.url + f"/console/b/{bucket}?prefix=photos/2026/")
        narrow.screenshot("narrow")
        narrow.get(gateway.url + "/console/territory")
        narrow.screenshot("territory")
    finally:
        narrow.close()
        s3.delete_object(Bucket=bucket, Key="photos/2026/a-long-file-name-that-wraps.jpg")
        s3.delete_bucket(Bucket=bucket)
