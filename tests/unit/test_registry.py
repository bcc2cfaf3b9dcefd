import pytest

from react_core.registry import TaskSpecError, load_task_file, parse_task, resolve_task
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
