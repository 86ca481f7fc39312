"""A Hugging Face tokenizer as GGUF vocabulary metadata (`tokenizer.ggml.*`).

llama.cpp tokenizes text itself, from the vocabulary stored in the GGUF file, so the export
must describe the tokenizer precisely enough that llama.cpp splits any text into the same ids
as the Hugging Face tokenizer the model was trained with. Two families are supported:

- byte-level BPE (`tokenizer.ggml.model = "gpt2"`: SmolLM, Qwen2, Llama 3, GPT-2 and the tiny
  test tokenizers): tokens, merges, and the name of the pre-tokenizer (`tokenizer.ggml.pre`).
  llama.cpp hard-codes each pre-tokenizer's regex under a name, so we recognise the HF
  pre-tokenizer by its structure (the table is data: `gguf_data/pretokenizers.json`) and refuse
  one we do not know instead of guessing, since a wrong guess degrades every answer silently;
- SentencePiece-style BPE (`"llama"`: Gemma): pieces with `▁` for spaces, byte-fallback
  pieces `<0xNN>`, and scores, which llama.cpp uses as merge priorities (higher merges first).
  A Unigram tokenizer.json carries the scores itself; a BPE one gets them from merge ranks.

Everything is read from the tokenizer's `tokenizer.json` (the `tokenizers` library's
serialisation), never from the hub.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from alpacakit.errors import ConfigError

# llama.cpp token types (gguf.TokenType); repeated here so this module needs no gguf import.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@dataclass
class GGUFVocab:
    """Everything llama.cpp needs to rebuild the tokenizer."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece-style)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    pre: str | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    padded: int = 0  # rows of the embedding with no token (written as [PADn], type UNUSED)
    notes: list[str] = field(default_factory=list)

    def write(self, writer: Any) -> None:
        """Add the `tokenizer.ggml.*` keys to a `gguf.GGUFWriter`."""
        writer.add_tokenizer_model(self.model)
        if self.pre is not None:
            writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges is not None:
            writer.add_token_merges(self.merges)
        for tid, add in (
            (self.bos_id, writer.add_bos_token_id),
            (self.eos_id, writer.add_eos_token_id),
            (self.unk_id, writer.add_unk_token_id),
            (self.pad_id, writer.add_pad_token_id),
        ):
            if tid is not None:
                add(tid)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)


# --------------------------------------------------------------------------- pre-tokenizers


def _known_pretokenizers() -> list[dict[str, Any]]:
    text = resources.files("alpacakit.export").joinpath("gguf_data", "pretokenizers.json").read_text(encoding="utf-8")
    return json.loads(text)["pretokenizers"]


def pretokenizer_steps(pre: dict[str, Any] | None) -> list[str]:
    """A tokenizer.json `pre_tokenizer` as a flat list of readable steps (what the table lists)."""
    if pre is None:
        return []
    kind = pre.get("type")
    if kind == "Sequence":
        return [s for p in pre.get("pretokenizers", []) for s in pretokenizer_steps(p)]
    if kind == "ByteLevel":
        return ["ByteLevel(regex)" if pre.get("use_regex", True) else "ByteLevel"]
    if kind == "Digits":
        return ["Digits(individual)" if pre.get("individual_digits") else "Digits"]
    if kind == "Split":
        pattern = pre.get("pattern", {})
        pat = pattern.get("Regex", pattern.get("String", ""))
        inv = ",invert" if pre.get("invert") else ""
        return [f"Split({pre.get('behavior')}{inv}):{pat}"]
    return [json.dumps(pre, sort_keys=True)]


def detect_pre(tokenizer_json: dict[str, Any]) -> str:
    """The llama.cpp pre-tokenizer name for a byte-level BPE tokenizer.json, or a ConfigError."""
    steps = pretokenizer_steps(tokenizer_json.get("pre_tokenizer"))
    table = _known_pretokenizers()
    for entry in table:
        if entry["steps"] == steps:
            return entry["name"]
    known = "; ".join(f"{e['name']} ({e['family']})" for e in table)
    raise ConfigError(
        f"the tokenizer's pre-tokenizer is not one llama.cpp is known to reproduce: {steps}",
        hint=f"known pre-tokenizers: {known}. If you know the llama.cpp name that matches, pass it with "
        "--tokenizer-pre NAME (and check the result with --verify, which compares tokenization), or add an "
        "entry to alpacakit/export/gguf_data/pretokenizers.json",
    )


# --------------------------------------------------------------------------- the vocabulary


def _special_behaviour(tokenizer: Any) -> tuple[bool, bool]:
    """Whether encoding adds BOS / EOS by itself, found by encoding a sample both ways."""
    sample = "Hello world"
    plain = list(tokenizer(sample, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(sample)["input_ids"])
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bos is not None and len(full) > len(plain) and full[0] == bos and (not plain or plain[0] != bos)
    add_eos = eos is not None and len(full) > len(plain) and full[-1] == eos and (not plain or plain[-1] != eos)
    return add_bos, add_eos


def _is_spm_style(tj: dict[str, Any]) -> bool:
    """SentencePiece-style: spaces become `▁` (normalizer or Metaspace) instead of byte-level `Ġ`."""
    blob = json.dumps([tj.get("normalizer"), tj.get("pre_tokenizer")], ensure_ascii=False)
    if "ByteLevel" in blob:
        return False
    return "\u2581" in blob or "Metaspace" in blob


def _spm_add_space_prefix(tj: dict[str, Any]) -> bool:
    """SentencePiece's 'add dummy prefix': a `▁` prepended to the text before tokenizing."""

    def walk(node: Any) -> bool:
        if isinstance(node, dict):
            if node.get("type") == "Prepend" and node.get("prepend") == "\u2581":
                return True
            if (
                node.get("type") == "Metaspace"
                and node.get("prepend_scheme", "always") in ("always", "first")
                and node.get("add_prefix_space", True)
            ):
                return True
            return any(walk(v) for v in node.values())
        if isinstance(node, list):
            return any(walk(v) for v in node)
        return False

    return walk(tj.get("normalizer")) or walk(tj.get("pre_tokenizer"))


def _merge_strings(merges: list[Any]) -> list[str]:
    out = []
    for m in merges:
        if isinstance(m, str):
            out.append(m)
        else:
            a, b = m
            if " " in a or " " in b:
                raise ConfigError(
                    f"tokenizer merge {m!r} contains a space, which GGUF's 'a b' merge format cannot hold"
                )
            out.append(f"{a} {b}")
    return out


def build_vocab(tokenizer: Any, n_rows: int, *, pre_override: str | None = None) -> GGUFVocab:
    """Describe `tokenizer` (a transformers fast tokenizer) for llama.cpp.

    `n_rows` is the number of rows of the model's embedding matrix: llama.cpp needs exactly one
    token per row, so ids the tokenizer never produces (models pad their vocabulary to a
    multiple of 64 or 128) are written as `[PADn]` tokens of type UNUSED.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(
            f"the tokenizer ({type(tokenizer).__name__}) has no tokenizer.json form",
            hint="GGUF export needs a fast tokenizer: save the model folder with a tokenizer.json",
        )
    tj = json.loads(backend.to_str())
    model = tj.get("model", {})
    mtype = model.get("type")
    added = {int(a["id"]): a for a in tj.get("added_tokens", [])}

    # id -> piece, from the model's own vocabulary and the added tokens
    pieces: dict[int, str] = {}
    unigram_scores: dict[int, float] = {}
    if mtype == "BPE" or mtype == "WordLevel":
        for tok, i in model.get("vocab", {}).items():
            pieces[int(i)] = tok
    elif mtype == "Unigram":
        for i, (tok, score) in enumerate(model.get("vocab", [])):
            pieces[i] = tok
            unigram_scores[i] = float(score)
    else:
        raise ConfigError(
            f"tokenizer model type {mtype!r} is not supported for GGUF export",
            hint="supported: byte-level BPE (GPT-2/Llama 3/Qwen style) and SentencePiece-style BPE",
        )
    for i, a in added.items():
        pieces[i] = a["content"]

    n_tokens = max(pieces) + 1 if pieces else 0
    if n_tokens > n_rows:
        raise ConfigError(
            f"the tokenizer has {n_tokens} tokens but the model's embedding has only {n_rows} rows",
            hint="the tokenizer does not belong to this model (or the embedding was not resized after adding tokens)",
        )
    spm = mtype == "Unigram" or (mtype == "BPE" and _is_spm_style(tj))
    if mtype == "Unigram" and not spm:
        spm = True
    unk_piece = model.get("unk_token")
    byte_fallback = bool(model.get("byte_fallback")) or mtype == "Unigram"

    tokens: list[str] = []
    types: list[int] = []
    padded = 0
    for i in range(n_rows):
        piece = pieces.get(i)
        if piece is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            padded += 1
            continue
        tokens.append(piece)
        if i in added:
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        elif unk_piece is not None and piece == unk_piece:
            types.append(UNKNOWN)
        elif spm and byte_fallback and _BYTE_PIECE.match(piece):
            types.append(BYTE)
        else:
            types.append(NORMAL)

    add_bos, add_eos = _special_behaviour(tokenizer)
    vocab = GGUFVocab(
        model="llama" if spm else "gpt2",
        tokens=tokens,
        types=types,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        unk_id=tokenizer.unk_token_id,
        pad_id=tokenizer.pad_token_id,
        add_bos=add_bos,
        add_eos=add_eos,
        padded=padded,
    )
    if spm:
        vocab.scores = _spm_scores(tokens, types, model, unigram_scores)
        vocab.add_space_prefix = _spm_add_space_prefix(tj)
    else:
        if mtype != "BPE":
            raise ConfigError(f"a byte-level tokenizer of model type {mtype!r} is not supported (BPE expected)")
        if "ByteLevel" not in json.dumps(tj.get("pre_tokenizer")):
            raise ConfigError(
                "the BPE tokenizer is neither byte-level (GPT-2 style) nor SentencePiece-style",
                hint="GGUF export supports byte-level BPE and SentencePiece-style tokenizers",
            )
        vocab.merges = _merge_strings(model.get("merges", []))
        vocab.pre = pre_override or detect_pre(tj)
        if pre_override:
            vocab.notes.append(f"pre-tokenizer set by hand to {pre_override!r}")
    return vocab


def _spm_scores(
    tokens: list[str], types: list[int], model: dict[str, Any], unigram_scores: dict[int, float]
) -> list[float]:
    """Scores llama.cpp's SentencePiece tokenizer merges by (highest first).

    A Unigram tokenizer.json stores them. For a BPE one, the merge that makes a piece gives
    its rank: score = -rank, so earlier merges win, as in the HF tokenizer. Pieces no merge
    makes are single characters (never a merge result, so their score is unused), bytes and
    specials, or pieces HF would never produce: those get the lowest score, so that llama.cpp
    prefers any other merge.
    """
    if unigram_scores:
        return [unigram_scores.get(i, 0.0) for i in range(len(tokens))]
    rank: dict[str, int] = {}
    for r, m in enumerate(model.get("merges", [])):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, r)
    never = -float(len(rank) + 1)
    return [
        -float(rank[t]) if t in rank else (0.0 if len(t) == 1 or ty != NORMAL else never)
        for t, ty in zip(tokens, types)
    ]
