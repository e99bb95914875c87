"""The paper's small sequential CNN, torchvision backbones, and the registry that builds them.

`build_model(model_cfg, n_classes, image_size)` reads the `model` section of an experiment:
`name` picks the network, `weights` (optional) loads a local state_dict or fewcells checkpoint,
`freeze` freezes the lowest stages, `keep_blocks` (torchvision networks) keeps only the lowest
stages under a new head.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from fewcells.errors import FewcellsError
from fewcells.training.kernels.paper_stem import fused_applies, paper_stem

PAPER_FILTERS = (4, 8, 8, 8, 16, 16)
FUSED_CONVS = (0, 3, 6)  # positions in `features` of the convolutions kernels.paper_stem fuses


def _size_after_blocks(image_size: int, n_blocks: int) -> int:
    """Side length after `n_blocks` of (3x3 valid conv, 2x2 max pool)."""
    side = image_size
    for _ in range(n_blocks):
        side = (side - 2) // 2
    return side


MIN_IMAGE_SIZE = next(s for s in range(3, 1000) if _size_after_blocks(s, len(PAPER_FILTERS)) >= 1)


PAPER_CNN_INITS = ("keras", "torch")


def keras_init(model: nn.Module) -> None:
    """Keras' default initialisation of every conv and dense layer of `model`, as the authors'
    code builds them: glorot_uniform kernels (limit sqrt(6 / (fan_in + fan_out)), the fans
    counting the receptive field) and zero biases."""
    for layer in model.modules():
        if isinstance(layer, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class PaperCNN(nn.Module):
    """Schouten et al. 2021: six conv3x3(valid)+ReLU+maxpool2 blocks, Dense 32 ReLU, Dense logits.

    Input: float (B, in_channels, H, W) in [0, 1] (pixels / 255), any memory layout (the
    layers run channels-last). `forward` returns logits; softmax is applied outside. `embed`
    returns the 32-d hidden layer after its ReLU. Each block pools before its ReLU: max pooling
    commutes with the monotone ReLU, so values and gradients are exactly those of
    conv-ReLU-pool, with the ReLU on 4x fewer pixels. With `fused_cpu_kernel` set, the first
    three blocks run as one compiled CPU kernel (kernels.paper_stem) wherever it applies (a CPU
    input that needs no gradient, so not for saliency or LRP); the results equal PyTorch's up
    to float rounding. `init` "keras" (the default, the authors' protocol) initialises as
    `keras_init`; "torch" keeps PyTorch's layer defaults (kaiming_uniform with a = sqrt(5),
    uniform biases).
    """

    def __init__(
        self,
        n_classes: int,
        image_size: int = 257,
        in_channels: int = 3,
        hidden: int = 32,
        init: str = "keras",
    ) -> None:
        super().__init__()
        if image_size < MIN_IMAGE_SIZE:
            raise FewcellsError(
                f"image_size {image_size} is too small for paper_cnn: its six conv+pool blocks "
                f"need images of at least {MIN_IMAGE_SIZE} px"
            )
        blocks: list[nn.Module] = []
        channels = in_channels
        for filters in PAPER_FILTERS:
            blocks += [nn.Conv2d(channels, filters, 3), nn.MaxPool2d(2), nn.ReLU()]
            channels = filters
        blocks.append(nn.Flatten())
        self.features = nn.Sequential(*blocks)
        side = _size_after_blocks(image_size, len(PAPER_FILTERS))
        self.hidden = nn.Linear(channels * side * side, hidden)
        self.hidden_activation = nn.ReLU()
        self.classifier = nn.Linear(hidden, n_classes)
        self.fused_cpu_kernel = False
        if init not in PAPER_CNN_INITS:
            raise FewcellsError(
                f"model.init: unknown initialisation {init!r}; choose one of "
                f"{', '.join(PAPER_CNN_INITS)}"
            )
        if init == "keras":
            keras_init(self)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """The flattened output of the six blocks."""
        convs = [self.features[i] for i in FUSED_CONVS]
        if self.fused_cpu_kernel and fused_applies(x, convs):
            return self.features[FUSED_CONVS[-1] + 2 :](paper_stem(x, convs))
        return self.features(x.contiguous(memory_format=torch.channels_last))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden-layer activations (B, hidden), after ReLU: the layer used for tSNE."""
        return self.hidden_activation(self.hidden(self._features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, n_classes)."""
        return self.classifier(self.embed(x))

    def stages(self) -> list[nn.Module]:
        """The six conv blocks (conv, pool, ReLU), lowest first: the units `freeze` counts."""
        return [self.features[3 * i : 3 * i + 3] for i in range(len(PAPER_FILTERS))]


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """Channels-last uint8 images (B, H, W, C) -> planar float (B, C, H, W) in [0, 1].

    Bytes reordered first, then one division that writes the floats: planar, as the compiled
    kernel reads them, so it needs no copy of its own.
    """
    return torch.div(images.permute(0, 3, 1, 2).contiguous(), 255.0)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_MIN_IMAGE_SIZE = 32

_RESNET_STAGES = (
    ("conv1", "bn1", "relu", "maxpool", "layer1"),
    ("layer2",),
    ("layer3",),
    ("layer4",),
)
_DENSENET_STAGES = (
    tuple(f"features.{n}" for n in ("conv0", "norm0", "relu0", "pool0"))
    + ("features.denseblock1", "features.transition1"),
    ("features.denseblock2", "features.transition2"),
    ("features.denseblock3", "features.transition3"),
    ("features.denseblock4", "features.norm5"),
)
_EFFICIENTNET_STAGES = (
    ("features.0", "features.1"),
    *((f"features.{i}",) for i in range(2, 7)),
    ("features.7", "features.8"),
)

# name: (constructor, stages as dotted submodule names lowest first, torchvision head, ReLU
# after the last stage as torchvision's forward applies it)
TORCHVISION_ARCHS: dict[str, tuple[Callable[..., nn.Module], tuple, str, bool]] = {
    "resnet18": (torchvision.models.resnet18, _RESNET_STAGES, "fc", False),
    "resnext50_32x4d": (torchvision.models.resnext50_32x4d, _RESNET_STAGES, "fc", False),
    "densenet121": (torchvision.models.densenet121, _DENSENET_STAGES, "classifier", True),
    "efficientnet_b0": (
        torchvision.models.efficientnet_b0,
        _EFFICIENTNET_STAGES,
        "classifier.1",
        False,
    ),
}


def _drop_submodule(root: nn.Module, dotted: str) -> None:
    parent_name, _, child = dotted.rpartition(".")
    delattr(root.get_submodule(parent_name) if parent_name else root, child)


class TorchvisionNet(nn.Module):
    """A torchvision backbone (random init) under the fewcells contract.

    Input: float (B, 3, H, W) in [0, 1]; ImageNet mean/std normalisation happens inside.
    `embed` is the globally average-pooled output of the last kept stage (512-d for ResNet-18),
    `classifier` a new nn.Linear(width, n_classes) replacing torchvision's head. The backbone
    keeps torchvision's submodule names under `backbone.`, so torchvision state_dicts load with
    a `backbone.` prefix. `keep_blocks` drops the stages above the lowest `keep_blocks`.
    """

    def __init__(
        self, arch: str, n_classes: int, image_size: int = 257, keep_blocks: int | None = None
    ) -> None:
        super().__init__()
        if image_size < TORCHVISION_MIN_IMAGE_SIZE:
            raise FewcellsError(
                f"image.size {image_size} is too small for {arch}: it needs images of at least "
                f"{TORCHVISION_MIN_IMAGE_SIZE} px"
            )
        constructor, stage_names, head, self.post_relu = TORCHVISION_ARCHS[arch]
        if keep_blocks is not None and not 1 <= keep_blocks <= len(stage_names):
            raise FewcellsError(
                f"model.keep_blocks: {arch} has {len(stage_names)} stages; "
                f"keep_blocks must be 1..{len(stage_names)}, not {keep_blocks}"
            )
        self.arch = arch
        self.head_prefix = head + "."
        self.backbone = constructor(weights=None)
        kept = len(stage_names) if keep_blocks is None else keep_blocks
        # Dropped stages and torchvision's head: their keys in a loaded file are ignored.
        self.dropped_prefixes = tuple(
            f"backbone.{name}." for stage in stage_names[kept:] for name in stage
        ) + ("backbone.avgpool.",)
        for name in [n for stage in stage_names[kept:] for n in stage] + [head.split(".")[0]]:
            _drop_submodule(self.backbone, name)
        if hasattr(self.backbone, "avgpool"):
            del self.backbone.avgpool
        # Plain tuples (not ModuleLists) so the state_dict keys stay torchvision's.
        self._stages = tuple(
            tuple(self.backbone.get_submodule(name) for name in stage)
            for stage in stage_names[:kept]
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)
        self.n_frozen = 0
        was_training = self.training
        self.eval()
        with torch.no_grad():
            width = self.embed(torch.zeros(1, 3, TORCHVISION_MIN_IMAGE_SIZE, 32)).shape[1]
        self.train(was_training)
        self.classifier = nn.Linear(width, n_classes)

    def stages(self) -> list[nn.ModuleList]:
        """Kept stages, lowest first (ResNets: stem+layer1, layer2, ...): what `freeze` counts."""
        return [nn.ModuleList(stage) for stage in self._stages]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, width) of the last kept stage: the layer used for tSNE."""
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        for stage in self._stages:
            for module in stage:
                x = module(x)
        if self.post_relu:
            x = torch.relu(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, n_classes)."""
        return self.classifier(self.embed(x))

    def train(self, mode: bool = True) -> TorchvisionNet:
        """Set training mode, but keep the frozen stages (and their BatchNorm) in eval mode."""
        super().train(mode)
        for stage in self.stages()[: self.n_frozen]:
            stage.eval()
        return self

    def normalise_keys(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A torchvision-style state_dict (no `backbone.` keys) -> this module's key names."""
        if any(key.startswith("backbone.") for key in state):
            return state
        return {
            "classifier." + key[len(self.head_prefix) :]
            if key.startswith(self.head_prefix)
            else "backbone." + key: value
            for key, value in state.items()
        }


def freeze_stages(model: nn.Module, n_frozen: int) -> None:
    """Freeze the lowest `n_frozen` stages of `model`: no gradients, BatchNorm in eval mode."""
    stages = model.stages()
    if not 0 <= n_frozen <= len(stages):
        raise FewcellsError(
            f"model.freeze: the network has {len(stages)} stages; freeze must be "
            f"0..{len(stages)}, not {n_frozen}"
        )
    for stage in stages[:n_frozen]:
        stage.requires_grad_(False)
    model.n_frozen = n_frozen
    model.train(model.training)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a state_dict file or of a fewcells model.ckpt (its `model.` keys)."""
    if not path.is_file():
        raise FewcellsError(f"model.weights: {path}: no such file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        raise FewcellsError(
            f"model.weights: {path}: cannot read it as a PyTorch state_dict or checkpoint: {error}"
        ) from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = {
            key[len("model.") :]: value
            for key, value in loaded["state_dict"].items()
            if key.startswith("model.")
        }
        if not loaded:
            raise FewcellsError(
                f"model.weights: {path}: a checkpoint without network keys ('model.*')"
            )
    if not (
        isinstance(loaded, dict)
        and loaded
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items())
    ):
        raise FewcellsError(
            f"model.weights: {path}: not a state_dict (a dict of parameter names to tensors)"
        )
    return loaded


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local state_dict or fewcells checkpoint into `model`.

    The head (`classifier.*`) is left at its initialisation when its shape differs (another
    number of classes, ImageNet's 1000); keys of stages dropped by keep_blocks are ignored. Any
    other missing, unexpected or mis-shaped key is a FewcellsError naming the file.
    """
    path = Path(path)
    state = _read_state_dict(path)
    if hasattr(model, "normalise_keys"):
        state = model.normalise_keys(state)
    ignored = getattr(model, "dropped_prefixes", ())
    own = model.state_dict()
    usable: dict[str, torch.Tensor] = {}
    unexpected, mismatched = [], []
    for key, value in state.items():
        if key.startswith(ignored):
            continue
        if key not in own:
            unexpected.append(key)
        elif own[key].shape != value.shape:
            if not key.startswith("classifier."):
                mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
        else:
            usable[key] = value
    missing = [k for k in own if k not in usable and not k.startswith("classifier.")]
    if missing or unexpected or mismatched:
        problems = [
            f"{len(items)} {what} backbone key(s) (e.g. {', '.join(items[:3])})"
            for what, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("mis-shaped", mismatched),
            )
            if items
        ]
        raise FewcellsError(
            f"model.weights: {path}: does not fit {type(model).__name__}"
            f"{' ' + model.arch if hasattr(model, 'arch') else ''}: " + "; ".join(problems)
        )
    model.load_state_dict(usable, strict=False)


def _build_paper_cnn(model_cfg: dict, n_classes: int, image_size: int) -> nn.Module:
    if model_cfg.get("keep_blocks") is not None:
        raise FewcellsError("model.keep_blocks: only for the torchvision networks, not paper_cnn")
    return PaperCNN(
        n_classes,
        image_size=image_size,
        hidden=int(model_cfg.get("hidden", 32)),
        init=model_cfg.get("init") or "keras",
    )


def _torchvision_builder(arch: str) -> Callable[[dict, int, int], nn.Module]:
    def build(model_cfg: dict, n_classes: int, image_size: int) -> nn.Module:
        if model_cfg.get("init") not in (None, "torch"):
            raise FewcellsError(
                f"model.init: {model_cfg['init']!r} is for paper_cnn; {arch} keeps "
                "torchvision's initialisation (init: torch or null)"
            )
        return TorchvisionNet(arch, n_classes, image_size, keep_blocks=model_cfg.get("keep_blocks"))

    return build


MODELS: dict[str, Callable[[dict, int, int], nn.Module]] = {
    "paper_cnn": _build_paper_cnn,
    **{arch: _torchvision_builder(arch) for arch in TORCHVISION_ARCHS},
}


def build_model(model_cfg: dict, n_classes: int, image_size: int) -> nn.Module:
    """Build the network named by model_cfg["name"], load `weights`, freeze `freeze` stages.

    Every network maps float (B, 3, H, W) in [0, 1] to logits and exposes `embed(x)` (the last
    hidden layer), `classifier` (the layer from that embedding to the logits) and `stages()`.
    """
    name = model_cfg.get("name")
    if name not in MODELS:
        raise FewcellsError(
            f"model.name: unknown model {name!r}; known models: {', '.join(sorted(MODELS))}"
        )
    model = MODELS[name](model_cfg, n_classes, image_size)
    if model_cfg.get("weights") is not None:
        load_weights(model, model_cfg["weights"])
    freeze_stages(model, int(model_cfg.get("freeze") or 0))
    return model
