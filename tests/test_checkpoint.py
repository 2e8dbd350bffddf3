"""Model folders: round trip, fp16, atomic writes, and clear errors for foreign checkpoints."""
import json

import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from captioner.model.checkpoint import load_model, save_model
from captioner.errors import CheckpointError
from captioner.model.transformer_block import renamed_decoder_weights
from captioner.model.vocabulary import Vocabulary
from helpers import KINDS, random_features, tiny_decoder

VOCABULARY = Vocabulary([f"w{i}" for i in range(16)])  # 20 ids with the specials
CONFIG = {"name": "tiny", "encoder": "efficientnet-lite2", "preprocess": {}, "decoding": {}}


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_gives_identical_outputs(tmp_path, kind):
    decoder = tiny_decoder(kind)
    save_model(tmp_path / "m", decoder, VOCABULARY, CONFIG)
    loaded, vocabulary, config = load_model(tmp_path / "m")
    tokens = torch.tensor([[1, 5, 6, 7]])
    features = random_features(1)
    with torch.no_grad():
        assert torch.equal(decoder(features, tokens), loaded(features, tokens))
    assert vocabulary == VOCABULARY and config.name == "tiny" and config.decoder.kind == kind
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.endswith(".tmp")]


def test_weights_named_as_nn_transformer_decoder_load_and_compute_as_it_does(tmp_path):
    """A model saved before `TransformerBlock` (the shipped one) keeps loading: nn.TransformerDecoder's
    names are mapped to the block's, and the block computes what nn.TransformerDecoder does."""
    decoder = tiny_decoder("transformer", max_concepts=2)
    config = decoder.config
    layer = nn.TransformerDecoderLayer(config.embed_dim, config.num_heads, 4 * config.embed_dim, 0.0, "gelu", batch_first=True, norm_first=True)
    reference = nn.TransformerDecoder(layer, config.num_layers, norm=nn.LayerNorm(config.embed_dim)).eval()
    new_name = {f"layers.{name}": next(iter(renamed_decoder_weights({f"layers.{name}": None}))) for name in reference.state_dict()}
    save_model(tmp_path / "m", decoder, VOCABULARY, CONFIG)
    weights = load_file(tmp_path / "m" / "model.safetensors")
    reference.load_state_dict({old[len("layers."):]: weights[new] for old, new in new_name.items()})
    save_file({**{name: tensor for name, tensor in weights.items() if name not in new_name.values()}, **{old: weights[new] for old, new in new_name.items()}}, tmp_path / "m" / "model.safetensors")
    loaded, _, _ = load_model(tmp_path / "m")
    features, tokens = random_features(2), torch.tensor([[1, 5, 6, 7], [1, 8, 9, 4]])
    with torch.no_grad():
        memory, attend = decoder._memory(features)
        words = decoder.embedding(tokens) * math.sqrt(config.embed_dim) + decoder.position(torch.arange(4))
        causal = nn.Transformer.generate_square_subsequent_mask(4)
        expected = decoder.output(reference(words, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=~attend))
        torch.testing.assert_close(loaded(features, tokens), expected, rtol=0, atol=1e-5)


def test_float16_weights_load_close(tmp_path):
    decoder = tiny_decoder("transformer")
    save_model(tmp_path / "m", decoder, VOCABULARY, CONFIG, dtype=torch.float16)
    loaded, _, _ = load_model(tmp_path / "m")
    tokens = torch.tensor([[1, 5, 6]])
    with torch.no_grad():
        assert torch.allclose(decoder(random_features(1), tokens), loaded(random_features(1), tokens), atol=2e-2)
    assert loaded.output.weight is loaded.embedding.weight  # tied weights stay tied


def test_other_version_shape_and_missing_files(tmp_path):
    save_model(tmp_path / "m", tiny_decoder("merge"), VOCABULARY, CONFIG)
    config = json.loads((tmp_path / "m" / "config.json").read_text())

    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_model(tmp_path / "m")

    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "decoder": {**config["decoder"], "hidden_dim": 64}}))
    with pytest.raises(CheckpointError, match="another shape"):
        load_model(tmp_path / "m")

    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "decoder": {**config["decoder"], "kind": "attention"}}))
    with pytest.raises(CheckpointError, match="another shape"):
        load_model(tmp_path / "m")

    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unreadable weights"):
        load_model(tmp_path / "m")

    with pytest.raises(CheckpointError, match="no such model folder"):
        load_model(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    with pytest.raises(CheckpointError, match="missing config.json"):
        load_model(tmp_path / "half")
