"""The feature cache stores what the encoder computes, and resumes an interrupted run."""
import torch

from captioner.features import FeatureCache
from captioner.images import load_image


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
    import pytest

    from captioner.errors import CaptionerError

    FeatureCache.build(tmp_path / "c", encoder, ["a"], example_photos[:1], progress=False)
    with pytest.raises(CaptionerError, match="another encoder"):
        FeatureCache.build(tmp_path / "c", encoder, ["b"], example_photos[:1], progress=False)
    with pytest.raises(CaptionerError, match="not in the feature cache"):
        FeatureCache(tmp_path / "c").rows(["zzz"])
