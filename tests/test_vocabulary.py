from captioner.model.vocabulary import Vocabulary, clean_caption, tokenize


def test_clean_caption():
    assert clean_caption("A dog , running through the GRASS .") == "a dog running through the grass"
    assert clean_caption("  Two   men's hats!  ") == "two men's hats"
    assert tokenize("A red-and-white ball .") == ["a", "red", "and", "white", "ball"]


def test_build_respects_min_count_and_specials():
    vocabulary = Vocabulary.build(["a dog runs", "a dog sits", "a cat"], min_count=2)
    assert vocabulary.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert vocabulary.itos[4:] == ["a", "dog"]
    assert (vocabulary.pad_id, vocabulary.bos_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2, 3)


def test_encode_decode_round_trip_and_unknown_words():
    vocabulary = Vocabulary(["a", "dog", "runs"])
    ids = vocabulary.encode("A dog flies .")
    assert ids == [4, 5, vocabulary.unk_id]
    assert vocabulary.decode(ids) == "a dog"  # <unk> is not printed
    assert vocabulary.decode([4, 5, 6, vocabulary.eos_id, 4]) == "a dog runs"  # stops at <eos>


def test_json_round_trip(tmp_path):
    vocabulary = Vocabulary.build(["a dog runs", "a dog sits"], min_count=1)
    vocabulary.save(tmp_path / "vocabulary.json")
    assert Vocabulary.load(tmp_path / "vocabulary.json") == vocabulary
