"""Every bound that the parity suite applies to a stage, in one table, each with its reason.

Error measure: for a stage with reference r (HF) and ours x,

    max abs = max |x - r|,    max rel = max |x - r| / max |r|

so relative error is measured against the reference's scale, which stays meaningful where
single elements are near zero.

Floating-point bounds follow one rule:

    bound = SAFETY * (eps(dtype) + eps(float32) * sqrt(K)) * sqrt(depth)

Each matmul stage rounds its output to the compute dtype (eps(dtype): float32 1.19e-7, bfloat16
7.81e-3, float16 9.77e-4) after accumulating K products in float32. Summation in a different
order moves a float32 sum of K terms by about eps(float32) * sqrt(K) of its size. K is the
longest reduction in the model. depth counts the stages (one per norm + matmul sublayer) between
the inputs and the stage: both implementations round at every stage, in different orders, so
their difference grows like a random walk over the depth. SAFETY = 8 covers a factor 2 for the
two implementations rounding independently, 2 for the maximum over many elements, and 2 for
amplification by each layer's gain on random weights. float32 bounds are capped at 1e-5.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

SAFETY = 8.0
EPSILON = {name: float(np.finfo(dtype).eps) for name, dtype in
           (("float32", np.float32), ("float16", np.float16))}
EPSILON["bfloat16"] = 2.0**-7

# float32 bounds may not exceed this, whatever the depth: a float32 error above it means a bug.
FLOAT32_CAP = 1e-5
PIXEL_ATOL = 1e-6


@dataclasses.dataclass(frozen=True)
class Bound:
    kind: str  # "exact", "abs" or "rel"
    value: float
    reason: str


@dataclasses.dataclass(frozen=True)
class Depths:
    """Rounding depths of one model's stages, from its vision and text layer counts."""

    vision_blocks: int
    text_layers: int
    reduction: int  # K: the longest matmul reduction in the model

    def vision_block(self, index: int) -> int:
        return 1 + 2 * (index + 1)  # patch embed, then attention and MLP per block

    def merger(self) -> int:
        return self.vision_block(self.vision_blocks - 1) + 2

    def text_layer(self, index: int) -> int:
        return self.merger() + 2 * (index + 1)

    def logits(self) -> int:
        return self.text_layer(self.text_layers - 1) + 2  # final norm and lm_head


def depths_for(config) -> Depths:
    """Read the depths and the longest reduction from a qwen3vl ModelConfig."""
    vision, text = config.vision, config.text
    widths = (vision.patch_dim, vision.hidden_size * vision.merge_unit, vision.intermediate_size,
              text.hidden_size, text.intermediate_size, text.num_attention_heads * text.head_dim)
    return Depths(vision.depth, text.num_hidden_layers, max(widths))


# (stage name pattern, bound kind, depth rule or fixed bound, reason). The first match wins.
STAGE_RULES = (
    (r"processor\.(input_ids|image_grid_thw)", "exact", None, "token ids and grids are integers"),
    (r"text\.(position_ids|rope_deltas)", "exact", None, "mRoPE positions are integers"),
    (r"processor\.pixel_values", "abs", PIXEL_ATOL,
     "float32 numpy on both sides from identical uint8 pixels; at most one rounding apart"),
    (r"vision\.patch_embed", "rel", lambda d, m: 1, "one matmul"),
    (r"vision\.pos_embed", "rel-f32", lambda d, m: 1,
     "bilinear weights and sum are float32 on both sides in every dtype"),
    (r"vision\.block\.(\d+)", "rel", lambda d, m: d.vision_block(int(m.group(1))), "vision blocks so far"),
    (r"vision\.deepstack\.(\d+)", "rel", lambda d, m: d.merger(), "tapped block plus merger (bounded by the full tower)"),
    (r"vision\.merger", "rel", lambda d, m: d.merger(), "full vision tower plus merger"),
    (r"text\.input_embeds", "rel", lambda d, m: d.merger(), "merger output placed in the embeddings"),
    (r"text\.layer\.(\d+)", "rel", lambda d, m: d.text_layer(int(m.group(1))), "decoder layers so far"),
    (r"text\.final_norm", "rel", lambda d, m: d.logits() - 1, "all layers and the final norm"),
    (r"text\.logits", "rel", lambda d, m: d.logits(), "the whole model"),
    (r"decode\.\d+\.logits", "rel", lambda d, m: d.logits(), "the whole model, one cached step"),
    (r"decode\.(keys|values)\.(\d+)", "rel", lambda d, m: d.text_layer(int(m.group(2))),
     "layers up to this one, over every cached position"),
)


def bound_for(stage: str, dtype: str, depths: Depths) -> Bound:
    """Look up the bound of one stage in one dtype."""
    for pattern, kind, rule, reason in STAGE_RULES:
        match = re.fullmatch(pattern, stage)
        if not match:
            continue
        if kind == "exact":
            return Bound("exact", 0.0, reason)
        if kind == "abs":
            return Bound("abs", rule, reason)
        depth = rule(depths, match)
        eps = EPSILON["float32" if kind == "rel-f32" else dtype]
        per_stage = eps + EPSILON["float32"] * math.sqrt(depths.reduction)
        value = SAFETY * per_stage * math.sqrt(depth)
        if kind == "rel-f32" or dtype == "float32":
            value = min(value, FLOAT32_CAP)
        return Bound("rel", value, f"{reason}; depth {depth}")
    raise KeyError(f"no tolerance rule for stage {stage!r}")
