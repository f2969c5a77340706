"""Memory planner: per-GPU memory of fine-tuning an encoder, and the per-GPU batch and gradient
accumulation that reach a target global batch.

Formula (bytes):

* weights  = 4 P (+ 2 P float16 copy with mixed precision), gradients = 4 P,
  AdamW moments = 8 P  ->  16 P (18 P mixed), P from the architecture (ALBERT counts its shared
  block once: that is why xlarge's 54 M parameters are cheap);
* activations kept for the backward pass, per example, with L = sequence length, H = hidden,
  I = intermediate, A = heads, E = embedding size (ALBERT shares weights, not activations, so
  every layer counts):

  - H-wide: ``layers x c_h L H + L (E + 4 H)`` values at 4 bytes.  Under mixed precision too:
    LayerNorm runs in float32 and every block boundary keeps a float32 and a float16 copy;
  - I-wide (feed-forward): ``layers x c_i L I`` values at 4 bytes, 2 with mixed_float16;
  - attention: ``layers x c_a A L^2`` values at 4 bytes (scores and probabilities; the softmax
    runs in float32 under mixed precision as well);

  c_h = 17, c_i = 6, c_a = 2, calibrated on CPU by ``benchmarks/planner_check.py`` (float32:
  predicted / measured 0.96-1.06 on three shapes; mixed_float16: 1.00-1.09);
* shared-block gradients (ALBERT): TensorFlow's autodiff makes one gradient tensor per *use* of
  a shared weight and sums them at the end (AddN), so a block used k times holds k - 1 extra
  copies of its gradient, 4 x block_params x (k - 1) bytes: 4.6 GiB for xlarge's 24 uses of a
  50 M-parameter block. Measured: an xlarge worker on CPU peaked at 7.5 GiB RSS with seq 32,
  batch 1, where weights + AdamW are 0.9 GiB;
* workspace: a fixed allowance for the framework / CUDA context (default 1 GiB).  Measured on
  CPU (ALBERT-large shape, 16 M parameters, seq 32, batch 1): a training step needs 390 MiB more
  than gradients + shared copies in float32, and mixed precision another 150 MiB (float16 copies
  of the shared weights), both inside this allowance.

``check``: ``benchmarks/planner_check.py`` measures the activation term on CPU for small shapes.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from albert_ray.model.encoder_config import EncoderConfig

C_H, C_I, C_A = 17, 6, 2  # calibrated: benchmarks/planner_check.py
GIB = 1024**3


def parse_size(text: str) -> int:
    """``16GiB``, ``24G``, ``800MiB``, ``1.5 GiB`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"size {text!r}: expected a number with a unit, e.g. 16GiB or 800MiB")
    return int(float(m.group(1)) * 1024 ** "BKMGT".index((m.group(2) or "B").upper()))


def count_parameters(c: EncoderConfig, num_labels: int = 2) -> int:
    """Encoder (+ a small head) parameters, in closed form."""
    h, i, e = c.hidden_size, c.intermediate_size, c.embedding_size or c.hidden_size
    block = 4 * (h * h + h) + h * i + i + i * h + h + 4 * h
    if c.layout == "bert":
        emb = c.vocab_size * h + (c.type_vocab_size + c.max_position_embeddings + 2) * h
        blocks = c.num_hidden_layers * block
    elif c.layout == "albert_brightmart":
        emb = c.vocab_size * e + e * h + (c.type_vocab_size + c.max_position_embeddings + 2) * h
        blocks = block
    else:
        emb = (c.vocab_size + c.type_vocab_size + c.max_position_embeddings + 2) * e + (
            e * h + h if e != h else 0
        )
        blocks = len(c.used_groups()) * c.inner_group_num * block
    return emb + blocks + h * num_labels + num_labels


def hidden_values_per_example(c: EncoderConfig, seq_len: int) -> int:
    """H-wide activation values (and the embeddings) kept for the backward pass."""
    return _layers(c) * C_H * seq_len * c.hidden_size + seq_len * (
        (c.embedding_size or c.hidden_size) + 4 * c.hidden_size
    )


def intermediate_values_per_example(c: EncoderConfig, seq_len: int) -> int:
    """I-wide (feed-forward) activation values kept for the backward pass."""
    return _layers(c) * C_I * seq_len * c.intermediate_size


def attention_values_per_example(c: EncoderConfig, seq_len: int) -> int:
    """Attention scores / probabilities kept for the backward pass (float32 in both precisions)."""
    return _layers(c) * C_A * c.num_attention_heads * seq_len**2


def _layers(c: EncoderConfig) -> int:
    return c.num_hidden_layers * (c.inner_group_num if c.layout == "albert_google" else 1)


def shared_gradient_bytes(c: EncoderConfig) -> int:
    """Extra gradient copies of ALBERT's shared blocks (one per use beyond the first)."""
    h, i = c.hidden_size, c.intermediate_size
    block = 4 * (h * h + h) + h * i + i + i * h + h + 4 * h
    if c.layout == "albert_brightmart":
        return 4 * block * (c.num_hidden_layers - 1)
    if c.layout == "albert_google":
        uses = [
            sum(1 for layer in range(c.num_hidden_layers) if c.group_of_layer(layer) == g)
            for g in c.used_groups()
        ]
        return 4 * block * c.inner_group_num * sum(u - 1 for u in uses)
    return 0


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    weights_optimizer_bytes: int
    shared_gradient_bytes: int
    activation_bytes_per_example: int
    attention_bytes_per_example: int
    workspace_bytes: int

    def total(self, batch: int) -> int:
        return self.fixed_bytes + batch * self.activation_bytes_per_example

    @property
    def fixed_bytes(self) -> int:
        return self.weights_optimizer_bytes + self.shared_gradient_bytes + self.workspace_bytes


def estimate(
    c: EncoderConfig, seq_len: int, mixed_precision: bool = False, workspace: int = GIB
) -> MemoryEstimate:
    p = count_parameters(c)
    attention = 4 * attention_values_per_example(c, seq_len)
    activations = (
        4 * hidden_values_per_example(c, seq_len)
        + attention
        + (2 if mixed_precision else 4) * intermediate_values_per_example(c, seq_len)
    )
    return MemoryEstimate(
        parameters=p,
        weights_optimizer_bytes=(18 if mixed_precision else 16) * p,
        shared_gradient_bytes=shared_gradient_bytes(c),
        activation_bytes_per_example=activations,
        attention_bytes_per_example=attention,
        workspace_bytes=workspace,
    )


@dataclass(frozen=True)
class Plan:
    per_gpu_batch: int
    accumulation_steps: int
    global_batch: int
    estimated_bytes: int
    gpu_bytes: int


def recommend(
    c: EncoderConfig,
    gpu_bytes: int,
    seq_len: int,
    target_global_batch: int = 32,
    num_gpus: int = 1,
    mixed_precision: bool = False,
    headroom: float = 0.9,
) -> Plan:
    """The largest power-of-two per-GPU batch that fits ``headroom`` of the card, and the
    accumulation steps that reach ``target_global_batch`` over ``num_gpus``.

    Raises:
        ValueError: not even one example fits.
    """
    est = estimate(c, seq_len, mixed_precision)
    budget = gpu_bytes * headroom - est.fixed_bytes
    fit = int(budget // est.activation_bytes_per_example) if budget > 0 else 0
    if fit < 1:
        raise ValueError(
            f"{c.source} at seq_len={seq_len} does not fit in {gpu_bytes / GIB:.1f} GiB "
            f"(weights, optimizer and shared-block gradients alone: {est.fixed_bytes / GIB:.2f} GiB); try "
            f"mixed precision or a shorter sequence"
        )
    per_gpu_target = max(1, math.ceil(target_global_batch / num_gpus))
    batch = 1 << int(math.log2(min(fit, per_gpu_target)))
    accum = max(1, math.ceil(per_gpu_target / batch))
    return Plan(batch, accum, batch * accum * num_gpus, est.total(batch), gpu_bytes)


def format_plan(c: EncoderConfig, est: MemoryEstimate, plan: Plan) -> str:
    rows = [
        ("parameters", f"{est.parameters:,}"),
        ("weights + gradients + AdamW", f"{est.weights_optimizer_bytes / GIB:.2f} GiB"),
        ("shared-block gradient copies", f"{est.shared_gradient_bytes / GIB:.2f} GiB"),
        (
            "activations per example",
            f"{est.activation_bytes_per_example / 2**20:.1f} MiB "
            f"(attention {est.attention_bytes_per_example / 2**20:.1f} MiB)",
        ),
        ("workspace", f"{est.workspace_bytes / GIB:.2f} GiB"),
        ("per-GPU batch", str(plan.per_gpu_batch)),
        ("accumulation steps", str(plan.accumulation_steps)),
        ("global batch", str(plan.global_batch)),
        (
            "estimated per-GPU memory",
            f"{plan.estimated_bytes / GIB:.2f} GiB of {plan.gpu_bytes / GIB:.1f} GiB",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def as_dict(est: MemoryEstimate, plan: Plan) -> dict:
    return {**asdict(est), **asdict(plan)}
