"""Visual concepts: word detectors, concept tokens in the decoder, text-only noise, tags, person rule."""
import numpy as np
import pytest
import torch

from captioner.data.caption_text import flickr30k_id, read_caption_text
from captioner.model.checkpoint import load_concept_detector, load_model, save_model
from captioner.training.concepts import ConceptMatcher, ConceptNoise, SourceNoise, TextExamples, choose_detector_words, train_word_detector
from captioner.model.concepts import (
    PERSON_OUTPUT, SOURCE_DETECTOR, SOURCE_IMAGENET, ConceptDetector, ConceptTable, Concepts, WordDetector, concept_inputs, guarded_words,
    imagenet_head, person_by_class, singular,
)
from captioner.model.decoders import Features
from captioner.generation.decoding import beam_search, greedy
from captioner.errors import CheckpointError, DatasetError
from captioner.model.vocabulary import Vocabulary
from helpers import random_features, tiny_decoder


def test_singular_forms():
    assert [singular(w) for w in ["dogs", "men", "women", "children", "puppies", "bus", "glass", "cats", "grass"]] == [
        "dog", "man", "woman", "child", "puppy", "bus", "glass", "cat", "grass"]


def test_matcher_finds_phrases_and_plurals():
    matcher = ConceptMatcher(["teddy bear", "bear", "dog", "hot dog", "cat"])
    assert matcher("a teddy bear next to two cats".split()) == [0, 4]
    assert matcher("a man eats a hot dog".split()) == [3]
    assert matcher("dogs chase a bear".split()) == [2, 1]


def test_noisy_or_detector_learns_a_word_present_in_one_cell():
    torch.manual_seed(0)
    grid = torch.randn(128, 4, 8)
    labels = (grid[:, :, 0] > 1.0).any(dim=1).float()[:, None]  # the word is in the photo if any cell says so
    detector = train_word_detector([grid.half()], labels, feature_dim=8, hidden_dim=16, epochs=60, batch_size=16, learning_rate=1e-2)
    with torch.no_grad():
        predicted = detector(grid)[:, 0] > 0.5
    base_rate = max(labels.mean(), 1 - labels.mean())
    assert (predicted == labels[:, 0].bool()).float().mean() > base_rate + 0.15


def test_detector_probability_is_a_noisy_or_of_its_cells():
    detector = WordDetector(3, 8, 16).eval()
    grid = torch.randn(2, 5, 8)
    with torch.no_grad():
        cells = torch.sigmoid(detector.cells(torch.nn.functional.gelu(detector.hidden(detector.norm(grid)))))  # (2, 5, 3)
        assert torch.allclose(detector(grid), 1 - (1 - cells).prod(dim=1), atol=1e-5)


def test_detector_words_are_frequent_content_words_plus_the_person_output():
    captions = [[["a", "dog", "runs"], ["two", "dogs", "run", "on", "grass"]]] * 40 + [[["a", "cat"]]] * 5
    words = choose_detector_words(captions, min_images=30)
    assert words[-1] == PERSON_OUTPUT and "dog" in words and "grass" in words
    assert "a" not in words and "cat" not in words


def noise() -> ConceptNoise:
    quantiles = list(np.linspace(0.5, 1.0, 21))
    return ConceptNoise(SourceNoise(0.8, quantiles, 1.0, list(np.linspace(0.1, 0.4, 21))), SourceNoise(0.6, quantiles, 2.0, list(np.linspace(0.1, 0.4, 21))))


def test_text_only_concepts_are_seeded_and_noisy():
    sources = [SOURCE_IMAGENET] * 5 + [SOURCE_DETECTOR] * 5
    pool, weights = np.arange(10), np.full(10, 0.1)
    draw = lambda seed: noise().draw([0, 6], sources, pool, weights, np.random.default_rng(seed))  # noqa: E731
    assert draw(3) == draw(3)
    draws = [draw(seed) for seed in range(300)]
    assert any(draws[i] != draws[0] for i in range(1, 300))
    found_true = np.mean([0 in dict(d) for d in draws])
    assert 0.7 < found_true < 0.9  # recall 0.8 for the ImageNet source
    wrong = np.mean([len(set(dict(d)) - {0, 6}) for d in draws])
    assert 1.5 < wrong < 3.2  # about 1 + 2 wrong words a photo, minus collisions
    assert all(list(dict(d).values()) == sorted(dict(d).values(), reverse=True) for d in draws)


def test_source_noise_is_measured_from_predictions():
    probabilities = np.array([[0.9, 0.05, 0.3], [0.2, 0.6, 0.01]])
    labels = np.array([[1, 0, 0], [1, 0, 1]])
    measured = SourceNoise.measure(probabilities, labels, min_score=0.1)
    assert measured.recall == pytest.approx(2 / 3)  # 0.9 and 0.2 found, 0.01 missed
    assert measured.false_per_photo == pytest.approx(1.0)  # 0.3 and 0.6 over two photos


def test_caption_text_reader_names_the_bad_line(tmp_path):
    good = tmp_path / "good.tsv"
    good.write_text("image\tcaption\n1.jpg\tA cat .\n1.jpg\tA kitten .\n2.jpg\tA dog .\n")
    photos = read_caption_text(good)
    assert [(p.image, len(p.captions)) for p in photos] == [("1.jpg", 2), ("2.jpg", 1)]
    bad = tmp_path / "bad.tsv"
    bad.write_text("image\tcaption\n1.jpg\tA cat .\n2.jpg no tab here\n")
    with pytest.raises(DatasetError, match=r"bad\.tsv:3:"):
        read_caption_text(bad)
    assert flickr30k_id("1000268201_693b08cb0e.jpg") == flickr30k_id("1000268201.jpg") == "1000268201"


def test_text_examples_draw_the_same_epoch_for_the_same_seed(tmp_path):
    text = tmp_path / "t.tsv"
    text.write_text("image\tcaption\n1.jpg\ta cat on a couch\n2.jpg\ta dog on the grass\n")
    words = ["cat", "couch", "dog", "grass"]
    vocabulary = Vocabulary(["a", "on", "the"] + words)

    class Setup:
        detector = type("D", (), {"sources": [SOURCE_IMAGENET] * 3 + [SOURCE_DETECTOR]})()
        false_pool, false_weights = np.arange(4), np.full(4, 0.25)

    Setup.noise = noise()
    examples = TextExamples([(read_caption_text(text), 6)], vocabulary, ConceptMatcher(words), max_length=10)
    first = examples.draw(np.random.default_rng(1), Setup, 4, photos=10, image_prob=0.5)
    assert first == examples.draw(np.random.default_rng(1), Setup, 4, photos=10, image_prob=0.5)
    assert len(first) == 6 and all(-1 <= shown < 10 for _, _, shown in first)


def concept_features(batch: int = 2) -> Features:
    features = random_features(batch)
    ids = torch.zeros(batch, 3, 3, dtype=torch.long)
    ids[:, 0, 0], ids[:, 1, :2] = 5, torch.tensor([6, 7])
    concepts = Concepts(ids, torch.tensor([[0.9, 0.4, 0.0]] * batch), torch.tensor([[SOURCE_IMAGENET, SOURCE_DETECTOR, 0]] * batch))
    return features._replace(concepts=concepts, has_image=torch.tensor([True, False][:batch] + [True] * (batch - 2)))


def test_concept_decoder_steps_match_teacher_forcing_and_concepts_matter():
    decoder = tiny_decoder("transformer", max_concepts=3)
    features, tokens = concept_features(), torch.tensor([[1, 5, 6, 7]] * 2)
    with torch.no_grad():
        full = decoder(features, tokens)
        state, steps = decoder.init_state(features), []
        for t in range(tokens.shape[1]):
            logits, state = decoder.step(tokens[:, t], state)
            steps.append(logits)
        assert torch.allclose(full, torch.stack(steps, dim=1), atol=1e-5)
        other = features._replace(concepts=features.concepts._replace(scores=torch.tensor([[0.1, 0.9, 0.0]] * 2)))
        assert not torch.allclose(full, decoder(other, tokens))


def test_banned_tokens_never_appear():
    decoder = tiny_decoder("transformer", max_concepts=3)
    features = concept_features()
    free = [h[0].tokens for h in beam_search(decoder, features, beam_size=3)]
    banned = torch.zeros(2, 20, dtype=torch.bool)
    banned[:, sorted({t for tokens in free for t in tokens})] = True
    for results in (greedy(decoder, features, banned=banned), beam_search(decoder, features, beam_size=3, banned=banned)):
        assert all(not banned[0, t] for hypotheses in results for t in hypotheses[0].tokens)


def test_model_with_concepts_round_trips(tmp_path, encoder):
    decoder = tiny_decoder("transformer", max_concepts=3, feature_dim=1280, grid_size=49)
    words = ["dog", "grass", PERSON_OUTPUT]
    detector = ConceptDetector(ConceptTable.load(), imagenet_head(encoder), words, 1280, hidden_dim=16).eval()
    config = {"name": "tiny", "encoder": "efficientnet-lite2", "preprocess": {}, "decoding": {},
              "concepts": {"detector_words": words, "hidden_dim": 16, "min_score": 0.1, "person_threshold": 0.5}}
    save_model(tmp_path / "m", decoder, Vocabulary([f"w{i}" for i in range(16)]), config, concept_detector=detector)
    loaded, _, loaded_config = load_model(tmp_path / "m")
    loaded_detector = load_concept_detector(tmp_path / "m", loaded_config, encoder)
    grid = torch.randn(2, 49, 1280)
    features = concept_features()._replace(grid=grid, pooled=grid.mean(dim=1))
    tokens = torch.tensor([[1, 5, 6]] * 2)
    with torch.no_grad():
        assert torch.equal(decoder(features, tokens), loaded(features, tokens))
    assert all(torch.equal(a, b) for a, b in zip(detector(grid, grid.mean(dim=1)), loaded_detector(grid, grid.mean(dim=1))))
    assert loaded_detector.person_by_class is None
    detector.person_by_class = torch.rand(1000)
    save_model(tmp_path / "m", decoder, Vocabulary([f"w{i}" for i in range(16)]), config, concept_detector=detector)
    loaded_detector = load_concept_detector(tmp_path / "m", loaded_config, encoder)
    assert torch.equal(loaded_detector.person_by_class, detector.person_by_class)
    assert torch.equal(detector(grid, grid.mean(dim=1))[1], loaded_detector(grid, grid.mean(dim=1))[1])
    (tmp_path / "m" / "concepts.safetensors").write_bytes(b"not tensors")
    with pytest.raises(CheckpointError, match="concepts.safetensors"):
        load_concept_detector(tmp_path / "m", loaded_config, encoder)


def test_concept_inputs_keep_the_most_probable_allowed_words():
    probabilities = torch.tensor([[0.9, 0.05, 0.6, 0.3]])
    word_ids = torch.tensor([[4, 0, 0], [5, 0, 0], [6, 7, 0], [8, 0, 0]])
    sources = torch.tensor([SOURCE_IMAGENET, SOURCE_IMAGENET, SOURCE_DETECTOR, SOURCE_DETECTOR])
    allowed = torch.tensor([[True, True, False, True]])
    concepts = concept_inputs(probabilities, word_ids, sources, allowed, max_concepts=3, min_score=0.1)
    assert concepts.ids[0, :, 0].tolist() == [4, 8, 0]  # 0.6 not allowed, 0.05 under the minimum
    assert concepts.sources[0].tolist() == [SOURCE_IMAGENET, SOURCE_DETECTOR, 0]


def test_shipped_tags_name_the_cat_and_the_coffee(shipped_captioner, example_photos):
    photos = {path.stem: path for path in example_photos}
    cat, coffee = shipped_captioner.tags([photos["chelsea"], photos["coffee"]])
    assert "cat" in [tag.word for tag in cat]
    assert {"coffee", "cup"} & {tag.word for tag in coffee}
    assert all(0 <= tag.score <= 1 for tag in cat + coffee)
    assert [tag.score for tag in cat] == sorted((tag.score for tag in cat), reverse=True)


def test_person_by_class_is_learned_where_photos_show_the_class_and_the_prior_elsewhere():
    classes = torch.zeros(40, 1000)
    classes[:20, 0] = 1.0  # 20 photos of class 0, all with people
    classes[20:, 1] = 1.0  # 20 photos of class 1, none with people
    has_person = torch.arange(40) < 20
    estimate = person_by_class(classes, has_person, strength=5.0, prior=0.1)
    assert estimate[0] == pytest.approx((20 + 0.5) / 25)
    assert estimate[1] == pytest.approx(0.5 / 25)
    assert estimate[2] == pytest.approx(0.1)  # never seen: ImageNet's photos mostly have nobody


def test_imagenet_evidence_lowers_the_detectors_person_probability(encoder):
    detector = ConceptDetector(ConceptTable.load(), imagenet_head(encoder), ["dog", PERSON_OUTPUT], 1280, hidden_dim=8).eval()
    classes = torch.zeros(2, 1000)
    classes[0, 5], classes[1, 6] = 1.0, 1.0
    detected = torch.tensor([[0.1, 0.9], [0.1, 0.9]])  # the detectors say "person" at 0.9 in both photos
    assert torch.allclose(detector.combine(classes, detected)[1], torch.tensor([0.9, 0.9]))
    detector.person_by_class = torch.zeros(1000)
    detector.person_by_class[5], detector.person_by_class[6] = 0.9, 0.01  # class 6 is seen without people
    person = detector.combine(classes, detected)[1]
    assert person[0] == pytest.approx(0.9) and person[1] == pytest.approx((0.9 * 0.01) ** 0.5)


def test_guarded_words_are_those_imagenet_finds_reliably():
    words = ["dog", "table", "baseball player", "zebra"]
    labels = torch.zeros(20, 4)
    labels[:, :3] = 1.0  # every photo names a dog, a table and a baseball player; none a zebra
    imagenet = torch.zeros(20, 4)
    imagenet[:, 0] = 0.5  # dogs always found
    imagenet[:10, 1] = 0.5  # tables in half of them
    imagenet[:, 2] = 0.5  # a phrase: cannot be banned word by word
    assert guarded_words(imagenet, labels, words, floor=0.02) == ["dog"]
    assert guarded_words(imagenet, labels, words, floor=0.02, min_photos=30) == []


def test_a_guarded_word_is_banned_where_imagenet_does_not_see_it(shipped_captioner, example_photos):
    from dataclasses import replace

    from captioner.api import Captioner
    from captioner.model.config import ConceptSettings

    config = replace(shipped_captioner.config, concepts=ConceptSettings(guarded_words=["dog", "cat"], guard_floor=0.02, person_threshold=0.0))
    detector = ConceptDetector(ConceptTable.load(), imagenet_head(shipped_captioner.encoder), [], 1280)
    captioner = Captioner(shipped_captioner.encoder, shipped_captioner.decoder, shipped_captioner.vocabulary, config, concept_detector=detector)
    photos = {path.stem: path for path in example_photos}
    banned = captioner.conditioning(captioner.encode([photos["chelsea"], photos["coffee"]])).banned
    stoi = captioner.vocabulary.stoi
    assert not banned[0, stoi["cat"]] and banned[1, stoi["cat"]]  # the cat photo may say cat, the coffee may not
    assert banned[0, stoi["dog"]] and banned[0, stoi["dogs"]] and banned[0, stoi["puppy"]] and banned[1, stoi["dog"]]
    assert "dog" not in captioner.generate(captioner.encode([photos["chelsea"]]))[0][0].text.split()
