"""Knowledge-base embedding speed: our embed stage against a plain loop, same model, same shards, one run.

    python bench/embed.py [--model ViT-B-32] [--n 1024] [--shards 4] [--batch 128] [--workers 2]

Data: ``--n`` image-caption pairs in ``--shards`` webdataset tars, JPEGs of 384x288 (q90, the size
img2dataset's default resize leaves a LAION photo at), written to a temporary folder. Captions are
common English words, their number drawn from a log-normal with a median of ``--caption-words`` (10) and
a long tail, as web alt-texts are (an assumption, not a count of LAION); the token lengths are printed.

* **plain**: what an embedding notebook does: for each shard, batch by batch, open every image with PIL
  and apply open_clip's validation transform in the main process, encode the images, tokenize and
  encode the captions, then save the shard's arrays and metadata.
* **ours** (three times: the text tower over the whole (77-token) context as open_clip runs it, to show
  what the trimmed text tower is worth; exact pixels; then with ``knowledge_base.jpeg_draft``, the default):
  ``react_core.knowledge.embed`` (the embed stage): shards read and decoded, images cropped to
  uint8 and captions tokenized in ``--workers`` DataLoader processes while the model encodes; uint8
  batches (pinned on CUDA) normalised on the device, bf16 and channels-last on CUDA; captions encoded at
  their own length, not the 77-token context (``react_core.models.text``); one writer per shard.

clip-retrieval's ``inference`` is not run: it does not install beside the project (it pins
open_clip_torch<3 and pyarrow<16, which pip would downgrade), and it loads pretrained weights by name
(no download here). Prints images/s of each, the ratio to the plain loop, and the smallest cosine between
a path's image embeddings and the plain loop's (exact pixels: float16 rounding only; jpeg_draft: decoding
at a reduced DCT scale where the JPEG is at least twice the model's input).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import open_clip
import pandas as pd
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image

import react_core.knowledge.embed as embed_module
from react_core.data import iter_shard
from react_core.knowledge.embed import embed_knowledge_base
from react_core.knowledge.embeddings import load_embeddings
from react_core.models import create_model, text
from react_core.storage import Storage

WORDS = (  # split where used: ruff would rewrite a split literal as a 90-line list
    "the a of and in with on for at by from photo image picture new old red blue green black white small large "
    "dog cat car house tree flower bird man woman child beach city street mountain river sky sunset vintage "
    "wedding dress shoes table chair kitchen garden food coffee design logo poster art painting print sale "
    "free download stock illustration vector background wallpaper family happy beautiful modern classic"
)


def caption(rng: np.random.Generator, median_words: float) -> str:
    n = int(np.clip(round(rng.lognormal(np.log(median_words), 0.6)), 1, 70))
    return " ".join(rng.choice(WORDS.split(), n))


def write_shards(root: str, n: int, shards: int, median_words: float = 10) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    per = -(-n // shards)
    for s in range(shards):
        path = os.path.join(root, f"{s:05d}.tar")
        with open(path, "wb") as f, wds.TarWriter(f, encoder=False) as w:
            for i in range(s * per, min(n, (s + 1) * per)):
                low = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)  # smooth content, as a photo compresses
                img = Image.fromarray(low).resize((384, 288), Image.BICUBIC)
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=90)
                meta = json.dumps({"url": f"http://example.com/{i}.jpg"}).encode()
                w.write(
                    {
                        "__key__": f"{i:09d}",
                        "jpg": buf.getvalue(),
                        "txt": caption(rng, median_words).encode(),
                        "json": meta,
                    }
                )
        paths.append(path)
    return paths


@torch.no_grad()
def plain(
    model, tok, preprocess, shards: list[str], batch: int, device: str, out_dir: str
) -> tuple[np.ndarray, np.ndarray]:
    st = Storage("/")
    os.makedirs(out_dir, exist_ok=True)
    images, texts = [], []
    for s_i, shard in enumerate(shards):
        samples = list(iter_shard(st, shard))
        img_parts, txt_parts, rows = [], [], []
        for i in range(0, len(samples), batch):
            chunk = samples[i : i + batch]
            x = torch.stack([preprocess(Image.open(io.BytesIO(s["jpg"]))) for s in chunk]).to(device)
            caps = [s["txt"].decode() for s in chunk]
            img_parts.append(F.normalize(model.encode_image(x), dim=-1).cpu().numpy())
            txt_parts.append(F.normalize(model.encode_text(tok(caps).to(device)), dim=-1).cpu().numpy())
            rows += [
                {**json.loads(s["json"]), "key": s["__key__"], "caption": c} for s, c in zip(chunk, caps, strict=True)
            ]
        img = np.concatenate(img_parts).astype(np.float16)
        np.save(os.path.join(out_dir, f"img_emb_{s_i}.npy"), img)
        txt = np.concatenate(txt_parts).astype(np.float16)
        np.save(os.path.join(out_dir, f"text_emb_{s_i}.npy"), txt)
        pd.DataFrame(rows).to_parquet(os.path.join(out_dir, f"metadata_{s_i}.parquet"))
        images.append(img)
        texts.append(txt)
    return np.concatenate(images), np.concatenate(texts)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = (F.normalize(torch.from_numpy(x.astype(np.float32)), dim=-1) for x in (a, b))
    return float((a * b).sum(1).min())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--caption-words", type=float, default=10, help="median words per caption")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model, tok = create_model(args.model, None, device=device)
    model.eval()
    _, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=None)
    with tempfile.TemporaryDirectory() as root:
        os.makedirs(os.path.join(root, "in"))
        shards = write_shards(os.path.join(root, "in"), args.n, args.shards, args.caption_words)
        caps = [s["txt"].decode() for shard in shards for s in iter_shard(Storage("/"), shard)]
        n_tok = (tok(caps).argmax(-1) + 1).numpy()
        out = Storage(os.path.join(root, "out"))
        embed_knowledge_base(model, tok, Storage("/"), shards[:1], out.stage("warm", {}), args.batch, 0, False)
        t0 = time.perf_counter()
        e_plain, t_plain_emb = plain(model, tok, preprocess, shards, args.batch, device, os.path.join(root, "plain"))
        t_plain = time.perf_counter() - t0
        timings, embs = {}, {}
        variants = (
            ("ours, full-context text", False, False),
            ("ours, exact pixels", False, True),
            ("ours (jpeg_draft)", True, True),
        )
        for name, draft, trim in variants:
            # the first row runs the text tower over the whole context, as open_clip's encode_text does
            embed_module.encode_text = text.encode_text if trim else lambda m, t: m.encode_text(t)
            t0 = time.perf_counter()
            uri = embed_knowledge_base(
                model,
                tok,
                Storage("/"),
                shards,
                out.stage("ours", {"v": name}),
                args.batch,
                args.workers,
                progress=False,
                draft=draft,
            )
            timings[name] = time.perf_counter() - t0
            embs[name] = (load_embeddings(out, uri), load_embeddings(out, uri, "text"))
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {device}, torch {torch.__version__}"
    )
    print(
        f"{args.model}, {args.n} pairs in {args.shards} shards, 384x288 JPEG, batch {args.batch}, "
        f"{args.workers} workers"
    )
    print(
        f"caption tokens (with start and end): median {np.median(n_tok):.0f}, p90 {np.percentile(n_tok, 90):.0f}, "
        f"max {n_tok.max()} of {tok.context_length}"
    )
    print(f"{'plain loop':24s} {args.n / t_plain:8.1f} images/s ({t_plain:.1f} s)")
    for name, t in timings.items():
        img_cos, txt_cos = (min_cosine(ours, ref) for ours, ref in zip(embs[name], (e_plain, t_plain_emb), strict=True))
        print(
            f"{name:24s} {args.n / t:8.1f} images/s ({t:.1f} s)  {t_plain / t:.2f}x plain; "
            f"min cosine to plain: images {img_cos:.4f}, captions {txt_cos:.4f}"
        )


if __name__ == "__main__":
    main()
