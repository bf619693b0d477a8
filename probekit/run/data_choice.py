"""What a run probes when the user leaves it open: the default data, the image size a model accepts, whether
the data's labels fit the model, and the one-line note that says what was chosen."""

from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn

from probekit.errors import ProbekitError
from probekit.run.data import ProbeData

INPUT_SHAPE_ATTR = "probekit_input_shape"  # a model's own metadata: the shape of one input, e.g. (3, 32, 32)
DATA_ATTR = "probekit_data"  # a model's own metadata: the data spec it is meant to be probed on
# Tried in this order when a model says nothing: the bundled sample's own 32 x 32 first (resizing up adds no
# information, and a first look stays fast on a CPU), then larger sizes for models that need them.
COMMON_SIZES = (32, 64, 96, 128, 160, 192, 224, 256, 299, 384)
DEFAULT_SAMPLE = "cifar10-sample"  # the bundled natural images (1,000 CIFAR-10 test images, class-interleaved)
HUGE = 10_000  # implicit sample counts above this get a warning
IMAGENET_CLASSES, IMAGENET_SIZE = 1000, 224  # a model with such a head and no size metadata is probed at this size
DEFAULT_LIMIT = 64  # samples of the implicit natural-image sample probed when neither --data nor --limit is given


def _runs(model: nn.Module, x: torch.Tensor) -> bool:
    try:
        with torch.no_grad():
            model(x)
    except Exception:  # any failure means: not this size
        return False
    return True


def _imagenet_head(model: nn.Module) -> bool:
    """Whether the model's last linear layer has ImageNet's 1,000 outputs."""
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    return last is not None and last.out_features == IMAGENET_CLASSES


def accepted_image_size(model: nn.Module) -> tuple[int, str]:
    """``(size, how)``: the square RGB size the model takes, from its metadata (``probekit_input_shape`` or
    torchvision's ``image_size``), ImageNet's 224 for a model with a 1,000-class head, or the first of
    :data:`COMMON_SIZES` a forward pass of one image accepts."""
    shape = getattr(model, INPUT_SHAPE_ATTR, None)
    if shape is not None and len(shape) == 3:
        return int(shape[-1]), "from the model's metadata"
    size = getattr(model, "image_size", None)
    if isinstance(size, int):
        return size, "from the model's image_size"
    if _imagenet_head(model) and _runs(model, torch.zeros(1, 3, IMAGENET_SIZE, IMAGENET_SIZE)):
        return IMAGENET_SIZE, ("ImageNet's size: the model has a 1,000-class head and no size metadata, and at the "
                               "smallest size its forward accepts its last feature maps would be about 1x1")
    for size in COMMON_SIZES:
        if _runs(model, torch.zeros(1, 3, size, size)):
            return size, ("the sample's own size, which the model accepts" if size == 32 else
                          "the smallest common size the model accepts")
    raise ProbekitError("found no image size the model accepts (tried "
                        f"{', '.join(map(str, COMMON_SIZES))} on 3-channel images); pass --data")


def default_data_spec(model: nn.Module) -> tuple[str, str]:
    """``(data spec, why)`` when ``--data`` is not given: the data the model declares (``probekit_data``, as the
    bundled zoo models do), else the bundled natural-image sample resized to the size the model accepts."""
    declared = getattr(model, DATA_ATTR, None)
    if declared:
        return declared, "the data the model declares"
    if hasattr(model, "probekit_tokenizer"):
        raise ProbekitError("a text model needs text: pass --data text:FILE[:SEQ_LEN] or jsonl:FILE[:FIELD]")
    shape = getattr(model, INPUT_SHAPE_ATTR, None)
    if shape is not None and len(shape) != 3:
        raise ProbekitError(f"the model takes inputs of shape {tuple(shape)}, not images: pass --data")
    size, how = accepted_image_size(model)
    return f"{DEFAULT_SAMPLE}:{size}", (f"the bundled natural-image sample (CIFAR-10 test images, class-interleaved)"
                                         f" at {size}x{size} ({how})")


def fitted_image_folder(data_spec: str, model: nn.Module) -> tuple[str, str]:
    """``(data spec, note)``: an ``imagefolder:PATH`` without a size, resized to the fixed size a model declares
    in torchvision's ``image_size`` (ViT), with a note saying so; any other spec unchanged with no note."""
    from probekit.run.datasets import split_size

    size = getattr(model, "image_size", None)
    scheme, _, argument = data_spec.partition(":")
    if scheme != "imagefolder" or not isinstance(size, int) or split_size(argument)[1] is not None:
        return data_spec, ""
    return f"{data_spec}:{size}", f"resized to {size}x{size} (the model's image_size)"


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def check_channels(model: nn.Module, x: torch.Tensor, data: ProbeData) -> None:
    """Refuse images whose channel count differs from the model's first conv (a normalisation layer would
    broadcast 1 channel to 3 and hide the mistake)."""
    conv = first_conv(model)
    if conv is not None and isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] != conv.in_channels:
        raise ProbekitError(f"data {data.name} has {x.shape[1]}-channel images but the model's first conv takes "
                            f"{conv.in_channels} channels")


@dataclasses.dataclass(frozen=True)
class TargetChoice:
    """Where a run's targets come from: ``labels`` (the data's), ``predictions`` (the model's argmax) or
    ``none`` (no labels, and outputs that are not class scores)."""

    source: str
    why: str = ""

    @property
    def note(self) -> str:
        return {"labels": "targets: the data's labels",
                "predictions": f"targets: the model's own predicted classes ({self.why})",
                "none": "targets: none"}[self.source]


def choose_targets(data: ProbeData, outputs: torch.Tensor, chosen_for_user: bool) -> TargetChoice:
    """The data's labels when they fit the model's output; the model's predicted classes when the data has no
    labels, or when probekit chose the data (``chosen_for_user``) and its classes do not match the model's class
    scores. Labels the user chose that do not match are kept, with a warning."""
    scores = outputs.dim() == 2 and outputs.shape[1] > 1
    mismatch = data.has_targets and bool(data.classes) and scores and len(data.classes) != outputs.shape[1]
    if mismatch and not chosen_for_user:
        warnings.warn(f"data {data.name} has {len(data.classes)} classes but the model outputs {outputs.shape[1]} "
                      "scores: analyses that compare the two (specialization, losses) will not mean much",
                      stacklevel=2)
    if data.has_targets and not (mismatch and chosen_for_user):
        return TargetChoice("labels")
    if not scores:
        return TargetChoice("none")
    if not data.has_targets:
        return TargetChoice("predictions", "the data has no labels")
    return TargetChoice("predictions", f"the data's {len(data.classes)} classes do not match the model's "
                                       f"{outputs.shape[1]} outputs")


def with_predicted_classes(data: ProbeData, model: nn.Module, outputs: torch.Tensor) -> ProbeData:
    """``data`` relabelled for predicted targets: has targets, and the model's classes (its ``class_names``
    when it has them, else ``0..C-1``)."""
    count = outputs.shape[1]
    names = getattr(model, "class_names", None)
    classes = [str(n) for n in names] if names is not None and len(names) == count else [str(i) for i in range(count)]
    return dataclasses.replace(data, has_targets=True, classes=classes)
