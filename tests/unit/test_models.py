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
    assert st.read_json(st.uri("m", "model.json")) == {"note": "x"}
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
