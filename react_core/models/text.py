"""The frozen text tower, without the padding: captions encoded at their own length, not the context's.

open_clip's ``CLIP.encode_text`` runs every caption through all 77 positions of the context, although a
CLIP text tower is causal (position i attends to positions <= i) and its feature is read at the
end-of-text token: the positions after it cannot change the result. Web captions are short (a LAION
alt-text is a dozen tokens or so), so most of that work is padding; for ViT-B/32 the 77-token text tower
is about 40% of the flops of embedding a pair. :func:`encode_text` sorts a batch's rows into buckets of
similar length and runs each bucket cut to its longest caption, with the positional embedding and the
causal mask cut to match; the result equals ``model.encode_text`` up to float rounding (tested).

Models where the shortcut is not exact fall back to ``model.encode_text``: a text tower without the
causal mask (SigLIP-style), pooling other than at the end-of-text token, a ``CustomTextCLIP`` (HF text
towers, CoCa's appended class token) or a model class that overrides ``encode_text``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.model import CLIP

BUCKET = 8  # lengths are rounded up to a multiple of this: few distinct shapes, little padding (8 was fastest
# for ViT-B-32 on 2 CPU cores, batches of 64 web-like captions: 5.1 s for 512 against 5.4 (4), 6.0 (2), 7.7 (1), 5.7 (16))


def trimmable(model: torch.nn.Module) -> bool:
    """True when positions after a caption's end-of-text token cannot change its text feature."""
    return (
        isinstance(model, CLIP)
        and type(model).encode_text is CLIP.encode_text
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
    )


def lengths(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Per row: the position of the token its feature is read at, plus one."""
    if model.text_pool_type == "eos":
        return (tokens == model.text_eos_id).int().argmax(dim=-1) + 1
    return tokens.argmax(dim=-1) + 1  # 'argmax': the end-of-text token has the largest id


def _encode_trimmed(model: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    # CLIP.encode_text (open_clip 3.x) with the context cut to tokens.shape[1]
    n = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:n].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), lengths(model, tokens) - 1]
    if model.text_projection is not None:
        x = (
            model.text_projection(x)
            if isinstance(model.text_projection, torch.nn.Linear)
            else x @ model.text_projection
        )
    return x


def encode_text(model: torch.nn.Module, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """``model.encode_text(tokens)`` computed on each caption's own length (see the module's docstring)."""
    if not trimmable(model) or tokens.shape[0] == 0:
        return model.encode_text(tokens, normalize=normalize)
    context = tokens.shape[1]
    bucket = ((lengths(model, tokens) + BUCKET - 1) // BUCKET * BUCKET).clamp(max=context)
    sizes = bucket.unique()
    if len(sizes) == 1:
        out = _encode_trimmed(model, tokens[:, : int(sizes[0])])
    else:
        out = None
        for size in sizes.tolist():
            rows = (bucket == size).nonzero().squeeze(1)
            part = _encode_trimmed(model, tokens[rows, :size])
            if out is None:
                out = part.new_empty((tokens.shape[0], part.shape[1]))
            out[rows] = part
    return F.normalize(out, dim=-1) if normalize else out
