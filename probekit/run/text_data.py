"""Text data for token models, tokenized by the model folder's own tokenizer (``--model hf:DIR``).

``text:FILE[:SEQ_LEN]``: the whole file tokenized and packed into sequences of SEQ_LEN tokens (default 128; a
shorter tail is dropped unless it is the only sequence). ``jsonl:FILE[:FIELD]``: one sequence per JSON line, its
FIELD (default ``text``) truncated to 128 tokens and padded to the longest (``attention_mask`` marks the real
tokens); a ``label`` in every line gives the sequences classes, else they have none.

Each sample is ``{"input_ids": [T], "attention_mask": [T]}``, passed to the model as keyword arguments; the
language-model loss takes its targets from the tokens themselves (:mod:`probekit.models.losses`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import Dataset

from probekit.errors import ProbekitError, escape
from probekit.run.data import ProbeData

DEFAULT_SEQ_LEN = 128
NO_CLASSES = "a label field in every line of jsonl: data gives sequence classes"
MAX_SEQ_LEN = 1 << 16


class TokenSequences(Dataset):
    """Rows of ``input_ids`` and ``attention_mask`` ``[N, T]`` with one target per row (0 when none)."""

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor):
        self.ids, self.mask, self.targets = ids, mask, targets

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i]}, self.targets[i]


def tokenizer_of(model, spec: str):
    tokenizer = getattr(model, "probekit_tokenizer", None)
    if tokenizer is None:
        raise ProbekitError(f"data {spec} needs the model's tokenizer: pass --model hf:DIR with a folder that holds "
                            "its tokenizer files")
    return tokenizer


def _read(path: str, spec: str) -> str:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ProbekitError(f"data {spec}: no such file {path}")
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProbekitError(f"data {spec}: cannot read {path} as UTF-8 text: {exc}") from None


def text_data(argument: str, seed: int, model=None) -> ProbeData:
    """``text:FILE[:SEQ_LEN]`` (see the module docstring)."""
    spec = f"text:{argument}"
    path, _, tail = argument.rpartition(":")
    if not (path and tail.isdigit()):
        path, tail = argument, str(DEFAULT_SEQ_LEN)
    seq_len = int(tail)
    if not 2 <= seq_len <= MAX_SEQ_LEN:
        raise ProbekitError(f"data {spec}: SEQ_LEN must be 2 to {MAX_SEQ_LEN} tokens, not {seq_len}")
    tokenizer = tokenizer_of(model, spec)
    ids = tokenizer(_read(path, spec), add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise ProbekitError(f"data {spec}: the file holds fewer than 2 tokens")
    rows = max(1, len(ids) // seq_len)
    width = min(seq_len, len(ids))
    packed = torch.tensor(ids[:rows * width], dtype=torch.long).reshape(rows, width)
    return ProbeData(spec, TokenSequences(packed, torch.ones_like(packed), torch.zeros(rows, dtype=torch.long)),
                     [f"tokens {i * width}-{(i + 1) * width - 1}" for i in range(rows)], has_targets=False,
                     note=f"{rows} sequences of {width} tokens, no classes ({NO_CLASSES})")


def _records(path: str, field: str, spec: str) -> list[tuple[int, str, object]]:
    records = []
    for number, line in enumerate(_read(path, spec).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ProbekitError(f"data {spec}: line {number} is not JSON: {exc}") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise ProbekitError(f"data {spec}: line {number} has no text field {escape(field)!r}")
        records.append((number, record[field], record.get("label")))
    if not records:
        raise ProbekitError(f"data {spec}: the file holds no records")
    return records


def jsonl_data(argument: str, seed: int, model=None) -> ProbeData:
    """``jsonl:FILE[:FIELD]`` (see the module docstring)."""
    spec = f"jsonl:{argument}"
    path, _, field = argument.rpartition(":")
    if not path or not field.isidentifier():
        path, field = argument, "text"
    tokenizer = tokenizer_of(model, spec)
    records = _records(path, field, spec)
    encoded = [tokenizer(text, truncation=True, max_length=DEFAULT_SEQ_LEN)["input_ids"] for _, text, _ in records]
    width = max(len(e) for e in encoded)
    if width == 0:
        raise ProbekitError(f"data {spec}: every text is empty")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(encoded):
        ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, :len(tokens)] = 1
    labels = [label for _, _, label in records]
    labelled = all(label is not None for label in labels)
    classes = sorted({str(label) for label in labels}) if labelled else None
    targets = torch.tensor([classes.index(str(label)) for label in labels] if labelled else [0] * len(labels))
    note = f"{len(records)} sequences of up to {width} tokens, " + (
        f"classes from the label field: {', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}" if labelled
        else f"no classes ({NO_CLASSES})")
    return ProbeData(spec, TokenSequences(ids, mask, targets), [f"line {number}" for number, _, _ in records],
                     classes=classes, has_targets=labelled, note=escape(note))
