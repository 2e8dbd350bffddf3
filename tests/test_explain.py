"""Attention maps: `Captioner.explain`, the teacher-forced pass behind it, and `caption --explain DIR`."""
import numpy as np
import pytest
import torch
from PIL import Image

from captioner.generation.attention_figure import draw_explanation, figure_size, save_new_png
from captioner.errors import CaptionerError
from captioner.generation.explain import Explanation, attention_over_grid, check_explainable, transformer_cross_attention
from conftest import EXAMPLES
from helpers import one_line_error, random_features, tiny_decoder


def test_explain_gives_one_map_per_word_of_the_best_caption(shipped_captioner):
    explained = shipped_captioner.explain(EXAMPLES / "chelsea.jpg")
    assert explained.caption == shipped_captioner.caption(EXAMPLES / "chelsea.jpg").text  # "A cat ...", as caption writes it
    rows, columns = 7, 7  # the shipped encoder's grid
    assert explained.maps.shape == (len(explained.words), rows, columns)
    assert explained.words == explained.caption.rstrip(".").lower().split()  # this caption renames nothing
    assert np.allclose(explained.maps.sum(axis=(1, 2)), 1.0, atol=1e-4)
    assert (explained.maps >= 0).all()
    assert ((explained.grid_share > 0) & (explained.grid_share <= 1)).all()
    assert explained.image.size == Image.open(EXAMPLES / "chelsea.jpg").size


@pytest.mark.parametrize("kind, concepts", [("attention", 0), ("transformer", 0), ("transformer", 3)])  # concept slots sit beside the grid
def test_maps_of_each_attending_decoder_sum_to_one_over_the_grid(kind, concepts):
    decoder = tiny_decoder(kind, max_concepts=concepts)
    on_grid, share = attention_over_grid(decoder, random_features(1), [5, 6, 7])
    assert on_grid.shape == (3, 4)
    assert torch.allclose(on_grid.sum(dim=-1), torch.ones(3), atol=1e-5)
    assert ((share > 0) & (share <= 1 + 1e-6)).all()


def test_transformer_pass_is_the_decoders_own():
    """The layer-by-layer pass that keeps the weights computes what `forward` computes."""
    decoder = tiny_decoder("transformer")
    features, tokens = random_features(1), torch.tensor([[1, 5, 6, 7]])
    with torch.inference_mode():
        hidden, weights = transformer_cross_attention(decoder, features, tokens)
        assert torch.allclose(decoder.output(decoder.final_norm(hidden)), decoder(features, tokens), atol=1e-5)
    assert weights.shape == (2, 4, 5)  # layers, words, memory slots (pooled + 4 grid)


def test_no_maps_without_attention_is_one_line():
    with pytest.raises(CaptionerError, match="merge decoder does not attend") as error:
        check_explainable(tiny_decoder("merge"))
    assert "\n" not in str(error.value)


def test_no_maps_on_onnxruntime_is_one_line():
    class ExportedDecoder:  # what an onnxruntime backend's decoder says of itself
        backend = "onnxruntime"

    with pytest.raises(CaptionerError, match="need the pytorch backend"):
        check_explainable(ExportedDecoder())


def explanation_of(image: Image.Image, words: int) -> Explanation:
    maps = np.random.default_rng(0).random((words, 7, 7)).astype(np.float32)
    return Explanation("a test caption", [f"word{i}" for i in range(words)], maps / maps.sum(axis=(1, 2), keepdims=True), np.ones(words, np.float32), image)


def test_figure_has_a_titled_panel_per_word(tmp_path):
    explained = explanation_of(Image.new("RGB", (640, 480), "gray"), words=6)
    figure = draw_explanation(explained)
    assert figure.size == figure_size(explained)
    assert figure.size == (8 + 5 * (224 + 8), 40 + 2 * (26 + 168 + 8))  # two rows of five: the photo and six words


def test_saving_never_replaces_a_file(tmp_path):
    (tmp_path / "chelsea.png").write_bytes(b"the user's own file")
    first = save_new_png(Image.new("RGB", (4, 4)), tmp_path, "chelsea")
    second = save_new_png(Image.new("RGB", (4, 4)), tmp_path, "chelsea")
    assert (first.name, second.name) == ("chelsea-2.png", "chelsea-3.png")
    assert (tmp_path / "chelsea.png").read_bytes() == b"the user's own file"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["chelsea-2.png", "chelsea-3.png", "chelsea.png"]  # no temporary left


def test_caption_explain_writes_a_png_per_photo(tmp_path, capsys):
    from captioner.cli.commands import main

    folder = tmp_path / "maps" / "new"  # made, parents and all
    photos = [EXAMPLES / "chelsea.jpg", EXAMPLES / "coffee.jpg"]
    assert main(["--threads", "1", "caption", "--explain", str(folder), *map(str, photos)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2
    for photo, line in zip(photos, printed):
        with Image.open(folder / f"{photo.stem}.png") as figure:
            figure.load()
            words = len(line.split("\t")[1].split())
            explained = explanation_of(Image.open(photo), words)
            assert figure.format == "PNG" and figure.size == figure_size(explained)


@pytest.mark.parametrize("arguments, message", [
    (["--explain", "{file}"], "is a file; give a folder"),
    (["--explain", "{file}/below"], "cannot create the folder"),
    (["--explain", "{dir}", "--sample"], "leave out --sample"),
    (["--explain", ""], "--explain is empty"),
])
def test_caption_explain_refusals_are_one_line(tmp_path, capsys, arguments, message):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    arguments = [argument.format(file=file, dir=tmp_path / "out") for argument in arguments]
    error = one_line_error(capsys, ["--threads", "1", "caption", *arguments, str(EXAMPLES / "chelsea.jpg")])
    assert message in error
    assert file.read_text() == "mine"
    assert not (tmp_path / "out").exists()
