"""A generated 10-class image task that needs no files: the trainer's default dataset.

Each 32x32 RGB image holds one shape or texture patch of a random size at a random position, in a
random foreground colour on a random background colour, with pixel noise. The class is the kind of
shape, so the colours (and so the mean colour) carry no information: a network has to learn edges,
corners and orientations.
"""
from __future__ import annotations

import torch
from torch import Tensor

CLASSES = ("disk", "square", "ring", "frame", "triangle", "plus", "cross", "horizontal stripes",
           "vertical stripes", "checkerboard")


def _masks(labels: Tensor, size: int, gen: torch.Generator) -> Tensor:
    """(N, size, size) bool: where each image's shape is, for the shape kind of its label."""
    n = labels.numel()
    r = 5.0 + 5.0 * torch.rand(n, 1, 1, generator=gen)                       # half-size, pixels
    cy, cx = (r + (size - 2 * r) * torch.rand(2, n, 1, 1, generator=gen))   # inside the image
    yy = torch.arange(size, dtype=torch.float32).view(1, -1, 1) + 0.5
    xx = torch.arange(size, dtype=torch.float32).view(1, 1, -1) + 0.5
    dy, dx = yy - cy, xx - cx
    inside = (dy.abs() <= r) & (dx.abs() <= r)
    dist = (dy * dy + dx * dx).sqrt()
    bar = torch.maximum(r / 4, torch.ones_like(r))                          # stroke width
    period = torch.randint(2, 4, (n, 1, 1), generator=gen).float()         # stripe half-period
    kinds = [
        dist <= r,                                                          # disk
        inside,                                                             # square
        (dist <= r) & (dist >= r - bar),                                    # ring
        inside & ((dy.abs() >= r - bar) | (dx.abs() >= r - bar)),           # frame
        inside & (dx.abs() <= (dy + r) / 2),                                # triangle, apex up
        inside & ((dy.abs() <= bar / 2) | (dx.abs() <= bar / 2)),           # plus
        inside & (((dy - dx).abs() <= bar / 1.4) | ((dy + dx).abs() <= bar / 1.4)),  # cross
        inside & ((dy / period).floor() % 2 == 0),                          # horizontal stripes
        inside & ((dx / period).floor() % 2 == 0),                          # vertical stripes
        inside & (((dy / period).floor() + (dx / period).floor()) % 2 == 0),  # checkerboard
    ]
    stacked = torch.stack(kinds, 1)                                          # N x 10 x size x size
    return stacked[torch.arange(n), labels]


def generate(n: int, seed: int, size: int = 32) -> tuple[Tensor, Tensor]:
    """n images (uint8, N x 3 x size x size) with balanced labels (int64, N) from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randperm(n, generator=gen) % len(CLASSES)
    fg, bg = torch.rand(2, n, 3, 1, 1, generator=gen)
    # keep foreground and background apart in brightness or hue, so every shape is visible
    bg = torch.where((fg - bg).abs().sum(1, keepdim=True) < 0.6, 1.0 - fg, bg)
    chunks = []
    for i in range(0, n, 2048):  # bounded memory: the 10 candidate masks per image are large
        m = _masks(labels[i:i + 2048], size, gen).unsqueeze(1)
        chunks.append(torch.where(m, fg[i:i + 2048], bg[i:i + 2048]))
    img = torch.cat(chunks) if chunks else torch.empty(0, 3, size, size)
    img = img + 0.08 * torch.randn(img.shape, generator=gen)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), labels
