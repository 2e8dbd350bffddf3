"""The two training losses, one function each: cross-entropy on the reference captions (teacher
forcing, label smoothing), and self-critical sequence training on CIDEr-D rewards of sampled captions."""
from __future__ import annotations

import torch

from ..evaluation.cider import CiderD
from ..generation.decoding import DecodingOptions, sample
from ..model.decoders import Features, caption_loss
from ..model.vocabulary import Vocabulary
from .batches import Batch, pad_batch


def cross_entropy_loss(model: torch.nn.Module, batch: Batch, label_smoothing: float, autocast) -> torch.Tensor:
    """Mean cross-entropy of the batch's target tokens given the words before them and the image."""
    with autocast:
        logits = model(batch.features, batch.inputs)  # (B, T, V)
    return caption_loss(logits.float(), batch.targets, label_smoothing)


def self_critical_loss(decoder, features: Features, keys: list[str], reward: CiderD, vocabulary: Vocabulary, samples_per_image: int, max_length: int, autocast, model: torch.nn.Module | None = None) -> tuple[torch.Tensor, float]:
    """Self-critical sequence training (Rennie et al. 2017) with the mean of the other samples as
    baseline: raise the log-probability of sampled captions that beat their siblings' CIDEr-D.
    `model` runs the teacher-forced pass (under torchrun the DDP wrapper of `decoder`)."""
    if samples_per_image < 2:  # one sample has no siblings to be the baseline (0/0 would train on NaN)
        raise ValueError(f"self-critical training needs samples_per_image >= 2, got {samples_per_image}")
    options = DecodingOptions(max_length=max_length, no_repeat_ngram_size=0)
    groups = sample(decoder, features, num_captions=samples_per_image, temperature=1.0, top_p=1.0, options=options)
    sequences = [hypothesis.tokens for group in groups for hypothesis in group]
    rewards = torch.tensor([[reward.score(key, vocabulary.decode(h.tokens).split()) for h in group] for key, group in zip(keys, groups)])  # (B, K)
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (samples_per_image - 1)
    advantage = (rewards - baseline).flatten().to(features.pooled.device)  # (B*K,)
    inputs, targets = pad_batch(sequences, vocabulary)
    inputs, targets = inputs.to(features.pooled.device), targets.to(features.pooled.device)
    repeated = Features(features.grid.repeat_interleave(samples_per_image, dim=0), features.pooled.repeat_interleave(samples_per_image, dim=0))
    with autocast:
        logits = (model or decoder)(repeated, inputs)  # (B*K, T, V)
    token_log_probs = torch.log_softmax(logits.float(), dim=-1).gather(2, targets[..., None]).squeeze(2)  # (B*K, T)
    sequence_log_probs = (token_log_probs * (targets != vocabulary.pad_id)).sum(dim=1)
    return -(advantage * sequence_log_probs).mean(), rewards.mean().item()
