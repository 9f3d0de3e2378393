"""Generates the two torch exports of a small PixelShuffle + ConvTranspose + Resize model.

Needs torch (a separate venv, see BRIEF/README): ``python tests/data/make_resample.py``.
Writes ``resample_mix.onnx`` (classic exporter, opset 17) and ``resample_mix.dynamo.onnx``
(dynamo exporter) beside this file. The model is none of the bundled ones: it exercises
DepthToSpace (CRD), a strided ConvTranspose with output_padding, bilinear (half_pixel) and
nearest (asymmetric, floor) Resize.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent


class Mix(nn.Module):
    """conv → PixelShuffle(2) → ConvTranspose(s=2) → bilinear ×2 + nearest ×2."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.ps = nn.PixelShuffle(2)
        self.ct = nn.ConvTranspose2d(2, 4, 3, stride=2, padding=1, output_padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ct(self.ps(self.c(x)))
        return self.up(y) + self.up2(y)


def main() -> None:
    torch.manual_seed(11)
    m = Mix().eval()
    x = torch.randn(2, 3, 8, 8)
    common = {"input_names": ["input"], "output_names": ["out"]}
    torch.onnx.export(
        m,
        (x,),
        str(HERE / "resample_mix.onnx"),
        dynamo=False,
        opset_version=17,
        dynamic_axes={"input": {0: "b"}, "out": {0: "b"}},
        **common,
    )
    torch.onnx.export(
        m,
        (x,),
        str(HERE / "resample_mix.dynamo.onnx"),
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        external_data=False,
        **common,
    )


if __name__ == "__main__":
    main()
