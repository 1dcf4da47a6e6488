"""A CLIP byte-level BPE tokenizer that zoomq builds itself, so miniature models need no download.

The vocabulary follows CLIP's layout (256 byte symbols, the same with the ``</w>`` word-end mark,
learned merges, then the start/end tokens), so ``transformers.CLIPTokenizer`` loads it like the
real one. The merges are learned deterministically from a small built-in word list: the same
call always writes the same files.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from transformers import CLIPTokenizer

# Words typical of image prompts; their frequent pairs become merges.
_CORPUS = """
a an the of and with in on at by from to for photo photograph painting portrait landscape
city street night day sunset sunrise sky cloud clouds mountain mountains river lake sea ocean
beach forest tree trees flower flowers garden house castle tower bridge road car train ship
boat cat dog bird horse fish dragon robot astronaut space planet star stars galaxy moon sun
light lights shadow color colors colorful red green blue yellow orange purple pink black white
golden silver dark bright soft warm cold old new ancient future futuristic fantasy magic
detailed highly intricate sharp focus cinematic lighting dramatic epic beautiful stunning
trending artstation concept art illustration digital oil watercolor render rendering octane
unreal engine realistic photorealistic hyperrealistic style artist masterpiece best quality
zoom infinite spiral tunnel door window room interior exterior view wide angle lens bokeh
blurry ugly deformed bad low quality worst text watermark signature cropped
"""

_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from bytes to printable unicode symbols."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def _learn_merges(words: list[str], count: int) -> list[tuple[str, str]]:
    """Plain BPE training; ties are broken alphabetically so the result never varies."""
    byte_map = _bytes_to_unicode()
    corpus: Counter[tuple[str, ...]] = Counter()
    for word in words:
        chars = [byte_map[b] for b in word.encode("utf-8")]
        chars[-1] += "</w>"
        corpus[tuple(chars)] += 1
    merges: list[tuple[str, str]] = []
    while len(merges) < count:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, freq in corpus.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for symbols, freq in corpus.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += freq
        corpus = merged
    return merges


def write_tokenizer(folder: Path, merges: int = 400, max_length: int = 77) -> CLIPTokenizer:
    """Write a CLIP tokenizer (SD2 style: ``!`` pads) to ``folder`` and return it loaded."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = list(_bytes_to_unicode().values())
    learned = _learn_merges(_CORPUS.split(), merges)
    tokens = base + [b + "</w>" for b in base] + ["".join(m) for m in learned] + list(_SPECIAL)
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in learned), encoding="utf-8"
    )
    tokenizer = CLIPTokenizer(
        vocab=str(folder / "vocab.json"),
        merges=str(folder / "merges.txt"),
        pad_token="!",
        model_max_length=max_length,
    )
    tokenizer.save_pretrained(folder)
    return CLIPTokenizer.from_pretrained(folder)
