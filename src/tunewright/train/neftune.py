"""NEFTune: uniform noise on the input embeddings while training (`train.neftune_alpha`).

Jain et al. 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning": in training forwards only,
each example's token embeddings get noise drawn uniformly from [-1, 1] and scaled by alpha / sqrt(L * d),
L the example's length and d the hidden size. TRL (`neftune_noise_alpha`), Axolotl and LLaMA-Factory hook
the embedding layer's output and take L as the row's length. Our rows pack several examples, where the
row's length would shrink an example's noise by whatever it was packed with; here L is each example's own
length, found from the restarted position ids as the packed attention finds its examples.

The position ids are read where both training paths pass them, the decoder backbone (the chunked loss
calls it directly, the plain path through the causal LM), and the noise is added to the embedding
layer's output. Evaluation (`module.eval()`), generation and anything after training never
see noise: the hook does nothing outside training mode and `run.py` removes it when training ends.
The noise comes from torch's global generator, which checkpoints save and resume restores.
"""
from __future__ import annotations

import torch

from .packed_attention import example_starts


def example_lengths_per_token(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T): the length of the example each token belongs to (examples split as packed attention splits them)."""
    example = example_starts(position_ids).flatten().cumsum(0) - 1
    return torch.bincount(example)[example].view_as(position_ids)


def noisy_embeddings(embeds: torch.Tensor, alpha: float, position_ids: torch.Tensor | None) -> torch.Tensor:
    """`embeds` (B, T, d) plus NEFTune's noise, each example's scaled by alpha / sqrt(its length * d)."""
    batch, width, hidden = embeds.shape
    if position_ids is None:
        lengths = torch.full((batch, width), width, device=embeds.device)
    else:
        lengths = example_lengths_per_token(position_ids.expand(batch, width))
    scale = alpha / torch.sqrt(lengths.to(torch.float32) * hidden)
    noise = torch.empty_like(embeds).uniform_(-1.0, 1.0)
    return embeds + noise * scale.unsqueeze(-1).to(embeds.dtype)


def decoder_backbone(model) -> torch.nn.Module:
    """The module that embeds `input_ids` and runs the layers (a causal LM's `model`, under PEFT too)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    if backbone is None or not hasattr(backbone, "get_input_embeddings"):
        raise ValueError(f"train.neftune_alpha: no decoder backbone found in {type(base).__name__}")
    return backbone


class EmbeddingNoise:
    """The two hooks that noise `model`'s training forwards; `remove()` takes both off.

    The backbone's pre-hook only reads the position ids of the call; the embedding layer's hook adds the
    noise to its output. Noising the output (not swapping the ids for embeddings before the backbone runs)
    keeps it after any wrapper's own pre-forward work, such as FSDP gathering the embedding's shards.
    """

    def __init__(self, model, alpha: float):
        backbone = decoder_backbone(model)
        self.alpha = alpha
        self.position_ids: torch.Tensor | None = None
        self.handles = [backbone.register_forward_pre_hook(self._read_positions, with_kwargs=True),
                        backbone.get_input_embeddings().register_forward_hook(self._add_noise)]

    def _read_positions(self, module, args, kwargs) -> None:
        self.position_ids = kwargs.get("position_ids")

    def _add_noise(self, module, args, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training:
            return None
        positions = self.position_ids
        if positions is not None and positions.shape[-1] != output.shape[1]:
            positions = None  # not this call's: each row is then one example
        return noisy_embeddings(output, self.alpha, positions)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.position_ids = None


def add_embedding_noise(model, alpha: float) -> EmbeddingNoise:
    """Noise the input embeddings of every training forward of `model` until `.remove()`."""
    return EmbeddingNoise(model, alpha)
