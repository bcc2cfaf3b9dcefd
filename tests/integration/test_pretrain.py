"""The base CLIP is pretrained by our loop and saved as an open_clip checkpoint that loads back."""

import pytest
import torch

from react_core.data.datasets import read_vision_dataset
from react_core.models import create_model, model_file
from react_core.pipeline import base_stage, run_pretrain_base
from react_core.storage import join
from react_core.tracking import MemoryTracker
from react_core.training.pretrain import pretrain_base

pytestmark = pytest.mark.integration


def test_pretrain_writes_a_loadable_checkpoint_and_logs(tiny_world):
    cfg, storage, uri = tiny_world
    tracker = MemoryTracker()
    stage = pretrain_base(cfg.model, storage, base_stage(storage, cfg.model, uri), uri, tracker, progress=False)
    manifest = storage.stage_manifest(stage)
    metrics = manifest["metrics"]
    assert metrics["train_pairs"] == cfg.miniweb.generic_size
    assert 0.0 <= metrics["miniweb-fine.top1"] <= 1.0
    losses = [v for k, v, _ in tracker.metrics if k == "pretrain/loss"]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    model, tok = create_model(cfg.model.name, model_file(stage), storage=storage)
    data = read_vision_dataset(storage, join(uri, "tasks", "miniweb-fine"), "test")
    from react_core.evaluation.zeroshot import evaluate_zero_shot

    assert evaluate_zero_shot(model, tok, data)["accuracy"] == pytest.approx(metrics["miniweb-fine.top1"], abs=1e-6)
    # a second call finds the finished stage and trains nothing
    assert run_pretrain_base(storage, model=cfg.model, miniweb_uri=uri, tracker=MemoryTracker()) == stage


def test_pretraining_reduces_the_contrastive_loss(tiny_world, tmp_path):
    cfg, storage, uri = tiny_world
    from react_core.config_loading import load_config

    cfg2 = load_config(cfg.model_dump(mode="json"), ["model.pretrain.epochs=6", "model.pretrain.seed=1"])
    tracker = MemoryTracker()
    run_pretrain_base(storage, model=cfg2.model, miniweb_uri=uri, tracker=tracker)
    losses = [v for k, v, _ in tracker.metrics if k == "pretrain/loss"]
    assert losses[-1] < losses[0] - 0.2
