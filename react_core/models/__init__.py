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


# The published REACT checkpoints (the original release's open_clip fork, src/open_clip/pretrained.py), by
# architecture and tag, as files of the Hugging Face repository below. Its tags name the gated-image files; the
# locked-text ones it registered under the same tags of the plain architecture get a `_locked_text` suffix here.
# The react_clip_* checkpoints customize OpenAI's CLIP and the release loaded them with QuickGELU forced; the
# react_openclip_* ones use the architecture's own activation.
REACT_HUB_REPO = "react-vl/react-in1k"
REACT_CHECKPOINTS: dict[str, dict[str, str]] = {
    "ViT-B-32": {
        "react_clip_ret_laion400m": "clip-vit-base-32-gated-image.pt",
        "react_clip_ret_laion400m_locked_text": "clip-vit-base-32-locked-text.pt",
        "react_openclip_laion400m_ret_laion400m": "openclip-vit-base-32-gated-image.pt",
        "react_openclip_laion400m_ret_laion400m_locked_text": "openclip-vit-base-32-locked-text.pt",
        "react_openclip_laion2b_ret_laion400m": "openclip-laion2b-vit-base-32-gated-image.pt",
        "react_openclip_laion2b_ret_laion400m_locked_text": "openclip-laion2b-vit-base-32-locked-text.pt",
    },
    "ViT-B-16": {
        "react_clip_ret_laion400m": "clip-vit-base-16-gated-image.pt",
        "react_clip_ret_laion400m_locked_text": "clip-vit-base-16-locked-text.pt",
    },
    "ViT-L-14": {
        "react_clip_ret_laion400m": "clip-vit-large-14-gated-image.pt",
        "react_clip_ret_laion2b": "clip-vit-large-14-gated-image-laion2b.pt",
        "react_openclip_laion2b_ret_laion400m": "openclip-vit-large-14-gated-image.pt",
        "react_openclip_laion2b_ret_laion2b": "openclip-vit-large-14-gated-image-laion2b.pt",
    },
    "ViT-bigG-14": {"react_openclip_laion2b_ret_laion2b": "openclip-vit-bigG-14-gated-image-laion2b.pt"},
}
_OPENAI_BASED_FILE = re.compile(r"(^|/)clip-vit-[^/]*\.pt$")  # the release's react_clip_* files


def react_checkpoint(name: str, tag: str) -> str | None:
    """The file of a published REACT checkpoint in :data:`REACT_HUB_REPO`, or None when ``tag`` is not one."""
    return REACT_CHECKPOINTS.get(name.removesuffix("-quickgelu"), {}).get(tag)


def uses_quick_gelu(model: torch.nn.Module) -> bool:
    """Whether a model's transformers use QuickGELU (OpenAI's CLIP activation) rather than GELU."""
    return any(isinstance(m, open_clip.transformer.QuickGELU) for m in model.modules())


def weights_need_quick_gelu(pretrained: str | None, name: str, storage: Storage | None = None) -> tuple[bool, str]:
    """(needs QuickGELU, why) for weights: an open_clip tag trained with it (OpenAI's), a REACT react_clip_* tag
    or file, or our own checkpoint whose ``model.json`` recorded it. (False, '') when nothing says so."""
    if not pretrained or pretrained == "miniweb":
        return False, ""
    if not _is_uri_or_path(pretrained):
        if pretrained.startswith("react_clip_"):
            return True, f"the REACT checkpoint '{pretrained}' (OpenAI's CLIP, customized)"
        if open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu"):
            return True, f"the pretrained weights '{pretrained}'"
        return False, ""
    if _OPENAI_BASED_FILE.search(pretrained):
        return True, f"{pretrained} (a REACT checkpoint of OpenAI's CLIP)"
    info = pretrained.rsplit(".", 1)[0] + ".json"
    try:
        recorded = (storage or Storage(info.rsplit("/", 1)[0])).read_json(info).get("quick_gelu")
    except (StorageError, ValueError, OSError):
        return False, ""
    return bool(recorded), (f"{pretrained} (its model.json records quick_gelu)" if recorded else "")


def check_activation(name: str, pretrained: str | None, storage: Storage | None = None) -> None:
    """Raise when weights trained with QuickGELU would load, strictly and silently, under a GELU architecture
    (features off by about 1%): open_clip only warns. The react_clip_* tags are exempt (QuickGELU is forced for
    them, as the original release did)."""
    need, why = weights_need_quick_gelu(pretrained, name, storage)
    if not need or model_config(name).get("quick_gelu") or (pretrained or "").startswith("react_clip_"):
        return
    alt = f"{name}-quickgelu"
    fix = f"model.name={alt}" if open_clip.get_model_config(alt) else "an architecture with quick_gelu: true"
    raise ModelLoadError(
        f"{why} were trained with QuickGELU, but model.name={name} uses GELU (the features would be off by about "
        f"1%, silently); fix: {fix}"
    )


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
    check_activation(name, pretrained, storage)
    if pretrained and (hub_file := react_checkpoint(name, pretrained)):
        return _create_react(name, pretrained, hub_file, storage, device)
    if pretrained == "miniweb":
        raise ModelLoadError(
            "pretrained='miniweb' names the base CLIP that the prepare-world flow trains; "
            "fix: pass its checkpoint URI ({root}/base/{version}/model.pt) or run the flow"
        )
    if pretrained and _is_uri_or_path(pretrained):
        model = _from_checkpoint(name, pretrained, storage)
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


def _create_react(
    name: str, tag: str, hub_file: str, storage: Storage | None, device: str | torch.device
) -> tuple[torch.nn.Module, Any]:
    """A published REACT checkpoint by its tag: downloaded from the hub, QuickGELU forced for react_clip_*."""
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(REACT_HUB_REPO, hub_file)
    except Exception as exc:  # noqa: BLE001 - offline hub errors come in many types
        raise ModelLoadError(
            f"could not download the REACT checkpoint '{tag}' ({REACT_HUB_REPO}/{hub_file}: {type(exc).__name__}); "
            "fix: check the network (HF_HUB_OFFLINE), or download that file and pass its path as model.pretrained"
        ) from None
    model = _from_checkpoint(name, path, storage, force_quick_gelu=tag.startswith("react_clip_"))
    model.to(device)
    return model, open_clip.get_tokenizer(name)


def _from_checkpoint(
    name: str, pretrained: str, storage: Storage | None, force_quick_gelu: bool = False
) -> torch.nn.Module:
    """Architecture ``name`` with a checkpoint's weights (inserting the gated blocks it carries), loaded strictly."""
    model = open_clip.create_model(name, pretrained=None, device="cpu", force_quick_gelu=force_quick_gelu)
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
    return model


def key_mismatch(expected: Mapping[str, torch.Tensor], state: Mapping[str, Any], show: int = 3) -> str:
    """'' when ``state`` fits ``expected`` exactly; else the first missing, unexpected and mis-shaped keys."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
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
    except Exception as exc:  # noqa: BLE001 - a truncated or corrupt file fails in many ways inside torch.load
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelLoadError(
            f"checkpoint {source} could not be read, it is damaged or not a checkpoint ({type(exc).__name__}: "
            f"{detail}); fix: if a stage wrote it, delete that stage's _SUCCESS and run it again; else copy it anew"
        ) from None
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
    # Beside the weights: the caller's record and the activation, which the weights alone do not show (a QuickGELU
    # checkpoint loads strictly under a GELU architecture and runs wrong; check_activation reads this).
    storage.write_json(uri.rsplit(".", 1)[0] + ".json", {**dict(extra or {}), "quick_gelu": uses_quick_gelu(model)})
    return uri
