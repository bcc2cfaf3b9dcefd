import pytest

from react_core.registry import (
    TaskSpecError,
    elevater_datasets,
    elevater_metric,
    load_task_file,
    parse_task,
    resolve_task,
)
from react_core.storage import Storage


def test_custom_yaml_task_with_synonyms_and_default_templates(tmp_path):
    f = tmp_path / "birds.yaml"
    f.write_text("name: birds\nclasses:\n  - {name: northern cardinal, synonyms: [redbird]}\n  - blue jay\n")
    t = load_task_file(str(f))
    assert t.name == "birds" and list(t.classnames) == ["northern cardinal", "blue jay"]
    assert t.synonyms == {"northern cardinal": ["redbird"]} and len(t.templates) == 80


def test_every_problem_is_reported_with_the_file():
    with pytest.raises(TaskSpecError) as e:
        parse_task({"classes": ["Cat", "cat", ""], "templates": ["a photo", "{} ok"], "colour": 1}, "t.yaml")
    msg = str(e.value)
    assert msg.count("t.yaml") == 4
    assert "duplicate class names ['cat']" in msg and "empty name" in msg and "without a '{}' slot" in msg
    assert "unknown key" in msg


def test_empty_class_list_is_rejected():
    with pytest.raises(TaskSpecError, match="class list is empty"):
        parse_task({"classes": []}, "x.yaml")


def test_builtin_tasks(tiny_world):
    _, storage, world = tiny_world
    imagenet = resolve_task(Storage("memory://r"), "imagenet-1k", None)
    assert len(imagenet.classnames) == 1000 and len(imagenet.templates) == 80
    assert all("{}" in t for t in imagenet.templates)
    fine = resolve_task(storage, "miniweb-fine", world)
    assert len(fine.classnames) == 4 and fine.synonyms == {}
    with pytest.raises(Exception, match="unknown target task"):
        resolve_task(storage, "imagenet-22k", world)


# num_classes of each dataset in the ELEVATER toolkit's vision_benchmark/resources/datasets/vision_datasets.json:
# an independent check that no class was lost or doubled when CLIP's lists were copied.
ELEVATER_NUM_CLASSES = {
    "caltech-101": 102, "cifar-10": 10, "cifar-100": 100, "country211": 211, "dtd": 47, "eurosat_clip": 10,
    "fer-2013": 7, "fgvc-aircraft-2013b-variants102": 100, "food-101": 101, "gtsrb": 43, "hateful-memes": 2,
    "kitti-distance": 4, "mnist": 10, "oxford-flower-102": 102, "oxford-iiit-pets": 37, "patch-camelyon": 2,
    "rendered-sst2": 2, "resisc45_clip": 45, "stanford-cars": 196, "voc-2007-classification": 20,
}  # fmt: skip


def test_the_twenty_elevater_datasets_resolve_with_their_class_counts_and_metrics():
    storage = Storage("memory://r")
    assert sorted(elevater_datasets()) == sorted(ELEVATER_NUM_CLASSES)
    for name, n in ELEVATER_NUM_CLASSES.items():
        task = resolve_task(storage, name, None)  # validated by parse_task: slots, duplicates, empty names
        assert len(task.classnames) == n, name
        assert all(isinstance(c, str) and c == c.strip() and c for c in task.classnames), name
    metrics = {name: elevater_metric(name) for name in ELEVATER_NUM_CLASSES}
    assert {n for n, m in metrics.items() if m == "mean_per_class"} == {
        "caltech-101", "fgvc-aircraft-2013b-variants102", "oxford-flower-102", "oxford-iiit-pets",
    }  # fmt: skip
    assert metrics["hateful-memes"] == "roc_auc" and metrics["voc-2007-classification"] == "map_11point"
    assert set(metrics.values()) == {"accuracy", "mean_per_class", "roc_auc", "map_11point"}


def test_elevater_specifics_survive_the_yaml():
    storage = Storage("memory://r")
    fer = resolve_task(storage, "fer-2013", None)
    assert fer.synonyms == {"happy": ["smiling"], "sad": ["depressed"], "surprised": ["shocked", "spooked"],
                            "neutral": ["bored"]}  # fmt: skip
    assert resolve_task(storage, "mnist", None).classnames == [str(i) for i in range(10)]
    assert resolve_task(storage, "kitti-distance", None).templates == ["{}"]
    assert len(resolve_task(storage, "cifar-100", None).templates) == 18
    assert "Cote d'Ivoire" in resolve_task(storage, "country211", None).classnames
    assert resolve_task(storage, "gtsrb", None).templates[0] == 'a zoomed in photo of a "{}" traffic sign.'
