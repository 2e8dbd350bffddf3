"""The feature cache stores what the encoder computes and resumes an interrupted run; it is keyed by
what made it, holds mirrored rows for the train split only, and skips photos that cannot be read."""
import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner.generation.cached_decoding import batch_features
from captioner.data.datasets import CaptionDataset, ImageRecord
from captioner.model.encoders import PreprocessConfig
from captioner.errors import CaptionerError
from captioner.data.features import UNREADABLE, FeatureCache, feature_cache, records_with_features
from captioner.data.images import load_image


def test_cache_matches_encoder_and_resumes(tmp_path, encoder, example_photos):
    keys = [p.name for p in example_photos]
    cache = FeatureCache.build(tmp_path / "c", encoder, keys, example_photos, batch_size=2, progress=False, rows=[0, 1])
    assert cache.done.tolist() == [1, 1, 0, 0]
    cache = FeatureCache.build(tmp_path / "c", encoder, keys, example_photos, batch_size=2, progress=False)
    assert cache.complete
    grid, pooled = cache.load(keys)
    assert grid.dtype == torch.float16 and grid.shape == (4, 49, 1280) and pooled.shape == (4, 1280)
    expected_grid, expected_pooled = encoder(torch.stack([encoder.preprocess(load_image(p)) for p in example_photos]))
    assert torch.allclose(grid.float(), expected_grid, atol=2e-2, rtol=1e-2)
    assert torch.allclose(pooled.float(), expected_pooled, atol=2e-2, rtol=1e-2)


def test_cache_refuses_other_images(tmp_path, encoder, example_photos):
    FeatureCache.build(tmp_path / "c", encoder, ["a"], example_photos[:1], progress=False)
    with pytest.raises(CaptionerError, match="another encoder"):
        FeatureCache.build(tmp_path / "c", encoder, ["b"], example_photos[:1], progress=False)
    with pytest.raises(CaptionerError, match="not in the feature cache"):
        FeatureCache(tmp_path / "c").rows(["zzz"])


SPLITS = {"astronaut.jpg": "train", "chelsea.jpg": "train", "coffee.jpg": "dev", "rocket.jpg": "test"}


def photo_dataset(folder, example_photos, corrupt: tuple[str, ...] = ()) -> CaptionDataset:
    """The four example photos (train, train, dev, test), plus `corrupt` train photos that are not images."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for photo in example_photos:
        shutil.copy(photo, folder / photo.name)
        records.append(ImageRecord(photo.name, ["a photo"], SPLITS[photo.name]))
    for name in corrupt:
        (folder / name).write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
        records.append(ImageRecord(name, ["a photo"], "train"))
    return CaptionDataset("photos", folder, records)


def test_cache_made_with_other_preprocessing_or_format_is_detected_and_rebuilt(tmp_path, monkeypatch, encoder, example_photos):
    import captioner.data.features

    dataset = photo_dataset(tmp_path / "photos", example_photos)
    keys, messages = [r.image for r in dataset.records], []
    first = feature_cache(dataset, encoder.name, tmp_path / "cache", keys, encoder=encoder, device="cpu", progress=False, log=messages.append)
    first_grid = np.array(first.grid)
    assert feature_cache(dataset, encoder.name, tmp_path / "cache", keys, encoder=encoder, device="cpu", progress=False).folder == first.folder
    assert messages == []

    with monkeypatch.context() as patch:  # the same encoder, other pixels: (x - 100) / 64
        patch.setattr(encoder, "preprocess_config", PreprocessConfig(input_size=224, mean=100.0, std=64.0))
        other = feature_cache(dataset, encoder.name, tmp_path / "cache", keys, encoder=encoder, device="cpu", progress=False, log=messages.append)
    assert other.folder != first.folder and other.complete and other.producer["preprocess"]["mean"] == 100.0
    assert not np.allclose(np.array(other.grid, dtype=np.float32), first_grid.astype(np.float32), atol=1e-2)
    assert len(messages) == 1 and first.folder.name in messages[0] and "other preprocessing" in messages[0]

    with monkeypatch.context() as patch:  # a newer cache format
        patch.setattr(captioner.data.features, "FORMAT_VERSION", captioner.data.features.FORMAT_VERSION + 1)
        messages.clear()
        newer = feature_cache(dataset, encoder.name, tmp_path / "cache", keys, encoder=encoder, device="cpu", progress=False, log=messages.append)
        assert newer.folder not in (first.folder, other.folder) and newer.complete
        assert any(first.folder.name in message and "cache format" in message for message in messages)
        with pytest.raises(CaptionerError, match="a feature cache of format"):
            FeatureCache(first.folder)  # an old cache opened directly is refused, not misread
    # Nothing was deleted: the first cache is still there, as it was.
    assert np.array_equal(np.array(FeatureCache(first.folder).grid), first_grid)


def test_mirrored_features_only_for_the_train_split(tmp_path, encoder, example_photos):
    dataset = photo_dataset(tmp_path / "photos", example_photos)
    train = [r.image for r in dataset.split("train")]
    mirrored = feature_cache(dataset, encoder.name, tmp_path / "cache", train, flip=True, encoder=encoder, device="cpu", progress=False)
    assert mirrored.keys == train and mirrored.complete
    assert (mirrored.folder / "grid.f16").stat().st_size == len(train) * 49 * 1280 * 2  # rows allocated for train photos only
    plain = feature_cache(dataset, encoder.name, tmp_path / "cache", train, encoder=encoder, device="cpu", progress=False)
    assert not np.allclose(np.array(mirrored.pooled, dtype=np.float32), np.array(plain.pooled[plain.rows(train)], dtype=np.float32), atol=1e-2)
    with pytest.raises(ValueError, match="train split only"):
        feature_cache(dataset, encoder.name, tmp_path / "cache", ["coffee.jpg"], flip=True, encoder=encoder, device="cpu", progress=False)


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_photo_is_skipped_logged_and_not_retried_until_asked(tmp_path, monkeypatch, encoder, example_photos, workers):
    dataset = photo_dataset(tmp_path / "photos", example_photos, corrupt=("broken.jpg",))
    keys, messages = [r.image for r in dataset.records], []
    cache = feature_cache(dataset, encoder.name, tmp_path / "cache", keys, encoder=encoder, device="cpu", workers=workers, progress=False, log=messages.append)
    assert cache.complete and cache.unreadable == ["broken.jpg"] and cache.done.tolist() == [1, 1, 1, 1, UNREADABLE]
    assert "corrupt" in cache.unreadable_reasons()["broken.jpg"]
    assert (cache.folder / "unreadable.txt").read_text().startswith("broken.jpg\t")
    assert any("broken.jpg" in message for message in messages) and any(message.startswith("unreadable photos skipped: 1 (") for message in messages)
    kept, left_out = records_with_features(dataset.records, cache)
    assert [r.image for r in left_out] == ["broken.jpg"] and len(kept) == 4
    expected_grid, _ = encoder(torch.stack([encoder.preprocess(load_image(p)) for p in example_photos]))
    assert torch.allclose(cache.load(keys[:4])[0].float(), expected_grid, atol=2e-2, rtol=1e-2)

    # A resumed run does not try the photo again; a retry does, and finds it mended.
    import captioner.data.features

    monkeypatch.setattr(captioner.data.features.FeatureCache, "build", lambda *args, **kwargs: pytest.fail("rebuilt a complete cache"))
    assert feature_cache(dataset, encoder.name, tmp_path / "cache", keys, encoder=encoder, device="cpu", progress=False).unreadable == ["broken.jpg"]
    monkeypatch.undo()
    shutil.copy(example_photos[0], tmp_path / "photos" / "broken.jpg")
    mended = feature_cache(dataset, encoder.name, tmp_path / "cache", keys, encoder=encoder, device="cpu", workers=workers, progress=False, retry_unreadable=True, log=messages.append)
    assert mended.unreadable == [] and mended.done.tolist() == [1] * 5 and (mended.folder / "unreadable.txt").read_text() == ""
    assert torch.allclose(mended.load(["broken.jpg"])[0].float(), expected_grid[:1], atol=2e-2, rtol=1e-2)


class RecordingRows:
    """A memmap stand-in that records which rows are read."""

    def __init__(self, array, reads: list):
        self.array, self.reads, self.shape = array, reads, array.shape

    def __getitem__(self, rows):
        self.reads.append(np.asarray(rows).tolist())
        return self.array[rows]


def test_a_batch_reads_each_row_from_the_one_copy_it_uses(tmp_path, encoder, example_photos):
    dataset = photo_dataset(tmp_path / "photos", example_photos)
    train = [r.image for r in dataset.split("train")]
    cache = feature_cache(dataset, encoder.name, tmp_path / "cache", [r.image for r in dataset.records], encoder=encoder, device="cpu", progress=False)
    mirrored = feature_cache(dataset, encoder.name, tmp_path / "cache", train, flip=True, encoder=encoder, device="cpu", progress=False)
    plain_reads, mirrored_reads = [], []
    cache.grid, cache.pooled = RecordingRows(cache.grid, plain_reads), RecordingRows(cache.pooled, plain_reads)
    mirrored.grid, mirrored.pooled = RecordingRows(mirrored.grid, mirrored_reads), RecordingRows(mirrored.pooled, mirrored_reads)

    rows = cache.rows(["chelsea.jpg", "astronaut.jpg", "coffee.jpg", "chelsea.jpg"])
    flip_rows = np.array([mirrored.rows(["chelsea.jpg"])[0], -1, -1, -1])  # only the first is mirrored
    features = batch_features(cache, rows, torch.device("cpu"), mirrored, flip_rows)
    assert plain_reads == [[0, 1, 2]] * 2 and mirrored_reads == [[1]] * 2  # each row once, from its copy, in file order
    assert torch.equal(features.pooled[0], torch.tensor(mirrored.pooled.array[1]).float())
    assert torch.equal(features.pooled[1:], torch.from_numpy(cache.pooled.array[[0, 2, 1]]).float())
    plain_reads.clear()
    assert torch.equal(batch_features(cache, rows, torch.device("cpu")).grid, torch.from_numpy(cache.grid.array[rows]).float())


def test_gpu_and_cpu_caches_agree(tmp_path, encoder, example_photos):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here: the GPU path (PyTorch encoder on the GPU, DataLoader workers, pinned memory) is checked where there is one")
    dataset = photo_dataset(tmp_path / "photos", example_photos, corrupt=("broken.jpg",))
    keys = [r.image for r in dataset.records]
    on_cpu = feature_cache(dataset, encoder.name, tmp_path / "cpu", keys, encoder=encoder, device="cpu", progress=False)
    on_gpu = feature_cache(dataset, encoder.name, tmp_path / "gpu", keys, device="cuda", workers=2, progress=False)
    assert on_gpu.unreadable == on_cpu.unreadable == ["broken.jpg"]
    assert np.allclose(np.array(on_gpu.grid[:4], dtype=np.float32), np.array(on_cpu.grid[:4], dtype=np.float32), atol=3e-2, rtol=1e-2)


def _set_index(folder, change):
    index = json.loads((folder / "index.json").read_text())
    change(index)
    (folder / "index.json").write_text(json.dumps(index))


def _replace_with_folder(path):
    path.unlink()
    path.mkdir()


DAMAGE = {
    "index broken": lambda folder: (folder / "index.json").write_text('{"format": 2, "keys": ['),
    "index not UTF-8": lambda folder: (folder / "index.json").write_bytes(b'{"format": 2, "encoder": "caf\xe9"}'),
    "index without keys": lambda folder: _set_index(folder, lambda index: index.pop("keys")),
    "index a list": lambda folder: (folder / "index.json").write_text("[]"),
    "index of other images": lambda folder: _set_index(folder, lambda index: index.update(keys=index["keys"][::-1])),
    "grid truncated": lambda folder: os.truncate(folder / "grid.f16", 1000),
    "grid a folder": lambda folder: _replace_with_folder(folder / "grid.f16"),
    "pooled missing": lambda folder: (folder / "pooled.f16").unlink(),
    "done truncated": lambda folder: os.truncate(folder / "done.u8", 2),
    "done with another value": lambda folder: (folder / "done.u8").write_bytes(b"\x01\x01\x07\x01"),
}


def _contents(folder) -> dict:
    return {path.name: path.read_bytes() if path.is_file() else "folder" for path in folder.iterdir()}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cache_is_set_aside_not_deleted_and_built_again(tmp_path, encoder, example_photos, damage):
    dataset = photo_dataset(tmp_path / "photos", example_photos)
    keys, messages = [r.image for r in dataset.records], []
    good = feature_cache(dataset, encoder.name, tmp_path / "cache", keys, encoder=encoder, device="cpu", progress=False)
    good_grid = np.array(good.grid)
    DAMAGE[damage](good.folder)
    damaged = _contents(good.folder)
    if damage != "index of other images":  # (whole in itself: only the folder's name tells it is not what it should be)
        with pytest.raises(CaptionerError, match="captioner features' again to rebuild it") as refused:  # opened directly: refused, saying what to do
            FeatureCache(good.folder)
        assert "\n" not in str(refused.value)

    rebuilt = feature_cache(dataset, encoder.name, tmp_path / "cache", keys, encoder=encoder, device="cpu", progress=False, log=messages.append)
    assert rebuilt.folder == good.folder and rebuilt.complete and np.allclose(np.array(rebuilt.grid, dtype=np.float32), good_grid.astype(np.float32), atol=1e-2)
    aside = [path for path in (tmp_path / "cache").iterdir() if path != good.folder]
    assert len(aside) == 1 and aside[0].name.startswith(good.folder.name + ".damaged-")
    assert _contents(aside[0]) == damaged  # set aside as it was, nothing deleted
    assert len(messages) == 1 and "feature cache damaged" in messages[0] and aside[0].name in messages[0] and "\n" not in messages[0]
    assert feature_cache(dataset, encoder.name, tmp_path / "cache", keys, encoder=encoder, device="cpu", progress=False, log=messages.append).folder == good.folder
    assert len(messages) == 1  # the rebuilt cache is used as it is, the damaged one left alone


def test_a_damaged_cache_that_cannot_be_moved_aside_is_refused_in_one_line(tmp_path, monkeypatch, encoder, example_photos):
    dataset = photo_dataset(tmp_path / "photos", example_photos)
    keys = [r.image for r in dataset.records]
    cache = feature_cache(dataset, encoder.name, tmp_path / "cache", keys, encoder=encoder, device="cpu", progress=False)
    os.truncate(cache.folder / "done.u8", 2)

    def read_only(self, target):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "rename", read_only)
    with pytest.raises(CaptionerError, match=r"done.u8: 2 bytes, not the 4 .*could not be moved aside \(Read-only file system\): move or delete") as refused:
        feature_cache(dataset, encoder.name, tmp_path / "cache", keys, encoder=encoder, device="cpu", progress=False)
    assert "\n" not in str(refused.value) and (cache.folder / "done.u8").stat().st_size == 2


def test_features_command_rebuilds_a_damaged_cache_saying_so_in_one_line(tmp_path, capsys, example_photos):
    from captioner.cli.commands import main

    dataset = photo_dataset(tmp_path / "photos", example_photos)
    rows = [{"image": r.image, "caption": r.captions[0], "split": r.split} for r in dataset.records]
    (tmp_path / "photos" / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    arguments = ["--threads", "1", "features", "--dataset", str(tmp_path / "photos" / "pairs.jsonl"), "--cache", str(tmp_path / "cache")]
    assert main(arguments) == 0
    (folder,) = (tmp_path / "cache").iterdir()
    (folder / "index.json").write_text("{")
    capsys.readouterr()
    assert main(arguments) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and [line for line in err.splitlines() if "damaged" in line][0].startswith("captioner: feature cache damaged (")
    assert len(list((tmp_path / "cache").iterdir())) == 2 and FeatureCache(folder).complete
