"""Deterministic generator for the ONNX models committed under ``models/``.

Every model is built from a fixed seed, optionally trained on the bundled digits data set
(``runtime/data/datasets/digits.csv.gz``), and exported twice:

* ``<name>.onnx``: torch's classic TorchScript exporter, opset 17. The export uses
  ``training=TrainingMode.PRESERVE`` on a model in eval mode, so the graph is inference
  semantics but ``BatchNormalization`` nodes are kept (the default ``EVAL`` mode folds them
  into the preceding ``Conv``), which lets the xbarc frontend exercise its own BN folding.
* ``<name>.dynamo.onnx``: the ``torch.export``-based exporter with its default opset and
  default graph optimisation (which folds BN into Conv), weights embedded in the file.

Afterwards every file is checked with onnxruntime against the torch model at batch 1 and 4
and ``models/manifest.json`` is (re)written.

This script needs torch, onnx, onnxscript and onnxruntime; it is not part of xbarc and must
not import it. Usage::

    python models/make.py [--out models/] [--only NAME]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import onnxscript
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "models"
DIGITS_PATH = REPO_ROOT / "runtime" / "data" / "datasets" / "digits.csv.gz"

CLASSIC_OPSET = 17
EXPORT_BATCH = 2  # example batch used for tracing; the batch axis is exported symbolic
VERIFY_BATCHES = (1, 4)
VERIFY_TOL = 1e-4  # max abs error relative to max(1, max |reference|)
MAX_FILE_BYTES = 3 * 1024 * 1024
DIGITS_TRAIN_ROWS = 1437  # first 1437 rows train, last 360 rows test
AUG_SHIFT = 0.3  # max sub-pixel shift (8x8 pixels) used as training augmentation
AUG_NOISE = 0.1  # std of Gaussian pixel noise used as training augmentation
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# Node metadata keys dropped from dynamo exports: they embed absolute file paths of the
# interpreter, torch and this script, which would make the bytes depend on the checkout.
STRIPPED_METADATA_KEYS = frozenset({"pkg.torch.onnx.stack_trace"})


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def load_digits(path: Path = DIGITS_PATH) -> tuple[np.ndarray, np.ndarray]:
    """Loads the bundled UCI digits data set.

    Args:
        path: Path of ``digits.csv.gz`` (each row: 64 pixel ints 0..16, then the label).

    Returns:
        A pair ``(pixels, labels)``: pixels as float32 ``[1797, 64]`` in 0..16 and labels as
        int64 ``[1797]``.
    """
    with gzip.open(path, "rt", encoding="ascii") as fh:
        data = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    if data.shape != (1797, 65):
        raise ValueError(f"unexpected digits shape {data.shape} in {path}")
    return data[:, :64].astype(np.float32), data[:, 64].copy()


def digits_flat(pixels: np.ndarray) -> torch.Tensor:
    """Preprocesses raw digits (0..16) as the MLPs expect: ``pixels / 16`` float32 ``[N, 64]``."""
    return torch.from_numpy(pixels / np.float32(16.0))


def digits_28x28(x: torch.Tensor) -> torch.Tensor:
    """Turns flat 0..1 digits ``[N, 64]`` into LeNet input ``[N, 1, 28, 28]``.

    The resize is exactly ``torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear",
    align_corners=False, antialias=False)`` on the float32 ``[N, 1, 8, 8]`` tensor.
    """
    return nn.functional.interpolate(
        x.reshape(-1, 1, 8, 8),
        size=(28, 28),
        mode="bilinear",
        align_corners=False,
        antialias=False,
    )


# --------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------


class DigitsMLP(nn.Module):
    """64 -> 64 -> ReLU -> 10."""

    def __init__(self) -> None:
        """Builds the layers."""
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``[N, 64]`` to logits ``[N, 10]``."""
        out: torch.Tensor = self.fc2(self.relu(self.fc1(x)))
        return out


class MLP(nn.Module):
    """784 -> 256 -> ReLU -> 128 -> ReLU -> 10 (MNIST-sized, flattened input)."""

    def __init__(self) -> None:
        """Builds the layers."""
        super().__init__()
        self.fc1 = nn.Linear(784, 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``[N, 784]`` to logits ``[N, 10]``."""
        x = nn.functional.relu(self.fc1(x))
        x = nn.functional.relu(self.fc2(x))
        out: torch.Tensor = self.fc3(x)
        return out


class LeNet(nn.Module):
    """Classic LeNet-5 for ``[N, 1, 28, 28]`` inputs."""

    def __init__(self) -> None:
        """Builds the layers."""
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5, padding=2)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``[N, 1, 28, 28]`` to logits ``[N, 10]``."""
        x = self.pool1(nn.functional.relu(self.conv1(x)))
        x = self.pool2(nn.functional.relu(self.conv2(x)))
        x = self.flatten(x)
        x = nn.functional.relu(self.fc1(x))
        x = nn.functional.relu(self.fc2(x))
        out: torch.Tensor = self.fc3(x)
        return out


class BasicBlock(nn.Module):
    """ResNet basic block with an optional 1x1 conv + BN projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        """Builds the block.

        Args:
            cin: Input channels.
            cout: Output channels.
            stride: Stride of the first 3x3 conv (and of the projection).
        """
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies conv-BN-ReLU-conv-BN, adds the shortcut, then ReLU."""
        out = nn.functional.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return nn.functional.relu(out + self.shortcut(x))


class ResNet8(nn.Module):
    """CIFAR ResNet-8: stem + three single-block stages (16, 32, 64 channels)."""

    def __init__(self) -> None:
        """Builds the layers."""
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = BasicBlock(16, 16, stride=1)
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.layer3 = BasicBlock(32, 64, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``[N, 3, 32, 32]`` to logits ``[N, 10]``."""
        x = nn.functional.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        out: torch.Tensor = self.fc(self.flatten(self.pool(x)))
        return out


class Attention(nn.Module):
    """timm-style multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim: int, heads: int) -> None:
        """Builds the projections.

        Args:
            dim: Embedding width.
            heads: Number of heads; ``dim`` must be divisible by it.
        """
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``[B, N, C]`` tokens to ``[B, N, C]``."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        out: torch.Tensor = self.proj(x)
        return out


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        """Builds the block.

        Args:
            dim: Embedding width.
            heads: Attention heads.
            hidden: MLP hidden width.
        """
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``."""
        x = x + self.attn(self.norm1(x))
        out: torch.Tensor = x + self.mlp(self.norm2(x))
        return out


class ViT(nn.Module):
    """Tiny Vision Transformer for ``[N, 3, 32, 32]`` (4x4 patches, 64 tokens + class)."""

    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, hidden: int = 128) -> None:
        """Builds the layers.

        Args:
            dim: Embedding width.
            depth: Number of encoder blocks.
            heads: Attention heads.
            hidden: MLP hidden width.
        """
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=4, stride=4)
        num_tokens = (32 // 4) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated-normal init for tokens and linears; non-trivial LayerNorm affine."""
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.normal_(m.bias, std=0.01)
            elif isinstance(m, nn.LayerNorm):
                nn.init.uniform_(m.weight, 0.8, 1.2)
                nn.init.normal_(m.bias, std=0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``[N, 3, 32, 32]`` to logits ``[N, 10]``."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        out: torch.Tensor = self.head(x[:, 0])
        return out


class DWCNN(nn.Module):
    """Small depthwise-separable CNN with grouped conv, LeakyReLU and squeeze-excite."""

    def __init__(self) -> None:
        """Builds the layers."""
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()
        )
        self.dw = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.pw = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.se_pool = nn.AdaptiveAvgPool2d(1)
        self.se_reduce = nn.Conv2d(32, 8, 1)
        self.se_act = nn.LeakyReLU(0.1)
        self.se_expand = nn.Conv2d(8, 32, 1)
        self.se_gate = nn.Sigmoid()
        self.grouped = nn.Sequential(
            nn.Conv2d(32, 32, 3, stride=2, padding=1, dilation=1, groups=4, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.pool = nn.AvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``[N, 3, 32, 32]`` to logits ``[N, 10]``."""
        x = self.pw(self.dw(self.stem(x)))
        gate = self.se_gate(self.se_expand(self.se_act(self.se_reduce(self.se_pool(x)))))
        x = self.grouped(x * gate)
        out: torch.Tensor = self.fc(self.flatten(self.pool(x)))
        return out


# --------------------------------------------------------------------------------------
# Preparation: BN statistics and training
# --------------------------------------------------------------------------------------


def calibrate_batchnorm(model: nn.Module, input_shape: tuple[int, ...], steps: int = 8) -> None:
    """Gives every BatchNorm non-trivial affine parameters and running statistics.

    The affine weight/bias are re-drawn away from 1/0, then a few forward passes in train
    mode on shifted, scaled random data set the running mean/var to the cumulative batch
    statistics (``momentum=None`` while calibrating, restored afterwards). The model is left
    in eval mode.

    Args:
        model: Model to modify in place.
        input_shape: Input shape without the batch dimension.
        steps: Number of train-mode forward passes.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if bns:
        with torch.no_grad():
            momenta = [bn.momentum for bn in bns]
            for bn in bns:
                nn.init.uniform_(bn.weight, 0.5, 1.5)
                nn.init.normal_(bn.bias, std=0.1)
                bn.reset_running_stats()
                bn.momentum = None
            model.train()
            for _ in range(steps):
                model(torch.randn(16, *input_shape) * 1.5 + 0.5)
            for bn, momentum in zip(bns, momenta, strict=True):
                bn.momentum = momentum
    model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Returns top-1 accuracy of ``model`` (in eval mode) on ``(x, y)``."""
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def augment_digits(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Training-time augmentation of ``[N, 64]`` digit images scaled to 0..1.

    Each image is shifted by a random sub-pixel offset (up to ``AUG_SHIFT`` pixels per axis,
    bilinear, zero padding) and gets Gaussian noise of std ``AUG_NOISE``. Only used while
    training; the exported models see the plain preprocessed pixels.

    Args:
        x: Flat images ``[N, 64]``.
        gen: Random generator.

    Returns:
        Augmented flat images ``[N, 64]``.
    """
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    # affine_grid works in [-1, 1] coordinates: one pixel of an 8-wide image is 2/8.
    theta[:, :, 2] = (torch.rand(n, 2, generator=gen) * 2 - 1) * AUG_SHIFT * 2 / 8
    grid = nn.functional.affine_grid(theta, [n, 1, 8, 8], align_corners=False)
    x = nn.functional.grid_sample(x.reshape(n, 1, 8, 8), grid, align_corners=False).reshape(n, 64)
    return x + AUG_NOISE * torch.randn(x.shape, generator=gen)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of the digits training runs.

    Attributes:
        lr: Adam learning rate.
        epochs: Passes over the training split.
        batch_size: Minibatch size.
        label_smoothing: Cross-entropy label smoothing.
    """

    lr: float
    epochs: int
    batch_size: int = 64
    label_smoothing: float = 0.1


MLP_TRAIN = TrainConfig(lr=1e-2, epochs=60)
LENET_TRAIN = TrainConfig(lr=3e-3, epochs=30)


def train_on_digits(
    model: nn.Module,
    prep: Callable[[torch.Tensor], torch.Tensor],
    cfg: TrainConfig,
    seed: int,
) -> float:
    """Trains a classifier on the fixed digits split with Adam and cross-entropy.

    Args:
        model: Model to train in place.
        prep: Maps flat ``[N, 64]`` pixels scaled to 0..1 to the model's input.
        cfg: Hyper-parameters.
        seed: Seed of the shuffling/augmentation generator.

    Returns:
        Test accuracy after training (model left in eval mode).
    """
    pixels, labels = load_digits()
    x = digits_flat(pixels)
    y = torch.from_numpy(labels)
    n = DIGITS_TRAIN_ROWS
    x_train, y_train = x[:n], y[:n]
    x_test, y_test = prep(x[n:]), y[n:]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            xb = prep(augment_digits(x_train[idx], gen))
            opt.zero_grad()
            logits = model(xb)
            loss = nn.functional.cross_entropy(
                logits, y_train[idx], label_smoothing=cfg.label_smoothing
            )
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
        if (epoch + 1) % 10 == 0:
            acc = accuracy(model, x_test, y_test)
            print(f"    epoch {epoch + 1:3d} loss {loss.item():.4f} test acc {acc:.4f}")
    return accuracy(model, x_test, y_test)


# --------------------------------------------------------------------------------------
# Model registry
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model.

    Attributes:
        name: File stem, ``models/<name>.onnx``.
        seed: Seed set with ``torch.manual_seed`` before construction.
        input_shape: Input shape without the batch dimension.
        dataset: Data set the model expects: ``digits``, ``mnist`` or ``cifar10``.
        build: Constructor of the untrained module.
        preprocessing: Human-readable description of the expected input transform.
        train: Optional trainer; returns the test accuracy.
    """

    name: str
    seed: int
    input_shape: tuple[int, ...]
    dataset: str
    build: Callable[[], nn.Module]
    preprocessing: str
    train: Callable[[nn.Module, int], float] | None = None


def _train_digits_mlp(model: nn.Module, seed: int) -> float:
    return train_on_digits(model, lambda x: x, MLP_TRAIN, seed)


def _train_digits_lenet(model: nn.Module, seed: int) -> float:
    return train_on_digits(model, digits_28x28, LENET_TRAIN, seed)


DIGITS_FLAT_PREP = "digits pixels (0..16) / 16.0, float32 [N, 64]"
DIGITS_28_PREP = (
    "digits pixels / 16.0 as float32 [N,1,8,8], then torch.nn.functional.interpolate("
    "size=(28, 28), mode='bilinear', align_corners=False, antialias=False)"
)

SPECS: tuple[ModelSpec, ...] = (
    ModelSpec("digits_mlp", 1, (64,), "digits", DigitsMLP, DIGITS_FLAT_PREP),
    ModelSpec(
        "digits_mlp_trained", 2, (64,), "digits", DigitsMLP, DIGITS_FLAT_PREP, _train_digits_mlp
    ),
    ModelSpec("mlp", 3, (784,), "mnist", MLP, "MNIST 28x28 flattened to [N, 784]"),
    ModelSpec("lenet", 4, (1, 28, 28), "mnist", LeNet, "MNIST [N, 1, 28, 28]"),
    ModelSpec(
        "lenet_digits_trained",
        5,
        (1, 28, 28),
        "digits",
        LeNet,
        DIGITS_28_PREP,
        _train_digits_lenet,
    ),
    ModelSpec("resnet8", 6, (3, 32, 32), "cifar10", ResNet8, "CIFAR-10 [N, 3, 32, 32]"),
    ModelSpec("vit", 7, (3, 32, 32), "cifar10", ViT, "CIFAR-10 [N, 3, 32, 32]"),
    ModelSpec("dwcnn", 8, (3, 32, 32), "cifar10", DWCNN, "CIFAR-10 [N, 3, 32, 32]"),
)


def build_model(spec: ModelSpec) -> tuple[nn.Module, float | None]:
    """Builds, BN-calibrates and (if applicable) trains one model.

    Args:
        spec: Model description.

    Returns:
        The model in eval mode and its test accuracy (``None`` if untrained).
    """
    torch.manual_seed(spec.seed)
    model = spec.build()
    calibrate_batchnorm(model, spec.input_shape)
    acc = None
    if spec.train is not None:
        acc = spec.train(model, spec.seed)
        print(f"  {spec.name}: test accuracy {acc:.4f}")
    model.eval()
    return model, acc


# --------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Captures stdout/stderr chatter of the exporters; yields the captured buffer."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        yield buf


def export_classic(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Exports with the TorchScript exporter, opset 17, symbolic batch, BN kept; checks it.

    Args:
        model: Model in eval mode.
        example: Example input with batch ``EXPORT_BATCH``.
        path: Destination ``.onnx``.
    """
    with quiet():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=CLASSIC_OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(path), full_check=True)


def export_dynamo(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Exports with the torch.export-based exporter (default opset), weights embedded.

    Stack-trace metadata (absolute paths) is stripped afterwards and the model is checked
    with ``onnx.checker``.

    Args:
        model: Model in eval mode.
        example: Example input with batch ``EXPORT_BATCH``.
        path: Destination ``.onnx``.
    """
    with quiet():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,
            verbose=False,
        )
    proto = onnx.load(str(path))
    strip_metadata(proto.graph)
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def strip_metadata(graph: onnx.GraphProto) -> None:
    """Removes path-dependent metadata entries from every node (recursing into subgraphs)."""
    for node in graph.node:
        keep = [p for p in node.metadata_props if p.key not in STRIPPED_METADATA_KEYS]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                strip_metadata(attr.g)
            for sub in attr.graphs:
                strip_metadata(sub)


# --------------------------------------------------------------------------------------
# Verification and manifest
# --------------------------------------------------------------------------------------


class VerificationError(RuntimeError):
    """An exported file does not reproduce the torch model's output."""


def verify(model: nn.Module, spec: ModelSpec, path: Path) -> float:
    """Compares onnxruntime against torch at every batch size in ``VERIFY_BATCHES``.

    Args:
        model: Reference model in eval mode.
        spec: Its description (for the input shape and seed).
        path: Exported file.

    Returns:
        The worst relative error ``max|ort - torch| / max(1, max|torch|)``.

    Raises:
        VerificationError: If the error exceeds ``VERIFY_TOL`` or shapes differ.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1000 + spec.seed)
    worst = 0.0
    for batch in VERIFY_BATCHES:
        if spec.dataset == "digits":
            x = rng.uniform(0.0, 1.0, size=(batch, *spec.input_shape)).astype(np.float32)
        else:
            x = rng.standard_normal((batch, *spec.input_shape)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        (got,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x})
        if got.shape != ref.shape:
            raise VerificationError(f"{path.name}: shape {got.shape} != {ref.shape}")
        err = float(np.max(np.abs(got - ref))) / max(1.0, float(np.max(np.abs(ref))))
        if err > VERIFY_TOL:
            raise VerificationError(f"{path.name} batch {batch}: rel error {err:.3g}")
        worst = max(worst, err)
    return worst


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    """Returns a value's shape with every symbolic dimension written as ``"N"``."""
    return [
        d.dim_value if d.HasField("dim_value") else "N" for d in value.type.tensor_type.shape.dim
    ]


def sha256(path: Path) -> str:
    """Returns the hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_entry(
    spec: ModelSpec, path: Path, exporter: str, num_params: int, acc: float | None
) -> dict[str, Any]:
    """Describes one exported file for the manifest, reading opset and shapes back from it."""
    proto = onnx.load(str(path))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        raise ValueError(f"{path.name}: unexpected inputs {[i.name for i in inputs]}")
    (output,) = proto.graph.output
    in_shape, out_shape = _dims(inputs[0]), _dims(output)
    if in_shape[0] != "N" or out_shape[0] != "N":
        raise ValueError(f"{path.name}: batch dimension is not symbolic")
    entry: dict[str, Any] = {
        "name": spec.name,
        "file": path.name,
        "exporter": exporter,
        "opset": opset,
        "ir_version": proto.ir_version,
        "input_name": inputs[0].name,
        "input_shape": in_shape,
        "output_name": output.name,
        "output_shape": out_shape,
        "num_params": num_params,
        "size_bytes": path.stat().st_size,
        "sha256": sha256(path),
        "op_types": sorted({n.op_type for n in proto.graph.node}),
        "task": "classification",
        "dataset": spec.dataset,
        "preprocessing": spec.preprocessing,
        "seed": spec.seed,
        "trained": acc is not None,
    }
    if acc is not None:
        entry["test_accuracy"] = round(acc, 6)
    return entry


def process(spec: ModelSpec, out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Builds, exports and verifies one model.

    Args:
        spec: Model description.
        out: Output folder.

    Returns:
        The manifest file entries and the per-model summary entry.
    """
    print(f"[{spec.name}]")
    model, acc = build_model(spec)
    num_params = sum(p.numel() for p in model.parameters())
    torch.manual_seed(spec.seed)
    example = torch.randn(EXPORT_BATCH, *spec.input_shape)

    entries: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"classic": f"{spec.name}.onnx", "dynamo": None}

    classic = out / f"{spec.name}.onnx"
    export_classic(model, example, classic)
    err = verify(model, spec, classic)
    entries.append(file_entry(spec, classic, "classic", num_params, acc))
    print(f"  classic ok: {classic.name} {classic.stat().st_size} B, max rel err {err:.2e}")

    dynamo = out / f"{spec.name}.dynamo.onnx"
    try:
        export_dynamo(model, example, dynamo)
        err = verify(model, spec, dynamo)
    except Exception as exc:  # any dynamo failure is recorded, not fatal
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
        print(f"  dynamo FAILED: {reason}")
        dynamo.unlink(missing_ok=True)
        summary["dynamo_error"] = reason
    else:
        entries.append(file_entry(spec, dynamo, "dynamo", num_params, acc))
        summary["dynamo"] = dynamo.name
        print(f"  dynamo ok: {dynamo.name} {dynamo.stat().st_size} B, max rel err {err:.2e}")

    for e in entries:
        if e["size_bytes"] > MAX_FILE_BYTES:
            raise ValueError(f"{e['file']} is {e['size_bytes']} B, over {MAX_FILE_BYTES} B")
    if acc is not None:
        summary["test_accuracy"] = round(acc, 6)
    return entries, summary


def write_manifest(
    path: Path, entries: list[dict[str, Any]], summaries: dict[str, dict[str, Any]]
) -> None:
    """Merges new entries into ``manifest.json`` (replacing those of regenerated models).

    Args:
        path: Manifest path.
        entries: File entries of the models generated in this run.
        summaries: Per-model summaries of the models generated in this run.
    """
    old_files: list[dict[str, Any]] = []
    old_models: dict[str, dict[str, Any]] = {}
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        old_files = old.get("files", [])
        old_models = old.get("models", {})
    known = {s.name for s in SPECS}
    files = [f for f in old_files if f["name"] not in summaries and f["name"] in known]
    files += entries
    files.sort(key=lambda f: f["file"])
    models = {k: v for k, v in old_models.items() if k in known}
    models.update(summaries)
    manifest = {
        "generator": "models/make.py",
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "onnxscript": onnxscript.__version__,
        },
        "notes": [
            (
                "classic: torch.onnx.export(dynamo=False, opset_version=17, "
                "training=TrainingMode.PRESERVE) on an eval-mode model: BatchNormalization "
                "nodes are kept (training_mode=0), not folded."
            ),
            (
                "dynamo: torch.onnx.export(dynamo=True) with default opset and default "
                "optimisation (BatchNormalization folded into Conv); weights embedded; "
                "pkg.torch.onnx.stack_trace node metadata stripped."
            ),
            'Symbolic batch dimension is written as "N" in input_shape/output_shape.',
            (
                "Both exporters are byte-reproducible for a given torch/onnx/onnxscript "
                "version and CPU (trained weights may differ across CPU types)."
            ),
        ],
        "files": files,
        "models": dict(sorted(models.items())),
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    path.write_text(text, encoding="utf-8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument(
        "--only", choices=[s.name for s in SPECS], action="append", help="model(s) to build"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Generates the requested models, verifies them and writes the manifest."""
    args = parse_args(argv)
    # The dynamo exporter warns once per export that torchvision ops are unavailable.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    selected = [s for s in SPECS if not args.only or s.name in args.only]

    entries: list[dict[str, Any]] = []
    summaries: dict[str, dict[str, Any]] = {}
    for spec in selected:
        file_entries, summary = process(spec, out)
        entries += file_entries
        summaries[spec.name] = summary
    write_manifest(out / "manifest.json", entries, summaries)

    print("\nsummary:")
    for e in entries:
        acc = f" acc={e['test_accuracy']:.4f}" if "test_accuracy" in e else ""
        print(
            f"  {e['file']:<34} {e['exporter']:<7} opset {e['opset']:<2} "
            f"{e['size_bytes']:>9} B  {e['sha256'][:12]}{acc}"
        )
    failed = [n for n, s in summaries.items() if s["dynamo"] is None]
    if failed:
        print(f"  dynamo export failed for: {', '.join(failed)}")
    total = sum(e["size_bytes"] for e in entries)
    print(f"  total {total} B in {len(entries)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
