"""`captioner export --onnx` and the onnxruntime backend: the same captions as PyTorch, and
one-line errors for incomplete or foreign export folders and unknown backends."""
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from captioner.api import Captioner, pretrained_path
from captioner.cli.commands import main
from captioner.errors import CaptionerError
from conftest import EXAMPLES
from helpers import KINDS, one_line_error, random_features, tiny_decoder


@pytest.fixture(scope="module")
def export_folder(tmp_path_factory):
    """The shipped model exported by the command line, once for this file."""
    folder = tmp_path_factory.mktemp("onnx") / "flickr8k-default-onnx"
    assert main(["--threads", "1", "export", "--onnx", str(folder), "--model", str(pretrained_path())]) == 0
    return folder


@pytest.fixture(scope="module")
def onnx_captioner(export_folder):
    return Captioner.load(export_folder)


def broken_copy(export_folder, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(export_folder, copy)
    return copy


def test_the_export_folder_holds_the_graphs_config_and_manifest(export_folder):
    manifest = json.loads((export_folder / "manifest.json").read_text())
    assert manifest["format"] == "captioner-onnx" and manifest["format_version"] == 1 and manifest["captioner_version"]
    for name in ("encoder.onnx", "imagenet_head.onnx", "word_detectors.onnx", "decoder_prepare.onnx", "decoder_step.onnx", "config.json", "vocabulary.json", "concepts.safetensors"):
        assert manifest["files"][name] == (export_folder / name).stat().st_size
    assert json.loads((export_folder / "config.json").read_text()) == json.loads((pretrained_path() / "config.json").read_text())
    assert not (export_folder / "model.safetensors").exists()  # no PyTorch weights needed


def n_best(results: list) -> list[list]:
    """Each photo's captions as a list, also where one caption a photo came as a `Caption`."""
    return [result if isinstance(result, list) else [result] for result in results]


def test_onnx_captions_are_word_for_word_those_of_pytorch(onnx_captioner, shipped_captioner, example_photos):
    assert type(onnx_captioner.decoder).__name__ == "OnnxDecoder"
    for options in ({"beam_size": 3, "num_captions": 2}, {"beam_size": 1}, {"beam_size": 5, "num_captions": 3}):
        expected = n_best(shipped_captioner.caption(example_photos, **options))
        got = n_best(onnx_captioner.caption(example_photos, **options))
        assert [[c.text for c in captions] for captions in got] == [[c.text for c in captions] for captions in expected], options
        for mine, theirs in zip(got, expected):
            assert [c.score for c in mine] == pytest.approx([c.score for c in theirs], abs=2e-4)
            assert [t.word for t in mine[0].tags] == [t.word for t in theirs[0].tags]
    sampled = dict(sampling=True, num_captions=3, seed=7)
    assert [[c.text for c in x] for x in onnx_captioner.caption(example_photos, **sampled)] == [[c.text for c in x] for x in shipped_captioner.caption(example_photos, **sampled)]


def test_an_export_folder_captions_as_the_whole_pytorch_model_does(onnx_captioner, example_photos):
    """Against PyTorch end to end, its encoder included (on the CPU the pytorch backend's encoder
    itself runs in ONNX Runtime, so the test above compares graphs with graphs there)."""
    from captioner.model.encoders import create_encoder
    from captioner.runtimes.onnx_encoder import OnnxRuntimeEncoder

    on_pytorch = Captioner.from_pretrained()
    on_pytorch.encoder = create_encoder(on_pytorch.config.encoder)
    assert not isinstance(on_pytorch.encoder, OnnxRuntimeEncoder)
    expected = n_best(on_pytorch.caption(example_photos[:2], num_captions=2))
    got = n_best(onnx_captioner.caption(example_photos[:2], num_captions=2))
    assert [[c.text for c in captions] for captions in got] == [[c.text for c in captions] for captions in expected]
    for mine, theirs in zip(got, expected):
        assert [c.score for c in mine] == pytest.approx([c.score for c in theirs], abs=1e-3)


def test_the_step_matches_pytorch_whatever_the_order_of_rows(onnx_captioner, shipped_captioner, example_photos):
    features = shipped_captioner.encode(example_photos[:3])
    features = shipped_captioner.conditioning(features).features
    # rows grouped by image (as beam search keeps them), then interleaved (one group per row)
    for order in (torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([2, 0, 1, 0, 2, 1])):
        states = [decoder.init_state(features) for decoder in (shipped_captioner.decoder, onnx_captioner.decoder)]
        states = [{name: value.index_select(0, order) for name, value in state.items()} for state in states]
        tokens = torch.full((6,), 1)
        for step in range(4):
            (expected, states[0]), (got, states[1]) = shipped_captioner.decoder.step(tokens, states[0]), onnx_captioner.decoder.step(tokens, states[1])
            assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-4), (order, step)
            tokens = expected.argmax(dim=-1)
            shuffle = torch.tensor([1, 0, 3, 2, 5, 4])  # a reorder within each image's block, as beam search does
            states = [{name: value.index_select(0, shuffle) for name, value in state.items()} for state in states]


def test_features_without_concept_tokens_decode_as_on_pytorch(onnx_captioner, shipped_captioner, example_photos):
    features = shipped_captioner.encode(example_photos[:2])  # concepts None: the image alone
    tokens = torch.full((2,), 1)
    expected, _ = shipped_captioner.decoder.step(tokens, shipped_captioner.decoder.init_state(features))
    got, _ = onnx_captioner.decoder.step(tokens, onnx_captioner.decoder.init_state(features))
    assert torch.allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_every_decoder_kind_exports_as_prepare_and_step(kind):
    from captioner.generation.decoding import beam_search, greedy
    from captioner.runtimes.onnx_backend import OnnxDecoder
    from captioner.runtimes.onnx_encoder import onnx_session
    from captioner.runtimes.onnx_export import decoder_graphs

    decoder = tiny_decoder(kind, max_concepts=0)
    graphs = decoder_graphs(decoder)
    exported = OnnxDecoder(decoder.config, onnx_session(graphs.prepare), onnx_session(graphs.step), graphs.per_image)
    features = random_features(batch=3)
    assert [h[0].tokens for h in greedy(exported, features)] == [h[0].tokens for h in greedy(decoder, features)]
    assert [[h.tokens for h in n] for n in beam_search(exported, features, 3, 2)] == [[h.tokens for h in n] for n in beam_search(decoder, features, 3, 2)]
    constraints = [[(7,)], [], [(9, 10), (12,)]]  # the constrained search, rows in S states per image
    assert [[h.tokens for h in n] for n in beam_search(exported, features, 3, 2, constraints=constraints, margin=5.0)] == [
        [h.tokens for h in n] for n in beam_search(decoder, features, 3, 2, constraints=constraints, margin=5.0)]


def test_a_model_without_concepts_exports_too(tmp_path, example_photos):
    from captioner.model.checkpoint import read_config, save_model
    from captioner.runtimes.onnx_export import write_onnx_export
    from captioner.model.vocabulary import Vocabulary

    shipped = read_config(pretrained_path())
    config = {"name": "plain", "encoder": shipped.encoder, "preprocess": shipped.preprocess.to_dict(), "decoding": {}}
    save_model(tmp_path / "plain", tiny_decoder("attention", feature_dim=1280, grid_size=49), Vocabulary([f"w{i}" for i in range(16)]), config)
    pytorch = Captioner.load(tmp_path / "plain", "cpu")
    manifest = write_onnx_export(pytorch, tmp_path / "plain-onnx")
    assert "word_detectors.onnx" not in manifest["files"] and manifest["decoder"]["per_image_state"] == []
    exported = Captioner.load(tmp_path / "plain-onnx")
    assert exported.person_threshold == pytorch.person_threshold == 0.0  # no person detector, no person rule
    assert [[c.text for c in n] for n in exported.caption(example_photos, num_captions=2)] == [[c.text for c in n] for n in pytorch.caption(example_photos, num_captions=2)]


def test_a_model_folder_runs_on_onnxruntime_by_exporting_it_in_memory(shipped_captioner):
    captioner = Captioner.from_pretrained(backend="onnxruntime")
    assert type(captioner.decoder).__name__ == "OnnxDecoder" and captioner.path == pretrained_path()
    photo = EXAMPLES / "chelsea.jpg"
    assert captioner.caption(photo).text == shipped_captioner.caption(photo).text


def test_an_incomplete_export_is_one_line(export_folder, tmp_path, capsys):
    folder = broken_copy(export_folder, tmp_path)
    (folder / "decoder_step.onnx").unlink()
    with pytest.raises(CaptionerError, match="missing decoder_step.onnx; the ONNX export is incomplete") as raised:
        Captioner.load(folder)
    assert "\n" not in str(raised.value)
    assert "missing decoder_step.onnx" in one_line_error(capsys, ["caption", "--model", str(folder), str(EXAMPLES / "chelsea.jpg")])
    (folder / "manifest.json").unlink()  # an interrupted export: the manifest is written last
    assert "missing manifest.json" in one_line_error(capsys, ["caption", "--model", str(folder), str(EXAMPLES / "chelsea.jpg")])


def test_a_truncated_graph_is_one_line(export_folder, tmp_path):
    folder = broken_copy(export_folder, tmp_path)
    data = (folder / "decoder_prepare.onnx").read_bytes()
    (folder / "decoder_prepare.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(CaptionerError, match="decoder_prepare.onnx: .* bytes, the manifest says"):
        Captioner.load(folder)


def test_an_export_of_another_format_version_is_one_line(export_folder, tmp_path, capsys):
    folder = broken_copy(export_folder, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format_version": 2, "captioner_version": "9.0"}))
    with pytest.raises(CaptionerError, match=r"format version 2 \(written by captioner 9.0\) is not 1; export the model again"):
        Captioner.load(folder)
    assert "format version 2" in one_line_error(capsys, ["caption", "--model", str(folder), str(EXAMPLES / "chelsea.jpg")])


def test_an_unsupported_backend_is_one_line_listing_the_choices(export_folder, capsys):
    with pytest.raises(CaptionerError, match="unknown backend 'tensorrt'; choose one of: pytorch, onnxruntime"):
        Captioner.from_pretrained(backend="tensorrt")
    error = one_line_error(capsys, ["caption", "--backend", "tensorrt", str(EXAMPLES / "chelsea.jpg")])
    assert "'pytorch', 'onnxruntime'" in error
    assert "--backend onnxruntime" in one_line_error(capsys, ["caption", "--backend", "pytorch", "--model", str(export_folder), str(EXAMPLES / "chelsea.jpg")])
    with pytest.raises(CaptionerError):  # the backend runs on the CPU only
        Captioner.load(export_folder, device="cuda")


def test_caption_command_on_an_export_folder_and_with_backend(export_folder, capsys):
    photos = [str(EXAMPLES / "chelsea.jpg"), str(EXAMPLES / "coffee.jpg")]
    outputs = []
    for arguments in ([], ["--model", str(export_folder)], ["--backend", "onnxruntime"]):
        assert main(["--threads", "1", "caption", "--tags", *arguments, *photos]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0].count("\n") == 2 and outputs[1] == outputs[0] and outputs[2] == outputs[0]


def test_export_onnx_refuses_what_it_would_overwrite_or_ignore(export_folder, tmp_path, capsys):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    model = str(pretrained_path())
    assert "--force" in one_line_error(capsys, ["export", "--onnx", str(target), "--model", model])
    assert "--fp16" in one_line_error(capsys, ["export", "--onnx", str(tmp_path / "new"), "--model", model, "--fp16"])
    assert "not allowed with argument" in one_line_error(capsys, ["export", "--onnx", str(tmp_path / "a"), "--output", str(tmp_path / "b"), "--model", model])
    assert "is, holds or sits inside the model folder" in one_line_error(capsys, ["export", "--onnx", model, "--model", model, "--force"])
    assert (target / "keep.txt").read_text() == "mine" and not (tmp_path / "new").exists()


def test_the_server_runs_an_export_folder(export_folder, shipped_captioner):
    from fastapi.testclient import TestClient

    from captioner.server import Settings, create_app

    photo = EXAMPLES / "coffee.jpg"
    with TestClient(create_app(Settings(model_path=export_folder, backend="onnxruntime"))) as client:
        response = client.post("/api/captions", files={"image": ("coffee.jpg", photo.read_bytes(), "image/jpeg")})
        model = client.get("/api/model").json()
    assert response.status_code == 200, response.text
    assert (model["device"], model["backend"]) == ("cpu", "onnxruntime")
    assert response.json()["captions"][0]["text"] == shipped_captioner.caption(photo).text


def edit_json(name, change):
    """An edit of an export folder: `change(data)` applied to the JSON file `name`."""
    def edit(folder):
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))
    return edit


def swap_graphs(first, second):
    """An edit of an export folder: two graphs swapped."""
    def edit(folder):
        one, other = (folder / first).read_bytes(), (folder / second).read_bytes()
        (folder / first).write_bytes(other)
        (folder / second).write_bytes(one)
    return edit


def put_graph(target, source):
    """An edit of an export folder: graph `target` replaced by a copy of graph `source`."""
    return lambda folder: shutil.copy(folder / source, folder / target)


def with_true_sizes(edit):
    """`edit`, then the manifest's sizes made to match, so only the deeper checks can refuse the folder."""
    def edited(folder):
        edit(folder)
        edit_json("manifest.json", lambda manifest: manifest["files"].update({name: (folder / name).stat().st_size for name in manifest["files"]}))(folder)
    return edited


@pytest.mark.parametrize("edit, named", [
    (edit_json("manifest.json", lambda m: m["decoder"].update(per_image_state=["bogus"])), "per_image_state names 'bogus'"),
    (edit_json("manifest.json", lambda m: m["decoder"].update(per_image_state=5)), "per_image_state must be a list of state names, not 5"),
    (edit_json("manifest.json", lambda m: m["decoder"].update(per_image_state=[5])), "per_image_state must be a list"),
    (edit_json("manifest.json", lambda m: m["decoder"].update(per_image_state=["memory_bias"])), "per_image_state does not say"),
    (edit_json("manifest.json", lambda m: m.update(files={})), "manifest.json: does not list"),
    (edit_json("manifest.json", lambda m: m["files"].update({"encoder.onnx": str(m["files"]["encoder.onnx"])})), "size of encoder.onnx must be a whole number of bytes, not '"),
    (edit_json("manifest.json", lambda m: m["files"].update({"../model.safetensors": 1})), "not a file name of the export"),
    (with_true_sizes(swap_graphs("encoder.onnx", "imagenet_head.onnx")), "encoder.onnx: does not fit the export's config.json (no input images"),
    (with_true_sizes(put_graph("decoder_step.onnx", "decoder_prepare.onnx")), "decoder_step.onnx: does not fit the export's config.json (no input last_tokens"),
    (with_true_sizes(put_graph("imagenet_head.onnx", "word_detectors.onnx")), "imagenet_head.onnx: does not fit the export's config.json (no input pooled"),
    (with_true_sizes(edit_json("config.json", lambda c: c["decoder"].update(max_concepts=3))), "input concept_ids is (*, 16, 3), the config needs (*, 3, 3)"),
    (with_true_sizes(edit_json("config.json", lambda c: c["concepts"].update(detector_words=c["concepts"]["detector_words"][:-1]))), "output log_absent is (*, 401), the config needs (*, 400)"),
    (with_true_sizes(edit_json("config.json", lambda c: c["preprocess"].update(input_size=256))), "input_size must be 224"),
    (with_true_sizes(edit_json("config.json", lambda c: c.update(format_version=99))), "config.json: model format version 99 is not 1"),
    (with_true_sizes(lambda folder: (folder / "config.json").write_bytes(b'{"name": "caf\xe9"}')), "config.json: not UTF-8"),
])
def test_a_damaged_or_mismatched_export_folder_is_one_line(export_folder, tmp_path, capsys, edit, named):
    folder = broken_copy(export_folder, tmp_path)
    edit(folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    err = one_line_error(capsys, ["--threads", "1", "caption", "--model", str(folder), str(EXAMPLES / "chelsea.jpg")])
    assert named in err, err
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before  # nothing written or lost


def test_the_graph_checks_find_what_a_swap_would_break(onnx_captioner):
    """The checks pass on a sound export, and name the graph and the port on a tampered one (here,
    without files: the graphs' sessions given in another order)."""
    from captioner.model.encoders import PreprocessConfig
    from captioner.runtimes.onnx_checks import GraphMismatch, check_graphs

    decoder = onnx_captioner.decoder
    sessions = {"encoder.onnx": onnx_captioner.encoder.session, "imagenet_head.onnx": onnx_captioner.concept_detector.imagenet_head.session,
                "word_detectors.onnx": onnx_captioner.concept_detector.detector.session,
                "decoder_prepare.onnx": decoder.prepare_session, "decoder_step.onnx": decoder.step_session}
    per_image = sorted(decoder.per_image)
    check_graphs(sessions, PreprocessConfig(), decoder.config, 401, per_image, onnx_captioner.path)
    with pytest.raises(GraphMismatch, match=r"encoder.onnx: .*input images is \(\*, 3, 224, 224\), the config needs \(\*, 3, 256, 256\)"):
        check_graphs(sessions, PreprocessConfig(input_size=256), decoder.config, 401, per_image, onnx_captioner.path)
    with pytest.raises(GraphMismatch, match="missing word_detectors.onnx"):
        check_graphs({name: s for name, s in sessions.items() if name != "word_detectors.onnx"}, PreprocessConfig(), decoder.config, 401, per_image, onnx_captioner.path)
    other_vocabulary = dataclasses.replace(decoder.config, vocab_size=6000)
    with pytest.raises(GraphMismatch, match=r"decoder_step.onnx: .*output logits is \(\*, 6646\), the config needs \(\*, 6000\)"):
        check_graphs(sessions, PreprocessConfig(), other_vocabulary, 401, per_image, onnx_captioner.path)


def unwritable_targets(tmp_path):
    (tmp_path / "afile").write_text("mine")
    targets = {"under a file": (tmp_path / "afile" / "export", "afile is a file, not a folder"),
               "deep under a file": (tmp_path / "afile" / "a" / "b", "afile is a file, not a folder")}
    if Path("/proc/self").is_dir():  # Linux: a folder no one can make files in, root included
        targets["under /proc"] = (Path("/proc/nope"), "cannot write in /proc")
    return targets


@pytest.mark.parametrize("flag", ["--onnx", "--output"])
@pytest.mark.parametrize("case", ["under a file", "deep under a file", "under /proc"])
def test_export_refuses_a_target_it_cannot_write_before_any_work(tmp_path, capsys, monkeypatch, flag, case):
    targets = unwritable_targets(tmp_path)
    if case not in targets:
        pytest.skip("no /proc here")
    target, named = targets[case]
    monkeypatch.setattr("captioner.api.Captioner.load", lambda *args, **kwargs: pytest.fail("loaded the model before checking the target"))
    monkeypatch.setattr("captioner.model.checkpoint.load_model", lambda *args, **kwargs: pytest.fail("loaded the model before checking the target"))
    err = one_line_error(capsys, ["export", flag, str(target), "--model", str(pretrained_path())])
    assert f"{flag} {target}: " in err and named in err, err
    assert (tmp_path / "afile").read_text() == "mine" and [path.name for path in tmp_path.iterdir()] == ["afile"]


def test_export_refuses_a_read_only_target(tmp_path, capsys, monkeypatch):
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)  # as on a read-only mount, which a test cannot make
    err = one_line_error(capsys, ["export", "--onnx", str(tmp_path / "new"), "--model", str(pretrained_path())])
    assert f"cannot write in {tmp_path} (Read-only file system); choose a folder you can write to" in err
    assert not (tmp_path / "new").exists()
