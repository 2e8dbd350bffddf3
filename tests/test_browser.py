"""The page in a real browser: `captioner serve` in a subprocess, driven through Playwright and Debian's Chromium.

Skipped (with the reason) where /usr/bin/chromium or Playwright is missing; never downloads a browser.
Screenshots go to a temporary folder and are also copied to /tmp/screenshots/.
"""
from __future__ import annotations

import base64
import json
import re
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


# Playwright does not capture multipart bodies holding a file: keep each caption request's form fields.
RECORD_FORMS = """(() => {
    const fetch = window.fetch;
    window.captionForms = [];
    window.fetch = (url, options) => {
        if (options && options.body instanceof FormData && String(url).endsWith("/api/captions")) {  // not /api/explain's
            window.captionForms.push(Object.fromEntries(Array.from(options.body).filter(([name]) => name !== "image")));
        }
        return fetch(url, options);
    };
})()"""


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
    """Open the page in a fresh context; records every request so tests can assert nothing left the server
    (`page.requested`) and count the captioning requests (`page.caption_posts`)."""
    contexts = []

    def opener(width: int = 1280, height: int = 900):
        context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server_url)
        contexts.append(context)
        page = context.new_page()
        page.requested = []
        page.caption_posts = []

        def record(request):
            page.requested.append(request.url)
            if request.method == "POST" and request.url.endswith("/api/captions"):
                page.caption_posts.append(request)

        page.on("request", record)
        page.console_errors = []  # a CSP violation (an inline style or script) shows up here
        page.on("console", lambda message: message.type == "error" and page.console_errors.append(message.text))
        page.add_init_script(RECORD_FORMS)
        page.goto(server_url)
        page.wait_for_selector("#beam-size option", state="attached")  # the options come from /api/limits
        return page

    yield opener
    for context in contexts:
        context.close()


def wait_for_caption(page) -> str:
    page.wait_for_selector("#caption:not(:empty)", state="visible", timeout=60_000)
    return page.inner_text("#caption")


def open_options(page) -> None:
    closed = page.locator("#options-disclosure:not([open]) summary")
    if closed.count():
        closed.click()
    page.wait_for_selector("#beam-size", state="visible")


def fake_captions(page, scores: list[float], confidences: list[float | None] | None = None, tags: list[dict] | None = None, tags_alt_text: str | None = None) -> None:
    """Answer /api/captions with captions of the given scores and confidences (default 0.8), best first, to test how they are shown."""
    confidences = confidences or [0.8] * len(scores)
    body = {
        "captions": [{"text": f"caption number {rank}", "score": score, "confidence": confidence} for rank, (score, confidence) in enumerate(zip(scores, confidences), start=1)],
        "tags": tags or [], "tags_alt_text": tags_alt_text, "model": "test", "image": {"width": 451, "height": 300},
        "timing_ms": {"decode": 1.0, "encode": 1.0, "generate": 1.0, "total": 3.0},
    }
    page.unroute("**/api/captions")
    page.route("**/api/captions", lambda route: route.fulfill(json=body))


def settle(page, seconds: float = 1.0) -> None:
    """Long enough for the options' settling delay to run out and a request to have gone."""
    page.wait_for_timeout(seconds * 1000)


def visible_text(page) -> str:
    return page.inner_text("body")


def content_words(text: str) -> set[str]:
    return {word for word in re.findall(r"[a-z]{4,}", text.lower())}


def assert_tag_chips(page, tags: list[dict]) -> None:
    """The photo's tags as a labelled list of chips, under the caption and its confidence, in the API's order."""
    assert tags, "the example photo should have tags"
    page.wait_for_selector("#tags li", state="visible")
    assert page.get_attribute("#tags", "aria-label") == "Visual concepts"
    assert page.evaluate("document.getElementById('confidence').nextElementSibling.id") == "tags"
    chips = page.locator("#tags li")
    assert chips.count() == len(tags)
    assert [chips.nth(i).locator(".tag-word").inner_text() for i in range(len(tags))] == [tag["word"] for tag in tags]
    assert chips.first.locator(".tag-score").inner_text() == f"{round(tags[0]['score'] * 100)}%"
    caption_box, chip_box = page.locator("#caption").bounding_box(), chips.first.bounding_box()
    assert chip_box["y"] >= caption_box["y"] + caption_box["height"] - 1  # under the caption
    assert page.evaluate("getComputedStyle(document.querySelector('#tags li')).borderRadius") != "0px"  # rounded chips


def shown(score: float) -> str:
    return f"{score:.2f}".replace("-", "\u2212")


def test_upload_shows_caption_and_sets_alt(open_page, server_url, screenshot_folder):
    page = open_page()
    screenshot(page, screenshot_folder, "desktop-empty.png")
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
    best = expected["captions"][0]
    assert caption.lower().rstrip(".") == best["text"].lower().rstrip(".")
    assert page.is_visible("#copy")
    assert "512" in page.inner_text("#timing")
    assert page.is_visible("#confidence-words") and page.inner_text("#confidence-words")
    assert shown(best["score"]) in page.inner_text("#best-score")  # the number, for those who want it
    assert_tag_chips(page, expected["tags"])
    path = screenshot(page, screenshot_folder, "desktop-caption.png")
    assert path.stat().st_size > 10_000
    assert all(url.startswith(server_url) or url.startswith(("blob:", "data:")) for url in page.requested), page.requested
    assert page.console_errors == []


def test_options_are_a_disclosure_below_the_caption(open_page):
    page = open_page()
    assert page.evaluate("document.getElementById('options-disclosure').tagName") == "DETAILS"
    assert page.inner_text("#options-disclosure summary").startswith("Options")
    assert not page.is_visible("#beam-size") and not page.is_visible("#num-captions")  # closed until asked for
    page.set_input_files("#file", str(EXAMPLES / "chelsea.jpg"))
    wait_for_caption(page)
    caption_box, options_box = page.locator("#caption").bounding_box(), page.locator("#options-disclosure").bounding_box()
    assert options_box["y"] > caption_box["y"] + caption_box["height"]
    assert page.evaluate("!!(document.getElementById('answer').compareDocumentPosition(document.getElementById('options-disclosure')) & Node.DOCUMENT_POSITION_FOLLOWING)")
    page.focus("#options-disclosure summary")  # opens from the keyboard, too
    page.keyboard.press("Enter")
    assert page.is_visible("#beam-size") and page.is_visible("#num-captions")


def test_phone_caption_above_the_fold(open_page, screenshot_folder):
    page = open_page(width=390, height=844)
    screenshot(page, screenshot_folder, "phone-empty.png")
    page.set_input_files("#file", str(EXAMPLES / "astronaut.jpg"))  # square: the tallest example on a phone
    wait_for_caption(page)
    page.wait_for_timeout(300)  # a smooth scroll, were there one, would be under way
    assert page.evaluate("window.scrollY") == 0  # not scrolled to: it was there already
    for selector in ("#caption", "#confidence-words"):
        box = page.locator(selector).bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= 844, (selector, box)
    screenshot(page, screenshot_folder, "phone-caption-fold.png", full_page=False)


def test_phone_width_with_alternatives(open_page, screenshot_folder):
    page = open_page(width=390, height=844)
    open_options(page)
    page.select_option("#num-captions", "3")
    assert page.input_value("#beam-size") == "3"  # the beam was widened to hold three captions
    assert "3 captions" in page.inner_text("#options-summary")
    settle(page)
    assert page.caption_posts == []  # no photo yet: changing options sends nothing
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
    page.wait_for_timeout(400)  # let the buttons' colour transitions finish before the screenshot
    screenshot(page, screenshot_folder, "phone-caption-dark.png")


# (confidence, words the page must show), by the shipped model's bands (its calibration.json, sent by /api/model)
CONFIDENCE_CASES = [(0.86, "Fairly sure"), (0.61, "Somewhat sure"), (0.42, "Unsure \u2014 check this caption"), (0.12, "A guess \u2014 probably wrong")]


def test_confidence_in_words_and_type(open_page, screenshot_folder):
    page = open_page()
    styles = {}
    score = -1.25
    for confidence, words in CONFIDENCE_CASES:
        fake_captions(page, [score], [confidence])
        page.evaluate("document.getElementById('caption').textContent = ''")
        page.set_input_files("#file", str(EXAMPLES / "chelsea.jpg"))
        wait_for_caption(page)
        # visible text, not a tooltip: readable on touch screens and reached by screen readers and keyboards alike
        assert page.is_visible("#confidence-words") and page.inner_text("#confidence-words") == words
        assert page.inner_text("#confidence-detail").strip()
        assert shown(score) in page.inner_text("#best-score")
        assert not page.locator("#confidence [title]").count()
        page.wait_for_function("words => document.getElementById('status').textContent.includes(words)", arg=words)
        styles[words] = page.evaluate("(() => { const s = getComputedStyle(document.getElementById('caption')); return [parseFloat(s.fontSize), s.fontStyle]; })()")
        screenshot(page, screenshot_folder, f"desktop-caption-{page.get_attribute('#answer', 'data-confidence')}.png", full_page=False)
    sizes = [styles[words][0] for _, words in CONFIDENCE_CASES]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[2]  # the surer, the larger
    assert styles["Fairly sure"][1] == "normal"
    assert styles["Unsure \u2014 check this caption"][1] == "italic" and styles["A guess \u2014 probably wrong"][1] == "italic"


def test_score_bars_share_one_scale(open_page):
    page = open_page()
    scores = [-0.9, -1.22, -1.23, -1.9]
    fake_captions(page, scores)
    open_options(page)
    page.select_option("#num-captions", "4")
    page.set_input_files("#file", str(EXAMPLES / "chelsea.jpg"))
    wait_for_caption(page)
    assert page.locator("#alternatives li").count() == 3
    shares = page.evaluate("""() => ['#best-bar', ...Array.from(document.querySelectorAll('#alternatives .score-bar'), (_, i) => `#alternatives li:nth-child(${i + 1}) .score-bar`)]
        .map((selector) => { const bar = document.querySelector(selector); return bar.firstElementChild.getBoundingClientRect().width / bar.getBoundingClientRect().width; })""")
    assert len(shares) == 4  # the best caption has a bar too
    tracks = page.evaluate("Array.from(document.querySelectorAll('.score-bar'), (bar) => bar.getBoundingClientRect().width)")
    assert max(tracks) - min(tracks) <= 2, tracks  # equal lengths on screen, so equal shares look equal
    # one affine scale for all: the shares fit a single line through the scores
    slope = (shares[0] - shares[3]) / (scores[0] - scores[3])
    for score, share in zip(scores, shares):
        assert share == pytest.approx(shares[3] + slope * (score - scores[3]), abs=0.01)
    assert shares[0] - shares[3] > 0.4  # a real gap in score is a visible gap in length
    assert abs(shares[1] - shares[2]) < 0.02  # -1.22 and -1.23 are as good as equal, and look it


def test_new_choice_clears_the_old_photo(open_page, screenshot_folder):
    page = open_page()
    page.set_input_files("#file", str(EXAMPLES / "chelsea.jpg"))
    wait_for_caption(page)
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a photo"}])
    page.wait_for_selector("#error", state="visible")
    assert not page.is_visible("#preview-figure") and not page.is_visible("#photo-meta")
    assert "chelsea" not in visible_text(page)
    assert "notes.txt" in page.inner_text("#error-title")  # the error names the file it is about
    assert page.is_visible("#choose")  # the drop zone is ready for the next photo
    posts = len(page.caption_posts)
    open_options(page)
    page.select_option("#beam-size", "5")
    settle(page)
    assert len(page.caption_posts) == posts  # nothing re-captions the old photo
    assert page.is_visible("#error") and not page.is_visible("#caption")


def test_options_settle_before_captioning(open_page):
    page = open_page()
    page.set_input_files("#file", str(EXAMPLES / "chelsea.jpg"))
    wait_for_caption(page)
    open_options(page)
    posts = len(page.caption_posts)
    page.focus("#beam-size")
    for _ in range(3):  # 3 -> 6, one arrow-key step at a time
        page.keyboard.press("ArrowDown")
        page.wait_for_timeout(60)
    assert page.input_value("#beam-size") == "6"
    wait_for_caption(page)
    settle(page)
    new = page.caption_posts[posts:]
    assert len(new) == 1, [request.url for request in new]
    assert page.evaluate("window.captionForms.at(-1)") == {"beam_size": "6", "num_captions": "1"}


def test_tiff_without_preview_is_one_line(open_page, tmp_path, screenshot_folder):
    from PIL import Image

    path = tmp_path / "chelsea.tif"
    Image.open(EXAMPLES / "chelsea.jpg").save(path)
    page = open_page()
    page.set_input_files("#file", str(path))
    wait_for_caption(page)
    page.wait_for_selector("#preview-figure.no-preview .preview-missing", state="visible")
    assert page.locator("#preview-figure").bounding_box()["height"] < 100  # a line, not a box that dominates
    assert page.locator("#dropzone").bounding_box()["height"] < 120
    screenshot(page, screenshot_folder, "desktop-caption-no-preview.png", full_page=False)


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

    for _ in range(10):  # on to the options, which open from the keyboard with a visible focus ring
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.tagName") == "SUMMARY":
            break
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    page.keyboard.press("Enter")
    assert page.is_visible("#beam-size")

    page.focus("#choose-another")
    with page.expect_file_chooser() as chooser:  # a bad file: focus moves to the button that is left
        page.keyboard.press("Enter")
    chooser.value.set_files(files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a photo"}])
    page.wait_for_selector("#error", state="visible")
    assert page.evaluate("document.activeElement.id") == "choose"


def test_every_control_is_labelled(open_page):
    page = open_page()
    unlabelled = page.evaluate(
        """() => Array.from(document.querySelectorAll('button, select, input, textarea, a[href], summary')).filter((element) => {
            const labelled = element.labels && element.labels.length > 0;
            return !(labelled || element.getAttribute('aria-label') || element.textContent.trim());
        }).map((element) => element.outerHTML)"""
    )
    assert unlabelled == []
    assert page.get_attribute("#status", "aria-live") == "polite"  # results are announced
    assert page.get_attribute("#error", "role") == "alert"


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


def assert_error_reads_once(page, file_name: str) -> None:
    """Title names the file and the problem, the body says what to do: no word repeated between them;
    no "Caption" heading above it and no preview box beside it."""
    title, body = page.inner_text("#error-title"), page.inner_text("#error-message")
    repeated = content_words(title) & content_words(body) - content_words(file_name)
    assert not repeated, (title, body)
    heading = page.locator("#result-heading").bounding_box()
    assert heading is None or heading["height"] <= 1  # kept for screen readers only
    assert not page.is_visible("#preview-figure")


def test_clear_error_messages(open_page, screenshot_folder):
    page = open_page()
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a photo"}])
    page.wait_for_selector("#error", state="visible")
    assert "not an image" in page.inner_text("#error-title")
    assert_error_reads_once(page, "notes.txt")

    page.set_input_files("#file", files=[{"name": "huge.jpg", "mimeType": "image/jpeg", "buffer": b"\xff" * (11 * 1024 * 1024)}])
    page.wait_for_selector("#error-title:text('too large')")
    assert "10 MB" in page.inner_text("#error-message")
    assert_error_reads_once(page, "huge.jpg")

    truncated = (EXAMPLES / "astronaut.jpg").read_bytes()[:20_000]
    page.set_input_files("#file", files=[{"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": truncated}])
    page.wait_for_selector("#error-title:text('broken.jpg')", timeout=60_000)
    assert "corrupt or truncated" in page.inner_text("#error-message")
    assert_error_reads_once(page, "broken.jpg")
    screenshot(page, screenshot_folder, "desktop-error.png")

    page.set_input_files("#file", files=[{"name": "secret.jpg", "mimeType": "image/jpeg", "buffer": b"plain text pretending to be a photo"}])
    page.wait_for_selector("#error-title:text('secret.jpg')", timeout=60_000)
    assert "not a supported image" in page.inner_text("#error-message")
    assert_error_reads_once(page, "secret.jpg")
    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, screenshot_folder, "phone-error.png")


def test_docs_render_and_try_it_out_captions_a_photo(open_page, server_url, screenshot_folder):
    """The "JSON API" link's Swagger UI renders the schema, and "Try it out" captions a photo."""
    page = open_page()
    page.goto(f"{server_url}/docs")
    operation = page.locator(".opblock-post:has([data-path='/api/captions'])")
    operation.wait_for(state="visible", timeout=30_000)  # absent when Swagger UI cannot render the schema
    assert "Unable to render this definition" not in page.inner_text("body")
    for path in ("/api/model", "/api/limits", "/healthz"):
        assert page.locator(f".opblock-get:has([data-path='{path}'])").count() == 1
    screenshot(page, screenshot_folder, "docs.png", full_page=False)

    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    operation.locator("input[type=file]").set_input_files(str(EXAMPLES / "astronaut.jpg"))
    operation.locator("button.execute").click()
    response = operation.locator(".live-responses-table tr.response").first
    status = response.locator(".response-col_status")
    status.wait_for(state="visible", timeout=60_000)
    assert status.inner_text().strip() == "200"
    answer = json.loads(response.locator(".response-col_description pre").first.inner_text())
    assert answer["captions"][0]["text"].strip() and answer["image"] == {"width": 512, "height": 512}
    response.scroll_into_view_if_needed()
    screenshot(page, screenshot_folder, "docs-try-it-out.png", full_page=False)
    assert all(url.startswith((server_url, "data:", "blob:")) for url in page.requested), "nothing from a CDN"


def test_a_guess_offers_the_tags_as_alt_text_and_keeps_the_alt_neutral(open_page, screenshot_folder):
    page = open_page()
    tags = [{"word": "cup", "score": 0.99}, {"word": "coffee", "score": 0.99}]
    fake_captions(page, [-1.8], [0.12], tags, "Photo of a cup and coffee.")
    page.set_input_files("#file", str(EXAMPLES / "coffee.jpg"))
    caption = wait_for_caption(page)
    assert page.inner_text("#confidence-words") == "A guess \u2014 probably wrong"
    assert "probably wrong" in page.inner_text("#suggestion").lower()  # said plainly, beside the suggestion
    assert page.is_visible("#suggestion") and page.inner_text("#suggestion-text") == "Photo of a cup and coffee."
    assert page.get_attribute("#preview", "alt") == "Your photo"  # the guess is not the photo's description
    assert "button-primary" in page.get_attribute("#copy-suggestion", "class") and "button-quiet" in page.get_attribute("#copy", "class")
    suggestion_box, copy_box = page.locator("#copy-suggestion").bounding_box(), page.locator("#copy").bounding_box()
    assert suggestion_box["height"] > copy_box["height"]  # the suggestion's button is the prominent one
    page.click("#copy-suggestion")
    assert page.evaluate("navigator.clipboard.readText()") == "Photo of a cup and coffee."
    screenshot(page, screenshot_folder, "desktop-caption-guess-suggestion.png", full_page=False)

    fake_captions(page, [-0.9], [0.86], tags, "Photo of a cup and coffee.")  # a sure caption: no suggestion, the caption is the alt
    page.evaluate("document.getElementById('caption').textContent = ''")
    page.set_input_files("#file", str(EXAMPLES / "coffee.jpg"))
    caption = wait_for_caption(page)
    assert not page.is_visible("#suggestion") and page.get_attribute("#preview", "alt") == caption
    assert "button-quiet" not in page.get_attribute("#copy", "class")

    fake_captions(page, [-0.9], [None])  # a model without calibration: no confidence words invented
    page.evaluate("document.getElementById('caption').textContent = ''")
    page.set_input_files("#file", str(EXAMPLES / "coffee.jpg"))
    wait_for_caption(page)
    assert page.inner_text("#confidence-words") == "No confidence for this model" and not page.is_visible("#suggestion")
