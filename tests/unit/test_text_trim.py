import open_clip
import pytest
import torch

from react_core.models.text import encode_text, lengths, trimmable

VISION = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16}


def _clip(quick_gelu=False, **text_cfg):
    torch.manual_seed(0)
    text = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3, **text_cfg}
    return open_clip.CLIP(embed_dim=32, vision_cfg=VISION, text_cfg=text, quick_gelu=quick_gelu).eval()


CAPTIONS = [
    "",
    "dog",
    "a photo of a small brown dog sitting on the grass next to a red ball",
    "word " * 100,  # truncated by the tokenizer: the end-of-text token at the last position
    "a photo of a cat.",
    "an old black and white photograph of a steam train crossing a stone bridge in the mountains at dawn",
]


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_trimmed_text_features_equal_open_clips(quick_gelu):
    model = _clip(quick_gelu)
    tokens = open_clip.get_tokenizer("ViT-B-32")(CAPTIONS)
    assert trimmable(model)
    n = lengths(model, tokens)
    assert n[0] == 2 and n[3] == 77 and len(set(n.tolist())) == len(CAPTIONS)  # several buckets, one at full length
    with torch.no_grad():
        ours, theirs = encode_text(model, tokens), model.encode_text(tokens)
        # the order of rows does not matter: each is computed on its own length
        perm = torch.randperm(len(CAPTIONS), generator=torch.Generator().manual_seed(1))
        shuffled = encode_text(model, tokens[perm])
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shuffled, theirs[perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        encode_text(model, tokens, normalize=True), model.encode_text(tokens, normalize=True), rtol=1e-5, atol=1e-5
    )


def test_eos_pooling_is_trimmed_at_the_eos_token():
    model = _clip(pool_type="eos", eos_id=49407)
    tokens = open_clip.get_tokenizer("ViT-B-32")(CAPTIONS)
    assert trimmable(model)
    with torch.no_grad():
        torch.testing.assert_close(encode_text(model, tokens), model.encode_text(tokens), rtol=1e-5, atol=1e-5)


def test_towers_the_shortcut_does_not_fit_fall_back_to_open_clip():
    tokens = open_clip.get_tokenizer("ViT-B-32")(CAPTIONS)
    for model in (_clip(no_causal_mask=True), _clip(pool_type="last", no_causal_mask=True)):
        assert not trimmable(model)  # every position sees every other: padding changes the feature
        with torch.no_grad():
            assert torch.equal(encode_text(model, tokens), model.encode_text(tokens))
    # a model class that changes encode_text keeps its own
    model = _clip()
    model.__class__ = type("Custom", (open_clip.CLIP,), {"encode_text": lambda self, t, normalize=False: t.float()})
    assert not trimmable(model)
    assert torch.equal(encode_text(model, tokens), tokens.float())
