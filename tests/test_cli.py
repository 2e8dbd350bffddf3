"""The `captioner` command end to end, on the example photos with the shipped model."""
import errno
import json
import os
import shutil
import subprocess
import sys

import pytest

from captioner.cli.commands import main
from conftest import EXAMPLES, ROOT
from helpers import one_line_error


def run(*arguments: str, cwd=ROOT) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "captioner", "--threads", "1", *arguments], capture_output=True, text=True, cwd=cwd, env=environment, timeout=300)


def test_caption_folder_prints_one_line_per_image_in_order():
    result = run("caption", str(EXAMPLES))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in sorted(EXAMPLES.glob("*.jpg"))]
    captions = [line.split("\t")[1] for line in lines]
    assert all(len(caption.split()) >= 3 for caption in captions)


def test_caption_json_nbest(tmp_path):
    result = run("caption", str(EXAMPLES / "chelsea.jpg"), str(EXAMPLES / "coffee.jpg"), "--json", "--num-captions", "3", "--beam-size", "4")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["path"] for row in rows] == [str(EXAMPLES / "chelsea.jpg"), str(EXAMPLES / "coffee.jpg")]
    for row in rows:
        scores = [c["score"] for c in row["captions"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        assert all(c["text"] for c in row["captions"])
        assert [c["rank"] for c in row["captions"]] == [1, 2, 3]


def test_caption_nbest_text_has_rank_and_score_and_widens_the_beam():
    chelsea = str(EXAMPLES / "chelsea.jpg")
    result = run("caption", chelsea, "--num-captions", "4", "--beam-size", "2")  # more captions than beams: a wider beam
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert len(rows) == 4 and all(len(row) == 4 and row[0] == chelsea for row in rows)  # path, rank and text, score, confidence
    assert [row[1].split(" ", 1)[0] for row in rows] == ["1.", "2.", "3.", "4."]
    assert all(0 <= float(row[3]) <= 1 for row in rows)
    scores = [float(row[2]) for row in rows]
    assert scores == sorted(scores, reverse=True) and all(score < 0 for score in scores)
    texts = [row[1].split(" ", 1)[1] for row in rows]
    assert len(set(texts)) == 4 and all(text[0].isupper() and text.endswith(".") for text in texts)


def test_caption_plain_and_neutral():
    astronaut = str(EXAMPLES / "astronaut.jpg")
    styled, plain, neutral = (run("caption", astronaut, *flags) for flags in ([], ["--plain"], ["--neutral", "--plain"]))
    sentence, words, neutral_words = (result.stdout.strip().split("\t")[1] for result in (styled, plain, neutral))
    assert sentence[0].isupper() and sentence.endswith(".") and words == words.lower() and not words.endswith(".")
    assert sentence.lower().rstrip(".") == words
    assert " man " in f" {words} " and neutral_words == words.replace("a man ", "a person ")  # the model's "a man" for the astronaut


def test_caption_urls_beside_files_one_line_per_bad_url():
    from url_server import PhotoServer

    chelsea = str(EXAMPLES / "chelsea.jpg")
    with PhotoServer() as server:
        good, missing, page = server.url("/photo.jpg"), server.url("/missing.jpg"), server.url("/page.html")
        result = run("caption", good, chelsea, missing, page)
    assert result.returncode == 1
    rows = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [row[0] for row in rows] == [good, chelsea] and rows[0][1] == rows[1][1]  # the URL as given, not a mangled path
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2 and "Traceback" not in result.stderr
    assert errors[0].startswith(f"captioner: {missing}: ") and "404" in errors[0]
    assert errors[1].startswith(f"captioner: {page}: not an image")


class Terminal:
    """A stderr that says it is a terminal, keeping what is written."""

    def __init__(self):
        self.parts = []

    def write(self, text):
        self.parts.append(text)
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_for_more_than_a_few_photos(tmp_path, monkeypatch, capsys):
    for index in range(6):
        shutil.copy(EXAMPLES / "chelsea.jpg", tmp_path / f"photo{index}.jpg")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["--threads", "1", "caption", str(tmp_path)]) == 0
    assert "6/6" in "".join(terminal.parts)
    assert len(capsys.readouterr().out.strip().splitlines()) == 6  # every caption whole, on its own line
    terminal.parts.clear()
    assert main(["--threads", "1", "caption", str(tmp_path / "photo0.jpg"), str(tmp_path / "photo1.jpg")]) == 0
    assert "".join(terminal.parts) == ""  # two photos: no bar
    assert main(["--threads", "1", "caption", str(tmp_path), "--quiet"]) == 0
    assert "".join(terminal.parts) == ""


def assert_tags(tags):
    """A non-empty list of {"word", "score"}, scores in [0, 1], most probable first."""
    assert isinstance(tags, list) and tags
    assert all(set(tag) == {"word", "score"} and isinstance(tag["word"], str) and tag["word"].strip() for tag in tags)
    scores = [tag["score"] for tag in tags]
    assert all(0.0 <= score <= 1.0 for score in scores) and scores == sorted(scores, reverse=True)


def test_caption_tags_column():
    chelsea = str(EXAMPLES / "chelsea.jpg")
    plain = run("caption", chelsea)
    result = run("caption", chelsea, "--tags", "--num-captions", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    rows = [line.split("\t") for line in lines]
    assert all(len(row) == 5 and row[0] == chelsea for row in rows)  # path, rank and caption, score, confidence, tags
    assert rows[0][1] == "1. " + plain.stdout.strip().split("\t")[1]  # the caption column, ranked
    assert rows[0][4] == rows[1][4]  # the photo's tags, on each of its captions
    pairs = [pair.rsplit(":", 1) for pair in rows[0][4].split(",")]
    assert all(len(pair) == 2 and pair[0].strip() and len(pair[1].split(".")[1]) == 2 for pair in pairs)  # word:0.98
    assert_tags([{"word": word, "score": float(score)} for word, score in pairs])
    assert len(plain.stdout.strip().split("\t")) == 2  # without --tags: two columns, as before


def test_caption_json_has_tags():
    result = run("caption", str(EXAMPLES / "chelsea.jpg"), "--json")
    assert result.returncode == 0, result.stderr
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert set(row) == {"path", "captions", "tags"}
    assert_tags(row["tags"])


def test_bad_files_are_reported_and_the_rest_captioned(tmp_path):
    shutil.copy(EXAMPLES / "chelsea.jpg", tmp_path / "a_good.jpg")
    (tmp_path / "b_empty.jpg").write_bytes(b"")
    (tmp_path / "c_truncated.jpg").write_bytes((EXAMPLES / "coffee.jpg").read_bytes()[:2000])
    (tmp_path / "d_text.png").write_text("not an image")
    result = run("caption", str(tmp_path), str(tmp_path / "missing.jpg"))
    assert result.returncode == 1
    assert result.stdout.count("\n") == 1 and result.stdout.startswith(str(tmp_path / "a_good.jpg") + "\t")
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 4 and "Traceback" not in result.stderr
    assert any("b_empty.jpg" in e and "empty" in e for e in errors)
    assert any("c_truncated.jpg" in e and "truncated" in e for e in errors)
    assert any("d_text.png" in e and "not a supported image" in e for e in errors)
    assert any("missing.jpg" in e and "no such file" in e for e in errors)


@pytest.mark.parametrize("arguments, message", [
    (["caption", "nowhere/"], "no images to caption"),
    (["caption", str(EXAMPLES), "--model", "no-such-model"], "no such model folder"),
    (["caption", str(EXAMPLES), "--num-captions", "21"], "at most 20 with beam search"),
    (["train", "--dataset", str(EXAMPLES), "--output", "{tmp}/run"], "not a dataset folder"),
    (["evaluate", "--dataset", "nowhere"], "no such dataset"),
])
def test_errors_are_one_line(tmp_path, arguments, message):
    result = run(*[argument.replace("{tmp}", str(tmp_path)) for argument in arguments])
    assert result.returncode != 0
    assert not (tmp_path / "run").exists()  # a failed command leaves nothing behind
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


def test_export_refuses_to_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    from captioner.api import pretrained_path

    result = run("export", "--model", str(pretrained_path()), "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and "--force" in result.stderr
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_python_api_accepts_paths_bytes_pil_and_arrays(shipped_captioner):
    import numpy as np
    from PIL import Image

    path = EXAMPLES / "coffee.jpg"
    image = Image.open(path)
    results = shipped_captioner.caption([path, path.read_bytes(), image, np.asarray(image)], beam_size=3)
    texts = [caption.text for caption in results]
    assert len(set(texts)) == 1 and texts[0]
    single = shipped_captioner.caption(str(path), beam_size=1)
    assert not isinstance(single, list) and single.text


def test_export_gives_a_model_the_concepts_of_another(tmp_path, encoder):
    import torch

    from captioner.api import Captioner, pretrained_path
    from captioner.model.checkpoint import read_config, save_model
    from captioner.model.concepts import PERSON_OUTPUT, ConceptDetector, ConceptTable, imagenet_head
    from helpers import tiny_decoder
    from captioner.model.vocabulary import Vocabulary

    shipped = read_config(pretrained_path())
    words = ["dog", "grass", PERSON_OUTPUT]
    detector = ConceptDetector(ConceptTable.load(), imagenet_head(encoder), words, 1280, hidden_dim=16).eval()
    detector.person_by_class = torch.full((1000,), 0.1)
    concepts = {"detector_words": words, "hidden_dim": 16, "min_score": 0.3, "person_threshold": 0.5, "guarded_words": ["dog"], "guard_floor": 0.02}
    config = {"name": "donor", "encoder": shipped.encoder, "preprocess": shipped.preprocess.to_dict(), "decoding": {}, "concepts": concepts}
    save_model(tmp_path / "donor", tiny_decoder("transformer", max_concepts=3, feature_dim=1280, grid_size=49), Vocabulary(["dog"]), config, concept_detector=detector)

    plain_config = {key: value for key, value in config.items() if key != "concepts"}
    save_model(tmp_path / "plain", tiny_decoder("transformer", feature_dim=1280, grid_size=49), Vocabulary(["dog", "dogs", "puppy"] + [f"w{i}" for i in range(13)]), plain_config)
    refused = run("export", "--model", str(tmp_path / "plain"), "--output", str(tmp_path / "out"), "--concepts-from", str(tmp_path / "plain"))
    assert refused.returncode == 2 and "has no concepts" in refused.stderr and not (tmp_path / "out").exists()
    result = run("export", "--model", str(tmp_path / "plain"), "--output", str(tmp_path / "out"), "--concepts-from", str(tmp_path / "donor"), "--fp16")
    assert result.returncode == 0, result.stderr
    captioner = Captioner.load(tmp_path / "out")
    stoi = captioner.vocabulary.stoi
    assert captioner.config.concepts.guarded_words == ["dog"]
    assert {stoi["dog"], stoi["dogs"], stoi["puppy"]} <= set(captioner.guard_tokens.tolist())
    assert torch.equal(captioner.concept_detector.person_by_class, detector.person_by_class)
    twice = run("export", "--model", str(tmp_path / "out"), "--output", str(tmp_path / "again"), "--concepts-from", str(tmp_path / "donor"))
    assert twice.returncode == 2 and "already has concepts" in twice.stderr


@pytest.mark.parametrize("arguments", [
    ["caption", "x.jpg", "--batch-size", "0"], ["caption", "x.jpg", "--batch-size", "-1"], ["--threads", "-1", "caption", "x.jpg"],
    ["caption", "x.jpg", "--sample", "--temperature", "nan"], ["caption", "x.jpg", "--temperature", "-1"],
    ["caption", "x.jpg", "--top-p", "0"], ["caption", "x.jpg", "--beam-size", "0"], ["caption", "x.jpg", "--num-captions", "0"],
    ["evaluate", "--dataset", "d", "--limit", "-5"], ["serve", "--port", "70000"], ["serve", "--max-upload-mb", "0"],
])
def test_bad_numbers_are_one_line_usage_errors(capsys, arguments):
    err = one_line_error(capsys, arguments)
    assert "must be" in err and "--help" in err


def test_unreadable_subfolder_is_named_and_fails(tmp_path, capsys, monkeypatch):
    shutil.copy(EXAMPLES / "chelsea.jpg", tmp_path / "chelsea.jpg")
    (tmp_path / "private").mkdir()
    shutil.copy(EXAMPLES / "coffee.jpg", tmp_path / "private" / "coffee.jpg")
    real_scandir = os.scandir

    def scandir(path="."):  # as for a folder the user may not read (the tests may run as root)
        if os.fspath(path) == str(tmp_path / "private"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert main(["--threads", "1", "caption", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(tmp_path / "chelsea.jpg")]
    assert err.strip() == f"captioner: {tmp_path / 'private'}: cannot read this folder (Permission denied); its photos were skipped"


def test_control_characters_in_names_are_escaped_in_tsv(tmp_path):
    names = ["tab\there.jpg", "new\nline.jpg", "back\\slash.jpg"]
    for name in names:
        shutil.copy(EXAMPLES / "chelsea.jpg", tmp_path / name)
    result = run("caption", str(tmp_path))
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) == 3 and all(len(row) == 2 for row in rows)
    escaped = {str(tmp_path / name).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n") for name in names}
    assert {row[0] for row in rows} == escaped
    as_json = run("caption", str(tmp_path), "--json")
    assert {json.loads(line)["path"] for line in as_json.stdout.splitlines()} == {str(tmp_path / name) for name in names}  # unchanged


def test_output_jsonl_resumes_after_a_crash(tmp_path, capsys):
    photos = sorted(str(p) for p in EXAMPLES.glob("*.jpg"))
    output = tmp_path / "captions.jsonl"
    assert main(["--threads", "1", "caption", str(EXAMPLES), "--output", str(output), "--quiet", "--batch-size", "2"]) == 0
    full = output.read_text().splitlines()
    assert [json.loads(line)["path"] for line in full] == photos and capsys.readouterr().out == ""

    # A crash in the middle of the third record: two whole lines and half of one
    output.write_text(full[0] + "\n" + full[1] + "\n" + full[2][: len(full[2]) // 2])
    assert main(["--threads", "1", "caption", str(EXAMPLES), "--output", str(output), "--workers", "2"]) == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["path"] for r in records] == photos  # each photo once, in full
    assert records == [json.loads(line) for line in full]
    assert "2 were already there" in capsys.readouterr().err


def test_output_that_is_not_ours_is_refused_untouched(tmp_path, capsys):
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"title": "my notes"}\n{"title": "more"')
    err = one_line_error(capsys, ["caption", str(EXAMPLES), "--output", str(notes)])
    assert "notes.jsonl:1" in err and notes.read_text() == '{"title": "my notes"}\n{"title": "more"'
    err = one_line_error(capsys, ["caption", str(EXAMPLES), "--output", str(tmp_path)])
    assert "is not a file" in err


def test_export_never_writes_into_the_model_it_reads_nor_onto_a_file(tmp_path, capsys):
    import shutil

    from captioner.api import pretrained_path

    model = tmp_path / "model"
    shutil.copytree(pretrained_path(), model)
    before = {path.name: path.read_bytes() for path in model.iterdir()}
    for arguments in (["--output", str(model), "--force", "--fp16"], ["--output", str(model / "inner"), "--force"], ["--onnx", str(model), "--force"]):
        assert "model folder" in one_line_error(capsys, ["export", "--model", str(model), *arguments])
    assert {path.name: path.read_bytes() for path in model.iterdir()} == before  # the source is untouched
    (tmp_path / "a-file").write_text("mine")
    for flag in ("--output", "--onnx"):
        assert "is a file" in one_line_error(capsys, ["export", "--model", str(model), flag, str(tmp_path / "a-file"), "--force"])
    assert (tmp_path / "a-file").read_text() == "mine"


def photos_with_a_name_that_is_not_utf8(folder) -> bytes:
    """chelsea.jpg and coffee.jpg, and chelsea again under a name with the byte 0xff; returns that name's path as bytes."""
    folder.mkdir()
    shutil.copy(EXAMPLES / "chelsea.jpg", folder / "a.jpg")
    shutil.copy(EXAMPLES / "coffee.jpg", folder / "c.jpg")
    bad = os.path.join(os.fsencode(folder), b"bad\xffname.jpg")
    shutil.copy(EXAMPLES / "chelsea.jpg", bad)
    return bad


def test_a_name_that_is_not_utf8_is_written_escaped_and_resumed(tmp_path, capsys):
    bad = photos_with_a_name_that_is_not_utf8(tmp_path / "p")
    output = tmp_path / "captions.jsonl"
    arguments = ["--threads", "1", "caption", str(tmp_path / "p"), "--output", str(output), "--quiet"]
    assert main(arguments) == 0
    text = output.read_bytes().decode("utf-8")  # the file stays UTF-8
    assert "bad\\udcffname.jpg" in text  # the byte as a JSON escape of its surrogate
    paths = [json.loads(line)["path"] for line in text.splitlines()]
    assert len(paths) == 3 and os.fsencode(paths[1]) == bad  # read back, the name's own bytes
    assert main(arguments[:-1]) == 0 and output.read_bytes().decode() == text  # a rerun finds every photo there
    assert "0 photos captioned" in capsys.readouterr().err

    assert main(["--threads", "1", "caption", os.fsdecode(bad)]) == 0
    assert capsys.readouterr().out.startswith(str(tmp_path / "p" / "bad") + "\\xffname.jpg\t")  # TSV: the byte as \xff
    assert main(["--threads", "1", "caption", os.fsdecode(bad), "--json"]) == 0
    assert os.fsencode(json.loads(capsys.readouterr().out)["path"]) == bad


def test_inputs_are_deduplicated_and_matched_by_resolved_path(tmp_path, capsys, monkeypatch):
    shutil.copytree(EXAMPLES, tmp_path / "p5", ignore=shutil.ignore_patterns("*.md"))
    monkeypatch.chdir(tmp_path)
    output = "d.jsonl"
    assert main(["--threads", "1", "caption", "p5", "p5", "p5/chelsea.jpg", "./p5/coffee.jpg", "--output", output, "--quiet"]) == 0
    written = (tmp_path / output).read_text()
    assert [json.loads(line)["path"] for line in written.splitlines()] == [f"p5/{p.name}" for p in sorted(EXAMPLES.glob("*.jpg"))]  # each photo once, as given
    assert main(["--threads", "1", "caption", str(tmp_path / "p5"), str(tmp_path / "p5" / "rocket.jpg"), "--output", output]) == 0  # absolute now
    (tmp_path / "alias").symlink_to(tmp_path / "p5")
    assert main(["--threads", "1", "caption", "alias", "--output", output]) == 0  # another name of the folder
    assert (tmp_path / output).read_text() == written  # nothing added
    assert capsys.readouterr().err.count("0 photos captioned") == 2


def test_a_second_run_on_one_output_is_refused(tmp_path, capsys, monkeypatch):
    from captioner.api import Captioner
    from captioner.batch.output_lock import OutputLock

    output = tmp_path / "captions.jsonl"
    output.write_text("")
    monkeypatch.setattr(Captioner, "from_pretrained", no_model_load)
    with OutputLock(output):  # as a run in another process holds it
        err = one_line_error(capsys, ["caption", str(EXAMPLES), "--output", str(output)])
    assert f"another captioner run (pid {os.getpid()}) is writing to --output {output}" in err
    assert output.read_text() == "" and os.listdir(tmp_path) == ["captions.jsonl"]  # the lock file goes with the run that held it


def no_model_load(*_, **__):
    raise AssertionError("the model was loaded before the output was checked")


def test_an_output_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from captioner.api import Captioner

    monkeypatch.setattr(Captioner, "from_pretrained", no_model_load)
    (tmp_path / "a-file").write_text("mine")
    err = one_line_error(capsys, ["caption", str(EXAMPLES), "--output", str(tmp_path / "a-file" / "captions.jsonl")])
    assert f"{tmp_path / 'a-file'} is a file, not a folder" in err
    assert "--output is empty" in one_line_error(capsys, ["caption", str(EXAMPLES), "--output", ""])

    mount = tmp_path / "read-only"
    mount.mkdir()
    (mount / "captions.jsonl").write_text("")
    real_open = os.open

    def read_only(path, flags, *rest, **options):  # as on a read-only mount (the tests may run as root, which chmod does not stop)
        if str(path).startswith(str(mount)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *rest, **options)

    monkeypatch.setattr(os, "open", read_only)
    for output in (mount / "captions.jsonl", mount / "new" / "captions.jsonl"):
        assert "cannot write there (Read-only file system)" in one_line_error(capsys, ["caption", str(EXAMPLES), "--output", str(output)])
    assert sorted(os.listdir(tmp_path)) == ["a-file", "read-only"] and os.listdir(mount) == ["captions.jsonl"]


def test_a_full_disk_is_one_line_and_loses_no_record(tmp_path, capsys, monkeypatch):
    output = tmp_path / "captions.jsonl"
    arguments = ["--threads", "1", "caption", str(EXAMPLES), "--output", str(output), "--quiet", "--batch-size", "2"]
    assert main(arguments) == 0
    full = output.read_text().splitlines(keepends=True)
    output.write_text("".join(full[:2]))  # two records from an earlier run
    real_write = os.write

    def fills_up(descriptor, data):  # half of the batch fits, then the disk is full
        if bytes(data[:9]) == b'{"path": ' and len(data) > 1:
            real_write(descriptor, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(descriptor, data)

    monkeypatch.setattr(os, "write", fills_up)
    err = one_line_error(capsys, arguments[2:])
    assert "No space left on device" in err and "every record already in it is kept" in err
    assert output.read_text() == "".join(full[:2])  # intact, and no cut-off line
    monkeypatch.undo()
    assert main(arguments) == 0 and output.read_text() == "".join(full)


def test_threads_are_bounded(capsys):
    assert "a whole number from 1 to 256" in one_line_error(capsys, ["--threads", "100000", "caption", "x.jpg"])


def test_a_fifo_a_device_or_a_symlink_loop_is_named(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.jpg")  # never opened: reading it would wait for a writer forever
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    assert main(["caption", str(tmp_path / "pipe.jpg"), "/dev/zero", str(tmp_path / "loop.jpg")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"captioner: {tmp_path / 'pipe.jpg'}: is not a regular file (a FIFO); pass image files or folders",
        "captioner: /dev/zero: is not a regular file (a character device); pass image files or folders",
        f"captioner: {tmp_path / 'loop.jpg'}: is a symlink loop (a link that leads back to itself); fix or remove the link",
        "captioner: error: no images to caption; pass image files or folders holding JPEG, PNG, WebP, GIF, BMP or TIFF",
    ]
