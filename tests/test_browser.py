"""The attention page in a real browser: headless Chromium driven by Selenium.

Load the file from disk, click a token and read back the weights the page shows, switch
layer and head (and the mean over heads), hover, use the heatmap, and check that nothing
went to the console as an error and that a screenshot comes out.

Needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver) and
selenium (in the dev extra). Without them these tests skip and say why; set
QKVGPT_REQUIRE_BROWSER=1 (CI does) to make a missing browser a failure instead.
"""

import json
import os
import shutil
import tempfile

import pytest
import torch

from data import tokenizer_from_dict
from model import GPT, GPTConfig
from viz.attention_page import SCALE, write_attention_page

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TOL = 0.5 / SCALE + 1e-6          # the page stores weights rounded to 1/SCALE
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak."
TOK = tokenizer_from_dict({"kind": "char", "chars": sorted(set(TEXT))})
PROMPT_LEN = 15                   # "First Citizen:\n"


def missing_browser():
    """Why the browser tests cannot run here, or None if they can."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        return f"no browser: {' and '.join(missing)} missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


REASON = missing_browser()
if REASON and os.environ.get("QKVGPT_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"QKVGPT_REQUIRE_BROWSER=1 but {REASON}")
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

if REASON is None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select


@pytest.fixture(scope="module")
def driver():
    """One headless browser for the whole module, with its own throwaway profile."""
    profile = tempfile.mkdtemp(prefix="qkvgpt-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync",
                "--window-size=1280,1100", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield d
    d.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny model with distinct heads (GQA), its page with a loss curve, and its weights."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=64, n_layer=2, n_head=4, n_kv_head=2,
                          n_embd=32))
    with torch.no_grad():
        for p in model.parameters():   # peaked, head-specific attention (the default init is ~uniform)
            p.normal_(0.0, 0.3)
    model.eval()
    tokens = TOK.encode(TEXT)
    folder = tmp_path_factory.mktemp("page")
    metrics = folder / "metrics.jsonl"
    metrics.write_text("\n".join(
        [json.dumps({"kind": "train", "iter": i, "loss": 4 - i / 80, "lr": 1e-3, "tok_per_s": 1.0, "mfu": 0.0})
         for i in range(0, 200, 10)] +
        [json.dumps({"kind": "eval", "iter": i, "train_loss": 4 - i / 80, "val_loss": 4.1 - i / 90})
         for i in (0, 100, 199)]) + "\n")
    path = write_attention_page(folder / "page.html", model, TOK, tokens, metrics_path=metrics,
                                prompt_len=PROMPT_LEN)
    maps = [w[0] for w in model.attention_maps(torch.tensor([tokens]))]   # n_layer x (nh, T, T)
    return path, maps, model, folder


def load(driver, path):
    driver.get(path.as_uri())
    assert driver.find_elements(By.CSS_SELECTOR, "#tokens .tok"), "the page drew no tokens"


def tokens(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#tokens .tok")


def shown_weights(driver):
    """data-weight of every token, None where there is none (a future token)."""
    values = driver.execute_script(
        "return [...document.querySelectorAll('#tokens .tok')].map(e => e.dataset.weight ?? null)")
    return [None if v is None else float(v) for v in values]


def check_row(driver, expected, i, tol=TOL):
    """The page shows query i's row: every earlier token's weight equals expected[j]."""
    got = shown_weights(driver)
    T = len(got)
    assert all(w is None for w in got[i + 1:]), "a future token shows a weight"
    assert None not in got[:i + 1]
    want = expected[i, :i + 1].tolist()
    assert max(abs(a - b) for a, b in zip(got[:i + 1], want)) <= tol, (got[:i + 1], want)
    classes = [t.get_attribute("class") for t in tokens(driver)]
    assert "sel" in classes[i] and all("future" in c for c in classes[i + 1:T])


def no_console_errors(driver):
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_click_a_token_shows_the_models_weights(driver, run):
    path, maps, _, _ = run
    load(driver, path)
    check_row(driver, maps[0][0], len(maps[0][0]) - 1)        # at first: the last token, layer 0, head 0
    for i in (20, 3, 0):
        tokens(driver)[i].click()
        check_row(driver, maps[0][0], i)
    tokens(driver)[20].click()
    top = driver.find_element(By.CSS_SELECTOR, "#top-table tr").get_attribute("data-key")
    assert int(top) == int(maps[0][0, 20, :21].argmax())       # the readout lists the biggest first
    assert "sum to 1.00" in driver.find_element(By.ID, "row-sum").text
    no_console_errors(driver)


def test_switch_layer_head_and_mean(driver, run):
    path, maps, _, _ = run
    load(driver, path)
    i = 30
    tokens(driver)[i].click()
    for layer, head in ((1, 3), (0, 2), (1, 0)):
        Select(driver.find_element(By.ID, "layer")).select_by_value(str(layer))
        Select(driver.find_element(By.ID, "head")).select_by_value(str(head))
        check_row(driver, maps[layer][head], i)               # the pinned token stays chosen
        assert f"Layer {layer}, head {head}" in driver.find_element(By.ID, "matrix-title").text
    Select(driver.find_element(By.ID, "head")).select_by_value("mean")
    check_row(driver, maps[1].mean(0), i, tol=2 * TOL)        # mean of the rounded heads, rounded
    assert "mean over the 4 heads" in driver.find_element(By.ID, "matrix-title").text
    no_console_errors(driver)


def test_hover_previews_and_arrow_keys_step(driver, run):
    path, maps, _, _ = run
    load(driver, path)
    boxes = "return [...document.querySelectorAll('#tokens .tok')].map(e => [e.offsetLeft, e.offsetTop])"
    before = driver.execute_script(boxes)
    tokens(driver)[12].click()
    assert driver.execute_script(boxes) == before   # nothing moves: hover stays on the same token
    ActionChains(driver).move_to_element(tokens(driver)[5]).perform()
    check_row(driver, maps[0][0], 5)                          # hovering previews token 5
    ActionChains(driver).move_to_element(driver.find_element(By.TAG_NAME, "h1")).perform()
    check_row(driver, maps[0][0], 12)                         # leaving goes back to the pinned one
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_LEFT)
    check_row(driver, maps[0][0], 11)
    no_console_errors(driver)


def test_heatmap_masks_the_future_and_selects_rows(driver, run):
    path, maps, _, _ = run
    load(driver, path)
    T = len(maps[0][0])
    canvas = driver.find_element(By.ID, "heatmap")
    cell, pad = int(canvas.get_attribute("data-cell")), int(canvas.get_attribute("data-pad"))
    # the colour at the centre of cells (i, j), read from the canvas itself
    pixels = driver.execute_script("""
        const c = document.getElementById('heatmap'), g = c.getContext('2d');
        const s = c.width / parseFloat(c.style.width), [cell, pad] = arguments[0];
        return arguments[1].map(([i, j]) => Array.from(g.getImageData(
            Math.floor((pad + j * cell + cell / 2) * s), Math.floor((pad + i * cell + cell / 2) * s), 1, 1).data));
    """, [cell, pad], [[i, j] for i in range(0, T, 7) for j in range(0, T, 5)])
    for (i, j), (r, g, b, _) in zip([(i, j) for i in range(0, T, 7) for j in range(0, T, 5)], pixels):
        grey = min(r, g, b) >= 190 and max(r, g, b) - min(r, g, b) <= 12
        assert grey == (j > i), f"cell ({i}, {j}) is {'masked' if grey else 'coloured'}"
    # clicking a row of the heatmap chooses that query (offsets count from the centre of the
    # element's visible part, so bring all of it into view first)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    half = canvas.size["width"] // 2
    ActionChains(driver).move_to_element_with_offset(
        canvas, pad + 2 * cell + cell // 2 - half, pad + 17 * cell + cell // 2 - half).click().perform()
    check_row(driver, maps[0][0], 17)
    no_console_errors(driver)


def test_page_text_loss_curve_and_screenshot(driver, run, tmp_path):
    path, maps, _, _ = run
    load(driver, path)
    text = "".join(t.text for t in driver.find_elements(By.CSS_SELECTOR, "#tokens .tok .t"))
    assert text == TEXT.replace(" ", "·").replace("\n", "↵")   # spaces and newlines made visible
    prompt = driver.find_elements(By.CSS_SELECTOR, "#tokens .tok.prompt")
    assert len(prompt) == PROMPT_LEN
    assert f"All {len(maps[0][0])} tokens are shown" in driver.find_element(By.ID, "window-note").text
    box = driver.execute_script("const b = document.querySelector('#loss-svg polyline').getBBox();"
                                "return [b.width, b.height]")
    assert box[0] > 200 and box[1] > 50                       # the curve spans the plot
    tokens(driver)[40].click()
    shot = tmp_path / "page.png"
    assert driver.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    no_console_errors(driver)


def test_a_sliding_window_band_in_the_browser(driver, run):
    """attn_window = 6: a token shows weights for its own window only; the keys before it are
    greyed and hatched like the future, in the tokens and in the heatmap, and the readout and
    the tooltip say why."""
    _, _, model, folder = run
    W = 6
    windowed = GPT(GPTConfig(**{**vars(model.config), "attn_window": W}))
    windowed.load_state_dict(model.state_dict())
    windowed.eval()
    tokens_ = TOK.encode(TEXT)
    path = write_attention_page(folder / "band.html", windowed, TOK, tokens_)
    maps = [w[0] for w in windowed.attention_maps(torch.tensor([tokens_]))]
    load(driver, path)
    assert f"attn_window = {W}" in driver.find_element(By.ID, "model-line").text
    for i in (20, 3):
        tokens(driver)[i].click()
        got = shown_weights(driver)
        lo = max(0, i - W + 1)
        assert all(w is None for w in got[:lo]) and all(w is None for w in got[i + 1:])
        want = maps[0][0, i, lo:i + 1].tolist()
        assert max(abs(a - b) for a, b in zip(got[lo:i + 1], want)) <= TOL
        classes = [t.get_attribute("class") for t in tokens(driver)]
        assert all("outside" in c for c in classes[:lo]) and not any("outside" in c for c in classes[lo:])
        assert tokens(driver)[0].value_of_css_property("opacity") == ("0.28" if lo else "1")
    tokens(driver)[20].click()
    note = driver.find_element(By.ID, "row-sum").text
    assert f"The {W} weights sum to 1.00" in note and f"The 15 earlier tokens are outside its window of {W}" in note
    T = len(tokens_)
    canvas = driver.find_element(By.ID, "heatmap")
    cell, pad = int(canvas.get_attribute("data-cell")), int(canvas.get_attribute("data-pad"))
    cells = [(i, j) for i in range(0, T, 3) for j in range(0, T, 2)]
    pixels = driver.execute_script("""
        const c = document.getElementById('heatmap'), g = c.getContext('2d');
        const s = c.width / parseFloat(c.style.width), [cell, pad] = arguments[0];
        return arguments[1].map(([i, j]) => Array.from(g.getImageData(
            Math.floor((pad + j * cell + cell / 2) * s), Math.floor((pad + i * cell + cell / 2) * s), 1, 1).data));
    """, [cell, pad], cells)
    for (i, j), (r, g, b, _) in zip(cells, pixels):
        grey = min(r, g, b) >= 190 and max(r, g, b) - min(r, g, b) <= 12
        assert grey == (j > i or j <= i - W), f"cell ({i}, {j}) is {'masked' if grey else 'coloured'}"
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    half = canvas.size["width"] // 2
    ActionChains(driver).move_to_element_with_offset(
        canvas, pad + 2 * cell + cell // 2 - half, pad + 17 * cell + cell // 2 - half).perform()
    assert "outside its window of 6" in driver.find_element(By.ID, "tip").text
    no_console_errors(driver)


def test_a_long_input_is_windowed_in_the_browser(driver, run):
    _, _, model, folder = run
    long = TOK.encode(TEXT * 2)                                # 120 tokens > block_size 64
    path = write_attention_page(folder / "long.html", model, TOK, long, max_tokens=50)
    load(driver, path)
    assert len(tokens(driver)) == 50
    assert f"Showing the last 50 of {len(long)} tokens" in driver.find_element(By.ID, "window-note").text
    tokens(driver)[49].click()
    Select(driver.find_element(By.ID, "layer")).select_by_value("1")
    Select(driver.find_element(By.ID, "head")).select_by_value("2")
    check_row(driver, model.attention_maps(torch.tensor([long[-50:]]))[1][0, 2], 49)
    no_console_errors(driver)


def test_the_runs_loss_svg_renders(driver, tmp_path):
    """out_dir/loss.svg from a real (tiny) training run, opened on its own as a user would: it
    renders as an SVG document with both curves and readable axes, and is not a blank image."""
    import random

    import train
    rng = random.Random(0)
    words = "the king queen lord shall thou art love death night day sweet fair my good".split()
    (tmp_path / "t.txt").write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(40)) for _ in range(200)))
    out = tmp_path / "out"
    assert train.main([f"--dataset={tmp_path / 't.txt'}", f"--data_root={tmp_path / 'prep'}", f"--out_dir={out}",
                       "--device=cpu", "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16",
                       "--batch_size=4", "--max_iters=30", "--eval_interval=10", "--eval_iters=2",
                       "--log_interval=1", "--warmup_iters=2", "--eval_at_start=true"]) == 0
    driver.set_window_size(700, 340)
    try:
        driver.get("about:blank")
        blank = len(driver.get_screenshot_as_png())
        driver.get((out / "loss.svg").as_uri())
        assert driver.execute_script("return document.documentElement.tagName") == "svg"
        series = driver.execute_script(
            "return [...document.querySelectorAll('polyline')].map(p => "
            "[p.dataset.series, p.getBBox().width, p.getBBox().height])")
        names = [s[0] for s in series]
        assert names == ["train loss (each log step)", "train loss (eval)", "val loss (eval)"]
        assert all(w > 400 for _, w, _ in series)             # each curve spans the x axis
        labels = driver.execute_script("return [...document.querySelectorAll('text')].map(t => t.textContent)")
        assert "iteration" in labels and "loss" in labels and "30" in labels  # the axes, to the last step
        shot = driver.get_screenshot_as_png()
        assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 3 * blank  # lines and text, not a blank page
        no_console_errors(driver)
    finally:
        driver.set_window_size(1280, 1100)
