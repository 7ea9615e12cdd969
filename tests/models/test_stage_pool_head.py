"""The classifier head that reads every encoder stage (model.head_stages: all)."""

import pytest
import torch

from vismae.models.backbones import rebuild_task_model
from vismae.models.heads import SwinClassifier, build_task_model
from vismae.models.weights import load_encoder


def _encoder(seed: int = 0):
    torch.manual_seed(seed)
    return load_encoder("random:tiny", img_size=64, verbose=False)


def test_all_stage_head_pools_every_stage_by_mean_and_max():
    model = build_task_model(_encoder(), "classify", stages="all").eval()
    images = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        maps = model.encoder.forward_intermediates(images, norm=True, intermediates_only=True)
        pooled = torch.cat([p for m in maps for p in (m.mean(dim=(2, 3)), m.amax(dim=(2, 3)))], dim=1)
        head = model.head
        expected = head.fc(head.norm(pooled))
        logits = model(images)
    assert pooled.shape[1] == 2 * sum(model.encoder.config.stage_dims)
    torch.testing.assert_close(logits, expected)


def test_a_finding_seen_only_by_the_early_stages_moves_the_all_stage_head_more():
    """A control in the same test: one bright 4 x 4 spot changes the first stage's max far more
    than the last stage's pooled map; the all-stage head's input moves with it."""
    encoder = _encoder().eval()
    plain = torch.full((1, 1, 64, 64), 0.3)
    spot = plain.clone()
    spot[..., 30:34, 20:24] = 1.0
    with torch.no_grad():
        before = encoder.forward_intermediates(plain, norm=True, intermediates_only=True)
        after = encoder.forward_intermediates(spot, norm=True, intermediates_only=True)
    relative = [((a.amax(dim=(2, 3)) - b.amax(dim=(2, 3))).norm() / b.amax(dim=(2, 3)).norm()).item() for a, b in zip(after, before)]
    assert relative[0] > 0.05 and relative[0] > relative[-1], relative


def test_last_stage_head_is_unchanged_and_unknown_stages_are_refused():
    encoder = _encoder()
    model = build_task_model(encoder, "classify", pool="max")
    assert model.stages == "last" and model.head.fc.in_features == encoder.num_features
    with pytest.raises(ValueError, match="unknown head stages 'first'"):
        SwinClassifier(encoder, stages="first")


def test_model_json_rebuilds_the_all_stage_classifier():
    model = build_task_model(_encoder(), "classify", stages="all")
    model.train()
    model(torch.rand(4, 1, 64, 64))  # BatchNorm statistics move: they are part of the saved state
    model.eval()
    description = {"task": "classify", "encoder": model.encoder.config.to_dict(),
                   "head": {"num_classes": 2, "pool": "avg", "dropout": 0.0, "stages": "all"}}  # fmt: skip
    rebuilt = rebuild_task_model(description)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    images = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images), model(images))


def test_config_keeps_the_all_stage_head_to_swin():
    from vismae.config import ConfigError
    from vismae.engine.finetune_config import FinetuneModel

    FinetuneModel(head_stages="all").validate()
    with pytest.raises(ConfigError, match="model.head_stages all needs model.backbone"):
        FinetuneModel(backbone="convnextv2_atto", head_stages="all").validate()
