"""The deployment cross-attention equals the authors' formulation."""

from __future__ import annotations

import torch

from lga_export.modeling.attention import FusionCrossAttention


def reference_cross_attention(attn: FusionCrossAttention, query, context):
    """Straightforward formulation: softmax(Q K^T / sqrt(d)) V, then the output projection."""
    q, k, v = attn.q_proj(query), attn.k_proj(context), attn.v_proj(context)
    weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
    return attn.out_proj(weights @ v)


def test_text_reads_image_matches_reference():
    torch.manual_seed(0)
    attn = FusionCrossAttention(96, 12)
    query, context = torch.randn(3, 1, 96), torch.randn(3, 257, 96)
    torch.testing.assert_close(attn(query, context), reference_cross_attention(attn, query, context),
                               rtol=1e-5, atol=1e-6)


def test_single_key_path_matches_reference():
    torch.manual_seed(1)
    attn = FusionCrossAttention(96, 12)
    query, context = torch.randn(2, 64, 96), torch.randn(2, 1, 96)
    fast = attn.forward_single_key(context).expand(-1, 64, -1)
    torch.testing.assert_close(fast, reference_cross_attention(attn, query, context), rtol=1e-5, atol=1e-6)


def test_fp16_scores_do_not_overflow_where_unscaled_product_does():
    torch.manual_seed(2)
    attn = FusionCrossAttention(64, 64).half()
    with torch.no_grad():
        for layer in (attn.q_proj, attn.k_proj):
            layer.weight.copy_(torch.eye(64).half())
            layer.bias.zero_()
    query = torch.full((1, 1, 64), 40.0).half()
    context = torch.full((1, 8, 64), 40.0).half()
    with torch.no_grad():
        unscaled = attn.q_proj(query) @ attn.k_proj(context).transpose(-2, -1)  # 64 * 1600 > 65504
        out = attn(query, context)
    assert torch.isinf(unscaled).any()
    assert torch.isfinite(out).all()
