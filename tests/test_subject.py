"""Saying what the photo shows: word forms, the subject rule and its open vocabulary (a concept
word no training caption contains, written through a known relative), the colour rule, and the
bundled photos' captions naming their subject."""
import torch

from captioner.generation.subject import SubjectRule, render
from captioner.generation.word_forms import fix_articles, indefinite_article, names_any, plural
from captioner.model.concepts import ConceptTable
from captioner.model.config import SubjectSettings
from captioner.model.decoders import Features
from captioner.model.vocabulary import Vocabulary


def test_plurals_and_articles():
    assert [plural(w) for w in ("squirrel", "butterfly", "box", "cargo ship", "man", "fish", "bus", "day")] == [
        "squirrels", "butterflies", "boxes", "cargo ships", "men", "fish", "buses", "days"]
    assert [indefinite_article(w) for w in ("axolotl", "espresso", "unicorn", "hour", "cat", "umbrella", "one")] == ["an", "an", "a", "an", "a", "an", "a"]
    assert fix_articles("a axolotl and an cat".split()) == "an axolotl and a cat".split()
    assert names_any("two cargo ships at sea".split(), ["cargo ship"]) and not names_any("a ship".split(), ["cargo ship"])


def small_rule(words: list[str], **settings) -> SubjectRule:
    """The real concept table and relatives over a small caption vocabulary."""
    return SubjectRule(ConceptTable.load(), Vocabulary(words), SubjectSettings(**settings))


def probabilities_for(rule: SubjectRule, scores: dict[str, float]) -> torch.Tensor:
    row = torch.zeros(1, len(rule.words))
    for word, score in scores.items():
        row[0, rule.words.index(word)] = score
    return row


def test_the_most_specific_confident_word_is_the_subject():
    rule = small_rule(["a", "squirrel", "butterfly", "insect", "animal", "on", "branch"])
    subjects = rule(probabilities_for(rule, {"butterfly": 0.96, "insect": 0.98}), torch.ones(1, len(rule.words), dtype=torch.bool), torch.zeros(1, 11, dtype=torch.bool))
    assert subjects[0].word == "butterfly" and subjects[0].writing.tokens == (rule.vocabulary.stoi["butterfly"],)
    none = rule(probabilities_for(rule, {"butterfly": 0.3}), torch.ones(1, len(rule.words), dtype=torch.bool), torch.zeros(1, 11, dtype=torch.bool))
    assert none == [None]


def test_a_word_no_caption_contains_is_written_through_a_known_relative():
    vocabulary_words = ["a", "an", "animal", "animals", "on", "the", "rock", "sitting"]
    rule = small_rule(vocabulary_words)
    assert "axolotl" not in rule.vocabulary.stoi
    subject = rule(probabilities_for(rule, {"axolotl": 0.9, "salamander": 0.95}), torch.ones(1, len(rule.words), dtype=torch.bool), torch.zeros(1, 12, dtype=torch.bool))[0]
    ids = rule.vocabulary.stoi
    assert subject.word == "axolotl" and set(subject.writing.tokens) == {ids["animal"], ids["animals"]}
    caption = [ids["a"], ids["animal"], ids["sitting"], ids["on"], ids["a"], ids["rock"]]
    assert render(rule.vocabulary, caption, subject.writing.renames) == "an axolotl sitting on a rock"
    two = [ids["animals"], ids["on"], ids["a"], ids["rock"]]
    assert render(rule.vocabulary, two, subject.writing.renames) == "axolotls on a rock"
    ids["two"] = None
    vocabulary = Vocabulary(vocabulary_words + ["two", "teddy", "bear"])
    assert render(vocabulary, [vocabulary.stoi[w] for w in ("two", "animal")], {vocabulary.stoi["animal"]: "axolotl"}) == "two axolotls"
    teddy = [vocabulary.stoi[w] for w in ("a", "teddy", "bear")]
    assert render(vocabulary, teddy, {vocabulary.stoi["bear"]: "polar bear"}, frozenset({"teddy bear"})) == "a polar bear"


def test_a_rare_word_is_written_through_its_relative_and_a_phrase_is_not_said_twice():
    rule = small_rule(["a", "ship", "ships", "baseball", "player", "in", "the", "water", "cargo"], max_rank=4)
    ids = rule.vocabulary.stoi
    assert rule.writings["cargo ship"][0].renames == {ids["ship"]: "cargo ship", ids["ships"]: "cargo ships"}
    assert rule.writings["ship"][0].renames == {}  # a frequent word is written as itself
    renames = {ids["player"]: "baseball player"}
    assert render(rule.vocabulary, [ids["a"], ids["baseball"], ids["player"]], renames) == "a baseball player"


def test_banned_words_are_never_required():
    rule = small_rule(["a", "cat", "cats", "dog"])
    banned = torch.zeros(1, 8, dtype=torch.bool)
    banned[0, rule.vocabulary.stoi["cat"]] = True
    subject = rule(probabilities_for(rule, {"cat": 0.99}), torch.ones(1, len(rule.words), dtype=torch.bool), banned)[0]
    assert subject.writing.tokens == (rule.vocabulary.stoi["cats"],)


def test_the_shipped_model_names_the_cat_and_the_coffee(shipped_captioner, example_photos):
    photos = {path.stem: path for path in example_photos}
    captions = shipped_captioner.caption([photos["chelsea"], photos["coffee"]], style="plain")
    assert "cat" in captions[0].text.split()
    assert {"coffee", "cup"} & set(captions[1].text.split())


def test_the_shipped_model_writes_a_word_it_never_learned_where_the_concepts_name_it(shipped_captioner, example_photos, monkeypatch):
    """An axolotl: no training caption has the word; the tags say it; the caption says it, with 'an'."""
    assert "axolotl" not in shipped_captioner.vocabulary.stoi
    detect = shipped_captioner.detect
    column = shipped_captioner.concept_detector.words.index("axolotl")

    def sees_an_axolotl(features):
        probabilities, allowed = detect(features)
        probabilities = probabilities.clone()
        probabilities[:, : len(shipped_captioner.concept_detector.table.words)] = 0.0  # ImageNet sees nothing else
        probabilities[:, column] = 0.97
        return probabilities, allowed

    monkeypatch.setattr(shipped_captioner, "detect", sees_an_axolotl)
    photos = {path.stem: path for path in example_photos}
    text = shipped_captioner.caption(photos["chelsea"], style="plain").text
    assert "axolotl" in text.split(), text
    words = text.split()
    position = words.index("axolotl")
    assert position == 0 or words[position - 1] != "a"  # never "a axolotl"


def test_a_colour_photo_is_never_called_black_and_white(shipped_captioner, example_photos):
    photos = {path.stem: path for path in example_photos}
    features = shipped_captioner.encode([photos["coffee"], photos["coffee"]])
    assert features.saturation[0] > 25
    grey = features._replace(saturation=torch.tensor([0.0, 80.0]))
    given = shipped_captioner.conditioning(grey)
    assert given.banned_phrases[0] == [] and len(given.banned_phrases[1]) == 2


def test_clothes_need_a_person_and_a_guarded_word_leaves_its_category_alone(shipped_captioner, example_photos):
    photos = {path.stem: path for path in example_photos}
    banned = shipped_captioner.conditioning(shipped_captioner.encode([photos["chelsea"]])).banned[0]
    stoi = shipped_captioner.vocabulary.stoi
    assert banned[stoi["man"]] and banned[stoi["shirt"]] and banned[stoi["wearing"]]  # a cat: no person, no clothes
    assert banned[stoi["canoe"]] and not banned[stoi["boat"]] and not banned[stoi["ship"]]  # "boat" has evidence of its own


def test_on_an_animal_photo_only_the_animals_imagenet_sees_may_be_named(shipped_captioner):
    from captioner.generation.rules import Evidence

    words = shipped_captioner.concept_detector.words
    probabilities = torch.zeros(1, len(words))
    probabilities[0, words.index("squirrel")] = 0.95
    grid = torch.zeros(1, 49, 1280)
    evidence = Evidence(Features(grid, grid.mean(dim=1)), probabilities, torch.ones(1, len(words), dtype=torch.bool), torch.tensor([0.95]))
    decided = shipped_captioner.rules(evidence)
    stoi = shipped_captioner.vocabulary.stoi
    assert decided.banned[0, stoi["cat"]] and decided.banned[0, stoi["giraffe"]] and not decided.banned[0, stoi["squirrel"]]
    assert decided.subjects[0].word == "squirrel" and decided.banned_phrases == [[]]  # colour unknown: no colour rule


def test_a_broken_subject_setting_is_refused_in_one_line(tmp_path, capsys, example_photos):
    import json
    import shutil

    from helpers import one_line_error

    from captioner.api import pretrained_path

    model = tmp_path / "model"
    shutil.copytree(pretrained_path(), model)
    config = json.loads((model / "config.json").read_text())
    config["subject"] = {**config["subject"], "threshold": "high"}
    (model / "config.json").write_text(json.dumps(config))
    error = one_line_error(capsys, ["caption", "--model", str(model), str(example_photos[0])])
    assert "subject: threshold must be a number" in error
    config["subject"] = {"unknown_knob": 1}
    (model / "config.json").write_text(json.dumps(config))
    assert "unknown settings unknown_knob" in one_line_error(capsys, ["caption", "--model", str(model), str(example_photos[0])])
