"""Every dataset reader on tiny fixture files, and clear errors for the wrong layout."""
import json

import pytest

from captioner.data.datasets import hash_split, load_dataset
from captioner.errors import DatasetError
from conftest import COCO_MINI_DEV, FLICKR8K, needs_coco_mini_dev, needs_flickr8k


def write_flickr8k(folder):
    (folder / "images").mkdir(parents=True)
    (folder / "Flickr8k.token.txt").write_text("a.jpg#0\tA dog runs .\na.jpg#1\tA brown dog .\nb.jpg#0\tA cat sits .\nc.jpg#0\tTwo men .\n")
    (folder / "Flickr_8k.trainImages.txt").write_text("a.jpg\n")
    (folder / "Flickr_8k.devImages.txt").write_text("b.jpg\n")
    (folder / "Flickr_8k.testImages.txt").write_text("c.jpg\n")


def test_flickr8k_layout(tmp_path):
    write_flickr8k(tmp_path)
    dataset = load_dataset(tmp_path)
    assert dataset.image_root == tmp_path / "images"
    assert [(r.image, r.split, len(r.captions)) for r in dataset.records] == [("a.jpg", "train", 2), ("b.jpg", "dev", 1), ("c.jpg", "test", 1)]
    assert dataset.split("train")[0].captions == ["A dog runs .", "A brown dog ."]


def test_kaggle_captions_csv(tmp_path):
    (tmp_path / "Images").mkdir()
    (tmp_path / "captions.txt").write_text('image,caption\na.jpg,"A dog, running ."\na.jpg,A brown dog .\nb.jpg,A cat .\n')
    dataset = load_dataset(tmp_path)
    assert dataset.image_root == tmp_path / "Images"
    assert {r.image: r.captions for r in dataset.records} == {"a.jpg": ["A dog, running .", "A brown dog ."], "b.jpg": ["A cat ."]}
    assert all(r.split == hash_split(r.image) for r in dataset.records)


def test_karpathy_json(tmp_path):
    data = {"dataset": "flickr30k", "images": [
        {"filename": "1.jpg", "split": "train", "sentences": [{"raw": "A dog .", "tokens": ["a", "dog"]}]},
        {"filename": "2.jpg", "split": "restval", "sentences": [{"tokens": ["a", "cat"]}]},
        {"filename": "3.jpg", "split": "val", "sentences": [{"raw": "Men ."}]},
        {"filename": "4.jpg", "filepath": "val2014", "split": "test", "sentences": [{"raw": "A bus ."}]},
    ]}
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(data))
    dataset = load_dataset(tmp_path / "dataset_flickr30k.json")
    assert dataset.name == "flickr30k"
    assert [(r.image, r.split) for r in dataset.records] == [("1.jpg", "train"), ("2.jpg", "train"), ("3.jpg", "dev"), ("val2014/4.jpg", "test")]
    assert dataset.records[1].captions == ["a cat"]


def test_coco_captions_json(tmp_path):
    data = {"images": [{"id": 1, "file_name": "x.jpg"}, {"id": 2, "file_name": "y.jpg"}],
            "annotations": [{"image_id": 1, "caption": "A bus."}, {"image_id": 1, "caption": "A red bus."}, {"image_id": 2, "caption": "A plate."}]}
    (tmp_path / "captions_val2014.json").write_text(json.dumps(data))
    dataset = load_dataset(tmp_path / "captions_val2014.json")
    assert {r.image: (r.split, r.captions) for r in dataset.records} == {"x.jpg": ("dev", ["A bus.", "A red bus."]), "y.jpg": ("dev", ["A plate."])}


COCO_CAPTIONS = {"images": [{"id": 1, "file_name": "x.jpg"}, {"id": 2, "file_name": "y.jpg"}, {"id": 3, "file_name": "z.jpg"}],
                 "annotations": [{"image_id": 1, "caption": "A man on a bus."}, {"image_id": 1, "caption": "A red bus."},
                                 {"image_id": 2, "caption": "A plate."}, {"image_id": 3, "caption": "Two dogs."}]}
COCO_INSTANCES = {"categories": [{"id": 1, "name": "person"}, {"id": 6, "name": "bus"}, {"id": 18, "name": "dog"}],
                  "annotations": [{"image_id": 1, "category_id": 6}, {"image_id": 1, "category_id": 1}, {"image_id": 1, "category_id": 6},
                                  {"image_id": 3, "category_id": 18}, {"image_id": 99, "category_id": 1}]}


def write_coco_folder(folder, instances=True):
    (folder / "images").mkdir(parents=True)
    (folder / "captions.json").write_text(json.dumps(COCO_CAPTIONS))
    if instances:
        (folder / "instances.json").write_text(json.dumps(COCO_INSTANCES))


def test_coco_folder_with_object_labels(tmp_path):
    write_coco_folder(tmp_path / "mini-val")
    dataset = load_dataset(tmp_path / "mini-val")
    assert dataset.name == "mini-val" and dataset.image_root == tmp_path / "mini-val" / "images"
    assert [(r.image, r.split, r.captions, r.objects) for r in dataset.records] == [
        ("x.jpg", "dev", ["A man on a bus.", "A red bus."], ["bus", "person"]),  # deduplicated, sorted
        ("y.jpg", "dev", ["A plate."], []),
        ("z.jpg", "dev", ["Two dogs."], ["dog"]),
    ]
    assert load_dataset(tmp_path / "mini-val" / "captions.json").records == dataset.records


@pytest.mark.parametrize("name, split", [("coco-mini-dev", "dev"), ("val2017", "dev"), ("coco-train", "train"), ("photos", "test")])
def test_coco_folder_split_comes_from_its_name(tmp_path, name, split):
    write_coco_folder(tmp_path / name, instances=False)
    dataset = load_dataset(tmp_path / name)
    assert {r.split for r in dataset.records} == {split}
    assert all(r.objects == [] for r in dataset.records)


def test_coco_captions_file_picks_up_instances_beside_it(tmp_path):
    (tmp_path / "captions_val2014.json").write_text(json.dumps(COCO_CAPTIONS))
    (tmp_path / "instances_val2014.json").write_text(json.dumps(COCO_INSTANCES))
    (tmp_path / "instances_train2014.json").write_text("not read")
    dataset = load_dataset(tmp_path / "captions_val2014.json")
    assert {r.image: r.objects for r in dataset.records} == {"x.jpg": ["bus", "person"], "y.jpg": [], "z.jpg": ["dog"]}


@pytest.mark.parametrize("file, content, message", [
    ("captions.json", "{not json", r"captions\.json: not valid JSON"),
    ("captions.json", "[1, 2]", r"captions\.json: holds a JSON list, not a dataset"),
    ("captions.json", json.dumps({"images": [{"id": 1}], "annotations": []}), r"captions\.json: not a COCO caption file.*file_name"),
    ("captions.json", json.dumps({"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": [{"image_id": 1, "caption": 5}]}), r"captions\.json: every"),
    ("instances.json", "{", r"instances\.json: not valid JSON"),
    ("instances.json", json.dumps({"annotations": []}), r"instances\.json: not a COCO instance file.*categories"),
    ("instances.json", json.dumps({"categories": [{"id": 1, "name": "person"}], "annotations": [{"image_id": 1, "category_id": 7}]}),
     r"instances\.json: an annotation names category_id 7"),
])
def test_malformed_coco_folder_is_a_one_line_error_naming_the_file(tmp_path, file, content, message):
    write_coco_folder(tmp_path / "coco")
    (tmp_path / "coco" / file).write_text(content)
    with pytest.raises(DatasetError, match=message) as error:
        load_dataset(tmp_path / "coco")
    assert "\n" not in str(error.value)


def test_own_csv_with_splits_and_jsonl_without(tmp_path):
    (tmp_path / "mine.csv").write_text("image,caption,split\np1.png,My dog .,train\np2.png,My cat .,val\n")
    dataset = load_dataset(tmp_path / "mine.csv", images=tmp_path)
    assert [(r.image, r.split) for r in dataset.records] == [("p1.png", "train"), ("p2.png", "dev")]
    (tmp_path / "mine.jsonl").write_text('{"image": "p1.png", "caption": "My dog ."}\n{"image": "p1.png", "caption": "A dog ."}\n')
    dataset = load_dataset(tmp_path / "mine.jsonl")
    assert dataset.records[0].captions == ["My dog .", "A dog ."]


@pytest.mark.parametrize("content, message", [
    ("image,text\na.jpg,hi\n", "image' and 'caption"),
    ("", "image' and 'caption"),
])
def test_bad_csv_is_a_clear_error(tmp_path, content, message):
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path / "bad.csv")


def test_wrong_layouts(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset"):
        load_dataset(tmp_path / "missing")
    with pytest.raises(DatasetError, match="not a dataset folder"):
        load_dataset(tmp_path)
    (tmp_path / "dataset_x.json").write_text(json.dumps({"images": [{"file": "a"}]}))
    with pytest.raises(DatasetError, match="not the layout"):
        load_dataset(tmp_path / "dataset_x.json")
    write_flickr8k(tmp_path / "f")
    (tmp_path / "f" / "Flickr_8k.devImages.txt").unlink()
    with pytest.raises(DatasetError, match="missing Flickr_8k.devImages.txt"):
        load_dataset(tmp_path / "f")


def test_hash_split_is_fixed_and_roughly_90_5_5():
    names = [f"img{i}.jpg" for i in range(4000)]
    splits = [hash_split(n) for n in names]
    assert splits == [hash_split(n) for n in names]
    assert 0.03 < splits.count("test") / 4000 < 0.07 and 0.03 < splits.count("dev") / 4000 < 0.07


@needs_flickr8k
def test_real_flickr8k_splits():
    dataset = load_dataset(FLICKR8K)
    assert [len(dataset.split(s)) for s in ("train", "dev", "test")] == [6000, 1000, 1000]
    assert all(len(r.captions) == 5 for r in dataset.records)


@needs_coco_mini_dev
def test_real_coco_mini_dev():
    dataset = load_dataset(COCO_MINI_DEV)
    assert len(dataset.records) == 80 and {r.split for r in dataset.records} == {"dev"}
    assert all(len(r.captions) == 5 for r in dataset.records)
    assert sum(bool(r.objects) for r in dataset.records) > 70


def _coco_split_files(folder, photos_folder: str, names: list[str], first_id: int) -> dict:
    """A COCO caption file's content for `names` (two captions each), with their photos in `photos_folder/`."""
    from PIL import Image

    (folder.parent / photos_folder if folder.name == "annotations" else folder / photos_folder).mkdir(parents=True, exist_ok=True)
    images = [{"id": first_id + i, "file_name": name, "height": 8, "width": 8, "coco_url": "http://x", "license": 1} for i, name in enumerate(names)]
    for name in names:
        Image.new("RGB", (8, 8), (120, 60, 30)).save((folder.parent if folder.name == "annotations" else folder) / photos_folder / name)
    annotations = [{"id": 100 * image["id"] + k, "image_id": image["id"], "caption": f"Photo {image['id']} caption {k}."} for image in images for k in range(2)]
    return {"info": {}, "licenses": [], "images": images, "annotations": annotations}


def write_coco_official(folder, year: str = "2014"):
    """COCO's official layout in small: captions_{train,val}YEAR.json, instances for train only, photos in trainYEAR/ and valYEAR/."""
    folder.mkdir(parents=True, exist_ok=True)
    train_names = [f"COCO_train{year}_{i:012d}.jpg" for i in (9, 25)] if year == "2014" else [f"{i:012d}.jpg" for i in (9, 25)]
    val_names = [f"COCO_val{year}_{i:012d}.jpg" for i in (42,)] if year == "2014" else [f"{i:012d}.jpg" for i in (9,)]
    (folder / f"captions_train{year}.json").write_text(json.dumps(_coco_split_files(folder, f"train{year}", train_names, 1)))
    (folder / f"captions_val{year}.json").write_text(json.dumps(_coco_split_files(folder, f"val{year}", val_names, 50)))
    instances = {"images": [], "categories": [{"id": 18, "name": "dog", "supercategory": "animal"}],
                 "annotations": [{"id": 7, "image_id": 2, "category_id": 18, "segmentation": [[1.0, 2.0, 3.0, 4.0]], "bbox": [0, 0, 1, 1], "area": 1.0, "iscrowd": 0}]}
    (folder / f"instances_train{year}.json").write_text(json.dumps(instances))


def test_coco_official_two_files_give_train_and_dev(tmp_path):
    write_coco_official(tmp_path / "coco")
    dataset = load_dataset(tmp_path / "coco")
    assert dataset.name == "coco" and dataset.image_root == tmp_path / "coco"
    assert [(r.image, r.split, r.objects) for r in dataset.records] == [
        ("train2014/COCO_train2014_000000000009.jpg", "train", []),
        ("train2014/COCO_train2014_000000000025.jpg", "train", ["dog"]),  # image id 2 in instances_train2014.json
        ("val2014/COCO_val2014_000000000042.jpg", "dev", []),
    ]
    assert dataset.records[0].captions == ["Photo 1 caption 0.", "Photo 1 caption 1."]
    assert all(dataset.image_path(record).is_file() for record in dataset.records)
    # One caption file alone still gives one split, its photos found in the folder named after it.
    single = load_dataset(tmp_path / "coco" / "captions_val2014.json")
    assert [(r.image, r.split) for r in single.records] == [("COCO_val2014_000000000042.jpg", "dev")]
    assert all(single.image_path(record).is_file() for record in single.records)


def test_coco_2017_names_repeat_across_splits_and_stay_apart(tmp_path):
    write_coco_official(tmp_path / "coco", year="2017")
    dataset = load_dataset(tmp_path / "coco")
    assert [(r.image, r.split) for r in dataset.records] == [("train2017/000000000009.jpg", "train"), ("train2017/000000000025.jpg", "train"), ("val2017/000000000009.jpg", "dev")]


def test_coco_annotations_folder_and_photos_elsewhere(tmp_path):
    write_coco_official(tmp_path / "coco" / "annotations")  # as COCO's zip unpacks: annotations/ beside train2014/ and val2014/
    dataset = load_dataset(tmp_path / "coco" / "annotations")
    assert dataset.image_root == tmp_path / "coco" and all(dataset.image_path(record).is_file() for record in dataset.records)
    (tmp_path / "photos").mkdir()
    assert load_dataset(tmp_path / "coco" / "annotations", images=tmp_path / "photos").image_root == tmp_path / "photos"


def test_karpathy_coco_file_beside_the_official_ones_is_still_read(tmp_path):
    write_coco_official(tmp_path / "coco")
    karpathy = {"dataset": "coco", "images": [{"filepath": "val2014", "filename": "COCO_val2014_000000000042.jpg", "split": "restval", "sentences": [{"raw": "A dog ."}]}]}
    (tmp_path / "coco" / "dataset_coco.json").write_text(json.dumps(karpathy))
    dataset = load_dataset(tmp_path / "coco")
    assert [(r.image, r.split) for r in dataset.records] == [("val2014/COCO_val2014_000000000042.jpg", "train")]


@pytest.mark.parametrize("name, content", [
    ("captions_val2014.json", {"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": [{"image_id": 1, "caption": "A bus."}]}),
    ("dataset_coco.json", {"images": [{"filename": "x.jpg", "filepath": "val2014", "split": "val", "sentences": [{"raw": "A bus."}]}]}),
])
def test_each_json_file_is_parsed_once(tmp_path, monkeypatch, name, content):
    (tmp_path / name).write_text(json.dumps(content))
    parsed = []
    loads = json.loads
    monkeypatch.setattr(json, "loads", lambda text, **options: parsed.append(len(text)) or loads(text, **options))
    dataset = load_dataset(tmp_path / name)
    assert len(dataset.records) == 1 and len(parsed) == 1


def test_json_readers_keep_only_the_fields_they_use(tmp_path):
    write_coco_official(tmp_path / "coco")
    from captioner.data.datasets import INSTANCE_FIELDS, _read_json

    instances = _read_json(tmp_path / "coco" / "instances_train2014.json", INSTANCE_FIELDS)
    assert instances == {"categories": [{"id": 18, "name": "dog"}], "annotations": [{"id": 7, "image_id": 2, "category_id": 18}]}
