import open_clip
import pytest
import torch

from react_core.models import ModelLoadError, create_model, load_state_dict, register_model_configs, save_checkpoint
from react_core.storage import Storage


def test_json_architectures_are_registered_with_open_clip():
    names = register_model_configs()
    assert {"react-tiny-vit", "react-micro-vit"} <= set(names)
    assert {"react-tiny-vit", "react-micro-vit"} <= set(open_clip.list_models())


def test_checkpoint_round_trip_through_any_storage_and_layout(tmp_path):
    torch.manual_seed(0)
    model, _ = create_model("react-micro-vit")
    st = Storage("memory://ckpt-test")
    uri = save_checkpoint(model, st, st.uri("m", "model.pt"), {"note": "x"})
    assert st.read_json(st.uri("m", "model.json")) == {"note": "x", "quick_gelu": False}  # the activation recorded
    again, _ = create_model("react-micro-vit", uri, storage=st)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval().encode_image(x), again.eval().encode_image(x))
    # DDP-style {"state_dict": {"module.*": ...}} checkpoints on the local disk load too
    wrapped = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    path = tmp_path / "ddp.pt"
    torch.save(wrapped, path)
    assert set(load_state_dict(str(path))) == set(model.state_dict())
    third, _ = create_model("react-micro-vit", str(path))
    assert torch.equal(model.encode_image(x), third.eval().encode_image(x))


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    st = Storage("memory://ckpt-mismatch")
    model, _ = create_model("react-micro-vit")
    uri = save_checkpoint(model, st, st.uri("model.pt"))
    with pytest.raises(ModelLoadError, match="does not fit model 'react-tiny-vit'.*shape mismatch: "):
        create_model("react-tiny-vit", uri, storage=st)
    state = {k: v for k, v in model.state_dict().items() if k != "logit_scale"}
    state["visual.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError, match="1 missing: logit_scale; 1 unexpected: visual.extra.weight"):
        create_model("react-micro-vit", str(tmp_path / "bad.pt"))


def test_missing_checkpoint_and_unknown_model_are_clear_errors():
    with pytest.raises(ModelLoadError, match="not found"):
        create_model("react-micro-vit", "memory://nowhere/model.pt", storage=Storage("memory://nowhere"))
    with pytest.raises(ModelLoadError, match="unknown model 'ViT-Q-99'"):
        create_model("ViT-Q-99")


def test_pretrained_tag_that_cannot_be_fetched_offline_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="could not load pretrained weights 'openai'"):
        create_model("react-micro-vit", "openai")


def test_miniweb_tag_points_at_the_prepare_world_flow():
    with pytest.raises(ModelLoadError, match="prepare-world"):
        create_model("react-micro-vit", "miniweb")


def test_quickgelu_weights_under_a_gelu_architecture_are_refused_with_the_fix(tmp_path):
    # OpenAI's weights (by tag: refused before any download, which open_clip would only warn about)
    with pytest.raises(ModelLoadError, match=r"'openai' were trained with QuickGELU, but model.name=ViT-B-32 uses GELU.*"
                       r"fix: model.name=ViT-B-32-quickgelu"):  # fmt: skip
        create_model("ViT-B-32", "openai")
    # our own checkpoint of a QuickGELU model: model.json records it, a GELU architecture is refused
    st = Storage(str(tmp_path))
    quick = open_clip.create_model("react-micro-vit", force_quick_gelu=True)
    uri = save_checkpoint(quick, st, st.uri("q", "model.pt"), {"model": "react-micro-vit"})
    assert st.read_json(st.uri("q", "model.json"))["quick_gelu"] is True
    with pytest.raises(ModelLoadError, match=r"records quick_gelu\) were trained with QuickGELU.*fix: an architecture"):
        create_model("react-micro-vit", uri, storage=st)
    # a published REACT file of OpenAI's CLIP, known by its name
    torch.save(quick.state_dict(), tmp_path / "clip-vit-base-32-gated-image.pt")
    with pytest.raises(ModelLoadError, match=r"a REACT checkpoint of OpenAI's CLIP\) were trained with QuickGELU"):
        create_model("react-micro-vit", str(tmp_path / "clip-vit-base-32-gated-image.pt"))


def test_published_react_checkpoints_by_their_tags():
    from react_core.models import REACT_HUB_REPO, react_checkpoint

    assert react_checkpoint("ViT-B-32", "react_clip_ret_laion400m") == "clip-vit-base-32-gated-image.pt"
    assert react_checkpoint("ViT-B-32-quickgelu", "react_clip_ret_laion400m") == "clip-vit-base-32-gated-image.pt"
    assert react_checkpoint("ViT-B-32", "react_clip_ret_laion400m_locked_text") == "clip-vit-base-32-locked-text.pt"
    assert react_checkpoint("ViT-L-14", "react_clip_ret_laion2b") == "clip-vit-large-14-gated-image-laion2b.pt"
    assert react_checkpoint("ViT-B-32", "openai") is None
    # QuickGELU is forced for react_clip_* (as the release did), so the only error offline is the download's
    with pytest.raises(ModelLoadError, match=rf"REACT checkpoint 'react_clip_ret_laion400m' \({REACT_HUB_REPO}/"
                       r"clip-vit-base-32-gated-image.pt.*fix: check the network \(HF_HUB_OFFLINE\)"):  # fmt: skip
        create_model("ViT-B-32", "react_clip_ret_laion400m")


def test_a_truncated_or_missing_checkpoint_is_named_with_the_fix(tmp_path):
    st = Storage(str(tmp_path))
    model, _ = create_model("react-micro-vit")
    uri = save_checkpoint(model, st, st.uri("train", "v1", "model.pt"))
    good = st.read_bytes(uri)
    st.write_bytes(uri, good[: len(good) // 3])
    with pytest.raises(
        ModelLoadError, match=r"model.pt could not be read, it is damaged.*fix: if a stage wrote it, delete"
    ):
        create_model("react-micro-vit", uri, storage=st)
    st.rm(uri)
    with pytest.raises(ModelLoadError, match=r"checkpoint .*model.pt not found; fix:"):
        create_model("react-micro-vit", uri, storage=st)
