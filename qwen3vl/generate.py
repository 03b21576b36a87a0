"""Generation: prefill, a host loop over the jitted decoding step, sampling and stop conditions.

Prompt lengths and cache capacities are rounded up to buckets, so prompts of similar length
reuse one compiled prefill and one compiled decoding step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from qwen3vl import kernels, model
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


# top-k sampling draws from this many best candidates, found with lax.top_k. A full vocabulary
# sort is 200 times slower on CPU (59 ms against 0.3 ms for 151,936 logits).
TOP_K_CANDIDATES = 256


def _sample_sorted(sorted_BC, order_BC, key, top_k, top_p):
    """Sample from logits sorted in descending order after top-k and top-p filtering."""
    rank_C = jnp.arange(sorted_BC.shape[-1])
    keep = (top_k <= 0) | (rank_C[None, :] < top_k)
    sorted_BC = jnp.where(keep, sorted_BC, -jnp.inf)
    probs = jax.nn.softmax(sorted_BC, axis=-1)
    # Keep the smallest set of most likely tokens whose mass reaches top_p (at least one token).
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = keep & ((mass_before < top_p) | (rank_C[None, :] == 0))
    choice_B = jax.random.categorical(key, jnp.where(keep, sorted_BC, -jnp.inf), axis=-1)
    return jnp.take_along_axis(order_BC, choice_B[:, None], axis=-1)[:, 0].astype(jnp.int32)


def _greedy(logits_BV, key, temperature, top_k, top_p):
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)


def _unfiltered_sample(logits_BV, key, temperature, top_k, top_p):
    return jax.random.categorical(key, logits_BV / temperature, axis=-1).astype(jnp.int32)


def _top_k_sample(logits_BV, key, temperature, top_k, top_p):
    candidates = min(TOP_K_CANDIDATES, logits_BV.shape[-1])
    sorted_BC, order_BC = jax.lax.top_k(logits_BV / temperature, candidates)
    return _sample_sorted(sorted_BC, order_BC, key, top_k, top_p)


def _full_sort_sample(logits_BV, key, temperature, top_k, top_p):
    scaled = logits_BV / temperature
    order_BV = jnp.argsort(-scaled, axis=-1)
    return _sample_sorted(jnp.take_along_axis(scaled, order_BV, axis=-1), order_BV, key, top_k, top_p)


@jax.jit
def sample_tokens(logits_BV, key, temperature, top_k, top_p):
    """Pick the next token of each row: argmax when temperature is 0, else filtered sampling.

    Filters apply in the order temperature, top-k, top-p, as in transformers' generate. Only
    top-p without top-k, or a top-k above TOP_K_CANDIDATES, sorts the whole vocabulary.
    """
    candidates = min(TOP_K_CANDIDATES, logits_BV.shape[-1])
    branch = jnp.where(temperature <= 0, 0,
                       jnp.where((top_k <= 0) & (top_p >= 1), 1,
                                 jnp.where((top_k > 0) & (top_k <= candidates), 2, 3)))
    branches = (_greedy, _unfiltered_sample, _top_k_sample, _full_sort_sample)
    return jax.lax.switch(branch, branches, logits_BV, key, temperature, top_k, top_p)


def bucket(length: int) -> int:
    """Round a length up to the next power of two (at least MIN_BUCKET)."""
    return max(MIN_BUCKET, 1 << (length - 1).bit_length())


@dataclasses.dataclass
class Generation:
    token_ids: list[int]  # generated ids, including the stop token when one ended generation
    stop_reason: str  # "stop_token" or "max_new_tokens"
    prompt_tokens: int
    prefill_seconds: float  # vision, prefill and the first token, compilation included
    first_chunk_seconds: float  # the first decoding call (one token), which compiles on a new shape
    decode_seconds: float  # every later decoding chunk
    decode_steps: int  # tokens generated by those later chunks

    @property
    def decode_tokens_per_second(self) -> float:
        """Steady decoding speed, leaving out the first chunk so that compilation does not count."""
        if self.decode_steps > 0 and self.decode_seconds > 0:
            return self.decode_steps / self.decode_seconds
        return float("nan")


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


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
    """Everything the on-device decoding loop carries from one step to the next."""

    cache: KVCache
    tokens: jax.Array  # int32 (batch, token buffer): generated ids, PAD_ID after a row's stop token
    count: jax.Array  # int32 (): number of tokens generated so far in every row
    done: jax.Array  # bool (batch,): the row has produced a stop token
    key: jax.Array  # PRNG key for sampling


PAD_ID = -1
DECODE_CHUNK = 8  # tokens per on-device loop call: the streaming granularity


def decode_chunk(params, state: DecodeState, limit, rope_deltas_B, sampling_settings, stop_ids,
                 config: ModelConfig) -> DecodeState:
    """Decode on device until `limit` tokens exist in every row or every row is done.

    One `lax.while_loop` runs the decoding step, sampling and the stop check, so the host is
    involved only once per call. `state` is donated.
    """
    return _jitted_decode_chunk()(params, state, limit, rope_deltas_B, sampling_settings, stop_ids, config)


@functools.cache
def _jitted_decode_chunk():
    """Jit the decoding loop, with loop-invariant code motion off on XLA's CPU backend.

    XLA's CPU backend converts the bfloat16 embedding table to float32 for the lookup, and
    normally fuses that conversion into reading the one row it needs. That pass moved the
    conversion out of the loop, so every call converted the whole table: 1.2 GB in float32 at
    the 2B shape, 31 ms per token at batch 1.
    """
    options = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"} if kernels.on_cpu() else {}
    return jax.jit(_decode_loop, static_argnames=("config",), donate_argnames=("state",), compiler_options=options)


def _decode_loop(params, state: DecodeState, limit, rope_deltas_B, sampling_settings, stop_ids,
                 config: ModelConfig) -> DecodeState:
    temperature, top_k, top_p = sampling_settings

    def running(state: DecodeState):
        return (state.count < limit) & ~jnp.all(state.done)

    def step(state: DecodeState) -> DecodeState:
        previous_B = jax.lax.dynamic_index_in_dim(state.tokens, state.count - 1, axis=1, keepdims=False)
        logits_BV, cache = model.decode_step(params, previous_B, rope_deltas_B, state.cache, config)
        key, step_key = jax.random.split(state.key)
        token_B = sample_tokens(logits_BV, step_key, temperature, top_k, top_p)
        token_B = jnp.where(state.done, PAD_ID, token_B)
        tokens = jax.lax.dynamic_update_index_in_dim(state.tokens, token_B, state.count, axis=1)
        done = state.done | jnp.isin(token_B, stop_ids)
        return DecodeState(cache, tokens, state.count + 1, done, key)

    return jax.lax.while_loop(running, step, state)


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
    prompt = Prompt(input_ids, token_types, pixel_values, image_grid_thw)
    stream = None if on_token is None else (lambda row, token: on_token(token))
    return generate_batch(params, config, [prompt], max_new_tokens, sampling, stop_ids, stream)[0]


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One row of a batch: token ids, token types and that prompt's images (or None)."""

    input_ids: np.ndarray  # int32 (S,)
    token_types: np.ndarray  # int8 (S,): 0 text, 1 image, 2 video
    pixel_values: np.ndarray | None  # float32 (patches, patch_dim)
    image_grid_thw: np.ndarray | None  # int64 (images, 3)


def generate_batch(
    params,
    config: ModelConfig,
    prompts: list[Prompt],
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    stop_ids: tuple[int, ...] = (),
    on_token: Callable[[int, int], None] | None = None,
) -> list[Generation]:
    """Generate for several prompts at once; `on_token(row, id)` receives each new id of each row.

    Rows are right-padded to one bucketed length and decoded together. A row that produces a
    stop token stops growing; the batch stops when every row has stopped or has
    `max_new_tokens` tokens.
    """
    check_max_new_tokens(max_new_tokens)
    for row, prompt in enumerate(prompts):
        if len(prompt.input_ids) == 0:
            raise ValueError(f"prompt {row} has no tokens; every prompt needs at least one token")
        visual = int(np.sum(prompt.token_types != 0))
        check_context_length(len(prompt.input_ids), visual, max_new_tokens, config)
    longest = max(len(prompt.input_ids) for prompt in prompts)
    capacity = bucket(longest + max_new_tokens)
    dtype = params["text"]["embed"].dtype

    start = time.perf_counter()
    grids = [p.image_grid_thw for p in prompts if p.image_grid_thw is not None]
    image_grid_thw = np.concatenate(grids) if grids else None
    if grids:
        pixel_values = np.concatenate([p.pixel_values for p in prompts if p.pixel_values is not None])
        visual, deepstack, _ = model.encode_vision(params, pixel_values, image_grid_thw, config)
    else:
        visual, deepstack = model.empty_visual(config, dtype)
    rows = [(p.input_ids, p.token_types) for p in prompts]
    inputs = model.build_text_inputs(rows, image_grid_thw, config, length=bucket(longest))
    cache = KVCache.create(config.text, batch=len(prompts), capacity=capacity, dtype=dtype)
    logits, cache, _ = model.prefill(
        params, inputs.input_ids, inputs.positions, inputs.visual_index, visual, deepstack,
        inputs.last_index, cache, config,
    )
    settings = (jnp.float32(sampling.temperature), jnp.int32(sampling.top_k), jnp.float32(sampling.top_p))
    key, step_key = jax.random.split(jax.random.PRNGKey(sampling.seed))
    first_B = sample_tokens(logits, step_key, *settings)
    stops = jnp.asarray(stop_ids or (PAD_ID,), jnp.int32)

    # The token buffer is bucketed like the cache so that other max_new_tokens reuse the compile.
    tokens = jnp.full((len(prompts), bucket(max_new_tokens)), PAD_ID, jnp.int32).at[:, 0].set(first_B)
    state = DecodeState(cache, tokens, jnp.int32(1), jnp.isin(first_B, stops), key)
    emitted = _emit(state, 0, on_token)
    prefill_seconds = time.perf_counter() - start

    deltas = jnp.asarray(inputs.rope_deltas)
    chunk_seconds, chunk_tokens = [], []
    while emitted < max_new_tokens and not bool(jnp.all(state.done)):
        start = time.perf_counter()
        # The first call decodes one token: it carries any compilation, so that the later chunks
        # measure the steady speed even for short answers.
        step = 1 if not chunk_seconds else DECODE_CHUNK
        limit = jnp.int32(min(emitted + step, max_new_tokens))
        state = decode_chunk(params, state, limit, deltas, settings, stops, config)
        count = _emit(state, emitted, on_token)
        chunk_seconds.append(time.perf_counter() - start)
        chunk_tokens.append(count - emitted)
        emitted = count
    return _results(np.asarray(state.tokens)[:, :emitted], stop_ids, prompts, prefill_seconds,
                    chunk_seconds, chunk_tokens)


def _emit(state: DecodeState, emitted: int, on_token) -> int:
    """Stream the ids generated since `emitted` to on_token; return the new count."""
    count = int(state.count)
    if on_token is not None and count > emitted:
        # Copy the whole small buffer: slicing on device would compile once per slice length.
        new = np.asarray(state.tokens)[:, emitted:count]
        for row, ids in enumerate(new):
            for token in ids[ids != PAD_ID]:
                on_token(row, int(token))
    return count


def _results(tokens: np.ndarray, stop_ids, prompts, prefill_seconds, chunk_seconds, chunk_tokens) -> list[Generation]:
    results = []
    for row, ids in enumerate(tokens):
        ids = [int(token) for token in ids if token != PAD_ID]
        stopped = bool(ids) and ids[-1] in stop_ids
        results.append(Generation(
            token_ids=ids,
            stop_reason="stop_token" if stopped else "max_new_tokens",
            prompt_tokens=len(prompts[row].input_ids),
            prefill_seconds=prefill_seconds,
            first_chunk_seconds=chunk_seconds[0] if chunk_seconds else 0.0,
            decode_seconds=sum(chunk_seconds[1:]),
            decode_steps=sum(chunk_tokens[1:]),
        ))
    return results
