"""Shared fixtures: paths to the example photos, Flickr8k and COCO mini dev (tests needing them skip without them)."""
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FLICKR8K = ROOT.parent / "shared" / "flickr8k"
COCO_MINI_DEV = ROOT.parent / "shared" / "coco-mini-dev"

torch.set_num_threads(1)

needs_flickr8k = pytest.mark.skipif(
    not (FLICKR8K / "Flickr8k.token.txt").is_file(),
    reason=f"Flickr8k not found at {FLICKR8K} (see the README for how to get it)",
)
needs_coco_mini_dev = pytest.mark.skipif(
    not (COCO_MINI_DEV / "captions.json").is_file(),
    reason=f"COCO mini dev not found at {COCO_MINI_DEV} (80 COCO photos with captions and object labels)",
)


@pytest.fixture(scope="session")
def example_photos() -> list[Path]:
    return sorted(EXAMPLES.glob("*.jpg"))


@pytest.fixture(scope="session")
def encoder():
    from captioner.model.encoders import create_encoder
    from captioner.runtimes.onnx_encoder import encoder_on

    return encoder_on(create_encoder("efficientnet-lite2"), torch.device("cpu"))  # as captioning runs it on the CPU


@pytest.fixture(scope="session")
def shipped_captioner():
    from captioner.api import Captioner

    return Captioner.from_pretrained()


@pytest.fixture(scope="module")
def client():
    """The server with the shipped model, one per test module (a module may define its own)."""
    from fastapi.testclient import TestClient

    from captioner.server import Settings, create_app

    with TestClient(create_app(Settings())) as client:
        yield client
