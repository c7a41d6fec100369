"""A model's configuration and trainable / frozen parameter counts per part."""

from __future__ import annotations

import dataclasses
from typing import Any

from lga_export.build import count_parameters
from lga_export.families import family_of


def model_summary(model) -> dict[str, Any]:
    """JSON-ready summary: config, per-part counts and the paper's totals (LGA, decoder)."""
    parts = count_parameters(model)
    adapter_parts = [p for p in parts if p.name.startswith(("ffm_", "text_projection", "learnable_query", "text_carry"))]
    adapter = sum(p.trainable for p in adapter_parts)
    decoder = next(p.trainable for p in parts if p.name == "mask_decoder")
    # what else trains (the image encoder with --train-encoder, the text model with --train-text, ...)
    others = {p.name: p.trainable for p in parts if p.trainable and p not in adapter_parts and p.name != "mask_decoder"}
    return {
        "config": dataclasses.asdict(model.config),
        "ffm_block_indexes": list(model.config.ffm_block_indexes),
        "architecture": family_of(model.config).architecture(model.config),
        "text_width": getattr(model.text_encoder, "width", None),
        "parts": [{"name": p.name, "trainable": p.trainable, "frozen": p.frozen, "total": p.total} for p in parts],
        "trainable": sum(p.trainable for p in parts),
        "frozen": sum(p.frozen for p in parts),
        "adapter_trainable": adapter,
        "decoder_trainable": decoder,
        "other_trainable": others,
    }


def render_summary(summary: dict[str, Any]) -> str:
    """Plain-text table of the summary (for the terminal)."""
    cfg = summary["config"]
    lines = [
        f"LGA preset {cfg['preset']}: image {cfg['image_size']}px, {summary['architecture']}",
        f"text: {cfg['text_source']} via {cfg['text_model']} (width {summary['text_width']}), "
        f"text MLP {'on' if cfg['text_mlp'] else 'off'}, ViT MLP {'on' if cfg['vit_mlp'] else 'off'}",
        "",
        f"{'part':<18}{'trainable':>14}{'frozen':>14}",
    ]
    for part in summary["parts"]:
        lines.append(f"{part['name']:<18}{part['trainable']:>14,}{part['frozen']:>14,}")
    lines += [
        f"{'total':<18}{summary['trainable']:>14,}{summary['frozen']:>14,}",
        "",
        f"trainable: LGA adapter {summary['adapter_trainable']:,} + mask decoder {summary['decoder_trainable']:,}"
        + "".join(f" + {name} {count:,}" for name, count in summary.get("other_trainable", {}).items())
        + f" = {summary['trainable']:,}",
    ]
    return "\n".join(lines)
