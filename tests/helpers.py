"""Small builders shared by the tests: random features, tiny decoders, a CLI error check."""
import pytest
import torch

from captioner.cli.commands import main
from captioner.model.decoders import DecoderConfig, Features, create_decoder

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


def one_line_error(capsys, arguments) -> str:
    """Run the CLI, expect exit 2 and exactly one line on stderr (no traceback); return it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(arguments))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err
