"""``--model hf:DIR``: a local Hugging Face model folder (transformers' ``save_pretrained`` format).

The folder holds ``config.json``, safetensors weights and, for text data, the tokenizer files. The class is the
one ``config.json`` names among transformers' own (``architectures``), else ``AutoModel``; a folder that asks for
its own code (``auto_map``) is refused, since ``trust_remote_code`` is never used, and nothing is downloaded.
Attention runs in transformers' eager form, whose second derivatives exist (the Hessian needs them; PyTorch's
fused CPU attention has none).
transformers is an optional extra: ``pip install 'probekit[hf]'``.

The loaded model carries ``probekit_tokenizer`` (or ``None``) and, for a language-model head,
``probekit_loss = "lm"`` and ``probekit_causal`` (next-token targets; the token itself for a masked model).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from probekit.errors import ProbekitError, escape
from probekit.models.model_files import LoadedModel

TOKENIZER_ATTR = "probekit_tokenizer"
CAUSAL_ATTR = "probekit_causal"
WEIGHT_SUFFIX = ".safetensors"


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder with a ``config.json`` (a ``save_pretrained`` folder)."""
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ProbekitError("hf:DIR needs transformers: pip install 'probekit[hf]'") from None
    return transformers


def _config_json(folder: Path, spec: str) -> dict:
    if not folder.exists():
        hint = " (a hub id? nothing is downloaded: pass a local folder saved with save_pretrained)" \
            if not folder.is_absolute() and len(folder.parts) <= 2 else ""
        raise ProbekitError(f"{spec}: no such folder{hint}")
    if not is_model_folder(folder):
        raise ProbekitError(f"{spec}: not a Hugging Face model folder (no config.json)")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProbekitError(f"{spec}: config.json is unreadable: {exc}") from None
    if not isinstance(config, dict):
        raise ProbekitError(f"{spec}: config.json is not an object")
    if "auto_map" in config:
        raise ProbekitError(f"{spec}: the model needs its own code (auto_map in config.json), and probekit never "
                            "runs a model folder's code")
    return config


def weight_files(folder: Path, spec: str) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.name.endswith(WEIGHT_SUFFIX))
    if not files:
        raise ProbekitError(f"{spec}: no safetensors weights (*.safetensors) in the folder; probekit does not "
                            "unpickle .bin weights")
    return files


def folder_sha256(files: list[Path]) -> str:
    """sha256 over the weight files, in name order."""
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _model_class(transformers, config: dict, spec: str):
    """transformers' own class named by ``architectures``, else ``AutoModel``."""
    names = config.get("architectures") or []
    name = names[0] if names and isinstance(names[0], str) else None
    cls = getattr(transformers, name, None) if name and name.isidentifier() else None
    if cls is None and name:
        raise ProbekitError(f"{spec}: transformers {transformers.__version__} does not know the architecture "
                            f"{escape(name)!r}")
    return cls or transformers.AutoModel


def _tokenizer(transformers, folder: Path):
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        return None
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ProbekitError(f"the tokenizer in {folder} cannot be read: {str(exc).splitlines()[0]}") from None


def load_hf(argument: str, options=None) -> LoadedModel:
    """The model in folder ``argument`` (eval mode, float32, on the CPU) with its tokenizer and identity."""
    spec = f"hf:{argument}"
    folder = Path(argument).expanduser()
    config = _config_json(folder, spec)
    transformers = _transformers()
    files = weight_files(folder, spec)
    cls = _model_class(transformers, config, spec)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers.utils.logging.disable_progress_bar()
    try:
        model = cls.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False,
                                    use_safetensors=True, dtype="float32", attn_implementation="eager")
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProbekitError(f"{spec}: transformers cannot load it: {first}") from None
    model.eval()
    setattr(model, TOKENIZER_ATTR, _tokenizer(transformers, folder))
    kind = lm_kind(cls.__name__)
    if kind is not None:
        model.probekit_loss = "lm"
        setattr(model, CAUSAL_ATTR, kind == "next")
    return LoadedModel(model, spec, folder_sha256(files))


def lm_kind(class_name: str) -> str | None:
    """``"next"`` for a causal language model (its logits predict the next token), ``"same"`` for a masked one
    (they predict the token at the same position), ``None`` for other heads."""
    if class_name.endswith(("ForCausalLM", "LMHeadModel")):
        return "next"
    if class_name.endswith("ForMaskedLM"):
        return "same"
    return None
