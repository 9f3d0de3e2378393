"""Build ONNX models with ``onnx.helper`` (no torch): ViT-B/16-shaped transformers, single convs
and linears, and the small patterns the canonicalizer rewrites.

A builder returns a :class:`Spec`: nodes, inputs, outputs and the initializers. Large weights are
described, not stored (``Rand``: shape, standard deviation), and drawn from a generator seeded by
``(seed, crc32(name))`` only when the model is written, one tensor at a time; so
:meth:`Spec.save` with ``external=True`` writes an 86 M-weight ViT-B/16 with a memory peak of one
tensor, and the frontend memory-maps the data file. Used by the tests and by
``benchmarks/compile_scale.py``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8
"""IR version of the models (onnxruntime accepts it at every opset used here)."""


@dataclass(frozen=True)
class Rand:
    """A random float32 initializer drawn at write time: ``std * N(0, 1)`` (``mean`` added)."""

    shape: tuple[int, ...]
    std: float = 0.02
    mean: float = 0.0
    positive: bool = False
    """Draw ``|N|`` (e.g. BatchNorm variances)."""

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


Weight = np.ndarray | Rand


def draw(name: str, w: Weight, seed: int) -> np.ndarray:
    """The array of an initializer (deterministic in ``seed`` and ``name``)."""
    if isinstance(w, np.ndarray):
        return w
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    a = rng.standard_normal(w.shape, dtype=np.float32)
    if w.positive:
        np.abs(a, out=a)
    a *= np.float32(w.std)
    if w.mean:
        a += np.float32(w.mean)
    return a


@dataclass
class Spec:
    """An ONNX model under construction: ``add`` nodes, ``weight`` initializers."""

    name: str = "model"
    opset: int = 17
    seed: int = 0
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    outputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    weights: dict[str, Weight] = field(default_factory=dict)
    _n: int = 0

    # ----------------------------------------------------------------- building

    def input(self, name: str, shape: list[int | str]) -> str:
        """Declare a float32 graph input."""
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        return name

    def output(self, name: str, shape: list[int | str] | None = None) -> None:
        """Declare a graph output (float32 ``shape``, or typed by ONNX shape inference)."""
        if shape is None:
            self.outputs.append(helper.make_value_info(name, onnx.TypeProto()))
        else:
            self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))

    def weight(self, name: str, w: Weight | list[int] | list[float]) -> str:
        """An initializer; a list becomes an int64 (ints) or float32 array."""
        if isinstance(w, list):
            is_int = all(isinstance(v, int) for v in w)
            w = np.asarray(w, np.int64 if is_int else np.float32)
        self.weights[name] = w
        return name

    def add(self, op: str, ins: list[str], name: str, *, outs: int = 1, **attrs: object) -> str:
        """Append a node; returns its (first) output name. The node is called ``name``."""
        out_names = [name] if outs == 1 else [f"{name}:{i}" for i in range(outs)]
        self.nodes.append(helper.make_node(op, ins, out_names, name=name, **attrs))
        return out_names[0]

    def scalar(self, value: float, name: str) -> str:
        """A float32 scalar initializer."""
        return self.weight(name, np.asarray(value, np.float32))

    # ----------------------------------------------------------------- output

    @property
    def n_weights(self) -> int:
        """Elements in float initializers (the parameters)."""
        return sum(
            w.size if isinstance(w, Rand) else int(w.size)
            for w in self.weights.values()
            if isinstance(w, Rand) or w.dtype.kind == "f"
        )

    def arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """Every initializer, drawn one at a time."""
        for name, w in self.weights.items():
            yield name, draw(name, w, self.seed)

    def _model(self, initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, self.name, self.inputs, self.outputs, initializer=initializers
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", self.opset)], producer_name="xbarc-tests"
        )
        model.ir_version = IR_VERSION
        if any(not o.type.HasField("tensor_type") for o in model.graph.output):
            light = onnx.ModelProto()
            light.CopyFrom(model)
            del light.graph.initializer[:]
            light.graph.input.extend(
                helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                for t in initializers
            )
            typed = onnx.shape_inference.infer_shapes(light)
            for o, t in zip(model.graph.output, typed.graph.output, strict=True):
                if not o.type.HasField("tensor_type"):
                    o.type.CopyFrom(t.type)
        return model

    def model(self) -> onnx.ModelProto:
        """The model with every initializer embedded."""
        return self._model([numpy_helper.from_array(a, n) for n, a in self.arrays()])

    def save(self, path: str | Path, *, external: bool = False, threshold: int = 1024) -> Path:
        """Write the model; with ``external`` tensors over ``threshold`` bytes go to
        ``<name>.data`` next to it (64-byte aligned), streamed one tensor at a time."""
        path = Path(path)
        if not external:
            onnx.save(self.model(), str(path))
            return path
        data_name = path.name + ".data"
        inits: list[onnx.TensorProto] = []
        with open(path.parent / data_name, "wb") as f:
            for name, a in self.arrays():
                if a.nbytes <= threshold:
                    inits.append(numpy_helper.from_array(a, name))
                    continue
                offset = f.tell()
                pad = -offset % 64
                if pad:
                    f.write(b"\0" * pad)
                    offset += pad
                f.write(np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes())
                t = TensorProto()
                t.name = name
                t.data_type = helper.np_dtype_to_tensor_dtype(a.dtype)
                t.dims.extend(a.shape)
                t.data_location = TensorProto.EXTERNAL
                for k, v in (("location", data_name), ("offset", offset), ("length", a.nbytes)):
                    e = t.external_data.add()
                    e.key, e.value = k, str(v)
                inits.append(t)
        onnx.save(self._model(inits), str(path))
        return path


# --------------------------------------------------------------------------- ViT


def _linear(s: Spec, x: str, name: str, k: int, n: int) -> str:
    """torch's export of ``nn.Linear`` on a 3-D input: MatMul(x, Wᵀ) then Add(b, ·)."""
    w = s.weight(f"{name}.weight_t", Rand((k, n)))
    b = s.weight(f"{name}.bias", Rand((n,)))
    y = s.add("MatMul", [x, w], f"{name}/MatMul")
    return s.add("Add", [b, y], f"{name}/Add")


def _layer_norm(s: Spec, x: str, name: str, d: int) -> str:
    g = s.weight(f"{name}.weight", Rand((d,), 0.1, 1.0))
    b = s.weight(f"{name}.bias", Rand((d,)))
    return s.add("LayerNormalization", [x, g, b], name, axis=-1, epsilon=1e-6)


def _gelu(s: Spec, x: str, name: str, form: str) -> str:
    if form == "op":
        return s.add("Gelu", [x], name)
    sqrt2 = s.scalar(math.sqrt(2.0), f"{name}.sqrt2")
    one = s.scalar(1.0, f"{name}.one")
    half = s.scalar(0.5, f"{name}.half")
    t = s.add("Div", [x, sqrt2], f"{name}/Div")
    t = s.add("Erf", [t], f"{name}/Erf")
    t = s.add("Add", [t, one], f"{name}/Add")
    t = s.add("Mul", [x, t], f"{name}/Mul")
    return s.add("Mul", [t, half], f"{name}/Mul_1")


def vit(
    *,
    depth: int = 12,
    dim: int = 768,
    heads: int = 12,
    mlp: int = 3072,
    image: int = 224,
    patch: int = 16,
    channels: int = 3,
    classes: int = 1000,
    gelu: str = "erf",
    seed: int = 0,
) -> Spec:
    """A ViT-B/16-shaped classifier (defaults: ViT-B/16, 86 M weights) as torch exports it.

    Input ``input[N, 3, 224, 224]``, output ``logits[N, 1000]``. Patch embedding Conv (kernel =
    stride = ``patch``), class token (Expand to the batch via Shape→Gather→Unsqueeze→Concat, then
    Concat), position embedding Add, ``depth`` pre-norm encoder blocks (LayerNorm, qkv MatMul +
    bias Add, reshape/transpose into heads, QKᵀ MatMul, scale Mul, Softmax, ×V MatMul, proj,
    LayerNorm, MLP with exact GELU as one ``Gelu`` op (``gelu="op"``, opset 20) or the Erf form
    (``gelu="erf"``, opset 17), residual Adds), final LayerNorm, class-token Gather, head Gemm.
    """
    if dim % heads:
        raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
    s = Spec(name=f"vit_d{dim}_l{depth}", opset=20 if gelu == "op" else 17, seed=seed)
    hd = dim // heads
    grid = image // patch
    tokens = grid * grid + 1
    x = s.input("input", ["N", channels, image, image])
    pw = s.weight("patch_embed.weight", Rand((dim, channels, patch, patch)))
    pb = s.weight("patch_embed.bias", Rand((dim,)))
    y = s.add(
        "Conv", [x, pw, pb], "patch_embed/Conv", kernel_shape=[patch, patch], strides=[patch, patch]
    )
    y = s.add("Reshape", [y, s.weight("shape.flat", [0, dim, -1])], "Reshape")
    y = s.add("Transpose", [y], "Transpose", perm=[0, 2, 1])
    # class token expanded to the batch: shape arithmetic the frontend folds (batch_coef)
    shp = s.add("Shape", [x], "Shape")
    n = s.add("Gather", [shp, s.weight("idx0", np.asarray(0, np.int64))], "Gather", axis=0)
    n = s.add("Unsqueeze", [n, s.weight("axes0", [0])], "Unsqueeze")
    tshape = s.add("Concat", [n, s.weight("ones2", [1, 1])], "Concat", axis=0)
    cls = s.add("Expand", [s.weight("cls_token", Rand((1, 1, dim))), tshape], "Expand")
    y = s.add("Concat", [cls, y], "Concat_2", axis=1)
    y = s.add("Add", [y, s.weight("pos_embed", Rand((1, tokens, dim)))], "Add")
    qkv_shape = s.weight("shape.qkv", [0, tokens, 3, heads, hd])
    merge_shape = s.weight("shape.merge", [0, tokens, dim])
    scale = s.scalar(hd**-0.5, "attn.scale")
    for i in range(depth):
        b = f"blocks.{i}"
        h = _layer_norm(s, y, f"{b}.norm1", dim)
        h = _linear(s, h, f"{b}.attn.qkv", dim, 3 * dim)
        h = s.add("Reshape", [h, qkv_shape], f"{b}/attn/Reshape")
        h = s.add("Transpose", [h], f"{b}/attn/Transpose", perm=[2, 0, 3, 1, 4])
        q, k, v = (
            s.add(
                "Gather",
                [h, s.weight(f"idx.{j}", np.asarray(j, np.int64))],
                f"{b}/attn/Gather_{j}",
                axis=0,
            )
            for j in range(3)
        )
        kt = s.add("Transpose", [k], f"{b}/attn/Transpose_1", perm=[0, 1, 3, 2])
        a = s.add("MatMul", [q, kt], f"{b}/attn/MatMul")
        a = s.add("Mul", [a, scale], f"{b}/attn/Mul")
        a = s.add("Softmax", [a], f"{b}/attn/Softmax", axis=-1)
        a = s.add("MatMul", [a, v], f"{b}/attn/MatMul_1")
        a = s.add("Transpose", [a], f"{b}/attn/Transpose_2", perm=[0, 2, 1, 3])
        a = s.add("Reshape", [a, merge_shape], f"{b}/attn/Reshape_1")
        a = _linear(s, a, f"{b}.attn.proj", dim, dim)
        y = s.add("Add", [y, a], f"{b}/Add")
        h = _layer_norm(s, y, f"{b}.norm2", dim)
        h = _linear(s, h, f"{b}.mlp.fc1", dim, mlp)
        h = _gelu(s, h, f"{b}/mlp/gelu", gelu)
        h = _linear(s, h, f"{b}.mlp.fc2", mlp, dim)
        y = s.add("Add", [y, h], f"{b}/Add_1")
    y = _layer_norm(s, y, "norm", dim)
    y = s.add("Gather", [y, s.weight("idx.cls", np.asarray(0, np.int64))], "Gather_cls", axis=1)
    hw = s.weight("head.weight", Rand((classes, dim)))
    hb = s.weight("head.bias", Rand((classes,)))
    s.add("Gemm", [y, hw, hb], "head/Gemm", transB=1)
    s.nodes[-1].output[0] = "logits"
    s.output("logits", ["N", classes])
    return s


def vit_tiles(
    *,
    depth: int = 12,
    dim: int = 768,
    mlp: int = 3072,
    patch: int = 16,
    channels: int = 3,
    classes: int = 1000,
    tile: tuple[int, int] = (256, 256),
) -> int:
    """Logical tiles (1 cell per weight, no packing) of :func:`vit`, landscape.md §4 formula."""
    tr, tc = tile

    def t(r: int, c: int) -> int:
        return math.ceil(r / tr) * math.ceil(c / tc)

    block = t(dim, 3 * dim) + t(dim, dim) + t(dim, mlp) + t(mlp, dim)
    return depth * block + t(patch * patch * channels, dim) + t(dim, classes)


# --------------------------------------------------------------------------- single layers


def conv(
    cin: int,
    cout: int,
    k: int,
    *,
    hw: int = 8,
    stride: int = 1,
    pad: int = 0,
    group: int = 1,
    bias: bool = True,
    batch_norm: bool = False,
    seed: int = 0,
) -> Spec:
    """One Conv (optionally + BatchNormalization): ``input[N, cin, hw, hw]`` → ``y``."""
    s = Spec(name=f"conv{k}x{k}_{cin}_{cout}", seed=seed)
    x = s.input("input", ["N", cin, hw, hw])
    ins = [x, s.weight("conv.weight", Rand((cout, cin // group, k, k), 0.2))]
    if bias:
        ins.append(s.weight("conv.bias", Rand((cout,), 0.1)))
    y = s.add(
        "Conv",
        ins,
        "conv",
        kernel_shape=[k, k],
        strides=[stride, stride],
        pads=[pad] * 4,
        group=group,
    )
    if batch_norm:
        y = _batch_norm(s, y, "bn", cout)
    s.nodes[-1].output[0] = "y"
    s.output("y")
    return s


def _batch_norm(s: Spec, x: str, name: str, c: int) -> str:
    params = [
        s.weight(f"{name}.weight", Rand((c,), 0.3, 1.0)),
        s.weight(f"{name}.bias", Rand((c,), 0.3)),
        s.weight(f"{name}.running_mean", Rand((c,), 0.3)),
        s.weight(f"{name}.running_var", Rand((c,), 0.5, positive=True)),
    ]
    return s.add("BatchNormalization", [x, *params], name, epsilon=1e-5)


def linear(
    k: int,
    n: int,
    *,
    form: str = "gemm",
    bias: bool = True,
    batch_norm: bool = False,
    seed: int = 0,
) -> Spec:
    """One fully connected layer ``input[N, k]`` → ``y[N, n]``.

    ``form``: ``gemm`` (Gemm, transB=1, as torch exports ``nn.Linear``), ``matmul`` (MatMul then
    Add of the bias). ``batch_norm`` appends a BatchNormalization (BatchNorm1d).
    """
    s = Spec(name=f"linear_{k}_{n}", seed=seed)
    x = s.input("input", ["N", k])
    if form == "gemm":
        ins = [x, s.weight("fc.weight", Rand((n, k), 0.2))]
        if bias:
            ins.append(s.weight("fc.bias", Rand((n,), 0.1)))
        y = s.add("Gemm", ins, "fc", transB=1)
    elif form == "matmul":
        y = s.add("MatMul", [x, s.weight("fc.weight_t", Rand((k, n), 0.2))], "fc/MatMul")
        if bias:
            y = s.add("Add", [y, s.weight("fc.bias", Rand((n,), 0.1))], "fc/Add")
    else:
        raise ValueError(f"unknown form {form!r}")
    if batch_norm:
        y = _batch_norm(s, y, "bn", n)
    s.nodes[-1].output[0] = "y"
    s.output("y")
    return s


# --------------------------------------------------------------------------- IR graphs
# Property tests build graphs straight in the IR (no ONNX round trip): faster, and the layer
# structure (which layers run in parallel) is known exactly.


@dataclass
class LayerNet:
    """An IR graph of constant-weight ``linear`` layers and what the test needs to know."""

    graph: object
    """The :class:`xbarc.ir.Graph` (typed loosely: this module does not import xbarc)."""
    weights: dict[str, np.ndarray]
    """Layer name → weight ``[K, N]`` (the crossbar layer is named like the node)."""
    parallel: set[frozenset[str]]
    """Pairs of layers in different branches of one fan-out (they may fire together)."""


def layer_net(
    stages: list[list[list[tuple[int, int]]]], *, d0: int, tokens: int, seed: int = 0
) -> LayerNet:
    """A net of stages; a stage is a list of branches reading the stage input; a branch is a
    chain of ``(width, merge)`` linears (``merge`` = 1 halves, 2 thirds the tokens first via
    Reshape when the token count divides: different MVM counts per layer, in non-integer
    ratios). Branch outputs are concatenated along the features (after reshaping every branch
    to the gcd of their token counts)."""
    from xbarc.ir import Graph
    from xbarc.ir import ops as O
    from xbarc.ir.core import make_const
    from xbarc.ir.types import TensorType

    rng = np.random.default_rng(seed)
    g = Graph("layer_net")
    x = g.add_input(TensorType((1, tokens, d0)), "x")
    weights: dict[str, np.ndarray] = {}
    parallel: set[frozenset[str]] = set()
    for si, stage in enumerate(stages):
        outs = []
        names: list[list[str]] = []
        for bi, branch in enumerate(stage):
            y = x
            names.append([])
            for li, (width, merge) in enumerate(branch):
                t, d = y.type.shape[1], y.type.shape[2]
                f = merge + 1
                if merge and t % f == 0:
                    y = g.add(O.Reshape(shape=(1, t // f, f * d)), [y], f"s{si}b{bi}r{li}")
                    y = y.outputs[0]
                k = y.type.shape[2]
                name = f"s{si}b{bi}l{li}"
                w = (rng.standard_normal((k, width)) / np.sqrt(k)).astype(np.float32)
                weights[name] = w
                names[-1].append(name)
                y = g.add(O.Linear(), [y, make_const(w, f"{name}.w", param=True)], name).outputs[0]
                y = g.add(O.Relu(), [y], f"{name}.relu").outputs[0]
            outs.append(y)
        t = math.gcd(*(o.type.shape[1] for o in outs))
        outs = [
            o
            if o.type.shape[1] == t
            else g.add(O.Reshape(shape=(1, t, o.type.size // t)), [o], f"s{si}eq{i}").outputs[0]
            for i, o in enumerate(outs)
        ]
        x = outs[0] if len(outs) == 1 else g.add(O.Concat(axis=2), outs, f"s{si}cat").outputs[0]
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                parallel.update(frozenset((p, q)) for p in a for q in b)
    g.outputs = [x]
    g.verify()
    return LayerNet(g, weights, parallel)
