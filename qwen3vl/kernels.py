"""Matrix products in the form that XLA runs fastest on each backend.

XLA's CPU backend (jaxlib 0.10.2) is slow on bfloat16 and float16 products in two cases,
measured with (rows, 2048) x (6144, 2048) bfloat16 products on a 2-core x86 machine with AVX-512 and AMX:

* a product that rounds to bfloat16 inside the kernel: 0.8 GB/s of weights read, against
  10 GB/s when the kernel accumulates and returns float32 (`preferred_element_type`);
* a single row (a decoding step at batch 1): 1.1 GB/s, against 9.7 GB/s for two rows.

So on CPU, low-precision products return float32 and are cast back to the activation dtype
(which is also what PyTorch's bfloat16 CPU matmul computes), and a single row is padded to two.
Other backends and float32 use the plain product.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.cache
def on_cpu() -> bool:
    """Return whether JAX's default backend is the CPU."""
    return jax.default_backend() == "cpu"


def _low_precision_on_cpu(dtype) -> bool:
    return on_cpu() and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def einsum(spec: str, x, w):
    """Compute jnp.einsum(spec, x, w) in x's dtype, accumulating in float32 where that is faster."""
    if not _low_precision_on_cpu(w.dtype):
        return jnp.einsum(spec, x, w)
    return jnp.einsum(spec, x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def project(x_RE, w_FE):
    """Multiply rows x (..., E) by an HF-layout (out, in) matrix w (F, E): returns (..., F)."""
    if not _low_precision_on_cpu(w_FE.dtype):
        return jnp.einsum("...E,FE->...F", x_RE, w_FE)
    rows_RE = x_RE.reshape(-1, x_RE.shape[-1])
    count = rows_RE.shape[0]
    if count == 1:
        rows_RE = jnp.concatenate([rows_RE, jnp.zeros_like(rows_RE)])
    out_RF = jnp.einsum("RE,FE->RF", rows_RE, w_FE, preferred_element_type=jnp.float32)
    return out_RF[:count].astype(x_RE.dtype).reshape(*x_RE.shape[:-1], w_FE.shape[0])
