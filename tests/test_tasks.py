"""tv_lens.tasks: the six shipped tasks, their splits, the loaders and their errors."""

from __future__ import annotations

import csv
import json
import re
import zipfile
from pathlib import Path

import pytest

import tv_lens.tasks as T
from tv_lens.errors import TaskError, TvLensError

# The counts written in tv_lens/tasks/data/*.json: (items, items with an image).
COUNTS = {
    "country-capital": (196, 195),
    "country-currency": (195, 194),
    "animal-latin": (229, 55),
    "animal-young": (213, 79),
    "food-color": (158, 35),
    "food-flavor": (170, 50),
}
TABLE_1 = {
    "country-capital": ("The capital city of the country:", "capital"),
    "country-currency": ("The last word of the official currency of the country:", "currency"),
    "animal-latin": ("The scientific name of the animal's species in latin:", "species"),
    "animal-young": ("The term for the baby of the animal:", "baby"),
    "food-color": ("The color of the food:", "color"),
    "food-flavor": ("The flavor descriptor of the food:", "flavor"),
}
FLAG_KEY = re.compile(r"^flags/[a-z]{2}\.png$")
EMOJI_KEY = re.compile(r"^emoji/u[0-9a-f]{4,5}(_[0-9a-f]{4,5})*\.png$")
BASIC_COLORS = {"red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray"}


def raw(name: str) -> dict:
    return json.loads((T.DATA_DIR / f"{name}.json").read_text(encoding="utf-8"))


def png(path: Path, color=(200, 30, 30, 255), mode="RGBA") -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 6), color).save(path)
    return path


# ---------------------------------------------------------------------------------------------- shipped tasks
def test_list_tasks_is_the_papers_six_in_order_then_the_reference_suite():
    names = T.list_tasks()
    assert names[:6] == list(T.PAPER_TASKS) == list(COUNTS)
    assert names[6:] == sorted(names[6:]) and len(names[6:]) >= 3


def test_reference_suite_files_are_exactly_what_the_selection_script_writes():
    """The reference suite (tasks chosen for SmolLM2 by tv_lens.reference.choose_tasks) is generated data: each file
    must be reproducible from tv_lens.reference.candidates over the trained entities, and be one it accepted."""
    import pandas as pd

    from tv_lens.reference.candidates import CANDIDATES
    from tv_lens.reference.choose_tasks import render_document, task_document

    selection = pd.read_csv(Path(__file__).resolve().parents[1] / "results" / "selection.csv")
    accepted = set(selection.loc[selection["accepted"], "task"])
    for name in T.list_tasks()[6:]:
        assert name in CANDIDATES and name in accepted, name
        assert (T.DATA_DIR / f"{name}.json").read_text(encoding="utf-8") == render_document(task_document(name))
        task = T.load(name)
        assert task.n_with_images == len(task) and len(task.val) == 30 and len(task.test) == 100


@pytest.mark.parametrize("name", list(COUNTS))
def test_shipped_task_file(name):
    data = raw(name)
    assert data["name"] == name
    assert (data["instruction"], data["task_word"]) == TABLE_1[name]
    assert data["source"] == "written by the tv_lens authors (facts)"
    items = data["items"]
    n, n_img = COUNTS[name]
    assert len(items) >= n and sum(it["image"] is not None for it in items) >= n_img
    inputs = [it["input"] for it in items]
    assert len(set(inputs)) == len(inputs), "duplicate inputs"
    for it in items:
        assert set(it) == {"input", "output", "image"}
        assert it["input"] == it["input"].strip() and it["input"]
        assert it["output"] == it["output"].strip() and it["output"]
        key = it["image"]
        assert key is None or (FLAG_KEY if name.startswith("country") else EMOJI_KEY).match(key), key
    # items with an image come first
    flags = [it["image"] is not None for it in items]
    assert flags == sorted(flags, reverse=True)


@pytest.mark.parametrize("name", list(COUNTS))
def test_shipped_task_loads_with_disjoint_sized_splits(name):
    task = T.load(name)
    n, n_img = COUNTS[name]
    assert (len(task), task.n_with_images) == (n, n_img)
    assert (task.name, task.instruction, task.task_word) == (name, *TABLE_1[name])
    assert len(task.val) == 30 and len(task.test) == 100 and len(task.train) == n - 130
    val, test, train = set(task.val), set(task.test), set(task.train)
    assert not (val & test) and not (val & train) and not (test & train)
    assert val | test | train == set(task.items)
    # val and test prefer items with images
    imaged = {it for it in task.items if it.has_image}
    if len(imaged) >= 130:
        assert all(it.has_image for it in task.val + task.test)
    else:
        assert imaged <= val | test
        assert sum(it.has_image for it in task.val) >= 1 and sum(it.has_image for it in task.test) >= 1
    # image paths are absolute and under the shipped image folder
    for it, row in zip(task.items, raw(name)["items"]):
        assert (it.input, it.output) == (row["input"], row["output"])
        if row["image"] is None:
            assert it.image is None
        else:
            assert Path(it.image).is_absolute() and Path(it.image) == T.IMAGES_DIR / row["image"]


@pytest.mark.parametrize("name", ["country-capital", "food-color"])
def test_splits_deterministic_per_seed_and_different_across_seeds(name):
    a, b = T.load(name, seed=3), T.load(name, seed=3)
    assert (a.val, a.test, a.train) == (b.val, b.test, b.train)
    c = T.load(name, seed=4)
    assert a.val != c.val and a.test != c.test
    assert T.load(name).seed == 0


def test_image_keys_are_consistent_across_tasks():
    """One image key shows one entity; animals / foods that share an emoji share their name across tasks."""
    by_key: dict[str, str] = {}
    by_name: dict[str, str] = {}
    for name in COUNTS:
        for it in raw(name)["items"]:
            if it["image"] is None:
                continue
            assert by_key.setdefault(it["image"], it["input"]) == it["input"], it
            assert by_name.setdefault(it["input"], it["image"]) == it["image"], it
    latin = {it["input"] for it in raw("animal-latin")["items"] if it["image"]}
    young = {it["input"] for it in raw("animal-young")["items"] if it["image"]}
    assert latin - young <= {"Tyrannosaurus", "Common Octopus"}
    assert {"Lion", "Koala", "Gray Wolf", "Polar Bear"} <= latin & young


def test_label_conventions():
    for it in raw("country-currency")["items"]:
        assert re.fullmatch(r"[A-Z][a-z']+", it["output"]), it
    for it in raw("animal-latin")["items"]:
        assert re.fullmatch(r"[A-Z][a-z]+ [a-z]+", it["output"]), it
    for it in raw("animal-young")["items"]:
        assert re.fullmatch(r"[a-z]+", it["output"]), it
    for it in raw("food-color")["items"]:
        assert it["output"] in BASIC_COLORS, it
    for it in raw("food-flavor")["items"]:
        assert re.fullmatch(r"[a-z]+", it["output"]), it
    for name in COUNTS:  # names are Title Case ("Gray Wolf", "Persimmon")
        for it in raw(name)["items"]:
            assert it["input"][0].isupper(), it


@pytest.mark.parametrize(
    "name, query, label",
    [
        ("country-capital", "France", "Paris"),
        ("country-capital", "Greece", "Athens"),
        ("country-capital", "Japan", "Tokyo"),
        ("country-capital", "Australia", "Canberra"),
        ("country-capital", "Canada", "Ottawa"),
        ("country-currency", "Japan", "Yen"),
        ("country-currency", "Italy", "Euro"),
        ("country-currency", "United States", "Dollar"),
        ("country-currency", "United Kingdom", "Pound"),
        ("country-currency", "India", "Rupee"),
        ("country-currency", "Switzerland", "Franc"),
        ("animal-latin", "Gray Wolf", "Canis lupus"),
        ("animal-latin", "Lion", "Panthera leo"),
        ("animal-latin", "Human", "Homo sapiens"),
        ("animal-young", "Common Dolphin", "calf"),
        ("animal-young", "Koala", "joey"),
        ("animal-young", "Cat", "kitten"),
        ("animal-young", "Mute Swan", "cygnet"),
        ("food-color", "Persimmon", "orange"),
        ("food-color", "Banana", "yellow"),
        ("food-color", "Blueberry", "blue"),
        ("food-flavor", "Strawberry", "sweet"),
        ("food-flavor", "Lemon", "sour"),
        ("food-flavor", "Chili Pepper", "spicy"),
    ],
)
def test_fact_spot_checks(name, query, label):
    assert dict(T.load(name).to_pairs())[query] == label


def test_flag_and_emoji_images_of_some_entities():
    cap = {it.input: it for it in T.load("country-capital")}
    assert cap["France"].image.endswith("flags/fr.png") and cap["Japan"].image.endswith("flags/jp.png")
    assert cap["United Kingdom"].image.endswith("flags/gb.png")
    young = {it.input: it for it in T.load("animal-young")}
    assert young["Dog"].image.endswith("emoji/u1f415.png")
    assert young["Polar Bear"].image.endswith("emoji/u1f43b_200d_2744.png")
    flavor = {it.input: it for it in T.load("food-flavor")}
    assert flavor["Banana"].image.endswith("emoji/u1f34c.png")


@pytest.mark.skipif(not T.IMAGES_DIR.is_dir(), reason="shipped images not built")
def test_shipped_images_exist_and_open():
    for name in COUNTS:
        for it in T.load(name).with_images().items:
            assert it.image_exists(), it.image
    assert T.load("country-capital").items[0].open_image().mode == "RGB"


def test_with_images_keeps_splits_consistent():
    task = T.load("country-capital")  # enough imaged train items: no re-split (see tests/test_protocol.py)
    img = task.with_images()
    assert all(it.has_image for it in img.items) and len(img) == task.n_with_images
    for s in ("val", "test", "train"):
        assert set(img.split(s)) == {it for it in task.split(s) if it.has_image}
    assert not (set(img.val) & set(img.test))
    assert len(img.val) > 0 and len(img.test) > len(img.val) and len(img.train) >= 5


def test_image_resplit_warns_on_user_data_only():
    import dataclasses
    import warnings

    shipped = T.load("animal-latin")                    # its images all fell into val/test: with_images re-splits
    assert shipped.shipped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = shipped.with_images()
    assert not [w for w in caught if "re-split" in str(w.message)]
    assert len(img.train) >= 5 and not (set(img.train) & (set(img.val) | set(img.test)))
    user = dataclasses.replace(shipped, shipped=False)   # the same items as a user's own task
    with pytest.warns(T.TaskWarning, match="re-split"):
        again = user.with_images()
    assert (again.val, again.test, again.train) == (img.val, img.test, img.train)   # same split, only the warning
    assert not T.from_pairs([("a", "b"), ("c", "d"), ("e", "f")], n_val=1, n_test=1).shipped


def test_with_images_existing_filters_on_files(tmp_path):
    png(tmp_path / "flags" / "fr.png")
    task = T.load("country-capital", image_root=tmp_path)
    assert task.items[0].image.startswith(str(tmp_path))
    with pytest.warns(T.TaskWarning, match="no items with images"):
        only = task.with_images(existing=True)
    assert [it.input for it in only.items] == ["France"]
    with pytest.raises(TaskError, match="no item has an image"):
        T.from_pairs([("a", "b"), ("c", "d")], n_val=1, n_test=1).with_images()


def test_repr_and_html():
    task = T.load("country-capital")
    r = repr(task)
    assert "country-capital" in r and "196 items" in r and "195 with images" in r and "val 30" in r
    h = task._repr_html_()
    assert "<table>" in h and "country-capital" in h and "The capital city of the country:" in h


def test_other_split_views():
    task = T.load("animal-young")
    assert task.split("all") == task.items and task.splits["test"] is task.test
    assert "calf" in task.labels and task.labels == sorted(task.labels)
    with pytest.raises(TaskError, match="unknown split"):
        task.split("dev")
    re_ = task.resplit(n_val=10, n_test=20, seed=1)
    assert (len(re_.val), len(re_.test), len(re_.train)) == (10, 20, len(task) - 30)


# ---------------------------------------------------------------------------------------------------- images
def test_open_image(tmp_path):
    p = png(tmp_path / "a.png", color=(10, 20, 30, 0))  # fully transparent -> white
    img = T.TaskItem("A", "b", str(p)).open_image()
    assert img.mode == "RGB" and img.size == (8, 6) and img.getpixel((0, 0)) == (255, 255, 255)
    p2 = png(tmp_path / "b.png", color=(10, 20, 30), mode="RGB")
    assert T.TaskItem("B", "c", str(p2)).open_image().getpixel((1, 1)) == (10, 20, 30)


def test_open_image_errors(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        T.TaskItem("A", "b", str(missing)).open_image()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(TaskError, match="bad.png"):
        T.TaskItem("A", "b", str(bad)).open_image()
    with pytest.raises(TaskError, match="no image"):
        T.TaskItem("A", "b", None).open_image()


# --------------------------------------------------------------------------------------------------- loaders
def pairs(n=50):
    return [(f"Country{i}", f"City{i}") for i in range(n)]


def test_from_pairs_round_trip():
    task = T.from_pairs(pairs(), name="caps", instruction="Capital:", task_word="capital", n_val=10, n_test=20)
    assert task.to_pairs() == pairs() and (task.name, task.instruction, task.task_word) == ("caps", "Capital:", "capital")
    assert (len(task.val), len(task.test), len(task.train)) == (10, 20, 20)
    t3 = T.from_pairs([("x", "y", "img/x.png"), {"input": "z", "output": "w"}, T.TaskItem("u", "v")],
                      image_root="/data", n_val=1, n_test=1)
    assert t3.items[0].image == str(Path("/data/img/x.png")) and t3.items[1].image is None


def test_json_round_trip(tmp_path):
    png(tmp_path / "imgs" / "x0.png")
    rows = [(f"X{i}", f"Y{i}", str(tmp_path / "imgs" / f"x{i}.png") if i < 5 else None) for i in range(40)]
    task = T.from_pairs(rows, name="mine", instruction="Do it:", task_word="it", n_val=5, n_test=10)
    path = T.save_json(task, tmp_path / "mine.json")
    doc = json.loads(path.read_text())
    assert doc["items"][0]["image"] == "imgs/x0.png"  # written relative to the file
    back = T.from_json(path, n_val=5, n_test=10)
    assert back.items == task.items and (back.val, back.test, back.train) == (task.val, task.test, task.train)
    assert (back.name, back.instruction, back.task_word) == ("mine", "Do it:", "it")
    assert back.items[0].open_image().size == (8, 6)
    # load() dispatches on the suffix, and the folder form finds the only file
    assert T.load(path, n_val=5, n_test=10).items == task.items
    assert T.load(str(tmp_path), n_val=5, n_test=10).items == task.items
    # a bare list and the paper's {"data": [...]} are accepted too
    (tmp_path / "bare.json").write_text(json.dumps([{"input": "a", "output": "b"}, {"input": "c", "output": "d"}]))
    assert T.from_json(tmp_path / "bare.json", n_val=1, n_test=1).to_pairs() == [("a", "b"), ("c", "d")]
    (tmp_path / "d.json").write_text(json.dumps({"data": [{"input": "a", "output": "b"}, {"input": "c", "output": "d"}]}))
    assert len(T.from_json(tmp_path / "d.json", n_val=1, n_test=1)) == 2


def test_shipped_round_trips_through_json(tmp_path):
    task = T.load("animal-young")
    T.save_json(task, tmp_path / "animal-young.json", relative_to=T.IMAGES_DIR)
    back = T.from_json(tmp_path / "animal-young.json", image_root=T.IMAGES_DIR)
    assert back.items == task.items and back.val == task.val and back.instruction == task.instruction


def test_csv_round_trip(tmp_path):
    png(tmp_path / "fr.png")
    path = tmp_path / "capitals.csv"
    with path.open("w", newline="", encoding="utf-8-sig") as fh:  # BOM, as Excel writes it
        w = csv.writer(fh)
        w.writerow(["input", "output", "image", "comment"])
        w.writerow(["France", "Paris", "fr.png", "x"])
        for i in range(29):
            w.writerow([f"C{i}", f"Cap {i}", "", ""])
    task = T.from_csv(path, instruction="The capital city of the country:", n_val=5, n_test=10)
    assert task.name == "capitals" and len(task) == 30 and task.items[0] == T.TaskItem("France", "Paris",
                                                                                        str(tmp_path / "fr.png"))
    assert task.items[1].image is None and task.items[1].output == "Cap 0"
    assert T.load(str(path), n_val=5, n_test=10).items == task.items
    assert task.items[0] in task.val + task.test  # the one imaged item is evaluated


def test_csv_named_like_a_shipped_task_gets_its_instruction(tmp_path):
    path = tmp_path / "country-capital.csv"
    path.write_text("input,output\nFrance,Paris\nItaly,Rome\n")
    task = T.from_csv(path, n_val=1, n_test=1)
    assert (task.instruction, task.task_word) == TABLE_1["country-capital"]


def write_paper_folder(root: Path, task="country-capital", n_val=6, n_test=8) -> Path:
    ann, imgs = root / "annotations", root / "images"
    rows = [{"input": f"Land{i}", "output": f"Town{i}", "image": f"img{i}.png"} for i in range(n_val + n_test)]
    for r in rows:
        png(imgs / r["image"])
    ann.mkdir(parents=True, exist_ok=True)
    (ann / f"{task}_val.json").write_text(json.dumps(rows[:n_val]))
    (ann / f"{task}_test.json").write_text(json.dumps({"data": rows[n_val:]}))
    return root


def test_from_paper_folder(tmp_path):
    root = write_paper_folder(tmp_path / "paper")
    task = T.from_paper_folder(root, "country-capital")
    assert [it.input for it in task.val] == [f"Land{i}" for i in range(6)]
    assert [it.input for it in task.test] == [f"Land{i}" for i in range(6, 14)]
    assert task.train == [] and task.instruction == TABLE_1["country-capital"][0]
    assert all(Path(it.image).is_file() for it in task.items)
    assert task.val[0].open_image().size == (8, 6)
    # the annotation folder itself works, the task is inferred when there is one, and load() dispatches
    assert T.from_paper_folder(root / "annotations").items == task.items
    assert T.load(root, task="country-capital").items == task.items
    assert T.load(root).test == task.test


def test_fetch_paper_data_from_local_folder_and_zip_mirror(tmp_path):
    root = write_paper_folder(tmp_path / "extracted", task="food-color")
    task = T.fetch_paper_data("food-color", repo_id=str(root))
    assert len(task.val) == 6 and len(task.test) == 8 and task.task_word == "color"
    # a local mirror of the hub repository: data/annotations.zip + data/images.zip
    mirror = tmp_path / "mirror" / "data"
    mirror.mkdir(parents=True)
    with zipfile.ZipFile(mirror / "annotations.zip", "w") as zf:
        for p in (root / "annotations").iterdir():
            zf.write(p, f"annotations/{p.name}")
    with zipfile.ZipFile(mirror / "images.zip", "w") as zf:
        for p in (root / "images").iterdir():
            zf.write(p, f"images/{p.name}")
    got = T.fetch_paper_data("food-color", cache_dir=tmp_path / "cache", repo_id=str(tmp_path / "mirror"))
    assert [(it.input, it.output) for it in got.items] == [(it.input, it.output) for it in task.items]
    assert all(str(tmp_path / "cache") in it.image and Path(it.image).is_file() for it in got.items)
    again = T.fetch_paper_data("food-color", cache_dir=tmp_path / "cache", repo_id=str(tmp_path / "mirror"))
    assert again.items == got.items
    with pytest.raises(TaskError, match="not in the paper data"):
        T.fetch_paper_data("animal-young", cache_dir=tmp_path / "cache", repo_id=str(tmp_path / "mirror"))


def test_fetch_refuses_zip_slip(tmp_path):
    mirror = tmp_path / "evil"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / "annotations.zip", "w") as zf:
        zf.writestr("../../outside.json", "[]")
    with pytest.raises(TaskError, match="outside"):
        T.fetch_paper_data("country-capital", cache_dir=tmp_path / "cache", repo_id=str(mirror))
    assert not (tmp_path / "outside.json").exists()


# ---------------------------------------------------------------------------------------------------- errors
def test_task_error_is_a_tv_lens_value_error():
    assert issubclass(TaskError, TvLensError) and issubclass(TaskError, ValueError)
    assert T.TaskError is TaskError


def test_unknown_task_lists_known_ones():
    with pytest.raises(TaskError) as ei:
        T.load("country-capitol")
    msg = str(ei.value)
    assert "country-capitol" in msg and "Did you mean 'country-capital'" in msg
    assert all(n in msg for n in COUNTS)
    assert T.load("Country_Capital").name == "country-capital"  # forgiving about case and separators


def test_missing_path():
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        T.load("nothere.json")
    with pytest.raises(FileNotFoundError):
        T.from_csv("/definitely/not/here.csv")


def test_empty_task_and_empty_labels(tmp_path):
    with pytest.raises(TaskError, match="no items"):
        T.from_pairs([])
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(TaskError, match="no items"):
        T.from_json(tmp_path / "empty.json")
    with pytest.raises(TaskError, match=r"item 1: empty or whitespace-only label"):
        T.from_pairs([("a", "b"), ("c", "   "), ("e", "f")], n_val=1, n_test=1)
    with pytest.raises(TaskError, match="empty or whitespace-only input"):
        T.from_pairs([("", "b"), ("c", "d")], n_val=1, n_test=1)
    with pytest.raises(TaskError, match="must be a string"):
        T.from_pairs([("a", None), ("c", "d")], n_val=1, n_test=1)


def test_malformed_json(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"items": [{"input": "a", "output": "b"},')
    with pytest.raises(TaskError, match=r"broken\.json: not valid JSON \(line 1"):
        T.from_json(bad)
    p = tmp_path / "rows.json"
    p.write_text(json.dumps({"items": [{"input": "a", "output": "b"}, {"input": "c"}]}))
    with pytest.raises(TaskError, match=r"rows\.json: item 1: missing 'output'"):
        T.from_json(p, n_val=1, n_test=1)
    p.write_text(json.dumps({"items": [{"input": "a", "output": "b"}, "c"]}))
    with pytest.raises(TaskError, match=r"rows\.json: item 1"):
        T.from_json(p, n_val=1, n_test=1)
    p.write_text(json.dumps({"name": "x"}))
    with pytest.raises(TaskError, match="expected a list of items"):
        T.from_json(p)


def test_malformed_csv(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("question,answer\na,b\n")
    with pytest.raises(TaskError, match=r"t\.csv: missing column\(s\) input, output"):
        T.from_csv(p)
    p.write_text("input,output\na,b\nc,d,e\n")
    with pytest.raises(TaskError, match=r"t\.csv: line 3: malformed row: 3 field\(s\)"):
        T.from_csv(p, n_val=1, n_test=1)
    p.write_text("input,output\na,b\nc\n")
    with pytest.raises(TaskError, match=r"t\.csv: line 3: malformed row: 1 field"):
        T.from_csv(p, n_val=1, n_test=1)
    p.write_text("input,output\na,b\nc, \n")
    with pytest.raises(TaskError, match=r"t\.csv: line 3: empty or whitespace-only label"):
        T.from_csv(p, n_val=1, n_test=1)
    p.write_text("input,output\n")
    with pytest.raises(TaskError, match="no items"):
        T.from_csv(p)


def test_split_size_errors_and_warnings():
    with pytest.raises(TaskError, match=r"has 20 items: not enough for n_val=30"):
        T.from_pairs(pairs(20))
    with pytest.raises(TaskError, match="has 30 items"):
        T.from_pairs(pairs(30))  # val 30 would leave no test item
    with pytest.warns(T.TaskWarning, match="test split has 20 items instead of 100"):
        task = T.from_pairs(pairs(50))
    assert (len(task.val), len(task.test), len(task.train)) == (30, 20, 0)
    with pytest.raises(TaskError, match="n_test must be a non-negative int"):
        T.load("country-capital", n_test=-1)
    with pytest.raises(TaskError, match="seed must be an int"):
        T.load("country-capital", seed="1")


def test_conflicting_and_duplicate_items():
    with pytest.raises(TaskError, match="two labels"):
        T.from_pairs([("France", "Paris"), ("France", "Lyon"), ("a", "b")], n_val=1, n_test=1)
    with pytest.warns(T.TaskWarning, match="dropped 1 duplicate"):
        task = T.from_pairs([("France", "Paris"), ("France", "Paris"), ("a", "b"), ("c", "d")], n_val=1, n_test=1)
    assert len(task) == 3


def test_overlapping_splits_rejected(tmp_path):
    a, b = T.TaskItem("a", "1"), T.TaskItem("b", "2")
    with pytest.raises(TaskError, match="both val and test"):
        T.Task("t", "", "", [a, b], val=[a], test=[a, b])
    with pytest.raises(TaskError, match="not one of the task's items"):
        T.Task("t", "", "", [a], val=[b])
    root = write_paper_folder(tmp_path / "p")
    ann = root / "annotations"
    rows = json.loads((ann / "country-capital_val.json").read_text())
    (ann / "country-capital_test.json").write_text(json.dumps(rows[:2]))
    with pytest.raises(TaskError, match="in both country-capital_val.json and country-capital_test.json"):
        T.from_paper_folder(root, "country-capital")


def test_paper_folder_errors(tmp_path):
    root = write_paper_folder(tmp_path / "p")
    with pytest.raises(TaskError, match=r"no animal-young_val\.json.*tasks found: country-capital"):
        T.from_paper_folder(root, "animal-young")
    (root / "annotations" / "country-capital_test.json").unlink()
    with pytest.raises(TaskError, match=r"country-capital_test\.json is missing"):
        T.from_paper_folder(root, "country-capital")
    with pytest.raises(FileNotFoundError):
        T.from_paper_folder(tmp_path / "absent", "country-capital")
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "a.csv").write_text("input,output\na,b\n")
    (tmp_path / "two" / "b.csv").write_text("input,output\na,b\n")
    with pytest.raises(TaskError, match="cannot tell which task"):
        T.load(tmp_path / "two")


def test_nothing_is_unpickled():
    src = "".join(p.read_text() for p in Path(T.__file__).parent.glob("*.py"))
    assert not re.search(r"import pickle|pickle\.load|torch\.load|joblib|allow_pickle", src)
