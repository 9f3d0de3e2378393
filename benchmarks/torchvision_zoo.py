"""Import torchvision's architectures into xbarc and compare with onnxruntime.

Two steps, because torch is not an xbarc dependency (run the first with a Python that has
torch + torchvision, the second with xbarc's):

    python benchmarks/torchvision_zoo.py export DIR     # torch, torchvision, onnxscript
    python benchmarks/torchvision_zoo.py check DIR      # xbarc, onnxruntime

``export`` writes each model (random weights, 10 classes, 96×96 inputs; the ViT 64×64)
twice: the classic TorchScript exporter at opset 17 and the dynamo exporter, both with a
dynamic batch axis. ``check`` compiles every file with ``xbarc compile`` (256×256 tiles),
runs the ideal engine on two seeded inputs and prints the relative error against
onnxruntime, the compile time, or the one-line error xbarc gave. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

SIZES = {"vit": 64}


def builders() -> dict[str, Any]:
    from torchvision import models as m

    return {
        "resnet18": lambda: m.resnet18(num_classes=10),
        "mobilenet_v2": lambda: m.mobilenet_v2(num_classes=10),
        "mobilenet_v3_small": lambda: m.mobilenet_v3_small(num_classes=10),
        "efficientnet_b0": lambda: m.efficientnet_b0(num_classes=10),
        "mnasnet0_5": lambda: m.mnasnet0_5(num_classes=10),
        "squeezenet1_1": lambda: m.squeezenet1_1(num_classes=10),
        "shufflenet_v2_x0_5": lambda: m.shufflenet_v2_x0_5(num_classes=10),
        "densenet121": lambda: m.densenet121(num_classes=10),
        "regnet_x_400mf": lambda: m.regnet_x_400mf(num_classes=10),
        "googlenet": lambda: m.googlenet(num_classes=10, aux_logits=False, init_weights=True),
        "convnext_tiny": lambda: m.convnext_tiny(num_classes=10),
        "vgg11": lambda: m.vgg11(num_classes=10),
        "swin_t": lambda: m.swin_t(num_classes=10),
        "vit": lambda: m.VisionTransformer(
            image_size=64, patch_size=16, num_layers=2, num_heads=4, hidden_dim=64,
            mlp_dim=128, num_classes=10,
        ),
    }  # fmt: skip


def export(folder: Path) -> None:
    import torch

    # A CPU torch with a torchvision wheel built for another torch registers no C++ ops;
    # the model definitions need none.
    torch.library.register_fake = lambda *a, **k: lambda f: f  # type: ignore[assignment]
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name, make in builders().items():
        model = make().eval()
        s = SIZES.get(name, 96)
        x = torch.randn(1, 3, s, s)
        for kind in ("classic", "dynamo"):
            out = folder / f"{name}.{kind}.onnx"
            quiet = io.StringIO()
            try:
                with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                    if kind == "classic":
                        torch.onnx.export(
                            model, (x,), str(out), opset_version=17, dynamo=False,
                            input_names=["x"], dynamic_axes={"x": {0: "b"}},
                        )  # fmt: skip
                    else:
                        batch = torch.export.Dim("b")
                        torch.onnx.export(
                            model, (x,), str(out), dynamo=True, dynamic_shapes={"x": {0: batch}}
                        )
                print(f"{name:20s} {kind:8s} exported", flush=True)
            except Exception as e:  # an exporter limitation, not xbarc's
                print(f"{name:20s} {kind:8s} export failed: {str(e).splitlines()[0][:100]}")


def check(folder: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    from xbarc.runtime.engine import Engine

    files = sorted(folder.glob("*.onnx"))
    if not files:
        sys.exit(f"no .onnx files in {folder}; run the export step first")
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            out = Path(tmp) / "m.bin"
            t0 = time.perf_counter()
            r = subprocess.run(
                [sys.executable, "-m", "xbarc", "compile", str(f), "-o", str(out)],
                capture_output=True,
                text=True,
                check=False,
            )
            dt = time.perf_counter() - t0
            if r.returncode:
                print(f"{f.name:34s} not imported: {r.stderr.strip().splitlines()[-1][:160]}")
                continue
            eng = Engine.load(out, ideal=True)
            sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
            feed_name = sess.get_inputs()[0].name
            fixed = sess.get_inputs()[0].shape[0]
            n = fixed if isinstance(fixed, int) else 2
            x = np.random.default_rng(0).standard_normal((n, *eng.input_shape), np.float32)
            want = sess.run(None, {feed_name: x})[0]
            err = float(np.abs(eng.forward(x) - want).max() / (np.abs(want).max() + 1e-30))
            print(f"{f.name:34s} compile {dt:5.1f} s, ideal vs onnxruntime rel err {err:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["export", "check"])
    ap.add_argument("folder", type=Path)
    a = ap.parse_args()
    export(a.folder) if a.step == "export" else check(a.folder)


if __name__ == "__main__":
    main()
