"""The page in a real browser (see test_browser.py, whose server and browser this module reuses):
example photos, choosing an alternative, copying tags, where each word looked, contrast, the docs' way back."""
from __future__ import annotations

import re

import httpx
import pytest

from test_browser import EXAMPLES, browser, open_options, open_page, screenshot, screenshot_folder, server_url, wait_for_caption  # noqa: F401 (fixtures)

# Every visible text against what is drawn behind it: (text, contrast ratio) of those under 4.5:1 (WCAG AA).
LOW_CONTRAST = """() => {
    const channels = (text) => {
        const srgb = text.match(/^color\\(srgb ([\\d.e-]+) ([\\d.e-]+) ([\\d.e-]+)(?: \\/ ([\\d.e-]+))?\\)$/);
        if (srgb) return [srgb[1] * 255, srgb[2] * 255, srgb[3] * 255, srgb[4] === undefined ? 1 : Number(srgb[4])];
        const rgb = text.match(/[\\d.]+/g).map(Number);
        return [rgb[0], rgb[1], rgb[2], rgb.length > 3 ? rgb[3] : 1];
    };
    const over = (top, bottom) => [0, 1, 2].map((i) => top[i] * top[3] + bottom[i] * (1 - top[3])).concat(1);
    const luminance = (colour) => {
        const [r, g, b] = colour.slice(0, 3).map((value) => { const c = value / 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; });
        return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    const background = (element) => {
        const chain = [];
        for (let node = element; node; node = node.parentElement) chain.unshift(channels(getComputedStyle(node).backgroundColor));
        return chain.reduce((below, layer) => over(layer, below), [255, 255, 255, 1]);
    };
    const texts = Array.from(document.querySelectorAll("body *")).filter((element) => {
        const own = Array.from(element.childNodes).some((node) => node.nodeType === Node.TEXT_NODE && node.textContent.trim());
        const box = element.getBoundingClientRect();
        return own && box.width > 1 && box.height > 1 && getComputedStyle(element).visibility === "visible" && element.checkVisibility();
    });
    return texts.map((element) => {
        const behind = background(element);
        const text = over(channels(getComputedStyle(element).color), behind);
        const [light, dark] = [luminance(text), luminance(behind)].sort((a, b) => b - a);
        return [element.textContent.trim().slice(0, 40), Math.round(((light + 0.05) / (dark + 0.05)) * 100) / 100];
    }).filter(([, ratio]) => ratio < 4.5);
}"""


def click_example(page, name: str) -> str:
    page.wait_for_selector("#examples button", state="visible")
    page.click(f"#examples button[aria-label$='{name}']")
    return wait_for_caption(page)


def test_clicking_an_example_photo_captions_it(open_page, server_url, screenshot_folder):
    page = open_page()
    names = [page.get_attribute(f"#examples li:nth-child({i + 1}) button", "aria-label").rsplit(" ", 1)[1] for i in range(page.locator("#examples li").count())]
    assert names == sorted(path.name for path in EXAMPLES.glob("*.jpg"))
    assert page.evaluate("Array.from(document.querySelectorAll('#examples img')).every((image) => image.complete && image.naturalWidth > 0)")
    screenshot(page, screenshot_folder, "desktop-empty-examples.png", full_page=False)
    caption = click_example(page, "chelsea.jpg")
    assert "chelsea.jpg" in page.inner_text("#photo-meta")  # captioned as if uploaded, under its own name
    expected = httpx.post(f"{server_url}/api/captions", files={"image": (EXAMPLES / "chelsea.jpg").read_bytes()}, timeout=60).json()["captions"][0]["text"]
    assert caption.lower().rstrip(".") == expected.lower().rstrip(".")
    assert page.console_errors == []


def test_choosing_an_alternative_makes_it_the_caption_to_copy(open_page, screenshot_folder):
    page = open_page()
    open_options(page)
    page.select_option("#num-captions", "3")
    best = click_example(page, "coffee.jpg")
    choices = page.locator("#alternatives .alternative-choice")
    assert choices.count() == 2
    second = choices.nth(1)
    second.click()
    assert second.get_attribute("aria-pressed") == "true" and choices.nth(0).get_attribute("aria-pressed") == "false"
    assert page.inner_text("#copy-label") == "Copy chosen caption"
    chosen = page.inner_text("#alternatives li:nth-child(2) .alternative-text")
    page.click("#copy")
    page.wait_for_selector("#copy-label:text('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == chosen != best
    screenshot(page, screenshot_folder, "desktop-alternative-chosen.png")
    second.click()  # pressed again: the best caption is the one to copy once more
    assert second.get_attribute("aria-pressed") == "false"
    page.click("#copy")
    page.wait_for_function("() => navigator.clipboard.readText().then((text) => text === document.getElementById('caption').textContent)")


def test_tags_can_be_copied(open_page):
    page = open_page()
    click_example(page, "coffee.jpg")
    words = [page.locator("#tags .tag-word").nth(i).inner_text() for i in range(page.locator("#tags li").count())]
    page.click("#copy-tags")
    page.wait_for_selector("#copy-tags-label:text('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == ", ".join(words)


def canvas_ink(page) -> int:
    return page.evaluate("""() => { const canvas = document.getElementById('word-map');
        return canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data.filter((_, i) => i % 4 === 3).reduce((a, b) => a + b, 0); }""")


def test_hovering_a_word_shows_where_it_looked(open_page, screenshot_folder):
    page = open_page()
    caption = click_example(page, "chelsea.jpg")
    page.wait_for_selector("#word-list .word", state="visible", timeout=60_000)
    words = [page.locator("#word-list .word").nth(i).inner_text() for i in range(page.locator("#word-list .word").count())]
    assert words == re.sub(r"[.!?]$", "", caption).lower().split()
    assert not page.is_visible("#word-map")
    page.hover("#word-list li:nth-child(2) .word")
    page.wait_for_selector("#word-map", state="visible")
    assert canvas_ink(page) > 0
    canvas, photo = page.locator("#word-map").bounding_box(), page.locator("#preview").bounding_box()
    assert all(abs(canvas[key] - photo[key]) <= 1 for key in ("x", "y", "width", "height")), (canvas, photo)  # over the photo, exactly
    assert page.get_attribute("#word-list li:nth-child(2) .word", "aria-pressed") == "true"
    screenshot(page, screenshot_folder, "desktop-word-map.png", full_page=False)
    page.mouse.move(0, 0)
    page.wait_for_selector("#word-map", state="hidden")
    page.focus("#word-list li:nth-child(3) .word")  # the keyboard reaches them too
    page.wait_for_selector("#word-map", state="visible")
    assert page.console_errors == []


def test_options_are_in_plain_words(open_page):
    page = open_page()
    open_options(page)
    assert page.inner_text("label[for='beam-size']") == "Search width"
    assert page.inner_text("label[for='num-captions']") == "Captions to show"
    assert "beam" not in page.inner_text("#options-disclosure").lower()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_text_has_a_contrast_of_at_least_4_5(open_page, scheme):
    page = open_page()
    page.emulate_media(color_scheme=scheme)
    page.wait_for_selector("#examples button", state="visible")
    page.wait_for_timeout(300)  # the drop zone's background transition (0.15 s) to the new scheme settles
    assert page.evaluate(LOW_CONTRAST) == []  # the empty page: placeholder, drop zone, examples
    open_options(page)
    page.select_option("#num-captions", "3")
    click_example(page, "astronaut.jpg")
    page.wait_for_selector("#word-list .word", state="visible", timeout=60_000)
    page.click("#alternatives li:first-child .alternative-choice")
    page.wait_for_timeout(300)  # colour transitions settle
    assert page.evaluate(LOW_CONTRAST) == []  # caption, confidence, tags, alternatives, words, options


def test_docs_are_titled_and_lead_back_to_the_page(open_page, server_url):
    page = open_page()
    page.goto(f"{server_url}/docs")
    assert re.fullmatch(r"Captioner \d+\.\d+\.\d+ \u2014 JSON API", page.title())
    back = page.locator("a.back-to-page")
    back.wait_for(state="visible", timeout=30_000)
    back.click()
    page.wait_for_selector("#choose", state="visible")
    assert page.url == f"{server_url}/"
