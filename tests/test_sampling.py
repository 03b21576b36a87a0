"""Token sampling, decoding settings and stop tokens, checked against known distributions and HF.

`sample_tokens` draws one token per row with one key, so a batch of identical rows gives many
independent draws in one call.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from qwen3vl.generate import Sampling, sample_tokens, stop_token_ids
from qwen3vl.processing import Tokenizer

KNOWN_PROBS = np.array([0.4, 0.3, 0.2, 0.1])
DRAWS = 2000
# Three standard deviations of a frequency estimated from 2000 draws is at most 0.034.
FREQUENCY_TOLERANCE = 0.035


def sample(logits, seed=0, temperature=1.0, top_k=0, top_p=1.0) -> np.ndarray:
    tokens = sample_tokens(
        jnp.asarray(logits, jnp.float32), jax.random.PRNGKey(seed),
        jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p),
    )
    return np.asarray(tokens)


def repeated(logits, rows=DRAWS) -> np.ndarray:
    return np.tile(np.asarray(logits, np.float32), (rows, 1))


def frequencies(tokens: np.ndarray, vocab: int) -> np.ndarray:
    return np.bincount(tokens, minlength=vocab) / len(tokens)


def random_logits(rows: int, vocab: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, vocab)).astype(np.float32) * 3


# ---- greedy cases ----


def test_temperature_zero_is_argmax():
    logits = random_logits(64, 97, seed=0)
    for seed in range(3):
        tokens = sample(logits, seed=seed, temperature=0.0, top_k=5, top_p=0.9)
        np.testing.assert_array_equal(tokens, logits.argmax(-1))
    assert tokens.dtype == np.int32


@pytest.mark.parametrize("temperature", [0.3, 1.0, 5.0])
def test_top_k_one_is_argmax(temperature):
    logits = random_logits(64, 97, seed=1)
    for seed in range(5):
        np.testing.assert_array_equal(sample(logits, seed, temperature, top_k=1), logits.argmax(-1))


def test_tiny_top_p_is_argmax():
    logits = random_logits(64, 97, seed=2)
    for seed in range(5):
        np.testing.assert_array_equal(sample(logits, seed, temperature=1.0, top_p=1e-6), logits.argmax(-1))


# ---- filters ----


def test_top_k_three_stays_in_top_three():
    logits = random_logits(1, 50, seed=3)[0]
    top_three = set(np.argsort(-logits)[:3].tolist())
    drawn = set()
    for seed in range(5):
        tokens = sample(repeated(logits), seed, temperature=1.5, top_k=3)
        drawn |= set(tokens.tolist())
    assert drawn == top_three


@pytest.mark.parametrize(
    ("probs", "allowed"),
    [
        ([0.4, 0.3, 0.2, 0.1], {0, 1}),
        # The same distribution shuffled, so that the filter has to sort.
        ([0.2, 0.4, 0.1, 0.3], {1, 3}),
    ],
)
def test_top_p_keeps_smallest_set(probs, allowed):
    """0.4 < 0.5 <= 0.4 + 0.3, so the two most likely tokens form the smallest set with mass 0.5."""
    logits = np.log(np.asarray(probs, np.float32))
    drawn = set()
    for seed in range(5):
        drawn |= set(sample(repeated(logits), seed, temperature=1.0, top_p=0.5).tolist())
    assert drawn == allowed


def test_top_p_half_renormalises_kept_tokens():
    tokens = sample(repeated(np.log(KNOWN_PROBS)), seed=7, temperature=1.0, top_p=0.5)
    expected = np.array([0.4, 0.3, 0.0, 0.0]) / 0.7
    np.testing.assert_allclose(frequencies(tokens, 4), expected, rtol=0, atol=FREQUENCY_TOLERANCE)


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(0.7, 20, 0.8), (1.0, 0, 0.9), (1.3, 5, 1.0)])
def test_filters_match_hf_warpers(temperature, top_k, top_p):
    """Apply HF's temperature, top-k and top-p warpers in generate's order and compare the result."""
    logits = random_logits(1, 64, seed=4)
    warped = torch.from_numpy(logits)
    warped = TemperatureLogitsWarper(temperature)(None, warped)
    if top_k:
        warped = TopKLogitsWarper(top_k)(None, warped)
    warped = TopPLogitsWarper(top_p)(None, warped)
    allowed = set(np.flatnonzero(np.isfinite(warped[0].numpy())).tolist())
    expected = torch.softmax(warped[0], -1).numpy()

    tokens = np.concatenate([sample(repeated(logits[0]), seed, temperature, top_k, top_p) for seed in range(2)])
    assert set(tokens.tolist()) <= allowed
    np.testing.assert_allclose(frequencies(tokens, 64), expected, rtol=0, atol=FREQUENCY_TOLERANCE)


# ---- randomness ----


def test_same_seed_gives_same_tokens():
    logits = random_logits(32, 97, seed=5)
    first = sample(logits, seed=11, temperature=1.0)
    np.testing.assert_array_equal(sample(logits, seed=11, temperature=1.0), first)
    assert not np.array_equal(sample(logits, seed=12, temperature=1.0), first)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_frequencies_match_softmax(temperature):
    logits = np.log(KNOWN_PROBS).astype(np.float32)
    tokens = sample(repeated(logits), seed=3, temperature=temperature)
    scaled = np.exp(logits / temperature)
    np.testing.assert_allclose(frequencies(tokens, 4), scaled / scaled.sum(), rtol=0, atol=FREQUENCY_TOLERANCE)


# ---- Sampling settings ----


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"temperature": float("nan")}, "temperature must be >= 0"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ],
)
def test_invalid_sampling_raises(settings, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**settings)


def test_default_sampling_is_greedy():
    assert Sampling() == Sampling(temperature=0.0, top_k=0, top_p=1.0, seed=0)


def test_untied_generation_config_samples(tiny_untied):
    hf = GenerationConfig.from_pretrained(tiny_untied)
    sampling = Sampling.from_generation_config(tiny_untied)
    assert hf.do_sample is True
    assert sampling == Sampling(temperature=hf.temperature, top_k=hf.top_k, top_p=hf.top_p)
    assert (sampling.temperature, sampling.top_k, sampling.top_p) == (0.7, 20, 0.8)


def test_tied_generation_config_is_greedy(tiny_tied):
    assert GenerationConfig.from_pretrained(tiny_tied).do_sample is False
    assert Sampling.from_generation_config(tiny_tied) == Sampling()


def test_sampling_overrides_win(tiny_untied, tiny_tied):
    untied = Sampling.from_generation_config(tiny_untied, temperature=0.0, seed=9)
    assert untied == Sampling(temperature=0.0, top_k=20, top_p=0.8, seed=9)
    tied = Sampling.from_generation_config(tiny_tied, temperature=1.0, top_k=5)
    assert tied == Sampling(temperature=1.0, top_k=5, top_p=1.0)


def test_sampling_none_overrides_are_ignored(tiny_untied):
    sampling = Sampling.from_generation_config(tiny_untied, temperature=None, top_k=None, top_p=None)
    assert sampling == Sampling.from_generation_config(tiny_untied)


def test_sampling_without_generation_config_is_greedy(tmp_path):
    assert Sampling.from_generation_config(tmp_path) == Sampling()


@pytest.mark.parametrize("unset", ["absent", "null"])
def test_sampling_unset_fields_take_hf_defaults(tmp_path, unset):
    """HF's generate fills unset temperature, top_k and top_p with 1.0, 50 and 1.0 when sampling."""
    raw = {"do_sample": True}
    if unset == "null":
        raw.update(temperature=None, top_k=None, top_p=None)
    (tmp_path / "generation_config.json").write_text(json.dumps(raw))
    sampling = Sampling.from_generation_config(tmp_path)
    assert (sampling.temperature, sampling.top_k, sampling.top_p) == (1.0, 50, 1.0)


# ---- stop tokens ----


@pytest.mark.parametrize("name", ["tiny_tied", "tiny_untied"])
def test_stop_token_ids_of_fixtures(request, name):
    checkpoint = request.getfixturevalue(name)
    ids = stop_token_ids(checkpoint, Tokenizer.from_dir(checkpoint))
    # <|endoftext|> and <|im_end|>, which generation_config.json also lists as eos.
    assert ids == (151643, 151645)
    assert set(GenerationConfig.from_pretrained(checkpoint).eos_token_id) <= set(ids)


def test_stop_token_ids_add_single_eos(tiny_tied, tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 151668}))
    assert stop_token_ids(tmp_path, Tokenizer.from_dir(tiny_tied)) == (151643, 151645, 151668)
