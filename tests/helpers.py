"""Small builders shared by the tests: random features and tiny decoders."""
import torch

from captioner.decoders import DecoderConfig, Features, create_decoder

KINDS = ("merge", "attention", "transformer")


def tiny_config(kind: str, **overrides) -> DecoderConfig:
    settings = dict(kind=kind, vocab_size=20, feature_dim=16, grid_size=4, embed_dim=32, hidden_dim=32,
                    attention_dim=32, num_layers=2, num_heads=4, dropout=0.1, max_length=8)
    return DecoderConfig(**{**settings, **overrides})


def tiny_decoder(kind: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return create_decoder(tiny_config(kind, **overrides)).eval()


def random_features(batch: int = 3, seed: int = 0) -> Features:
    generator = torch.Generator().manual_seed(seed)
    grid = torch.randn(batch, 4, 16, generator=generator)
    return Features(grid, grid.mean(dim=1))
