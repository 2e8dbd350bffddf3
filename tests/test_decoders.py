"""Each decoder: shapes, teacher forcing equals step-by-step decoding, padding ignored, one-batch overfit."""
import pytest
import torch
from torch import nn

from captioner.model.config_checks import ConfigError
from captioner.model.decoders import DecoderConfig, caption_loss
from captioner.generation.decoding import DecodingOptions, greedy
from captioner.model.transformer_block import TransformerBlock, renamed_decoder_weights
from helpers import KINDS, random_features, tiny_decoder


def test_a_seed_gives_the_block_the_weights_it_gave_nn_transformer_decoder_layer():
    """Training from a seed starts where it started before the block (same draws, same order)."""
    torch.manual_seed(0)
    layer = nn.TransformerDecoderLayer(32, 4, 128, 0.1, "gelu", batch_first=True, norm_first=True)
    torch.manual_seed(0)
    block = TransformerBlock(32, 4, 0.1)
    expected = renamed_decoder_weights({f"layers.layers.0.{name}": value for name, value in layer.named_parameters()})
    assert [name for name in expected] == [f"blocks.0.{name}" for name, _ in block.named_parameters()]  # the optimizer's order too
    for (name, value), actual in zip(expected.items(), block.parameters()):
        assert torch.equal(value, actual), name


@pytest.mark.parametrize("kind", KINDS)
def test_forward_shapes(kind):
    decoder = tiny_decoder(kind)
    tokens = torch.randint(4, 20, (3, 7))
    assert decoder(random_features(3), tokens).shape == (3, 7, 20)


@pytest.mark.parametrize("kind", KINDS)
def test_step_matches_teacher_forcing(kind):
    decoder = tiny_decoder(kind)
    features = random_features(2)
    tokens = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 4]])
    with torch.no_grad():
        full = decoder(features, tokens)  # (B, T, V)
        state = decoder.init_state(features)
        for t in range(tokens.shape[1]):
            logits, state = decoder.step(tokens[:, t], state)
            assert torch.allclose(logits, full[:, t], atol=1e-4), f"step {t} differs"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows", [[0, 0, 1, 1, 2, 2], [2, 2, 2, 0, 0, 0], [2, 0, 0, 1], [1, 2, 2, 2]], ids=["blocks", "blocks-reversed", "mixed", "unequal"])
def test_reordered_rows_step_like_their_images(kind, rows):
    """Beams and samples are rows reordered with index_select (a Transformer keeps its image
    memory once per image); every row's logits must be its own image's, in any order."""
    decoder = tiny_decoder(kind)
    features = random_features(3)
    tokens = torch.tensor([[1, 5, 6], [1, 8, 9], [1, 4, 7]])
    indices = torch.tensor(rows)
    with torch.no_grad():
        full = decoder(features, tokens)  # (3, T, V)
        state = decoder.init_state(features)
        state = {name: value.index_select(0, indices) for name, value in state.items()}
        for t in range(tokens.shape[1]):
            logits, state = decoder.step(tokens[indices, t], state)  # (R, V)
            assert torch.allclose(logits, full[indices, t], atol=1e-4), f"step {t} differs"


def test_loss_ignores_padding():
    logits = torch.randn(2, 4, 10)
    targets = torch.tensor([[5, 6, 2, 0], [7, 2, 0, 0]])
    changed = logits.clone()
    changed[0, 3] += 100.0
    changed[1, 2:] -= 50.0
    assert torch.allclose(caption_loss(logits, targets), caption_loss(changed, targets))


@pytest.mark.parametrize("kind", KINDS)
def test_one_batch_overfit(kind):
    torch.manual_seed(0)
    decoder = tiny_decoder(kind, dropout=0.0)
    features = random_features(2, seed=1)
    captions = [[5, 6, 7, 8], [9, 10, 11, 12]]
    inputs = torch.tensor([[1] + c for c in captions])
    targets = torch.tensor([c + [2] for c in captions])
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    decoder.train()
    for _ in range(200):
        loss = caption_loss(decoder(features, inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    decoder.eval()
    decoded = [h[0].tokens for h in greedy(decoder, features, DecodingOptions(max_length=8, no_repeat_ngram_size=0))]
    assert decoded == captions


def test_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown settings colour"):
        DecoderConfig.from_dict({"kind": "merge", "colour": "blue"})
