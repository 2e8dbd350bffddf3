"""`captioner caption --ray`: Ray Data on a local 2-CPU instance, end to end through the CLI, against the plain command."""
import json
import shutil
import socket
import sys

import pytest

pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'captioner[ray]'); CI installs it")
import ray  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")  # Ray Data's own notes on its settings

from captioner.cli.commands import main  # noqa: E402
from captioner.errors import CaptionerError  # noqa: E402
from captioner.batch.ray_captioning import actor_pool_size  # noqa: E402
from captioner.batch.ray_photo_list import photo_list, read_manifest  # noqa: E402
from conftest import EXAMPLES  # noqa: E402
from helpers import one_line_error  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray instance with 2 CPUs for the module; the CLI joins it instead of starting its own."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The four example photos and a broken one, in a folder."""
    folder = tmp_path_factory.mktemp("photos")
    for photo in EXAMPLES.glob("*.jpg"):
        shutil.copy(photo, folder)
    (folder / "broken.jpg").write_bytes(b"not a photo")
    return folder


@pytest.fixture(scope="module")
def plain_records(photos, tmp_path_factory):
    """What the plain command writes with --output for the same folder: path -> record."""
    output = tmp_path_factory.mktemp("plain") / "captions.jsonl"
    assert main(["--threads", "1", "caption", str(photos), "--output", str(output), "--quiet"]) == 1  # the broken photo
    return {record["path"]: record for record in map(json.loads, output.read_text().splitlines())}


def shard_records(folder):
    return [json.loads(line) for shard in sorted(folder.glob("captions-*.jsonl")) for line in shard.read_text().splitlines()]


def caption_with_ray(*arguments):
    return main(["--threads", "1", "caption", *arguments, "--ray", "local", "--batch-size", "2"])


def test_a_folder_is_captioned_as_the_plain_command_does(photos, plain_records, tmp_path, capsys):
    output = tmp_path / "shards"
    assert caption_with_ray(str(photos), "--output", str(output)) == 1  # the broken photo, as without --ray
    err = capsys.readouterr().err
    assert f"{photos / 'broken.jpg'}: not a supported image" in err
    records = shard_records(output)
    assert len(plain_records) == 4 and {r["path"]: r for r in records} == plain_records  # same fields, captions and scores
    assert len(records) == 4 and [p.name for p in output.iterdir()] == ["captions-00000.jsonl"]


def test_a_rerun_after_a_crash_captions_each_photo_once_and_in_full(photos, plain_records, tmp_path, capsys):
    output = tmp_path / "shards"
    output.mkdir()
    done = [json.dumps(plain_records[path], ensure_ascii=False) for path in sorted(plain_records)]
    # The first run wrote two whole records and was killed in the middle of the third.
    (output / "captions-00000.jsonl").write_text(done[0] + "\n" + done[1] + "\n" + done[2][:40])
    assert caption_with_ray(str(photos), "--output", str(output), "--shard-size", "1") == 1
    assert "2 were already there" in capsys.readouterr().err
    records = shard_records(output)
    assert sorted(r["path"] for r in records) == sorted(plain_records)  # each photo once
    assert {r["path"]: r for r in records} == plain_records  # in full
    assert (output / "captions-00000.jsonl").read_text() == done[0] + "\n" + done[1] + "\n"
    assert sorted(p.name for p in output.iterdir()) == ["captions-00000.jsonl", "captions-00001.jsonl", "captions-00002.jsonl"]

    before = {p.name: p.read_bytes() for p in output.iterdir()}
    assert caption_with_ray(str(photos), "--output", str(output)) == 1  # only the broken photo left: it fails again
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before


def test_through_ray_client_the_pipeline_runs_in_a_relay_actor(photos, plain_records, tmp_path, monkeypatch):
    from captioner.batch import ray_captioning

    monkeypatch.setattr(ray_captioning, "through_ray_client", lambda: True)  # as with --ray ray://HOST:PORT
    chelsea = str(photos / "chelsea.jpg")
    output = tmp_path / "shards"
    assert caption_with_ray(chelsea, "--output", str(output)) == 0
    assert shard_records(output) == [plain_records[chelsea]]


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    """The shipped model as an ONNX export folder."""
    from captioner.api import pretrained_path

    export = tmp_path_factory.mktemp("export") / "onnx"
    assert main(["export", "--model", str(pretrained_path()), "--onnx", str(export)]) == 0
    return export


def test_an_onnx_export_folder_runs_on_cpu_actors(photos, onnx_export, tmp_path, capsys):
    export = onnx_export
    chelsea = str(photos / "chelsea.jpg")
    plain = tmp_path / "plain.jsonl"
    assert main(["--threads", "1", "caption", chelsea, "--model", str(export), "--output", str(plain), "--quiet"]) == 0
    output = tmp_path / "shards"
    assert caption_with_ray(chelsea, "--model", str(export), "--output", str(output)) == 0
    assert shard_records(output) == [json.loads(plain.read_text())]
    assert "runs on CPUs" in one_line_error(capsys, ["caption", chelsea, "--model", str(export), "--output", str(output), "--ray", "local", "--device", "cuda"])


def test_a_parquet_manifest_of_uris_into_parquet_shards(photos, plain_records, tmp_path):
    import pyarrow
    import pyarrow.parquet

    chosen = sorted(plain_records)[:3]
    manifest = tmp_path / "photos.parquet"
    pyarrow.parquet.write_table(pyarrow.table({"path": [f"file://{path}" for path in chosen], "id": [1, 2, 3]}), manifest)
    output = tmp_path / "shards"
    assert caption_with_ray(str(manifest), "--output", str(output), "--format", "parquet") == 0
    rows = pyarrow.parquet.read_table(output / "captions-00000.parquet").to_pylist()
    assert sorted(row["path"] for row in rows) == [f"file://{path}" for path in chosen]
    assert [{**row, "path": row["path"][len("file://"):]} for row in sorted(rows, key=lambda row: row["path"])] == [plain_records[path] for path in chosen]


def test_parquet_shards_are_published_whole_by_size_or_age(tmp_path, monkeypatch):
    from captioner.batch import caption_shards

    record = {"path": "a.jpg", "captions": [{"text": "a cat", "score": -1.0}], "tags": []}
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / ".captions-00000.parquet.x1y2.tmp").write_bytes(b"killed while being renamed into place")
    shards = caption_shards.ShardFolder(folder, "parquet")
    writer = shards.writer(shard_size=2)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        writer.write({**record, "path": name})
    writer.end_batch()  # the third record waits for its shard to fill or age
    assert sorted(p.name for p in folder.iterdir()) == ["captions-00000.parquet"]
    monkeypatch.setattr(caption_shards, "PARQUET_SECONDS", 0)
    writer.end_batch()
    assert sorted(p.name for p in folder.iterdir()) == ["captions-00000.parquet", "captions-00001.parquet"]
    writer.close()
    assert caption_shards.ShardFolder(folder, "parquet").done() == {"a.jpg", "b.jpg", "c.jpg"}


def test_csv_manifest_paths_are_relative_to_the_manifest(tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("id,path\n1,a.jpg\n2,/photos/b.jpg\n3,s3://bucket/c.jpg\n")
    assert read_manifest(str(manifest)) == [str(tmp_path / "a.jpg"), "/photos/b.jpg", "s3://bucket/c.jpg"]
    assert read_manifest(f"file://{manifest}")[0] == f"file://{tmp_path / 'a.jpg'}"


def test_a_folder_uri_lists_its_photos(photos):
    assert photo_list([f"file://{photos}"]) == ([f"file://{path}" for path in sorted(photos.glob("*.jpg"))], [])
    assert photo_list([f"file://{photos}/nothing-here"])[1] == [f"file://{photos}/nothing-here: no such file or folder"]


def test_actors_one_per_gpu_else_most_cpus(capsys):
    assert actor_pool_size({"CPU": 16, "GPU": 4}, None, 1, "auto") == (4, 1, 1)
    assert actor_pool_size({"CPU": 16, "GPU": 4}, None, 2, "cpu") == (6, 2, 0)
    assert actor_pool_size({"CPU": 2}, None, 1, "auto") == (1, 1, 0)  # the other CPU decodes
    assert capsys.readouterr().err == ""
    assert actor_pool_size({"CPU": 2}, 2, 1, "auto") == (2, 1, 0)  # as asked, with a warning: no CPU left to decode
    assert "Ray waits until it grows" in capsys.readouterr().err
    with pytest.raises(CaptionerError, match="the Ray cluster has no GPUs"):
        actor_pool_size({"CPU": 2}, None, 1, "cuda")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_bad_input_is_one_line_before_any_work(photos, tmp_path, capsys, monkeypatch):
    output = tmp_path / "shards"
    base = ["caption", str(photos), "--output", str(output)]

    err = one_line_error(capsys, [*base, "--ray", f"ray://127.0.0.1:{closed_port()}"])
    assert "no Ray cluster answers there" in err and "ray start --head" in err and "--ray local" in err

    manifest = tmp_path / "list.csv"
    manifest.write_text(f"path\n{photos / 'chelsea.jpg'}\n{tmp_path / 'gone-1.jpg'}\n{tmp_path / 'gone-2.jpg'}\n")
    err = one_line_error(capsys, ["caption", str(manifest), "--output", str(output), "--ray", "local"])
    assert f"2 of 3 photos do not exist (first: {tmp_path / 'gone-1.jpg'})" in err
    manifest.write_text("file\nchelsea.jpg\n")
    assert "no 'path' column (it has: file)" in one_line_error(capsys, ["caption", str(manifest), "--output", str(output), "--ray", "local"])
    assert not output.exists()

    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"title": "my notes"}\n')
    assert "is a file" in one_line_error(capsys, ["caption", str(photos), "--output", str(notes), "--ray", "local"])
    output.mkdir()
    (output / "captions-00000.jsonl").write_text('{"title": "my notes"}\n')
    err = one_line_error(capsys, [*base, "--ray", "local"])
    assert "not a line written by" in err and "pass another --output folder" in err
    assert "holds JSON Lines shards; pass --format jsonl" in one_line_error(capsys, [*base, "--ray", "local", "--format", "parquet"])
    (output / "notes.txt").write_text("mine")
    assert "holds notes.txt, which is not a caption shard" in one_line_error(capsys, [*base, "--ray", "local"])
    assert sorted(p.name for p in output.iterdir()) == ["captions-00000.jsonl", "notes.txt"]
    assert (output / "captions-00000.jsonl").read_text() == '{"title": "my notes"}\n'

    assert "--ray needs --output FOLDER" in one_line_error(capsys, ["caption", str(photos), "--ray", "local"])
    assert "--actors works only with --ray" in one_line_error(capsys, ["caption", str(photos), "--actors", "2"])
    assert "--ray must be local" in one_line_error(capsys, [*base, "--ray", "nonsense"])
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    assert 'pip install "captioner[ray]"' in one_line_error(capsys, [*base, "--ray", "local"])


def test_a_name_that_is_not_utf8_is_captioned_and_resumed(tmp_path, capsys):
    import os

    folder = tmp_path / "p"
    folder.mkdir()
    shutil.copy(EXAMPLES / "chelsea.jpg", folder / "a.jpg")
    bad = os.path.join(os.fsencode(folder), b"bad\xffname.jpg")
    shutil.copy(EXAMPLES / "chelsea.jpg", bad)
    output = tmp_path / "shards"
    assert caption_with_ray(str(folder), "--output", str(output)) == 0
    text = (output / "captions-00000.jsonl").read_bytes().decode("utf-8")
    assert sorted(os.fsencode(json.loads(line)["path"]) for line in text.splitlines()) == sorted([os.fsencode(folder / "a.jpg"), bad])
    assert caption_with_ray(str(folder), os.fsdecode(bad), "--output", str(output)) == 0  # each photo once, also given twice
    assert (output / "captions-00000.jsonl").read_bytes().decode() == text and [p.name for p in output.iterdir()] == ["captions-00000.jsonl"]
    assert "0 photos captioned" in capsys.readouterr().err


def test_a_bad_output_or_model_is_refused_before_ray_starts(photos, onnx_export, tmp_path, capsys, monkeypatch):
    from captioner.batch import ray_captioning
    from captioner.api import pretrained_path

    def no_ray(*_):
        raise AssertionError("Ray was started before the input was checked")

    monkeypatch.setattr(ray_captioning, "connect", no_ray)
    (tmp_path / "a-file").write_text("mine")
    base = ["caption", str(photos / "chelsea.jpg"), "--ray", "local"]
    assert "a-file is a file, not a folder" in one_line_error(capsys, [*base, "--output", str(tmp_path / "a-file" / "shards")])

    model = tmp_path / "model"
    shutil.copytree(pretrained_path(), model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "unreadable weights" in one_line_error(capsys, [*base, "--model", str(model), "--output", str(tmp_path / "shards")])

    tampered = tmp_path / "onnx"
    shutil.copytree(onnx_export, tampered)
    step = tampered / "decoder_step.onnx"
    step.write_bytes(bytes(step.stat().st_size))  # the size the manifest says, not a graph
    assert "not a readable ONNX graph" in one_line_error(capsys, [*base, "--model", str(tampered), "--output", str(tmp_path / "shards")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "model", "onnx"]  # nothing written
