"""Model architectures (open_clip JSON configs) and the single loading path for CLIP weights.

``react_core/models/configs/*.json`` are registered with open_clip's model registry at import, the
same way open_clip ships its own architectures: ``react-tiny-vit`` is the mini-web's base CLIP and
``react-micro-vit`` the smallest model the unit tests use.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import open_clip
import torch

from react_core.errors import ReactError
from react_core.storage import Storage, StorageError, join, local_path

_logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
_registered = False


MODEL_FILE = "model.pt"


def model_file(stage_uri: str) -> str:
    """The weights a base or train stage ends with: ``{stage}/model.pt`` (an open_clip state dict)."""
    return join(stage_uri, MODEL_FILE)


class ModelLoadError(ReactError, RuntimeError):
    """Weights could not be loaded; the message names the source and the fix."""


def register_model_configs() -> list[str]:
    """Register react_core's JSON architectures with open_clip (idempotent); returns their names."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


register_model_configs()


def model_config(name: str) -> dict[str, Any]:
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ModelLoadError(
            f"unknown model '{name}'; fix: use one of open_clip.list_models() "
            f"(e.g. ViT-B-32) or {', '.join(register_model_configs())}"
        )
    return cfg


def _is_uri_or_path(s: str) -> bool:
    return "://" in s or s.startswith(("/", "./", "../", "~")) or s.endswith((".pt", ".pth", ".bin", ".safetensors"))


def create_model(
    name: str,
    pretrained: str | None = None,
    storage: Storage | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, Any]:
    """Create an open_clip model and its tokenizer.

    Args:
        name: an open_clip architecture (``ViT-B-32``, ``react-tiny-vit``, ...).
        pretrained: None (random weights), an open_clip pretrained tag (``openai``), or a checkpoint
            URI/path (any fsspec URI; plain or ``{"state_dict": ...}`` layouts, ``module.`` prefixes ok).
        storage: used to read checkpoint URIs (their storage options).
        device: where to put the model.

    Raises:
        ModelLoadError: unknown architecture, unreadable checkpoint, weights that do not fit the
            architecture, or a tag that cannot be downloaded (offline).
    """
    model_config(name)
    if pretrained == "miniweb":
        raise ModelLoadError(
            "pretrained='miniweb' names the base CLIP that the prepare-world flow trains; "
            "fix: pass its checkpoint URI ({root}/base/{version}/model.pt) or run the flow"
        )
    if pretrained and _is_uri_or_path(pretrained):
        model = open_clip.create_model(name, pretrained=None, device="cpu")
        state = load_state_dict(pretrained, storage)
        gated = _gated_layers_in(state)
        if gated:  # a customized checkpoint (ours or a published REACT one): same blocks, then a strict load
            from react_core.models.gated import add_gated_blocks

            n_blocks = len(model.visual.transformer.resblocks)
            if gated != list(range(n_blocks - len(gated), n_blocks)):
                raise ModelLoadError(
                    f"checkpoint {pretrained} has gated blocks at image layers {gated}, not the last "
                    f"{len(gated)} of '{name}' ({n_blocks} layers); fix: pass the architecture it was trained with"
                )
            add_gated_blocks(model, len(gated))
        problems = key_mismatch(model.state_dict(), state)
        if problems:
            raise ModelLoadError(
                f"checkpoint {pretrained} does not fit model '{name}': {problems}; "
                "fix: pass the architecture it was trained with (model.name)"
            )
        model.load_state_dict(state, strict=True)
    else:
        try:
            model = open_clip.create_model(name, pretrained=pretrained, device="cpu")
        except Exception as exc:  # noqa: BLE001 - offline hub errors come in many types
            raise ModelLoadError(
                f"could not load pretrained weights '{pretrained}' for '{name}' ({type(exc).__name__}: {exc}); "
                "fix: check the tag with open_clip.list_pretrained(), the network (HF_HUB_OFFLINE), "
                "or pass a local checkpoint path"
            ) from None
    model.to(device)
    return model, open_clip.get_tokenizer(name)


def key_mismatch(expected: Mapping[str, torch.Tensor], state: Mapping[str, Any], show: int = 3) -> str:
    """'' when ``state`` fits ``expected`` exactly; else the first missing, unexpected and mis-shaped keys."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]  # fmt: skip
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if keys:
            more = f" (+{len(keys) - show} more)" if len(keys) > show else ""
            parts.append(f"{len(keys)} {what}: {', '.join(keys[:show])}{more}")
    return "; ".join(parts)


def _gated_layers_in(state: Mapping[str, Any]) -> list[int]:
    """Image-layer indices that carry ``gated_attn_block`` weights in a state dict."""
    found = {int(m.group(1)) for k in state if (m := _GATED_KEY.match(k))}
    return sorted(found)


_GATED_KEY = re.compile(r"^visual\.transformer\.resblocks\.(\d+)\.gated_attn_block\.")


def _strip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    out = {}
    for k, v in state.items():
        out[k.removeprefix("module.")] = v
    return out


def load_state_dict(source: str, storage: Storage | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint from a path or fsspec URI into a plain state dict."""
    try:
        lp = local_path(source) if "://" in source else os.path.expanduser(source)
        if lp is not None and os.path.exists(lp):
            obj = torch.load(lp, map_location="cpu", weights_only=True)
        else:
            st = storage or Storage(source.rsplit("/", 1)[0])
            obj = torch.load(io.BytesIO(st.read_bytes(source)), map_location="cpu", weights_only=True)
    except (StorageError, FileNotFoundError):
        raise ModelLoadError(
            f"checkpoint {source} not found; fix: check the URI or run the stage that writes it"
        ) from None
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"checkpoint {source} could not be read ({type(exc).__name__}: {exc})") from None
    return _strip(obj)


def save_checkpoint(model: torch.nn.Module, storage: Storage, uri: str, extra: Mapping[str, Any] | None = None) -> str:
    """Write ``model.state_dict()`` in open_clip's layout, atomically; ``extra`` is saved as JSON beside it."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with tempfile.NamedTemporaryFile(suffix=".pt", delete=False) as f:
        tmp = f.name
    try:
        torch.save(state, tmp)
        storage.put_file(tmp, uri)
    finally:
        os.unlink(tmp)
    if extra is not None:
        storage.write_json(uri.rsplit(".", 1)[0] + ".json", dict(extra))
    return uri
