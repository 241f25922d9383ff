"""The backbone: a ``transformers.PreTrainedModel`` over item histories.

Items are tokens. A standard architecture (GPT-2, Llama or BERT style), built from a config
and never downloaded, encodes the history; an item's score is the dot product of the user's
hidden state with the item's embedding (the same table as the input: tied) plus a per-item
bias. Histories without timestamps are sets: ``ordered=False`` feeds every position id as 0
and training shuffles each history every epoch, so the model learns not to rely on order.
The BERT family is then exactly permutation invariant; the causal families keep their causal
mask, so beyond one layer they are invariant only approximately (by training, not by design).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2Model,
    LlamaConfig,
    LlamaModel,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import BaseModelOutput

PAD, MASK, N_SPECIAL = 0, 1, 2
ARCHS = ("gpt2", "llama", "bert")
CAUSAL = {"gpt2": True, "llama": True, "bert": False}


class RecConfig(PretrainedConfig):
    """Configuration of :class:`RecModel`; ``n_items`` excludes the two special tokens."""

    model_type = "regiontune"

    def __init__(self, arch: str = "llama", n_items: int = 1, hidden_size: int = 128,
                 num_layers: int = 2, num_heads: int = 2, intermediate_size: int = 256,
                 max_len: int = 50, dropout: float = 0.2, ordered: bool = True,
                 set_orders: int = 4, item_text: bool = False, text_dim: int = 0,
                 text_encoder: str = "", text_encoder_hash: str = "",
                 text_id_dropout: float = 0.0, text_loss: float = 0.0,
                 text_loss_negatives: str = "text", **kwargs) -> None:
        if arch not in ARCHS:
            raise ValueError(f"unknown backbone architecture {arch!r}; choose one of {ARCHS}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads "
                             f"{num_heads}")
        self.arch, self.n_items, self.hidden_size = arch, n_items, hidden_size
        self.num_layers, self.num_heads = num_layers, num_heads
        self.intermediate_size, self.max_len = intermediate_size, max_len
        self.dropout, self.ordered = dropout, ordered
        # unordered histories, causal families: user vectors averaged over this many orders
        # of the set (core/batching.py:set_orders); no weight depends on it
        self.set_orders = set_orders
        # items as text (core/model/textenc.py): an item's embedding is its id row plus a
        # learned projection of its frozen text vector; off, the model is the id-only one
        self.item_text, self.text_dim = bool(item_text), int(text_dim)
        self.text_encoder, self.text_encoder_hash = text_encoder, text_encoder_hash
        # training only: the share of text items whose id row is dropped at a step, so the
        # projection alone must carry them (what a never-trained item has)
        self.text_id_dropout = float(text_id_dropout)
        # training only: weight of a second next-item loss over the text-only table (the
        # embedding a never-trained item has), so the projection learns to stand alone
        self.text_loss = float(text_loss)
        # the negatives of that loss: "text" (the text-only table) or "warm" (the id+text
        # table: the target's text-only score must beat the rows it meets when served)
        if text_loss_negatives not in ("text", "warm"):
            raise ValueError(f"text_loss_negatives {text_loss_negatives!r}: choose text or warm")
        self.text_loss_negatives = text_loss_negatives
        if self.item_text and self.text_dim <= 0:
            raise ValueError("item_text needs text_dim, the text encoder's vector size")
        super().__init__(**kwargs)

    @property
    def causal(self) -> bool:
        return CAUSAL[self.arch]


def build_encoder(cfg: RecConfig) -> nn.Module:
    """The transformer stack, from a standard config (vocab_size=1: we feed embeddings)."""
    common = dict(vocab_size=1, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                  hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                  num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size)
    if cfg.arch == "gpt2":
        return GPT2Model(GPT2Config(vocab_size=1, bos_token_id=None, eos_token_id=None,
                                    n_embd=cfg.hidden_size, n_layer=cfg.num_layers,
                                    n_head=cfg.num_heads, n_inner=cfg.intermediate_size,
                                    n_positions=cfg.max_len + 1, resid_pdrop=cfg.dropout,
                                    embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout))
    if cfg.arch == "llama":
        return LlamaModel(LlamaConfig(**common, num_key_value_heads=cfg.num_heads,
                                      max_position_embeddings=cfg.max_len + 1,
                                      attention_dropout=cfg.dropout))
    return BertModel(BertConfig(**common, max_position_embeddings=cfg.max_len + 1,
                                type_vocab_size=1, hidden_dropout_prob=cfg.dropout,
                                attention_probs_dropout_prob=cfg.dropout),
                     add_pooling_layer=False)


class RecModel(PreTrainedModel):
    """Sequential recommender backbone; token ``i + 2`` is item ``i`` of the vocabulary."""

    config_class = RecConfig
    base_model_prefix = "rec"
    _no_split_modules: list[str] = []

    def __init__(self, config: RecConfig) -> None:
        super().__init__(config)
        self.item_emb = nn.Embedding(config.n_items + N_SPECIAL, config.hidden_size,
                                     padding_idx=PAD)
        self.item_bias = nn.Parameter(torch.zeros(config.n_items + N_SPECIAL))
        self.emb_dropout = nn.Dropout(config.dropout)
        self.encoder = build_encoder(config)
        # The wrapped model's own 1-row word embedding is never used (we feed inputs_embeds);
        # frozen, so no optimizer or DDP ever waits for a gradient it cannot get.
        self.encoder.get_input_embeddings().weight.requires_grad_(False)
        if config.item_text:
            self.text_proj = nn.Linear(config.text_dim, config.hidden_size, bias=False)
            # the frozen encoder's vectors of the vocabulary's items (zero rows: no text);
            # not in the weights file: they live in the text-vector cache beside it
            self.register_buffer("text_vectors",
                                 torch.zeros(config.n_items + N_SPECIAL, config.text_dim),
                                 persistent=False)
            self.register_buffer("has_text", torch.zeros(config.n_items + N_SPECIAL),
                                 persistent=False)
        # text vectors of items outside the vocabulary (region-new items): item -> vector
        self.text_bank = None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if module is getattr(self, "item_emb", None):
            nn.init.normal_(module.weight, std=0.02)

    def position_ids(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """Positions counted from the first real token (inputs are left-padded); all 0 for sets."""
        if not self.config.ordered:
            return torch.zeros_like(attention_mask, dtype=torch.long)
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def forward(self, input_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, **kwargs) -> BaseModelOutput:
        """Hidden states ``[batch, length, hidden]`` of a left-padded batch of histories."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            inputs_embeds = self.embed_items(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long,
                                        device=inputs_embeds.device)
        out = self.encoder(inputs_embeds=self.emb_dropout(inputs_embeds),
                           attention_mask=attention_mask,
                           position_ids=self.position_ids(attention_mask), use_cache=False)
        return BaseModelOutput(last_hidden_state=out.last_hidden_state)

    def _id_keep(self, n: int, device) -> torch.Tensor | None:
        """Training with ``text_id_dropout``: 0 for the text items whose id row is dropped."""
        p = self.config.text_id_dropout
        if not (self.training and p > 0):
            return None
        return 1.0 - (torch.rand(n, device=device) < p).float() * self.has_text

    def embed_items(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids (the same rows as the output table)."""
        if not self.config.item_text:
            return self.item_emb(ids)
        keep = self._id_keep(self.has_text.shape[0], ids.device)
        rows = self.item_emb(ids) * (keep[ids, None] if keep is not None else 1.0)
        return rows + self.has_text[ids, None] * self.text_proj(self.text_vectors[ids])

    def text_embedding(self, vectors: torch.Tensor) -> torch.Tensor:
        """The embedding an item gets from its text vector alone (items with no id row)."""
        return self.text_proj(vectors.to(self.text_proj.weight.dtype))

    def text_table(self) -> torch.Tensor:
        """The items' text-only embeddings ``[n_items, hidden]`` (zero rows: no text)."""
        rows = self.has_text[:, None] * self.text_proj(self.text_vectors)
        return rows[N_SPECIAL:]

    def set_text_vectors(self, items: list[str], text) -> None:
        """Fill the text rows of the vocabulary's ``items`` (token order) from ``text``
        (a :class:`~regiontune.model.textenc.TextVectors`); other items go to ``text_bank``."""
        vectors, found = text.rows(list(items))
        with torch.no_grad():
            self.text_vectors.zero_()
            self.has_text.zero_()
            self.text_vectors[N_SPECIAL:] = vectors.to(self.text_vectors)
            self.has_text[N_SPECIAL:] = found.to(self.has_text)
        self.text_bank = text

    def item_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The output table over items (tied to the input embedding) and the item bias."""
        if not self.config.item_text:
            return self.item_emb.weight[N_SPECIAL:], self.item_bias[N_SPECIAL:]
        table = self.item_emb.weight
        keep = self._id_keep(table.shape[0], table.device)
        if keep is not None:
            table = table * keep[:, None]
        table = table + self.has_text[:, None] * self.text_proj(self.text_vectors)
        return table[N_SPECIAL:], self.item_bias[N_SPECIAL:]


def build_backbone(n_items: int, arch: str = "llama", ordered: bool = True, **sizes) -> RecModel:
    """Plain builder: a freshly initialised backbone for ``n_items`` items."""
    return RecModel(RecConfig(arch=arch, n_items=n_items, ordered=ordered, **sizes))


def register_auto_classes() -> None:
    """Make ``AutoConfig`` / ``AutoModel`` know the backbone (idempotent)."""
    from transformers import AutoConfig, AutoModel

    try:
        AutoConfig.register(RecConfig.model_type, RecConfig)
        AutoModel.register(RecConfig, RecModel)
    except ValueError:  # already registered
        pass


register_auto_classes()
