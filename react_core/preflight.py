"""Checks made before any stage runs, so that a bad config fails in seconds rather than after hours of work."""

from __future__ import annotations

from react_core.config import ConfigError, ModelConfig, TrainingConfig
from react_core.models import model_config


def preflight(model: ModelConfig, training: TrainingConfig) -> None:
    """Checks that need the model architecture, made before any stage runs (not minutes later)."""
    vision = model_config(model.name).get("vision_cfg", {})
    layers = vision.get("layers")
    if vision.get("timm_model_name") or not isinstance(layers, int):
        tower = f"timm {vision['timm_model_name']}" if vision.get("timm_model_name") else "ResNet"
        raise ConfigError(
            f"model.name={model.name} has a {tower} image tower; REACT's gated blocks and trainer need an "
            "open_clip vision transformer; fix: use a ViT-* model"
        )
    if isinstance(layers, int) and training.mode == "gated-image" and training.gated_layers > layers:
        raise ConfigError(
            f"training.gated_layers={training.gated_layers} but {model.name} has {layers} image blocks; "
            f"fix: set training.gated_layers to 1..{layers}"
        )
