"""Render a concept into a small RGB image: jittered position, size, rotation, colour and noise."""

from __future__ import annotations

import functools
import io
import math

import numpy as np
from PIL import Image, ImageDraw

from react_core.miniweb.world import BACKGROUNDS, COLORS, Concept

_SS = 2  # supersampling factor for anti-aliased shape edges


def _regular(
    n: int, cx: float, cy: float, r: float, rot: float, inner: float | None = None
) -> list[tuple[float, float]]:
    pts = []
    k = 2 * n if inner is not None else n
    for i in range(k):
        rr = r if inner is None or i % 2 == 0 else r * inner
        a = rot + 2 * math.pi * i / k
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _rotated(points: list[tuple[float, float]], cx: float, cy: float, rot: float) -> list[tuple[float, float]]:
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _draw_shape(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, rot: float, fill: int) -> None:
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        q = r * 0.55
        d.ellipse([cx - q, cy - q, cx + q, cy + q], fill=255 - fill)
    elif shape == "crescent":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        ox, oy = cx + 0.45 * r * math.cos(rot), cy + 0.45 * r * math.sin(rot)
        d.ellipse([ox - 0.85 * r, oy - 0.85 * r, ox + 0.85 * r, oy + 0.85 * r], fill=255 - fill)
    elif shape == "square":
        d.polygon(_regular(4, cx, cy, r * 1.2, rot + math.pi / 4), fill=fill)
    elif shape == "diamond":
        d.polygon(_rotated([(0, -r), (0.6 * r, 0), (0, r), (-0.6 * r, 0)], cx, cy, rot * 0.2), fill=fill)
    elif shape == "triangle":
        d.polygon(_regular(3, cx, cy, r * 1.15, rot), fill=fill)
    elif shape == "pentagon":
        d.polygon(_regular(5, cx, cy, r * 1.05, rot), fill=fill)
    elif shape == "hexagon":
        d.polygon(_regular(6, cx, cy, r, rot), fill=fill)
    elif shape == "star":
        d.polygon(_regular(5, cx, cy, r * 1.15, rot, inner=0.45), fill=fill)
    elif shape == "cross":
        w = 0.38 * r
        d.polygon(_rotated([(-r, -w), (r, -w), (r, w), (-r, w)], cx, cy, rot), fill=fill)
        d.polygon(_rotated([(-w, -r), (w, -r), (w, r), (-w, r)], cx, cy, rot), fill=fill)
    elif shape == "bar":
        d.polygon(_rotated([(-r, -0.4 * r), (r, -0.4 * r), (r, 0.4 * r), (-r, 0.4 * r)], cx, cy, rot * 0.3), fill=fill)
    elif shape == "arrow":
        pts = [
            (-r, -0.25 * r),
            (0.2 * r, -0.25 * r),
            (0.2 * r, -0.6 * r),
            (r, 0),
            (0.2 * r, 0.6 * r),
            (0.2 * r, 0.25 * r),
            (-r, 0.25 * r),
        ]
        d.polygon(_rotated(pts, cx, cy, rot), fill=fill)
    else:  # pragma: no cover - world.SHAPES lists every shape drawn here
        raise ValueError(f"unknown shape {shape!r}")


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return y, x


def _texture(pattern: str, size: int, c1: np.ndarray, c2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float texture of the object's surface."""
    y, x = _grid(size)
    period = max(3.0, size / 8)
    ph = rng.uniform(0, period)
    if pattern in ("solid", "outline"):
        sel = np.zeros((size, size), bool)
    elif pattern == "hstripes":
        sel = ((y + ph) // (period / 2)) % 2 == 1
    elif pattern == "vstripes":
        sel = ((x + ph) // (period / 2)) % 2 == 1
    elif pattern == "checker":
        sel = (((x + ph) // (period / 2)) + ((y + ph) // (period / 2))) % 2 == 1
    elif pattern == "dots":
        gx = (x + ph) % period - period / 2
        gy = (y + ph) % period - period / 2
        sel = gx * gx + gy * gy < (period * 0.3) ** 2
    else:  # pragma: no cover
        raise ValueError(f"unknown pattern {pattern!r}")
    return np.where(sel[..., None], c2[None, None, :], c1[None, None, :])


def render(concept: Concept, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one image of ``concept``: (size, size, 3) uint8."""
    bg = np.asarray(BACKGROUNDS[concept.background], np.float32) + rng.normal(0, 10, 3)
    grad = np.linspace(-1, 1, size, dtype=np.float32)[:, None, None] * rng.normal(0, 12)
    img = np.broadcast_to(bg, (size, size, 3)) + grad + rng.normal(0, 5, (size, size, 3))
    big = size * _SS
    for _ in range(concept.count):
        r = concept.size * size * _SS * rng.uniform(0.85, 1.15)
        margin = r * 0.9
        cx, cy = rng.uniform(margin, big - margin, 2) if big > 2 * margin else (big / 2, big / 2)
        rot = rng.uniform(0, 2 * math.pi)
        mask = Image.new("L", (big, big), 0)
        d = ImageDraw.Draw(mask)
        _draw_shape(d, concept.shape, cx, cy, r, rot, 255)
        if concept.pattern == "outline":
            _draw_shape(d, concept.shape, cx, cy, r * 0.55, rot, 0)
        alpha = np.asarray(mask.resize((size, size), Image.BILINEAR), np.float32)[..., None] / 255.0
        c1 = np.asarray(COLORS[concept.color], np.float32) + rng.normal(0, 12, 3)
        c2 = np.asarray(COLORS[concept.color2], np.float32) + rng.normal(0, 12, 3)
        tex = _texture(concept.pattern, size, c1, c2, rng)
        img = img * (1 - alpha) + tex * alpha
    return np.clip(img, 0, 255).astype(np.uint8)


def to_jpeg(arr: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
