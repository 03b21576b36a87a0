"""Capture the same named stages from HF transformers (forward hooks) and from the JAX model.

Both sides start from the same prompt and image files. HF's processor (PIL backend) output is
compared with ours as its own stage, and each model then runs on its own side's processed inputs. Stage names:

    processor.input_ids, processor.pixel_values, processor.image_grid_thw
    vision.patch_embed, vision.pos_embed, vision.block.{i}, vision.merger, vision.deepstack.{j}
    text.position_ids, text.rope_deltas, text.input_embeds, text.layer.{i} (after DeepStack),
    text.final_norm, text.logits
    decode.{step}.logits, decode.keys.{layer}, decode.values.{layer}

Decoding is teacher-forced: the JAX side is fed HF's greedy tokens, so one step's error cannot
change the next step's input, and each step's logits compare like for like.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch
from transformers import AutoImageProcessor, AutoProcessor, Qwen3VLForConditionalGeneration
from transformers.image_utils import load_image as hf_load_image
from transformers.vision_utils import get_vision_interpolation_indices_and_weights

from qwen3vl import model as qmodel
from qwen3vl.cache import KVCache
from qwen3vl.config import ModelConfig
from qwen3vl.generate import bucket
from qwen3vl.processing import Processor, load_image
from qwen3vl.weights import load_params

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(frozen=True)
class Case:
    """One parity case: a checkpoint, a prompt, its images and how many tokens to decode."""

    name: str
    checkpoint: Path
    prompt: str
    images: tuple[Path, ...] = ()
    decode_steps: int = 0


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).numpy() if tensor.is_floating_point() else tensor.numpy()


class HFSide:
    """A transformers model and processor for one checkpoint and dtype."""

    def __init__(self, checkpoint: Path, dtype: str):
        self.model = Qwen3VLForConditionalGeneration.from_pretrained(checkpoint, dtype=TORCH_DTYPES[dtype]).eval()
        self.processor = AutoProcessor.from_pretrained(checkpoint)
        # The PIL backend is the one whose resize our preprocessing reproduces exactly.
        self.processor.image_processor = AutoImageProcessor.from_pretrained(checkpoint, backend="pil")

    def inputs(self, case: Case):
        content = [{"type": "image"} for _ in case.images] + [{"type": "text", "text": case.prompt}]
        text = self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        images = [hf_load_image(str(path)) for path in case.images] or None
        return self.processor(text=[text], images=images, return_tensors="pt")

    def capture(self, case: Case) -> dict[str, np.ndarray]:
        inputs = self.inputs(case)
        stages = {"processor.input_ids": _to_numpy(inputs["input_ids"][0])}
        if case.images:
            stages["processor.pixel_values"] = _to_numpy(inputs["pixel_values"])
            stages["processor.image_grid_thw"] = _to_numpy(inputs["image_grid_thw"])

        handles = self._register_hooks(stages, inputs)
        self.model.model.rope_deltas = None  # HF keeps the last prompt's deltas between calls
        try:
            with torch.no_grad():
                output = self.model(**inputs)
        finally:
            for handle in handles:
                handle.remove()
        stages["text.logits"] = _to_numpy(output.logits[0])
        # HF's generate sets a zero delta for text-only prompts; its plain forward leaves None.
        deltas = self.model.model.rope_deltas
        deltas = np.zeros(1, np.int64) if deltas is None else _to_numpy(deltas.reshape(-1))
        stages = _insert_after(stages, "text.position_ids", "text.rope_deltas", deltas)
        if case.decode_steps:
            stages.update(self._decode(inputs, case.decode_steps))
        return stages

    def _register_hooks(self, stages: dict, inputs) -> list:
        visual = self.model.model.visual
        language = self.model.model.language_model
        handles = []

        def keep(name, index=None):
            def hook(module, args, output):
                value = output if index is None else output[index]
                stages[name] = _to_numpy(value)
            return hook

        def keep_input(name):
            def hook(module, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                stages[name] = _to_numpy(hidden[0])
            return hook

        def keep_position_table(module, args, output):
            # HF sums the gathered table rows with its interpolation weights inside forward().
            _, weights = get_vision_interpolation_indices_and_weights(
                inputs["image_grid_thw"], visual.num_grid_per_side, mode="bilinear", align_corners=True,
                spatial_merge_size=visual.spatial_merge_size,
            )
            stages["vision.pos_embed"] = _to_numpy((output * weights[:, :, None]).sum(1))

        def keep_text_inputs(module, args, kwargs):
            embeds = kwargs["inputs_embeds"]
            stages["text.input_embeds"] = _to_numpy(embeds[0])
            positions = kwargs["position_ids"]
            if positions is None:  # text only: HF's text model uses 0..S-1 on all three rows
                positions = torch.arange(embeds.shape[1]).expand(3, 1, -1)
            stages["text.position_ids"] = _to_numpy(positions[-3:, 0])

        handles.append(visual.patch_embed.register_forward_hook(keep("vision.patch_embed")))
        handles.append(visual.pos_embed.register_forward_hook(keep_position_table))
        for i, block in enumerate(visual.blocks):
            handles.append(block.register_forward_hook(keep(f"vision.block.{i}")))
        handles.append(visual.merger.register_forward_hook(keep("vision.merger")))
        for j, merger in enumerate(visual.deepstack_merger_list):
            handles.append(merger.register_forward_hook(keep(f"vision.deepstack.{j}")))
        handles.append(language.register_forward_pre_hook(keep_text_inputs, with_kwargs=True))
        # A layer's output after its DeepStack addition is the next layer's input (or the norm's).
        followers = list(language.layers[1:]) + [language.norm]
        for i, follower in enumerate(followers):
            handles.append(follower.register_forward_pre_hook(keep_input(f"text.layer.{i}"), with_kwargs=True))
        handles.append(language.norm.register_forward_hook(keep("text.final_norm", index=0)))
        return handles

    def _decode(self, inputs, steps: int) -> dict[str, np.ndarray]:
        with torch.no_grad():
            output = self.model.generate(
                **inputs, do_sample=False, max_new_tokens=steps, min_new_tokens=steps,
                output_logits=True, return_dict_in_generate=True,
            )
        prompt_length = inputs["input_ids"].shape[1]
        stages = {"decode.tokens": _to_numpy(output.sequences[0, prompt_length:])}
        for step, logits in enumerate(output.logits):
            stages[f"decode.{step}.logits"] = _to_numpy(logits[0])
        for layer, cached in enumerate(output.cache.layers):
            # Both caches store (batch, kv_heads, positions, head_dim).
            stages[f"decode.keys.{layer}"] = _to_numpy(cached.keys[0])
            stages[f"decode.values.{layer}"] = _to_numpy(cached.values[0])
        return stages


class JaxSide:
    """Our model and processor for one checkpoint and dtype."""

    def __init__(self, checkpoint: Path, dtype: str):
        self.config = ModelConfig.from_dir(checkpoint)
        self.params = load_params(checkpoint, self.config, dtype)
        self.processor = Processor.from_dir(checkpoint)
        self.dtype = self.params["text"]["embed"].dtype

    def capture(self, case: Case, forced_tokens: np.ndarray | None = None) -> dict[str, np.ndarray]:
        inputs = self.processor(case.prompt, [load_image(path) for path in case.images])
        stages = {"processor.input_ids": inputs.input_ids}
        if case.images:
            stages["processor.pixel_values"] = inputs.pixel_values
            stages["processor.image_grid_thw"] = inputs.image_grid_thw
            visual, deepstack, captured = qmodel.encode_vision(
                self.params, inputs.pixel_values, inputs.image_grid_thw, self.config, capture=True
            )
            stages.update(captured)
        else:
            visual, deepstack = qmodel.empty_visual(self.config, self.dtype)

        prompt_length = len(inputs.input_ids)
        capacity = bucket(prompt_length + case.decode_steps)
        text_inputs = qmodel.build_text_inputs(
            [(inputs.input_ids, inputs.token_types)], inputs.image_grid_thw, self.config, length=bucket(prompt_length)
        )
        stages["text.position_ids"] = text_inputs.positions[:, 0, :prompt_length]
        stages["text.rope_deltas"] = text_inputs.rope_deltas
        cache = KVCache.create(self.config.text, 1, capacity, self.dtype)
        logits, cache, captured = qmodel.prefill(
            self.params, text_inputs.input_ids, text_inputs.positions, text_inputs.visual_index, visual, deepstack,
            text_inputs.last_index, cache, self.config, capture=True,
        )
        for name, value in captured.items():
            stages[name] = value[0, :prompt_length]
        if case.decode_steps:
            stages.update(self._decode(logits, cache, text_inputs.rope_deltas, forced_tokens, case.decode_steps))
        return {name: np.asarray(jnp.asarray(value, jnp.float32) if _is_float(value) else value)
                for name, value in stages.items()}

    def _decode(self, logits, cache, rope_deltas, forced_tokens, steps: int) -> dict:
        stages = {"decode.0.logits": logits[0]}
        deltas = jnp.asarray(rope_deltas)
        for step in range(1, steps):
            token = jnp.asarray(forced_tokens[step - 1: step], jnp.int32)
            logits, cache = qmodel.decode_step(self.params, token, deltas, cache, self.config)
            stages[f"decode.{step}.logits"] = logits[0]
        length = int(cache.lengths[0])
        for layer in range(self.config.text.num_hidden_layers):
            stages[f"decode.keys.{layer}"] = cache.layer_keys(layer)[0, :, :length]
            stages[f"decode.values.{layer}"] = cache.layer_values(layer)[0, :, :length]
        return stages


def _insert_after(stages: dict, anchor: str, name: str, value) -> dict:
    """Return the stages with (name, value) placed right after `anchor`, keeping execution order."""
    ordered = {}
    for key, existing in stages.items():
        ordered[key] = existing
        if key == anchor:
            ordered[name] = value
    return ordered


def _is_float(value) -> bool:
    return jnp.issubdtype(jnp.asarray(value).dtype, jnp.floating)
