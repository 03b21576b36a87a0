"""Generation: prefill, a host loop over the jitted decoding step, sampling and stop conditions.

Prompt lengths and cache capacities are rounded up to buckets, so prompts of similar length
reuse one compiled prefill and one compiled decoding step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from qwen3vl import model
from qwen3vl.cache import KVCache
from qwen3vl.config import ModelConfig

logger = logging.getLogger(__name__)

MIN_BUCKET = 64


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Decoding settings. temperature 0 means greedy; top_k 0 and top_p 1 disable those filters."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @classmethod
    def from_generation_config(cls, checkpoint_dir: str | Path, **overrides) -> Sampling:
        """Read defaults from generation_config.json (greedy unless it sets do_sample), then apply overrides."""
        settings = {}
        path = Path(checkpoint_dir) / "generation_config.json"
        if path.is_file():
            raw = json.loads(path.read_text())
            if raw.get("do_sample"):
                # Fields that are absent or null take transformers' generate defaults.
                defaults = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}
                settings = {name: default if raw.get(name) is None else raw[name] for name, default in defaults.items()}
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**settings)


def stop_token_ids(checkpoint_dir: str | Path, tokenizer) -> tuple[int, ...]:
    """Collect <|im_end|>, <|endoftext|> and generation_config.json's eos ids."""
    ids = {tokenizer.token_id("<|im_end|>"), tokenizer.token_id("<|endoftext|>")}
    path = Path(checkpoint_dir) / "generation_config.json"
    if path.is_file():
        eos = json.loads(path.read_text()).get("eos_token_id")
        ids.update([eos] if isinstance(eos, int) else (eos or []))
    return tuple(sorted(ids))


def _filtered_sample(logits_BV, key, temperature, top_k, top_p):
    scaled = logits_BV / temperature
    order_BV = jnp.argsort(-scaled, axis=-1)
    sorted_BV = jnp.take_along_axis(scaled, order_BV, axis=-1)
    rank_V = jnp.arange(scaled.shape[-1])
    keep = (top_k <= 0) | (rank_V[None, :] < top_k)
    sorted_BV = jnp.where(keep, sorted_BV, -jnp.inf)
    probs = jax.nn.softmax(sorted_BV, axis=-1)
    # Keep the smallest set of most likely tokens whose mass reaches top_p (at least one token).
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = keep & ((mass_before < top_p) | (rank_V[None, :] == 0))
    sorted_BV = jnp.where(keep, sorted_BV, -jnp.inf)
    choice_B = jax.random.categorical(key, sorted_BV, axis=-1)
    return jnp.take_along_axis(order_BV, choice_B[:, None], axis=-1)[:, 0].astype(jnp.int32)


def _greedy(logits_BV, key, temperature, top_k, top_p):
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)


@jax.jit
def sample_tokens(logits_BV, key, temperature, top_k, top_p):
    """Pick the next token of each row: argmax when temperature is 0, else filtered sampling.

    Filters apply in the order temperature, top-k, top-p, as in transformers' generate. The
    sort over the vocabulary runs only when sampling.
    """
    return jax.lax.cond(temperature > 0, _filtered_sample, _greedy, logits_BV, key, temperature, top_k, top_p)


def bucket(length: int) -> int:
    """Round a length up to the next power of two (at least MIN_BUCKET)."""
    return max(MIN_BUCKET, 1 << (length - 1).bit_length())


@dataclasses.dataclass
class Generation:
    token_ids: list[int]  # generated ids, including the stop token when one ended generation
    stop_reason: str  # "stop_token" or "max_new_tokens"
    prompt_tokens: int
    prefill_seconds: float  # vision, prefill and the first token, compilation included
    first_step_seconds: float  # the first decoding step, which compiles on a new shape
    decode_seconds: float  # every later decoding step

    @property
    def decode_tokens_per_second(self) -> float:
        """Steady decoding speed, leaving out the first step so that compilation does not count."""
        steps = len(self.token_ids) - 2
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else float("nan")


def check_max_new_tokens(max_new_tokens) -> None:
    """Raise ValueError unless `max_new_tokens` is a positive integer."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
        raise ValueError(f"max_new_tokens must be an integer, got {max_new_tokens!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")


def check_context_length(prompt_length: int, visual_tokens: int, max_new_tokens: int, config: ModelConfig) -> None:
    """Raise ValueError when the prompt and the new tokens do not fit in the model's positions."""
    limit = config.text.max_position_embeddings
    if prompt_length + max_new_tokens <= limit:
        return
    raise ValueError(
        f"the prompt has {prompt_length} tokens ({visual_tokens} of them for images), and with "
        f"max_new_tokens={max_new_tokens} that is {prompt_length + max_new_tokens} positions, more than the "
        f"model's context of {limit}; shorten the prompt, use smaller images or lower max_new_tokens"
    )


def generate(
    params,
    config: ModelConfig,
    input_ids: np.ndarray,
    token_types: np.ndarray,
    pixel_values: np.ndarray | None,
    image_grid_thw: np.ndarray | None,
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    stop_ids: tuple[int, ...] = (),
    on_token: Callable[[int], None] | None = None,
) -> Generation:
    """Generate up to `max_new_tokens` tokens for one prompt; `on_token` receives each new id.

    The arguments are checked before the vision tower or any compilation runs.
    """
    check_max_new_tokens(max_new_tokens)
    prompt_length = len(input_ids)
    if prompt_length == 0:
        raise ValueError("input_ids is empty; the prompt must have at least one token")
    check_context_length(prompt_length, int(np.sum(token_types != 0)), max_new_tokens, config)
    capacity = bucket(prompt_length + max_new_tokens)
    dtype = params["text"]["embed"].dtype

    start = time.perf_counter()
    if pixel_values is not None:
        visual, deepstack, _ = model.encode_vision(params, pixel_values, image_grid_thw, config)
    else:
        visual, deepstack = model.empty_visual(config, dtype)
    inputs = model.build_text_inputs([(input_ids, token_types)], image_grid_thw, config,
                                     length=min(bucket(prompt_length), capacity))
    cache = KVCache.create(config.text, batch=1, capacity=capacity, dtype=dtype)
    logits, cache, _ = model.prefill(
        params, inputs.input_ids, inputs.positions, inputs.visual_index, visual, deepstack,
        inputs.last_index, cache, config,
    )
    key = jax.random.PRNGKey(sampling.seed)
    settings = (jnp.float32(sampling.temperature), jnp.int32(sampling.top_k), jnp.float32(sampling.top_p))
    key, step_key = jax.random.split(key)
    token = int(sample_tokens(logits, step_key, *settings)[0])
    prefill_seconds = time.perf_counter() - start

    generated = [token]
    deltas = jnp.asarray(inputs.rope_deltas)
    step_seconds = []
    while True:
        if on_token is not None:
            on_token(token)
        if token in stop_ids:
            reason = "stop_token"
            break
        if len(generated) >= max_new_tokens:
            reason = "max_new_tokens"
            break
        start = time.perf_counter()
        logits, cache = model.decode_step(params, jnp.asarray([token], jnp.int32), deltas, cache, config)
        key, step_key = jax.random.split(key)
        token = int(sample_tokens(logits, step_key, *settings)[0])
        step_seconds.append(time.perf_counter() - start)
        generated.append(token)
    first_step = step_seconds[0] if step_seconds else 0.0
    return Generation(generated, reason, prompt_length, prefill_seconds, first_step, sum(step_seconds[1:]))
