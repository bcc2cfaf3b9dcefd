"""How often each of a class's names occurs in the knowledge base's captions: REAL-Prompt's choice of name.

REAL (Parashar et al., "The Neglected Tails in Vision-Language Models", CVPR 2024) finds that a class's most
frequent synonym in the pretraining captions makes a better prompt than its official name. The captions are the
embed stage's metadata (one shard at a time: a LAION-size metadata does not fit in memory); a name counts once per
caption it occurs in, as a whole word, in any case.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from react_core.knowledge.embeddings import iter_metadata, shard_layout
from react_core.progress import bar as progress_bar
from react_core.storage import Storage


def name_counts(storage: Storage, embed_uri: str, names: Sequence[str], progress: bool = False) -> dict[str, int]:
    """Captions of the knowledge base containing each name (whole words, case-insensitive)."""
    unique = list(dict.fromkeys(names))
    patterns = {n: re.compile(rf"(?<!\w){re.escape(n.lower())}(?!\w)") for n in unique}
    counts = dict.fromkeys(unique, 0)
    bar = progress_bar(len(shard_layout(storage, embed_uri)), "count names in captions", "shard", show=progress)
    for meta in iter_metadata(storage, embed_uri):
        captions = meta["caption"].astype(str).str.lower()
        for n, pattern in patterns.items():
            counts[n] += int(captions.str.contains(pattern).sum())
        bar.update(1)
    bar.close()
    return counts


def most_frequent_names(
    storage: Storage, embed_uri: str, classnames: Sequence[str], synonyms: Mapping[str, Sequence[str]]
) -> tuple[list[str], dict[str, dict[str, int]]]:
    """Each class's most frequent name among itself and its synonyms (its own name on a tie), and every count."""
    every = {c: [c, *synonyms.get(c, ())] for c in classnames}
    counts = name_counts(storage, embed_uri, [n for names in every.values() for n in names])
    chosen = [max(every[c], key=lambda n: (counts[n], n == c)) for c in classnames]
    return chosen, {c: {n: counts[n] for n in every[c]} for c in classnames}
