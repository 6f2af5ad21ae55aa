"""Chinese-CLIP text tower: a BERT encoder (RBT3 = 3-layer Chinese RoBERTa-wwm in BERT form for the RN50 model).

Parameter names follow Chinese-CLIP's ``cn_clip/clip/modeling_bert.py`` (the Hugging Face BERT layout) so its
checkpoints load key for key under the ``bert.`` prefix:
``embeddings.{word_embeddings, position_embeddings, token_type_embeddings, LayerNorm}``,
``encoder.layer.N.attention.self.{query, key, value}``, ``encoder.layer.N.attention.output.{dense, LayerNorm}``,
``encoder.layer.N.intermediate.dense``, ``encoder.layer.N.output.{dense, LayerNorm}``.
There is no pooler: Chinese-CLIP's BertModel has it commented out and takes the [CLS] hidden state instead.

Numerics as Chinese-CLIP: post-norm layers, exact (erf) GELU, LayerNorm eps 1e-12, token type 0 everywhere,
padding (id 0) masked out of attention by adding -10000 to its scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PAD_ID = 0  # [PAD] in Chinese-CLIP's vocab; the text tower masks these positions


@dataclass(frozen=True)
class BertTextConfig:
    """BERT sizes; the defaults are Chinese-CLIP's RBT3 (``model_configs/RBT3-chinese.json``)."""

    vocab_size: int = 21128
    hidden_size: int = 768
    layers: int = 3
    heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1  # hidden and attention-probability dropout while training (RBT3-chinese.json: 0.1 both)
    context_length: int = 52  # token ids per text at inference, [CLS] and [SEP] included


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertTextConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=PAD_ID)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(token_ids.shape[1], device=token_ids.device)  # (L,)
        # every token has type 0, so row 0 of the token-type table is added everywhere
        x = self.word_embeddings(token_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x))  # (B, L, H)


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertTextConfig):
        super().__init__()
        if config.hidden_size % config.heads:
            raise ValueError(f"text hidden size {config.hidden_size} is not divisible by {config.heads} heads")
        self.heads = config.heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            proj(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, heads, L, d)
            for proj in (self.query, self.key, self.value)
        )
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + mask_bias  # (B, heads, L, L)
        weights = self.dropout(torch.softmax(scores, dim=-1))
        return (weights @ v).transpose(1, 2).flatten(2)  # (B, L, H)


class BertResidualNorm(nn.Module):
    """``LayerNorm(dropout(dense(x)) + residual)``: BERT's post-norm sublayer output."""

    def __init__(self, in_features: int, config: BertTextConfig):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertTextConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertResidualNorm(config.hidden_size, config)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertTextConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact erf GELU, as Chinese-CLIP's "gelu"


class BertLayer(nn.Module):
    def __init__(self, config: BertTextConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertResidualNorm(config.intermediate_size, config)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask_bias)  # (B, L, H)
        return self.output(self.intermediate(x), x)  # (B, L, H)


class BertEncoder(nn.Module):
    def __init__(self, config: BertTextConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.layers)])

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask_bias)
        return x


class BertModel(nn.Module):
    """Token ids (B, L), pad id 0 -> last hidden states (B, L, H)."""

    def __init__(self, config: BertTextConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        keep = (token_ids != PAD_ID).to(self.embeddings.LayerNorm.weight.dtype)  # (B, L)
        mask_bias = ((1.0 - keep) * -10000.0)[:, None, None, :]  # (B, 1, 1, L), 0 where kept
        return self.encoder(self.embeddings(token_ids), mask_bias)  # (B, L, H)
