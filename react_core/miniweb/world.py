"""The mini-web's concepts: visual identities, names and synonyms, and alt-text captions.

A concept is a visual identity (shape, two-colour palette, pattern, background, object count, size)
plus a primary name and synonyms (pseudo-words, so that a model can only learn what a name means from
the corpus). Two groups of concepts are the held-out target tasks:

* ``fine``: look-alikes that share shape, background, count and size and differ only in colour x
  pattern (a fine-grained task, like aircraft variants or flower species);
* ``coarse``: concepts with distinct shapes and colours (a coarse task).

Everything is a pure function of the seed.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace

import numpy as np

from react_core.config import ConfigError

SHAPES = [
    "circle",
    "square",
    "triangle",
    "diamond",
    "star",
    "cross",
    "ring",
    "hexagon",
    "bar",
    "arrow",
    "crescent",
    "pentagon",
]
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (235, 215, 40),
    "green": (50, 170, 60),
    "teal": (30, 160, 160),
    "blue": (40, 80, 220),
    "purple": (130, 50, 190),
    "pink": (240, 120, 190),
    "brown": (130, 80, 40),
    "gray": (128, 128, 128),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
}
PATTERNS = ["solid", "hstripes", "vstripes", "dots", "checker", "outline"]
PATTERN_WORDS = {
    "solid": "plain",
    "hstripes": "striped",
    "vstripes": "pinstriped",
    "dots": "dotted",
    "checker": "checkered",
    "outline": "hollow",
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "paper": (235, 232, 225),
    "night": (30, 32, 48),
    "sky": (170, 205, 235),
    "sand": (215, 190, 140),
    "grass": (120, 170, 90),
}
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}

_SYL_ON = [
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "gl",
    "kr",
    "pl",
    "sk",
    "tr",
    "zh",
]
_SYL_NU = ["a", "e", "i", "o", "u", "ai", "ou", "ee"]
_SYL_CO = ["", "", "n", "r", "l", "x", "m", "sk", "th"]


@dataclass(frozen=True)
class Concept:
    id: int
    name: str
    synonyms: tuple[str, ...]
    shape: str
    color: str
    color2: str
    pattern: str
    background: str
    count: int
    size: float  # object radius as a fraction of the image side
    group: str  # "fine", "coarse" or "other"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["synonyms"] = list(self.synonyms)
        return d


def _pseudo_word(rng: np.random.Generator) -> str:
    n = int(rng.integers(2, 4))
    return "".join(
        _SYL_ON[rng.integers(len(_SYL_ON))] + _SYL_NU[rng.integers(len(_SYL_NU))] + _SYL_CO[rng.integers(len(_SYL_CO))]
        for _ in range(n)
    )


def make_concepts(seed: int, n_concepts: int, fine: int, coarse: int, extra: int = 0) -> list[Concept]:
    """The world's concepts: ``fine`` look-alikes, ``coarse`` distinct ones, the rest generic; with ``extra``, that
    many of the generic ones (evenly spread) form a third target group (``extra``), rare in the generic corpus as
    the other targets are. ``extra`` = 0 leaves every concept as it was.

    Raises:
        ConfigError: if the groups do not fit in ``n_concepts``.
    """
    if fine + coarse + extra > n_concepts:
        raise ConfigError(
            f"miniweb: fine_grained_classes ({fine}) + coarse_classes ({coarse}) + extra_classes ({extra}) exceed "
            f"n_concepts ({n_concepts}); fix: raise miniweb.n_concepts or lower the task sizes"
        )
    rng = np.random.default_rng([seed, 7])
    used_names: set[str] = set()

    def names(k: int) -> tuple[str, ...]:
        out = []
        while len(out) < k:
            w = _pseudo_word(rng)
            if w not in used_names and len(w) >= 4:
                used_names.add(w)
                out.append(w)
        return tuple(out)

    identities: set[tuple] = set()
    concepts: list[Concept] = []

    def add(shape, color, color2, pattern, bg, count, size, group) -> None:
        ident = (shape, color, color2, pattern, bg, count)
        identities.add(ident)
        nm = names(1 + int(rng.integers(0, 3)))
        concepts.append(Concept(len(concepts), nm[0], nm[1:], shape, color, color2, pattern, bg, count, size, group))

    color_names = list(COLORS)
    # Fine-grained look-alikes: same shape/background/count/size; colour x pattern varies.
    f_shape = SHAPES[int(rng.integers(len(SHAPES)))]
    f_bg = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    f_c2 = "white" if f_bg != "paper" else "black"
    n_col = int(np.ceil(np.sqrt(fine)))
    f_colors = [c for c in rng.permutation(color_names[:10]).tolist() if c != f_c2][:n_col]
    f_patterns = rng.permutation([p for p in PATTERNS if p != "solid"]).tolist()
    combos = list(itertools.product(f_colors, f_patterns))[:fine]
    if len(combos) < fine:
        raise ConfigError(
            f"miniweb.fine_grained_classes: at most {len(f_colors) * len(f_patterns)} fine-grained classes are supported"
        )
    for col, pat in combos:
        add(f_shape, col, f_c2, pat, f_bg, 1, 0.36, "fine")
    # Coarse: distinct shapes first, distinct colours where possible.
    shapes = [s for s in SHAPES if s != f_shape]
    for i in range(coarse):
        shape = shapes[i % len(shapes)]
        col = color_names[(i * 3) % 10]  # stride 3 visits all ten colours
        bg = list(BACKGROUNDS)[i % len(BACKGROUNDS)]
        add(shape, col, "white" if col != "white" else "black", "solid", bg, 1, 0.38, "coarse")
    # Everything else: random identities, never equal to an existing one.
    while len(concepts) < n_concepts:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        col, col2 = rng.choice(color_names, size=2, replace=False).tolist()
        pat = PATTERNS[int(rng.integers(len(PATTERNS)))]
        bg = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
        count = int(rng.choice([1, 1, 1, 2, 3]))
        if (shape, col, col2, pat, bg, count) in identities:
            continue
        add(shape, col, col2, pat, bg, count, float(rng.uniform(0.22, 0.42)) / (1 + 0.25 * (count - 1)), "other")
    others = [c.id for c in concepts if c.group == "other"]
    for i in np.linspace(0, len(others) - 1, extra).astype(int) if extra else []:
        concepts[others[i]] = replace(concepts[others[i]], group="extra")
    return concepts


_CAPTIONS_NAMED = [
    "{name}",
    "a photo of a {name}",
    "{name} {num}",
    "my new {name}!!",
    "{color} {pattern} {name} on {bg}",
    "{count} {name}",
    "{name} for sale - free shipping",
    "close-up of a {color} {name}",
    "the {name} we saw today",
    "{pattern} {name}",
    "best {name} ever",
    "{name}, {color}",
]
_CAPTIONS_UNNAMED = [
    "{color} {pattern} {shape}",
    "{shape} on {bg} background",
    "a {color} {shape}",
    "{count} {color} {shape}s",
]
_CAPTIONS_JUNK = [
    "IMG_{num}.jpg",
    "untitled",
    "click here for more",
    "stock photo {num}",
    "image",
    "DSC{num}",
]


def caption_for(concept: Concept, rng: np.random.Generator, concepts: list[Concept], noise: float) -> tuple[str, str]:
    """An alt-text-like caption and its kind (``named``, ``unnamed``, ``junk`` or ``unrelated``)."""
    u = rng.random()
    if u < noise * 0.6:  # a caption about something else entirely
        other = concepts[int(rng.integers(len(concepts)))]
        return _fill(_CAPTIONS_NAMED[int(rng.integers(len(_CAPTIONS_NAMED)))], other, rng), "unrelated"
    if u < noise:
        return _fill(_CAPTIONS_JUNK[int(rng.integers(len(_CAPTIONS_JUNK)))], concept, rng), "junk"
    if rng.random() < 0.2:
        return _fill(_CAPTIONS_UNNAMED[int(rng.integers(len(_CAPTIONS_UNNAMED)))], concept, rng), "unnamed"
    return _fill(_CAPTIONS_NAMED[int(rng.integers(len(_CAPTIONS_NAMED)))], concept, rng), "named"


def _fill(template: str, c: Concept, rng: np.random.Generator) -> str:
    all_names = (c.name,) + c.synonyms
    name = c.name if rng.random() < 0.6 else all_names[int(rng.integers(len(all_names)))]
    return template.format(
        name=name,
        color=c.color,
        pattern=PATTERN_WORDS[c.pattern],
        shape=c.shape,
        bg=c.background,
        count=COUNT_WORDS[c.count],
        num=int(rng.integers(1000, 9999)),
    )


TASK_TEMPLATES = [
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of the {}.",
    "a close-up photo of a {}.",
    "{}",
    "a photo of the small {}.",
]
