"""REACT's gated blocks, composed onto an open_clip vision transformer (no fork of open_clip).

Before each of the last k image blocks a :class:`GatedBlock` runs: pre-LN multi-head self-attention over
all image tokens, then a pre-LN MLP (ratio 4, the host block's activation), each added through a scalar
gate ``tanh(alpha)`` with ``alpha = 0`` at init, so the customized model starts exactly equal to the base.

The block becomes a child ``gated_attn_block`` of the host ``visual.transformer.resblocks.{i}`` and runs
from a forward pre-hook, so the state-dict keys are the published REACT checkpoints' own
(``...resblocks.{i}.gated_attn_block.{alpha_attn, alpha_dense, ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj}``)
and the host's keys do not change.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Literal

import torch
from torch import nn

_logger = logging.getLogger(__name__)

Mode = Literal["gated-image", "locked-text", "full", "locked-image", "gated-image+text"]
GATED_MODES = ("gated-image", "gated-image+text")  # the modes that add gated blocks to the image tower
TEXT_MODES = ("full", "locked-image", "gated-image+text")  # the modes whose text tower trains


class GatedBlock(nn.Module):
    """Gated self-attention + MLP block (Flamingo-style gates, as in REACT's released code).

    Args:
        width: token width (the host block's).
        heads: attention heads (the host block's).
        act_layer: MLP activation class (the host's: ``nn.GELU`` or open_clip's ``QuickGELU``).
        norm_layer: LayerNorm class (the host's), built with ``eps``.
        mlp_ratio: hidden width / width (4, as published; also for bigG whose own blocks use 4.92).
        batch_first: token layout of the host transformer.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        eps: float = 1e-5,
        mlp_ratio: float = 4.0,
        batch_first: bool = True,
    ) -> None:
        super().__init__()
        self.ln_1 = norm_layer(width, eps=eps)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=batch_first)
        self.alpha_attn = nn.Parameter(torch.tensor(0.0))
        self.ln_2 = norm_layer(width, eps=eps)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict(
                [("c_fc", nn.Linear(width, hidden)), ("gelu", act_layer()), ("c_proj", nn.Linear(hidden, width))]
            )
        )
        self.alpha_dense = nn.Parameter(torch.tensor(0.0))
        # Gate scaling (lambda): both branches' contributions times this factor; 0 is exactly the base model,
        # 1 the trained one (the gated analogue of WiSE-FT's weight interpolation). A buffer outside the state
        # dict, so checkpoints stay the published layout; set with set_gate_scale.
        self.register_buffer("scale", torch.tensor(1.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D) or (N, B, D), as the host
        y = self.ln_1(x)
        x = x + (self.scale * self.alpha_attn.tanh()) * self.attn(y, y, y, need_weights=False)[0]
        x = x + (self.scale * self.alpha_dense.tanh()) * self.mlp(self.ln_2(x))
        return x


def _run_gated_first(block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]):
    """Forward pre-hook: the host block receives the gated block's output instead of its input."""
    if args:
        return (block.gated_attn_block(args[0]), *args[1:]), kwargs
    kwargs = dict(kwargs)
    kwargs["q_x"] = block.gated_attn_block(kwargs["q_x"])
    return args, kwargs


def vision_blocks(model: nn.Module) -> nn.ModuleList:
    try:
        return model.visual.transformer.resblocks
    except AttributeError:
        raise ValueError(
            f"{type(model).__name__} has no visual.transformer.resblocks: gated blocks need an open_clip "
            "vision transformer (ViT-*), not a ResNet or timm tower"
        ) from None


def gated_layer_indices(model: nn.Module) -> list[int]:
    return [i for i, b in enumerate(vision_blocks(model)) if hasattr(b, "gated_attn_block")]


def add_gated_blocks(model: nn.Module, k: int) -> list[int]:
    """Insert a gated block before each of the last ``k`` image blocks; returns their indices.

    Raises:
        ValueError: ``k`` outside ``1..layers``, a tower that is not a ViT, or blocks already added.
    """
    blocks = vision_blocks(model)
    if not 1 <= k <= len(blocks):
        raise ValueError(
            f"training.gated_layers={k} but the image tower has {len(blocks)} blocks; fix: 1..{len(blocks)}"
        )
    if gated_layer_indices(model):
        raise ValueError("the model already has gated blocks; add them once")
    indices = list(range(len(blocks)))[-k:]
    for i in indices:
        host = blocks[i]
        gated = GatedBlock(
            width=host.attn.embed_dim,
            heads=host.attn.num_heads,
            act_layer=type(host.mlp.gelu),
            norm_layer=type(host.ln_1),
            eps=host.ln_1.eps,
            batch_first=host.attn.batch_first,
        )
        ref = next(host.parameters())
        host.add_module("gated_attn_block", gated.to(device=ref.device, dtype=ref.dtype))
        host.register_forward_pre_hook(_run_gated_first, with_kwargs=True)
    _logger.info("added gated blocks before image blocks %s", indices)
    return indices


def set_trainable(model: nn.Module, mode: Mode) -> int:
    """Freeze what the mode freezes; returns the number of trainable parameters (the paper's Table 7 rows).

    *gated-image*: only the gated blocks train. *locked-text*: the whole image tower. *full*: both towers.
    *locked-image* (LiT): the text tower alone. *gated-image+text*: the gated blocks and the text tower.
    ``logit_scale`` trains in every mode.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    if mode in GATED_MODES:
        if not gated_layer_indices(model):
            raise ValueError(f"mode {mode} needs gated blocks; call add_gated_blocks first")
        for i in gated_layer_indices(model):
            vision_blocks(model)[i].gated_attn_block.requires_grad_(True)
    elif mode in ("locked-text", "full"):
        model.visual.requires_grad_(True)
    elif mode != "locked-image":
        raise ValueError(
            f"unknown mode {mode!r}; fix: one of gated-image, locked-text, full, locked-image, gated-image+text"
        )
    if mode in TEXT_MODES:
        for p in text_parameters(model):
            p.requires_grad_(True)
    model.logit_scale.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def text_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The text tower's parameters: every one outside the image tower and the logit scale / bias."""
    return [
        p for n, p in model.named_parameters() if not n.startswith("visual.") and n not in ("logit_scale", "logit_bias")
    ]


def set_gate_scale(model: nn.Module, scale: float) -> int:
    """Scale every gated block's output by ``scale`` in [0, 1] (0: the base model's outputs exactly); returns
    how many blocks it set (0 for a model without gated blocks, which ``scale`` does not change)."""
    if not 0.0 <= float(scale) <= 1.0:
        raise ValueError(f"gate scale {scale} is outside [0, 1]; fix: 0 (the base model) .. 1 (as trained)")
    blocks = [m for m in model.modules() if isinstance(m, GatedBlock)]
    for b in blocks:
        b.scale.fill_(float(scale))
    return len(blocks)


def gated_parameter_count(model: nn.Module) -> int:
    """Parameters of the gated blocks alone (the paper's 'trainable parameters' column)."""
    blocks = vision_blocks(model)
    return sum(p.numel() for i in gated_layer_indices(model) for p in blocks[i].gated_attn_block.parameters())


def gate_values(model: nn.Module) -> dict[int, tuple[float, float]]:
    """``tanh(alpha_attn), tanh(alpha_dense)`` per gated layer (the paper's Fig. 6)."""
    blocks = vision_blocks(model)
    with torch.no_grad():
        return {
            i: (
                float(blocks[i].gated_attn_block.alpha_attn.tanh()),
                float(blocks[i].gated_attn_block.alpha_dense.tanh()),
            )
            for i in gated_layer_indices(model)
        }
