"""The ``torch.nn.Module`` a ``huggingface`` model source is exported from (:func:`edgeport.sources.load_huggingface`)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["HuggingFaceModule"]


class HuggingFaceModule(torch.nn.Module):
    """A transformers model as one exportable module with positional tensor inputs and one output.

    * text tasks: ``token_type_ids`` (when the model has them) are zeros (one segment); BERT-style
      encoders (``config.model_type`` ``bert``) get the attention mask as the additive 4-D mask
      transformers 4 built (``(1 - mask) * finfo.min``, shape ``(batch, 1, 1, sequence)``),
      which ONNX Runtime's BERT optimizer fuses into ``Attention`` (transformers 5's own mask
      is not recognised by it);
    * ``sentence-embedding``: the pooling of the folder's sentence-transformers ``Pooling`` module
      (mean over tokens where mask = 1, the ``[CLS]`` token, or max over tokens) and, when
      ``modules.json`` lists ``Normalize``, L2 normalisation, written without ``F.normalize``
      (its ``Clip`` + ``Expand`` stop ONNX Runtime's symbolic shape inference, and with it every
      transformer fusion); floors 1e-9 (token count) and 1e-12 (norm) are sentence-transformers'.

    Args:
        network: the transformers ``PreTrainedModel``.
        task: ``model.task``.
        input_names: names of the positional inputs, in order.
        pooling: ``mean_tokens``, ``cls_token`` or ``max_tokens`` (sentence-embedding only).
        normalize: L2-normalise the embedding (sentence-embedding only).
    """

    def __init__(self, network: Any, task: str, input_names: list[str], pooling: str = "mean_tokens", normalize: bool = False) -> None:
        super().__init__()
        # Named like the transformers wrapper would name a base model (e.g. `bert`), so ONNX node
        # names read /bert/encoder/layer.0/... as in a hand-written module (nodes_to_exclude keep working).
        base = task in ("feature-extraction", "sentence-embedding")
        self._network_name = (getattr(network, "base_model_prefix", "") or "model") if base else "model"
        self.add_module(self._network_name, network)
        self.task = task
        self.input_names = list(input_names)
        self.pooling = pooling
        self.normalize = normalize
        config = network.config
        self.config = config
        self.additive_mask = getattr(config, "model_type", None) == "bert" and "attention_mask" in input_names
        self.token_types = task != "image-classification" and getattr(config, "type_vocab_size", 0) > 0
        self.register_buffer("_count_eps", torch.tensor(1e-9), persistent=False)
        self.register_buffer("_norm_eps", torch.tensor(1e-12), persistent=False)

    @property
    def _network(self) -> Any:
        return getattr(self, self._network_name)

    def forward(self, *inputs: Any) -> Any:
        """Run the model on positional inputs (see the class doc); returns one tensor."""
        feed = dict(zip(self.input_names, inputs))
        mask = feed.get("attention_mask")
        if self.task == "image-classification":
            return self._network(pixel_values=feed["pixel_values"]).logits
        if self.token_types:
            feed["token_type_ids"] = torch.zeros_like(feed["input_ids"])
        if self.additive_mask and mask is not None:
            batch, sequence = mask.shape
            inverted = 1.0 - mask[:, None, None, :].expand(batch, 1, 1, sequence).to(torch.float32)
            feed["attention_mask"] = inverted.masked_fill(inverted.to(torch.bool), torch.finfo(torch.float32).min)
        out = self._network(**feed)
        if self.task == "text-classification":
            return out.logits
        states = out.last_hidden_state
        if self.task == "feature-extraction":
            return states
        if self.pooling == "cls_token":
            pooled = states[:, 0]
        else:
            weights = (mask if mask is not None else torch.ones(states.shape[:2], dtype=torch.int64)).to(states.dtype).unsqueeze(-1)
            if self.pooling == "max_tokens":
                pooled = (states + (weights - 1.0) * 1e9).max(dim=1).values
            else:
                pooled = (states * weights).sum(dim=1) / torch.maximum(weights.sum(dim=1), self._count_eps)
        if self.normalize:
            norm = torch.sqrt((pooled * pooled).sum(dim=1, keepdim=True))
            pooled = pooled / torch.maximum(norm, self._norm_eps)
        return pooled
