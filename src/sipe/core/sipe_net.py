"""The SIPE network: a backbone, hierarchical side features and a CAM classifier."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sipe._memory import release_memory
from sipe.core import ipe
from sipe.core.options import STRUCTURES, Structure


@dataclass
class Features:
    """One forward pass of the trunk.

    raw_cam (N, K-1, h, w) classifier maps before ReLU; hie (N, 768, h, w) hierarchical features;
    last (N, C4, h, w) the last backbone stage (the official training structure map).
    """

    raw_cam: torch.Tensor
    hie: torch.Tensor
    last: torch.Tensor


class SIPENet(nn.Module):
    """SIPE head on any four-stage backbone (strides 4, 8, 16, 16, ``out_channels`` declared).

    Args:
        backbone: module returning four feature maps.
        num_classes: K, including the background.
        side_channels: widths of the four 1x1 side convs (official 128, 128, 256, 256).
        train_structure / infer_structure: features whose pixel correlations define the seeds;
            the official code uses the last backbone stage in training and the hierarchical
            features at inference.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        side_channels: tuple[int, int, int, int] = (128, 128, 256, 256),
        train_structure: Structure = "backbone",
        infer_structure: Structure = "hierarchical",
        bg_scale: float = 0.5,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
        channels = tuple(backbone.out_channels)
        if len(channels) != 4:
            raise ValueError(f"the backbone must declare four out_channels, got {channels}")
        self.encoder = backbone
        self.num_classes = num_classes
        self.side1, self.side2, self.side3, self.side4 = (
            nn.Conv2d(c_in, c_out, 1, bias=False) for c_in, c_out in zip(channels, side_channels, strict=True)
        )
        self.classifier = nn.Conv2d(channels[3], num_classes - 1, 1, bias=False)
        self.configure(train_structure=train_structure, infer_structure=infer_structure, bg_scale=bg_scale)

    def configure(
        self,
        train_structure: Structure | None = None,
        infer_structure: Structure | None = None,
        bg_scale: float | None = None,
    ) -> SIPENet:
        """Set the IPE options (``None`` keeps the current value); they hold no weights, so a model
        loaded from a checkpoint takes the options it was trained with here. Returns ``self``."""
        for name, value in (("train_structure", train_structure), ("infer_structure", infer_structure)):
            if value is not None and value not in STRUCTURES:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, STRUCTURES))}, got {value!r}")
        if bg_scale is not None and not bg_scale >= 0:
            raise ValueError(f"bg_scale (the background IoU factor) must be >= 0, got {bg_scale}")
        if train_structure is not None:
            self.train_structure = train_structure
        if infer_structure is not None:
            self.infer_structure = infer_structure
        if bg_scale is not None:
            self.bg_scale = bg_scale
        return self

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, new-layer parameters), trainable ones only (official lr 1x / 10x)."""
        backbone = [p for p in self.encoder.parameters() if p.requires_grad]
        new = [p for m in (self.classifier, self.side1, self.side2, self.side3, self.side4) for p in m.parameters()
               if p.requires_grad]
        return backbone, new

    def features(self, x: torch.Tensor) -> Features:
        """x (N, 3, H, W) normalised images -> :class:`Features` on the stride-16 grid."""
        x1, x2, x3, x4 = self.encoder(x)
        size = x3.shape[2:]
        sides = []
        for conv, feat in zip((self.side1, self.side2, self.side3, self.side4), (x1, x2, x3, x4), strict=True):
            s = conv(feat.detach())
            norm = s.norm(dim=1, keepdim=True) + 1e-5
            # In place without autograd: at inference the stride-4 map is the largest one here.
            s = s / norm if torch.is_grad_enabled() else s.div_(norm)
            if s.shape[2:] != size:
                s = F.interpolate(s, size, mode="bilinear", align_corners=False)
            sides.append(s)
        raw_cam = self.classifier(x4)
        if raw_cam.shape[2:] != size:
            raw_cam = F.interpolate(raw_cam, size, mode="bilinear", align_corners=True)
        return Features(raw_cam=raw_cam, hie=torch.cat(sides, dim=1), last=x4)

    def _structure(self, f: Features, which: Structure) -> torch.Tensor:
        if which == "hierarchical":
            return f.hie
        if f.last.shape[2:] == f.hie.shape[2:]:
            return f.last
        return F.interpolate(f.last, f.hie.shape[2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor, valid_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training forward.

        x (N, 3, H, W); valid_mask (N, K, h, w) low-resolution validity x labels (background
        channel = crop validity), see :func:`sipe.core.ipe.lowres_valid_mask`.
        Returns score (N, K-1), cam (N, K, h, w) masked normalised CAM, seeds (N, K, h, w),
        prototypes (N, K, 768), is_cam (N, K, h, w) before max-normalisation, probs (N, K, h, w).
        """
        if self.training and getattr(self.encoder, "bn_folded", False):
            raise RuntimeError(
                "this model was prepared for inference (batch norm folded into the convolutions, see "
                "sipe.cams.multiscale.prepare_for_inference) and cannot be trained; train the original model"
            )
        f = self.features(x)
        # CAM normalisation and IPE run in float32 even under autocast: fp16 turns the norm
        # epsilons into 0 (0/0 for absent classes) and the seed argmax is precision-sensitive.
        with torch.autocast(x.device.type, enabled=False):
            raw, hie = f.raw_cam.float(), f.hie.float()
            score = raw.mean(dim=(2, 3))
            cam = ipe.normalize_cam(raw) * valid_mask
            with torch.no_grad():
                seeds, iou = ipe.structure_seeds(
                    cam.detach(), self._structure(f, self.train_structure).detach().float(), valid_mask,
                    self.bg_scale,
                )
            protos = ipe.prototypes(seeds, hie)
            out = ipe.is_cam(protos, hie)
        return {
            "score": score,
            "cam": cam,
            "seeds": seeds,
            "prototypes": protos,
            "is_cam": out,
            "probs": torch.softmax(iou, dim=1),
        }

    @torch.no_grad()
    def infer(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        fuse_flip: bool = True,
        autocast_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference for one image.

        x (2, 3, H, W) the image and its horizontal flip when ``fuse_flip`` (the pair is fused
        inside the network as the official code does: raw maps and hierarchical features summed
        before normalisation), else (1, 3, H, W). labels (K-1,) multi-hot.
        ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the trunk under autocast; IPE stays float32.
        Returns cam and is_cam, each (K, h, w); is_cam is not max-normalised.
        """
        if fuse_flip and x.shape[0] != 2:
            raise ValueError(f"fuse_flip expects the image and its flip as a batch of 2, got {x.shape[0]}")
        if not fuse_flip and x.shape[0] != 1:
            raise ValueError(f"infer takes one image (a batch of 1 without fuse_flip), got {x.shape[0]}")
        return self.infer_batch(x, labels[None], fuse_flip, autocast_dtype)[0]

    @torch.no_grad()
    def infer_batch(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        fuse_flip: bool = True,
        autocast_dtype: torch.dtype | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`infer` for N images of one size: the trunk runs on them together, IPE on each alone.

        x (2N, 3, H, W) the N images then their N horizontal flips when ``fuse_flip``, else
        (N, 3, H, W); labels (N, K-1) multi-hot. Returns N pairs (cam, is_cam), each (K, h, w).
        """
        n = labels.shape[0]
        if x.shape[0] != (2 * n if fuse_flip else n):
            raise ValueError(f"x holds {x.shape[0]} images for {n} label rows; with fuse_flip it must hold "
                             f"the {n} images then their flips ({2 * n})")
        need_last = self.infer_structure == "backbone"

        def trunk(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            with torch.autocast(xb.device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                f = self.features(xb)
            # IPE stays in float32: seeds come from an argmax over soft IoUs that low precision would flip.
            # The 2048-d last stage is kept only when it defines the structure (not the official default).
            return f.raw_cam.float(), f.hie.float(), f.last.float() if need_last else f.last

        if not fuse_flip:
            a, b = trunk(x), None
        elif x.device.type == "cpu":
            # The images, then their flips: half the peak activation memory (~0.4 GiB per 1280x960
            # image) at the same speed, as a CPU convolution is as efficient on N images as on 2N.
            a = trunk(x[:n])
            release_memory()
            b = trunk(x[n:])
        else:
            both = trunk(x)
            a, b = tuple(t[:n] for t in both), tuple(t[n:] for t in both)
        out = []
        for i in range(n):
            raw, hie, last = (t[i:i + 1] for t in a)
            if b is not None:
                raw, hie = raw + b[0][i:i + 1].flip(-1), hie + b[1][i:i + 1].flip(-1)
                last = last + b[2][i:i + 1].flip(-1) if need_last else last
            cam = ipe.normalize_cam(raw)
            fused = Features(raw_cam=raw, hie=hie, last=last)
            mask = torch.cat([labels[i].new_ones(1), labels[i]]).to(cam.dtype).view(1, -1, 1, 1)
            seeds, _ = ipe.structure_seeds(cam, self._structure(fused, self.infer_structure), mask, self.bg_scale)
            out.append((cam[0], ipe.is_cam(ipe.prototypes(seeds, hie), hie)[0]))
        return out
