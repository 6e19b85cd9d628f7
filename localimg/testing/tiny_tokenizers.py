"""Tokenizers for the tiny models, trained here on a small built-in corpus (no hub): a byte-level BPE shaped like
CLIP's and a word-level T5-style tokenizer. Shared by the tiny models and the full-size benchmark models, whose
tokenizing cost is negligible."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer, T5Tokenizer

CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512
CLIP_VOCAB_TARGET = 1000

_CORPUS = """
A photo of an astronaut riding a horse on the moon, highly detailed, dramatic lighting, 8k.
A watercolor painting of a quiet harbor at sunrise with small fishing boats and seagulls.
Portrait of an old sailor with a grey beard, oil painting, warm colors, soft light, studio.
A cozy cabin in a snowy forest at night, warm light glowing from the windows, stars above.
A red fox sitting in a field of tall golden grass, shallow depth of field, morning mist.
Cyberpunk city street in the rain, neon signs, reflections on wet asphalt, cinematic shot.
A bowl of fresh fruit on a wooden table: apples, oranges, grapes and a single yellow pear.
An isometric illustration of a tiny island with a lighthouse, palm trees and blue water.
A minimalist logo of a mountain and a river, flat vector design, two colors, white background.
A cat wearing a tiny knitted hat, sleeping on a pile of books next to a cup of tea.
Macro photograph of a dragonfly on a leaf covered with dew drops, sharp focus, bokeh.
A medieval castle on a cliff above the sea, storm clouds, lightning, epic fantasy art.
Children playing in a park in autumn, colorful leaves, sunny afternoon, candid photo.
A futuristic train crossing a glass bridge between two skyscrapers, clean architecture.
Still life with flowers in a blue vase, roses, tulips and daisies, impressionist style.
A desert landscape with sand dunes and a caravan of camels under a huge orange sun.
An underwater scene with coral reefs, bright tropical fish, turtles and rays of light.
A robot chef cooking pancakes in a bright modern kitchen, playful 3d render, pastel colors.
A black and white street photograph of people walking under umbrellas in a busy city.
A map of an imaginary kingdom drawn on old paper, with forests, rivers, roads and towns.
Close-up of a vintage camera on a desk, film rolls, notebook and pencil, natural light.
A friendly dragon reading a newspaper in a library, children's book illustration.
Aerial view of green rice terraces in the mountains, winding paths, small houses, clouds.
A glass of iced coffee with milk swirling inside, product photography, clean background.
Sketch of a running horse in charcoal, loose lines, dynamic motion, on textured paper.
A neon sign that says "open late" in a dark alley, pink and blue glow, 35mm film grain.
Two hikers on a ridge at sunset, long shadows, wide angle, vivid sky, high contrast.
An astronaut's helmet reflecting a distant planet, science fiction poster, bold typography.
Small wooden boat on a calm lake, mountains reflected in the water, early morning, serene.
A garden of giant mushrooms glowing in the dark, fireflies, magical, soft focus, dreamy.
"""


@dataclass(frozen=True)
class Tokenizers:
    clip: CLIPTokenizer
    t5: T5Tokenizer


def build_tokenizers() -> Tokenizers:
    return Tokenizers(clip=_clip_tokenizer(), t5=_t5_tokenizer())


def _clip_tokenizer() -> CLIPTokenizer:
    """A byte-level BPE tokenizer shaped like CLIP's: all 512 base symbols, merges learnt from the corpus."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    # The empty tokenizer supplies CLIP's own normaliser and pre-tokeniser, so training sees the same words.
    backend = CLIPTokenizer().backend_tokenizer
    words = Counter(
        word for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(_CORPUS))
    )
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for symbol in [*alphabet, *(f"{char}</w>" for char in alphabet)]:
        vocab.setdefault(symbol, len(vocab))
    merges = _learn_bpe_merges(words, max_merges=CLIP_VOCAB_TARGET - len(vocab) - 2)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH)


def _learn_bpe_merges(words: Counter[str], max_merges: int) -> list[tuple[str, str]]:
    """Plain BPE training; ties go to the lexicographically smallest pair so the result is reproducible."""
    splits = {word: [*word[:-1], word[-1] + "</w>"] for word in words}
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            symbols = splits[word]
            for pair in pairwise(symbols):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for word, symbols in splits.items():
            splits[word] = _merge_pair(symbols, best)
    return merges


def _merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def _t5_tokenizer() -> T5Tokenizer:
    """A Unigram (SentencePiece-style) vocabulary: corpus words, then single characters as the fallback."""
    from transformers import T5Tokenizer

    words = Counter(re.findall(r"\w+|[^\w\s]", _CORPUS))
    chars = Counter(char for word, count in words.items() for char in word * count)
    for char in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'\"-()":
        chars[char] += 1
    total = sum(words.values()) + sum(chars.values())
    pieces: dict[str, float] = {"▁": math.log(1 / total)}
    for word, count in words.most_common():
        pieces[f"▁{word}"] = math.log(count / total)
    # Characters score well below any word, so known words stay whole and unknown ones split into characters.
    for char, count in sorted(chars.items()):
        pieces.setdefault(char, math.log(count / total) - 10.0)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces.items()]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=T5_MAX_LENGTH)
