"""The typed model config: the shipped config.json round-trips, left-out settings take the
dataclass defaults, a bad field is one line naming the file and the field, and the config's
decoding.beam_size is the beam when the caller gives none."""
import json

import pytest
from conftest import EXAMPLES
from helpers import tiny_decoder

from captioner.api import pretrained_path
from captioner.errors import CheckpointError
from captioner.model.checkpoint import read_config
from captioner.model.config import ConceptSettings, DecodingSettings, ModelConfig, SubjectSettings
from captioner.model.config_checks import ConfigError

SHIPPED = json.loads((pretrained_path() / "config.json").read_text())
MINIMAL = {"format_version": 1, "encoder": "efficientnet-lite2", "decoder": tiny_decoder("transformer").config.to_dict()}


def test_the_shipped_config_round_trips_unchanged():
    config = ModelConfig.from_dict(SHIPPED, "config.json")
    assert config.to_dict() == SHIPPED
    assert config.decoding == DecodingSettings(beam_size=3, length_penalty=1.0, no_repeat_ngram_size=3)
    assert config.concepts.guarded_words == ["canoe", "dog", "instrument"] and config.metadata["dev"]["epoch"] == 7


def test_left_out_settings_take_their_defaults_and_stay_left_out():
    config = ModelConfig.from_dict(MINIMAL, "config.json")
    assert (config.name, config.decoding, config.subject, config.concepts) == (None, DecodingSettings(), SubjectSettings(), None)
    assert config.concept_settings == ConceptSettings() and config.concept_settings.tag_threshold == 0.3
    assert config.to_dict() == MINIMAL
    changed = config.with_decoding(beam_size=5).to_dict()
    assert changed["decoding"] == {"beam_size": 5}  # a changed setting is written, the rest stay left out


def test_a_config_built_in_code_round_trips():
    config = ModelConfig(encoder="efficientnet-lite2", decoder=tiny_decoder("transformer").config, name="tiny",
                         concepts=ConceptSettings(detector_words=["dog"]), metadata={"training": {"images": 8}})
    data = config.to_dict()
    assert ModelConfig.from_dict(data) == config and ModelConfig.from_dict(data).to_dict() == data
    assert data["concepts"]["tag_threshold"] == 0.3 and data["subject"] == SubjectSettings().to_dict()


@pytest.mark.parametrize("change, message", [
    (lambda c: {**c, "decoding": {**c["decoding"], "beam_size": 0}}, "config.json: decoding.beam_size must be >= 1 and <= 20, not 0"),
    (lambda c: {**c, "decoding": {**c["decoding"], "beam": 5}}, "config.json: decoding: unknown settings beam"),
    (lambda c: {**c, "decoding": []}, "config.json: decoding must be an object"),
    (lambda c: {**c, "concepts": {**c["concepts"], "tag_threshold": 2}}, "config.json: concepts.tag_threshold must be >= 0 and <= 1, not 2"),
    (lambda c: {**c, "concepts": {**c["concepts"], "guarded_words": ["dog", 3]}}, "config.json: concepts.guarded_words must be a list of words"),
    (lambda c: {key: value for key, value in c.items() if key != "encoder"}, "config.json: missing 'encoder'"),
    (lambda c: {**c, "subject": {**c["subject"], "margin": "wide"}}, "config.json: subject: margin must be a number"),
    (lambda c: {**c, "format_version": 2}, "config.json: model format version 2 is not 1"),
])
def test_a_bad_field_is_one_line_naming_the_file_and_the_field(change, message):
    with pytest.raises(ConfigError) as error:
        ModelConfig.from_dict(change(SHIPPED), "config.json")
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_model_folder_with_a_bad_field_names_its_config_file(tmp_path, shipped_captioner):
    shipped_captioner.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "config.json").write_text(json.dumps({**SHIPPED, "decoding": {"beam_size": 21}}))
    with pytest.raises(CheckpointError, match=r"model/config.json: decoding.beam_size must be >= 1 and <= 20, not 21"):
        read_config(tmp_path / "model")


def test_the_configs_beam_is_the_default_beam(tmp_path, shipped_captioner, capsys):
    from captioner.cli.commands import main
    from captioner.server.routes import default_beam

    photo = EXAMPLES / "coffee.jpg"  # beams 3 and 5 caption it differently
    assert shipped_captioner.default_beam_size == 3
    assert shipped_captioner.caption(photo).text == shipped_captioner.caption(photo, beam_size=3).text
    wide = shipped_captioner.with_config(shipped_captioner.config.with_decoding(beam_size=5))
    wide.save_pretrained(tmp_path / "beam5")
    loaded = type(shipped_captioner).from_pretrained(tmp_path / "beam5")
    at_five = shipped_captioner.caption(photo, beam_size=5).text
    assert at_five != shipped_captioner.caption(photo).text
    assert loaded.default_beam_size == 5 and loaded.caption(photo).text == at_five
    assert main(["caption", str(photo), "--model", str(tmp_path / "beam5")]) == 0
    assert at_five in capsys.readouterr().out
    assert default_beam(loaded) == 5 and default_beam(loaded.with_config(loaded.config.with_decoding(beam_size=20))) == 10  # within the server's limit
