"""EfficientFR: a small depthwise-separable residual backbone for faces, trained from scratch.

Written like a timm model file (blocks, model class, factory) so it plugs into
`common.models.create_backbone("efficientfr")`. About 1.1 M parameters; at 112 x 112 px it runs
several times faster than EfficientNet-Lite0 on a CPU, which is what lets a 2-core machine train a
face-recognition model from scratch in minutes. Layout (112 px input):

    stem   conv3x3/2, BN, PReLU                    32 x 56 x 56
    stage1 2 blocks, first stride 2                 64 x 28 x 28
    stage2 3 blocks, first stride 2                128 x 14 x 14
    stage3 4 blocks, first stride 2                256 x  7 x  7
    stage4 2 blocks, stride 1                      512 x  7 x  7
    head   global average pool, Linear             512

Each block is depthwise 3x3 -> BN -> PReLU -> pointwise 1x1 -> BN plus a shortcut (identity, or a
strided 1x1 conv + BN when the shape changes), as in MobileFaceNet-style face encoders.
"""
from __future__ import annotations

from torch import Tensor, nn

__all__ = ["DEFAULT_CFG", "DepthwiseSeparableBlock", "EfficientFR", "create_efficientfr"]

# Input size and normalisation the model is trained with; read by create_backbone().
DEFAULT_CFG = {
    "input_size": (3, 112, 112), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
    "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
}
# (out_channels, num_blocks, first_stride) per stage.
_STAGES = ((64, 2, 2), (128, 3, 2), (256, 4, 2), (512, 2, 1))


class DepthwiseSeparableBlock(nn.Module):
    """Depthwise 3x3 -> BN -> PReLU -> pointwise 1x1 -> BN, plus a residual shortcut.

    Args:
        in_channels: input channels C_in.
        out_channels: output channels C_out.
        stride: stride of the depthwise conv (2 halves H and W).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels,
                                 bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act = nn.PReLU(in_channels)
        self.conv_pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)."""
        out = self.bn2(self.conv_pw(self.act(self.bn1(self.conv_dw(x)))))
        return out + self.shortcut(x)


class EfficientFR(nn.Module):
    """Stem, four stages of `DepthwiseSeparableBlock`, global pooling and a linear embedding.

    Args:
        num_features: size of the output feature vector.
        stem_channels: channels after the stem conv.
        stages: (out_channels, num_blocks, first_stride) per stage.
        drop_rate: dropout before the final linear layer.
    """

    def __init__(self, num_features: int = 512, stem_channels: int = 32,
                 stages: tuple[tuple[int, int, int], ...] = _STAGES,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_features = num_features
        self.pretrained_cfg = dict(DEFAULT_CFG)
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, 2, 1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.PReLU(stem_channels))
        layers = []
        channels = stem_channels
        for out_channels, num_blocks, stride in stages:
            blocks = [DepthwiseSeparableBlock(channels, out_channels, stride)]
            blocks += [DepthwiseSeparableBlock(out_channels, out_channels)
                       for _ in range(num_blocks - 1)]
            layers.append(nn.Sequential(*blocks))
            channels = out_channels
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(channels, num_features)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Zero the last BN of each residual branch so every block starts close to its shortcut,
        # which makes training from scratch stable without warm-up.
        for module in self.modules():
            if isinstance(module, DepthwiseSeparableBlock) and isinstance(module.shortcut,
                                                                           nn.Identity):
                nn.init.zeros_(module.bn2.weight)

    def group_matcher(self, coarse: bool = False) -> dict[str, object]:
        """timm-style parameter groups (stem, one per stage, head) for partial fine-tuning."""
        blocks = r"^stages\.(\d+)" if coarse else [(r"^stages\.(\d+)\.(\d+)", None)]
        return {"stem": r"^stem", "blocks": blocks}

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 512, H / 16, W / 16) feature map."""
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor) -> Tensor:
        """(B, C, h, w) feature map -> (B, num_features) pooled, projected features."""
        return self.fc(self.drop(self.pool(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) images normalised with mean = std = 0.5 -> (B, num_features)."""
        return self.forward_head(self.forward_features(x))


def create_efficientfr(num_features: int = 512, drop_rate: float = 0.0) -> EfficientFR:
    """Build the default EfficientFR (about 1.1 M parameters, 512-d output)."""
    return EfficientFR(num_features=num_features, drop_rate=drop_rate)
