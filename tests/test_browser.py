"""The page in a real browser: `captioner serve` in a subprocess, driven through Playwright and Debian's Chromium.

Skipped (with the reason) where /usr/bin/chromium or Playwright is missing; never downloads a browser.
Screenshots go to a temporary folder and are also copied to /tmp/screenshots/.
"""
from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium chromium-driver)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (pip install playwright)")

EXAMPLES = Path(__file__).parents[1] / "examples"
SCREENSHOTS = Path("/tmp/screenshots")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


@pytest.fixture(scope="module")
def server_url():
    """`captioner serve` with the shipped model on a free loopback port, for this module's tests."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "captioner", "--threads", "1", "serve", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"captioner serve exited with {process.returncode}:\n{process.stdout.read()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).json().get("model_loaded"):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("captioner serve did not answer /healthz within 180 s")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def screenshot_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def screenshot(page, folder: Path, name: str, full_page: bool = True) -> Path:
    path = folder / name
    page.screenshot(path=str(path), full_page=full_page)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENSHOTS / name)
    return path


@pytest.fixture()
def open_page(browser, server_url):
    """Open the page in a fresh context; records every request so tests can assert nothing left the server."""
    contexts = []

    def opener(width: int = 1280, height: int = 900):
        context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server_url)
        contexts.append(context)
        page = context.new_page()
        page.requested = []
        page.on("request", lambda request: page.requested.append(request.url))
        page.goto(server_url)
        page.wait_for_selector("#beam-size option", state="attached")  # the options come from /api/limits
        return page

    yield opener
    for context in contexts:
        context.close()


def wait_for_caption(page) -> str:
    page.wait_for_selector("#caption:not(:empty)", state="visible", timeout=60_000)
    return page.inner_text("#caption")


def assert_tag_chips(page, tags: list[dict]) -> None:
    """The photo's tags as a labelled list of chips, right under the caption, in the API's order."""
    assert tags, "the example photo should have tags"
    page.wait_for_selector("#tags li", state="visible")
    assert page.get_attribute("#tags", "aria-label") == "Visual concepts"
    assert page.evaluate("document.getElementById('caption').nextElementSibling.id") == "tags"
    chips = page.locator("#tags li")
    assert chips.count() == len(tags)
    assert [chips.nth(i).locator(".tag-word").inner_text() for i in range(len(tags))] == [tag["word"] for tag in tags]
    assert chips.first.locator(".tag-score").inner_text() == f"{round(tags[0]['score'] * 100)}%"
    caption_box, chip_box = page.locator("#caption").bounding_box(), chips.first.bounding_box()
    assert chip_box["y"] >= caption_box["y"] + caption_box["height"] - 1  # under the caption
    assert page.evaluate("getComputedStyle(document.querySelector('#tags li')).borderRadius") != "0px"  # rounded chips


def test_upload_shows_caption_and_sets_alt(open_page, server_url, screenshot_folder):
    page = open_page()
    held = []  # hold the request so the progress indicator can be seen
    page.route("**/api/captions", lambda route: held.append(route))
    page.set_input_files("#file", str(EXAMPLES / "astronaut.jpg"))
    page.wait_for_selector("#progress", state="visible")
    assert page.get_attribute("#result", "aria-busy") == "true"
    page.locator("#preview").evaluate("image => image.decode()")  # the preview is drawn
    screenshot(page, screenshot_folder, "desktop-progress.png")
    held[0].continue_()
    caption = wait_for_caption(page)
    assert page.get_attribute("#result", "aria-busy") == "false"

    assert caption.strip()
    assert page.get_attribute("#preview", "alt") == caption
    expected = httpx.post(f"{server_url}/api/captions", files={"image": (EXAMPLES / "astronaut.jpg").read_bytes()}, timeout=60).json()
    assert caption.lower().rstrip(".") == expected["captions"][0]["text"].lower().rstrip(".")
    assert page.is_visible("#copy")
    assert "512" in page.inner_text("#timing")
    assert_tag_chips(page, expected["tags"])
    path = screenshot(page, screenshot_folder, "desktop-caption.png")
    assert path.stat().st_size > 10_000
    assert all(url.startswith(server_url) or url.startswith(("blob:", "data:")) for url in page.requested), page.requested


def test_phone_width_with_alternatives(open_page, screenshot_folder):
    page = open_page(width=390, height=844)
    page.select_option("#num-captions", "3")
    assert page.input_value("#beam-size") == "3"  # the beam was widened to hold three captions
    page.set_input_files("#file", str(EXAMPLES / "chelsea.jpg"))
    caption = wait_for_caption(page)

    assert page.get_attribute("#preview", "alt") == caption
    assert page.locator("#alternatives li").count() == 2
    assert page.locator("#tags li").count() >= 1 and page.is_visible("#tags li")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing overflows sideways
    screenshot(page, screenshot_folder, "phone-caption.png")
    chip_colours = "(() => { const style = getComputedStyle(document.querySelector('#tags li')); return [style.backgroundColor, style.color]; })()"
    light = page.evaluate(chip_colours)
    page.emulate_media(color_scheme="dark")
    assert page.evaluate(chip_colours) != light  # the chips follow the dark theme
    screenshot(page, screenshot_folder, "phone-caption-dark.png")


def test_keyboard_only(open_page, screenshot_folder):
    page = open_page()
    # Subscribe now: Playwright enables file-chooser interception asynchronously, and a first
    # subscription made inside expect_file_chooser can lose the race against the key press.
    page.on("filechooser", lambda chooser: None)
    for _ in range(10):  # Tab to the photo picker
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "choose":
            break
    assert page.evaluate("document.activeElement.id") == "choose"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"  # focus is visible
    screenshot(page, screenshot_folder, "desktop-empty-keyboard-focus.png", full_page=False)
    page.focus("#choose")  # a screenshot may take focus from the page
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(str(EXAMPLES / "rocket.jpg"))
    caption = wait_for_caption(page)
    assert page.evaluate("document.activeElement.id") == "choose-another"  # focus was not lost with the hidden button

    for _ in range(10):  # on to the copy button
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "copy":
            break
    page.keyboard.press("Enter")
    page.wait_for_selector("#copy-label:text('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == caption


def test_every_control_is_labelled(open_page):
    page = open_page()
    unlabelled = page.evaluate(
        """() => Array.from(document.querySelectorAll('button, select, input, textarea, a[href]')).filter((element) => {
            const labelled = element.labels && element.labels.length > 0;
            return !(labelled || element.getAttribute('aria-label') || element.textContent.trim());
        }).map((element) => element.outerHTML)"""
    )
    assert unlabelled == []


def test_drop_and_paste(open_page):
    page = open_page()
    image = base64.b64encode((EXAMPLES / "coffee.jpg").read_bytes()).decode()
    make_file = f"""const bytes = Uint8Array.from(atob('{image}'), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], 'coffee.jpg', {{type: 'image/jpeg'}}));"""
    page.evaluate(f"() => {{ {make_file} document.getElementById('dropzone').dispatchEvent(new DragEvent('drop', {{dataTransfer: transfer, bubbles: true, cancelable: true}})); }}")
    dropped = wait_for_caption(page)
    assert "coffee.jpg" in page.inner_text("#photo-meta")

    page.evaluate("document.getElementById('caption').textContent = ''")
    page.evaluate(f"() => {{ {make_file} document.dispatchEvent(new ClipboardEvent('paste', {{clipboardData: transfer, bubbles: true, cancelable: true}})); }}")
    assert wait_for_caption(page) == dropped


def test_clear_error_messages(open_page, screenshot_folder):
    page = open_page()
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a photo"}])
    page.wait_for_selector("#error", state="visible")
    assert "not an image" in page.inner_text("#error-title")

    page.set_input_files("#file", files=[{"name": "huge.jpg", "mimeType": "image/jpeg", "buffer": b"\xff" * (11 * 1024 * 1024)}])
    page.wait_for_selector("#error-title:text('too large')")
    assert "10 MB" in page.inner_text("#error-message")

    truncated = (EXAMPLES / "astronaut.jpg").read_bytes()[:20_000]
    page.set_input_files("#file", files=[{"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": truncated}])
    page.wait_for_selector("#error-title:text('could not be read')", timeout=60_000)
    assert "corrupt or truncated" in page.inner_text("#error-message")
    screenshot(page, screenshot_folder, "desktop-error.png")

    page.set_input_files("#file", files=[{"name": "secret.jpg", "mimeType": "image/jpeg", "buffer": b"plain text pretending to be a photo"}])
    page.wait_for_selector("#error-title:text('not an image we can read')", timeout=60_000)
    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, screenshot_folder, "phone-error.png")
