import open_clip
import pytest
import torch
from open_clip.loss import ClipLoss

from react_core.models import create_model
from react_core.models.gated import (
    add_gated_blocks,
    gate_values,
    gated_layer_indices,
    gated_parameter_count,
    set_gate_scale,
    set_trainable,
)

GATED_KEYS = {
    "alpha_attn", "alpha_dense", "ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias",
    "attn.out_proj.weight", "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
    "mlp.c_proj.weight", "mlp.c_proj.bias",
}  # fmt: skip


def _micro():
    torch.manual_seed(0)
    return create_model("react-micro-vit")


def test_customized_model_starts_exactly_equal_to_the_base():
    model, _ = _micro()
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    before = model.encode_image(x)
    assert add_gated_blocks(model, 2) == [0, 1]
    assert torch.equal(model.encode_image(x), before)
    # and they do act once a gate opens
    with torch.no_grad():
        model.visual.transformer.resblocks[1].gated_attn_block.alpha_attn.fill_(0.5)
    assert not torch.equal(model.encode_image(x), before)


@pytest.mark.parametrize(
    "name,k,published_m",
    [("ViT-B-32", 6, 42.5), ("ViT-B-16", 6, 42.5), ("ViT-L-14", 6, 75.6), ("ViT-bigG-14", 12, 399.0)],
)
def test_gated_parameter_counts_equal_the_published(name, k, published_m):
    with torch.device("meta"):  # shapes only: no memory, no download
        model = open_clip.CLIP(**open_clip.get_model_config(name))
    add_gated_blocks(model, k)
    assert round(gated_parameter_count(model) / 1e6, 1) == published_m
    layers = len(model.visual.transformer.resblocks)
    assert gated_layer_indices(model) == list(range(layers - k, layers))


def test_quickgelu_hosts_get_quickgelu_gated_blocks():
    with torch.device("meta"):
        model = open_clip.CLIP(**open_clip.get_model_config("ViT-B-32-quickgelu"))
    add_gated_blocks(model, 6)
    assert type(model.visual.transformer.resblocks[-1].gated_attn_block.mlp.gelu).__name__ == "QuickGELU"


def test_state_dict_keys_are_the_published_react_names_and_load_strictly():
    model, _ = _micro()
    add_gated_blocks(model, 2)
    sd = model.state_dict()
    for i in (0, 1):
        prefix = f"visual.transformer.resblocks.{i}.gated_attn_block."
        assert {k[len(prefix) :] for k in sd if k.startswith(prefix)} == GATED_KEYS
    assert sd["visual.transformer.resblocks.1.gated_attn_block.alpha_attn"].shape == torch.Size([])
    fresh, _ = _micro()
    add_gated_blocks(fresh, 2)
    fresh.load_state_dict(sd, strict=True)
    base_keys = set(_micro()[0].state_dict())
    assert base_keys <= set(sd) and len(set(sd) - base_keys) == 2 * len(GATED_KEYS)


def test_gated_image_trains_only_gates_and_logit_scale_and_frozen_weights_stay_bit_identical():
    model, tok = _micro()
    add_gated_blocks(model, 2)
    n = set_trainable(model, "gated-image")
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable == {k for k in trainable if "gated_attn_block" in k} | {"logit_scale"}
    assert n == gated_parameter_count(model) + 1
    frozen = {k: p.detach().clone() for k, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    images, texts = torch.randn(8, 3, 32, 32), tok([f"thing {i}" for i in range(8)])
    for _ in range(3):
        img, txt, scale = model(images, texts)[:3]
        loss = ClipLoss()(img, txt, scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, p in model.named_parameters():
        if k in frozen:
            assert torch.equal(p, frozen[k]), k
    assert any(abs(a) > 0 for gates in gate_values(model).values() for a in gates)


def test_locked_text_trains_the_image_tower_only():
    model, _ = _micro()
    n = set_trainable(model, "locked-text")
    assert n == sum(p.numel() for p in model.visual.parameters()) + 1
    assert not any(p.requires_grad for k, p in model.named_parameters() if not k.startswith(("visual.", "logit_")))


def test_bad_k_and_double_insertion_are_clear_errors():
    model, _ = _micro()
    with pytest.raises(ValueError, match="gated_layers=3 but the image tower has 2 blocks"):
        add_gated_blocks(model, 3)
    with pytest.raises(ValueError, match="needs gated blocks"):
        set_trainable(model, "gated-image")
    add_gated_blocks(model, 1)
    with pytest.raises(ValueError, match="already"):
        add_gated_blocks(model, 1)


def test_non_vit_towers_and_empty_training_data_fail_before_training(tmp_path):
    from react_core.config import ConfigError, ModelConfig, TrainingConfig
    from react_core.data import DatasetError
    from react_core.preflight import check_model
    from react_core.storage import Storage
    from react_core.training.customize import customize

    for name, tower in (("RN50", "ResNet"), ("convnext_base", "timm convnext_base")):
        with pytest.raises(ConfigError, match=f"{name} has a {tower} image tower.*fix: use a ViT-\\* model"):
            check_model(ModelConfig(name=name, pretrained=None), TrainingConfig())
    st = Storage(str(tmp_path))
    with pytest.raises(DatasetError, match="no training shards in .*download/x; fix: check the download stage"):
        customize(
            "react-micro-vit",
            None,
            TrainingConfig(),
            st,
            [],
            st.stage("train", {}),
            "",
            download_uri="s3://b/download/x",
        )


def test_gate_scale_zero_is_exactly_the_base_and_one_is_as_trained():
    model, _ = _micro()
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    base = model.encode_image(x)
    add_gated_blocks(model, 2)
    with torch.no_grad():
        for block in model.visual.transformer.resblocks:
            block.gated_attn_block.alpha_attn.fill_(0.7)
            block.gated_attn_block.alpha_dense.fill_(-0.4)
    trained = model.encode_image(x)
    assert set_gate_scale(model, 0.0) == 2
    assert torch.equal(model.encode_image(x), base)  # lambda 0: the base model, bit for bit
    set_gate_scale(model, 0.5)
    half = model.encode_image(x)
    assert not torch.equal(half, base) and not torch.equal(half, trained)
    set_gate_scale(model, 1.0)
    assert torch.equal(model.encode_image(x), trained)
    assert not [k for k in model.state_dict() if k.endswith("gated_attn_block.scale")]  # the published keys
    with pytest.raises(ValueError, match=r"gate scale 1.5 is outside \[0, 1\]"):
        set_gate_scale(model, 1.5)
    plain, _ = _micro()
    assert set_gate_scale(plain, 0.3) == 0  # no gated blocks: nothing to scale
