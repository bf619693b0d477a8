"""Tiny random-weight Hugging Face models saved with ``save_pretrained``, with tokenizers trained here by the
``tokenizers`` library: nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = (
    "the cat sat on the mat and the dog sat on the log . a bird sang in the tree while the sun rose over the hill . "
    "branches of a network may specialise : one sees edges , another sees colour , a third sees texture . "
    "experts in a mixture are chosen by a router for every token of every sentence . "
) * 12

VOCAB = 96


def train_tokenizer(folder: Path):
    """A byte-level BPE tokenizer of :data:`VOCAB` tokens trained on :data:`CORPUS`, saved in ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer.train_from_iterator([CORPUS], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder)
    return fast


def tiny_config(kind: str, vocab: int):
    """The config of a tiny model of ``kind``: mixtral, olmoe, gpt2, llama (grouped-query attention) or bert."""
    import transformers as tf

    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=128)
    return {
        "mixtral": lambda: tf.MixtralConfig(**common, num_key_value_heads=2, num_local_experts=4,
                                            num_experts_per_tok=2),
        "olmoe": lambda: tf.OlmoeConfig(**common, num_key_value_heads=4, num_experts=4, num_experts_per_tok=2),
        "gpt2": lambda: tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                      bos_token_id=0, eos_token_id=0),
        "llama": lambda: tf.LlamaConfig(**common, num_key_value_heads=2),
        "bert": lambda: tf.BertConfig(**common),
    }[kind]()


MODEL_CLASSES = {"mixtral": "MixtralForCausalLM", "olmoe": "OlmoeForCausalLM", "gpt2": "GPT2LMHeadModel",
                 "llama": "LlamaForCausalLM", "bert": "BertForMaskedLM"}


def save_tiny_model(kind: str, folder: Path, seed: int = 0) -> Path:
    """Build the tiny ``kind`` model with random weights and save it, with its tokenizer, in ``folder``."""
    import transformers as tf

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(folder)
    torch.manual_seed(seed)
    model = getattr(tf, MODEL_CLASSES[kind])(tiny_config(kind, len(tokenizer)))
    model.save_pretrained(folder)
    return folder


def write_text(path: Path) -> Path:
    path.write_text(CORPUS, encoding="utf-8")
    return path
