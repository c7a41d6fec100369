"""Forward shapes, freezing and text conditioning of the PyTorch model."""

from __future__ import annotations

import pytest
import torch

from lga_export.build import build_lga, dead_parameter_names
from lga_export.config import get_preset
from lga_export.modeling.text_encoder import load_tokenizer


def _tokens(texts, config):
    tok = load_tokenizer(config.text_model)(texts, padding=True, truncation=True,
                                            max_length=config.max_text_length, return_tensors="pt")
    return tok["input_ids"], tok["attention_mask"]


@pytest.mark.parametrize("train_encoder", [True, False])
def test_one_training_step_updates_exactly_the_trainable_parameters(train_encoder):
    torch.manual_seed(0)
    config = get_preset("tiny").replace(train_image_encoder=train_encoder)
    model = build_lga(config).train()
    with torch.no_grad():  # gamma starts at 0, which cuts the text path off until it has trained
        for ffm in model.ffms:
            ffm.image_update.gamma.normal_(std=0.1)
    ids, mask = _tokens(["Bilateral pulmonary infection, two infected areas.", "No lesion."], config)
    logits = model(torch.randn(2, 3, 256, 256), ids, mask)
    assert logits.shape == (2, 1, 256, 256)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.rand_like(logits).round())
    loss.backward()
    dead = dead_parameter_names(model)
    for name, param in model.named_parameters():
        has_grad = param.grad is not None and bool(param.grad.abs().sum() > 0)
        if not param.requires_grad or name in dead:
            assert param.grad is None or not has_grad, f"{name} must not receive a gradient"
        else:
            assert has_grad, f"trainable {name} received no gradient"
    image_trainable = any(p.requires_grad for p in model.image_encoder.parameters())
    assert image_trainable == train_encoder
    assert not any(p.requires_grad for p in model.text_encoder.backbone.parameters())


def test_different_texts_give_different_masks_once_the_adapter_is_trained():
    torch.manual_seed(0)
    config = get_preset("tiny")
    model = build_lga(config)
    ids, mask = _tokens(["Bilateral pulmonary infection, two infected areas, all left lung.",
                         "Unilateral pulmonary infection, one infected area, lower right lung."], config)
    image = torch.randn(1, 3, 256, 256).expand(2, -1, -1, -1)
    with torch.no_grad():
        untrained = model(image, ids, mask)
        assert torch.allclose(untrained[0], untrained[1], atol=1e-5), "gamma=0 keeps the text out at init"
        for ffm in model.ffms:
            ffm.image_update.gamma.normal_(std=1.0)
        trained = model(image, ids, mask)
    assert not torch.allclose(trained[0], trained[1], atol=1e-3)
    assert torch.isfinite(trained).all()


def test_learnable_query_needs_no_text_encoder():
    model = build_lga(get_preset("tiny").replace(text_source="learnable_query"))
    out = model(torch.randn(2, 3, 256, 256), torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4))
    assert out.shape == (2, 1, 256, 256)
    assert not hasattr(model.text_encoder, "backbone")
