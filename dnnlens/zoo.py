"""Every torchvision model by name, offline, built the way its DEFAULT weights configure it.

``torchvision.models.get_model(name, weights=None)`` is not the published model: with weights,
each builder overrides some arguments (``aux_loss=True`` for segmentation, ``image_size=518``
for vit_h_14, ``transform_input=True`` for Inception) and downloads backbone weights unless
``weights_backbone=None``. :func:`build` applies the same overrides *without* any download,
and :func:`default_inputs` gives the input the published figures were measured on (the weights'
transforms' crop size; 16-frame clips for video; two images for optical flow).

Where the models are built (no weight is ever allocated where it can be avoided):

* on the **meta device** when torchvision allows it;
* otherwise (RegNets compute their widths with tensors at build time) on the **CPU with cheap
  initialisation** (``torch.nn.init`` made a no-op while building), then moved to meta;
* **detection** models (proposals, NMS: how much the heads compute depends on the data) are
  built on the CPU with their own random initialisation and traced on a real random image,
  because the meta device cannot say how many boxes survive (``needs_real_data``).

**Quantization** models (``quantized_*``) are analysed as their float twin (``quantize=False``):
the same layers and parameters, the same MACs; ``--dtype int8`` gives their bytes. A quantized
module's packed weights cannot be traced on the meta device.

Published figures (:func:`published`) come from ``get_model_weights(name).DEFAULT.meta``:
``num_params`` and ``_ops``, which is GMACs at batch 1 despite torchvision's "GFLOPS" label.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dnnlens.errors import ModelError

#: Frames per clip for video models (the published figures' clip length).
VIDEO_FRAMES = 16

#: Image side the detection builders resize to internally (``GeneralizedRCNNTransform``:
#: shorter side 800); an 800x800 image is not resized.
DETECTION_SIDE = 800

#: Segmentation weights evaluate at ``resize_size`` 520 (a square image is not cropped).
SEGMENTATION_SIDE = 520

#: Optical flow: two frames of this size (RAFT needs sides divisible by 8); the size at which
#: FlopCounterMode gives the published figures of both RAFT models.
FLOW_SIZE = (512, 512)

#: Detection builders that freeze their backbone's batch norms when given weights
#: (``norm_layer = FrozenBatchNorm2d if is_trained else BatchNorm2d``): the published model's
#: backbone norms hold buffers, not parameters.
FROZEN_BACKBONE_NORMS = frozenset(
    {
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "fasterrcnn_mobilenet_v3_large_fpn",
        "fasterrcnn_resnet50_fpn",
        "fcos_resnet50_fpn",
        "keypointrcnn_resnet50_fpn",
        "maskrcnn_resnet50_fpn",
        "retinanet_resnet50_fpn",
    }
)

#: Models whose MACs depend on the data they see (proposals and detections kept after NMS);
#: traced on real random tensors, see docs/zoo.md.
DATA_DEPENDENT_TASK = "detection"


@dataclass
class ZooModel:
    """A built model, the inputs to trace it on and how they were chosen."""

    name: str
    module: Any  # nn.Module
    inputs: tuple  # positional inputs: tensors, or a list of image tensors for detection
    input_note: str  # what the default input is, in words, for the CLI to print
    needs_real_data: bool  # traced on real CPU tensors rather than on meta

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        import torch

        shapes = []
        for value in self.inputs:
            for t in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(t, torch.Tensor):
                    shapes.append(tuple(t.shape))
        return shapes


def names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models())


def check_known(name: str) -> None:
    """ModelError, with the closest names, for a name that is no torchvision model."""
    if name not in names():
        from dnnlens.formatting import did_you_mean

        hint = did_you_mean(name, ["seed", *names()])
        raise ModelError(
            f"unknown model {name!r}{hint}: use seed, a torchvision model name "
            "such as resnet18, a model file, or package.module:factory"
        )


def task(name: str) -> str:
    """classification, segmentation, detection, video, optical_flow or quantization."""
    from torchvision import models

    for module in ("segmentation", "detection", "video", "optical_flow", "quantization"):
        if name in models.list_models(module=getattr(models, module)):
            return module
    return "classification"


def default_weights(name: str) -> Any:
    import torchvision

    return torchvision.models.get_model_weights(name).DEFAULT


def published(name: str) -> tuple[int, float]:
    """torchvision's ``(num_params, _ops)`` for the DEFAULT weights (``_ops`` in GMACs)."""
    meta = default_weights(name).meta
    return int(meta["num_params"]), float(meta["_ops"])


def builder_kwargs(name: str) -> dict[str, Any]:
    """The arguments the builder would set itself when given the DEFAULT weights, minus every
    download (``weights_backbone=None``) and with quantized models kept in float."""
    import torchvision

    builder = torchvision.models.get_model_builder(name)
    accepted = inspect.signature(builder).parameters
    weights = default_weights(name)
    kwargs: dict[str, Any] = {}
    if "weights_backbone" in accepted:
        kwargs["weights_backbone"] = None
    if "aux_loss" in accepted:
        kwargs["aux_loss"] = True  # segmentation weights carry the auxiliary head
    if "quantize" in accepted:
        kwargs["quantize"] = False  # the float twin: same layers, same MACs
    if "num_classes" in accepted and "categories" in weights.meta:
        kwargs["num_classes"] = len(weights.meta["categories"])
    if name.startswith("vit_"):
        kwargs["image_size"] = int(weights.meta["min_size"][0])  # vit_h_14: 518
    if name in ("inception_v3", "googlenet", "quantized_googlenet", "quantized_inception_v3"):
        kwargs["transform_input"] = True
        kwargs["init_weights"] = False  # torchvision skips its slow init when loading weights
    if name in ("googlenet", "quantized_googlenet"):
        kwargs["aux_logits"] = False  # the builder drops the untrained aux heads it loads
    return kwargs


@contextlib.contextmanager
def cheap_init() -> Iterator[None]:
    """``torch.nn.init``'s in-place initialisers do nothing while building: parameters keep
    ``torch.empty``'s values, which tracing never reads (the copy is moved to meta)."""
    from torch.nn import init

    names_ = [n for n in dir(init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(init, n) for n in names_}

    def keep(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        return tensor

    for n in names_:
        setattr(init, n, keep)
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(init, n, fn)


def freeze_batch_norms(module: Any) -> None:
    """Every ``BatchNorm2d`` inside ``module`` becomes torchvision's ``FrozenBatchNorm2d``
    (statistics and affine terms as buffers), as the builders do when given weights."""
    from torch import nn
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features, eps=child.eps))
        else:
            freeze_batch_norms(child)


def build_module(name: str) -> tuple[Any, bool]:
    """The model and whether it must be traced on real data; ModelError if torchvision
    cannot build it."""
    import torch
    import torchvision

    check_known(name)
    kwargs = builder_kwargs(name)
    real = task(name) == DATA_DEPENDENT_TASK
    try:
        if real:  # proposals and NMS need real scores: keep torchvision's own random init
            with torch.random.fork_rng(devices=[]):  # seeded, the caller's generator untouched
                torch.manual_seed(0)
                model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
            if name in FROZEN_BACKBONE_NORMS:
                freeze_batch_norms(model.backbone.body)
            return model, True
        try:
            with torch.device("meta"):
                return torchvision.models.get_model(name, weights=None, **kwargs), False
        except (NotImplementedError, RuntimeError):  # a builder that reads tensor values
            with cheap_init():
                model = torchvision.models.get_model(name, weights=None, **kwargs)
            return model.to("meta"), False
    except Exception as exc:  # noqa: BLE001 - report any build failure as one line
        raise ModelError(
            f"torchvision cannot build {name!r}: {type(exc).__name__}: {exc}"
        ) from None


def default_inputs(name: str, *, real: bool = False, batch: int = 1) -> tuple[tuple, str]:
    """Positional inputs matching the published figures, and a short description of them."""
    import torch

    device = "cpu" if real else "meta"
    weights = default_weights(name)
    kind = task(name)
    crop = (
        (weights.transforms.keywords or {}).get("crop_size")
        if hasattr(weights.transforms, "keywords")
        else None
    )
    if kind == "detection":
        side = 320 if "320" in name else 300 if name.startswith("ssd300") else DETECTION_SIDE
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            images = [torch.rand(3, side, side, device=device) for _ in range(batch)]
        return (images,), (
            f"{batch} image(s) of (3, {side}, {side}) in a list, random values "
            "(proposals depend on the data; see docs/zoo.md)"
        )
    if kind == "optical_flow":
        shape = (batch, 3, *FLOW_SIZE)
        pair = (torch.rand(shape, device=device), torch.rand(shape, device=device))
        return pair, f"two frames of {shape}"
    if kind == "segmentation":
        shape = (batch, 3, SEGMENTATION_SIDE, SEGMENTATION_SIDE)
        return (torch.empty(shape, device=device),), f"{shape}"
    if kind == "video":
        h, w = crop if isinstance(crop, (tuple, list)) else (crop, crop)
        length = max(VIDEO_FRAMES, int(weights.meta.get("min_temporal_size", 1)))
        clip = (batch, 3, length, int(h), int(w))
        return (torch.empty(clip, device=device),), f"{clip}: a clip of {length} frames"
    side = int(crop[0] if isinstance(crop, (tuple, list)) else crop or 224)
    shape = (batch, 3, side, side)
    return (torch.empty(shape, device=device),), f"{shape}"


def build(name: str, batch: int = 1) -> ZooModel:
    """The torchvision model ``name`` as its DEFAULT weights configure it, with its inputs."""
    module, real = build_module(name)
    inputs, note = default_inputs(name, real=real, batch=batch)
    return ZooModel(name=name, module=module, inputs=inputs, input_note=note, needs_real_data=real)
