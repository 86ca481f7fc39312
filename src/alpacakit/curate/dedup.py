"""`alpacakit curate dedup`: exact ROUGE-L near-duplicate removal for a whole file.

Decisions are those of the streaming `RougeDeduper` (and of Stanford's loop over
`rouge_score`): an instruction is kept iff its ROUGE-L F with every seed and every earlier kept
instruction is <= the threshold. With the whole file known up front the same index signatures
(`rouge.Bounds.plan`: key pairs / single keys of each text's rarest-first prefix) can be built
and joined with numpy instead of one Python dict look-up at a time:

1. tokenize once; number each token occurrence (bag overlap = set overlap); rank keys by
   document frequency over the file, rarest first; sort each text's keys by that rank;
2. emit every text's signatures as int64 codes (pairs a*K+b, single keys K*K+a; S or X table);
3. walk the file in chunks: join the chunk's probe codes against the index codes of earlier
   texts that are still alive (seeds, kept texts, and the undecided texts of this chunk), by
   binary search on (code, text) keys; drop candidate pairs whose exact length bound or a
   256-bit occurrence-mask bound on their overlap is below `need`;
4. resolve the chunk in order in Python: a text is dropped at its first *kept* candidate with
   an exact F above the threshold (bit-parallel LCS + rouge_score's float formula).

Dropped texts leave the index before the next chunk, so a big cluster of near-duplicates costs
what it costs in streaming, and a chunk whose join would be too large is split in two.

From `_COMPILED_FROM` texts on (when numba loads) steps 3-4 run compiled instead
(`kernels_jit.pack_signatures`, `probes_by_text`, `bulk_decide`): index and probe signatures
packed into one int64 each and sorted together, one pass turning them into each text's probes
as ranges of the index, then each text decided in order by walking those ranges up to its own
position (kept texts only, each pair once, the same bounds, then the exact LCS), stopping at
its first hit. Same decisions (every bulk test runs both); 1M instructions: 35 s → 12 s.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from alpacakit.curate.rouge import (
    Bounds,
    char_masks,
    check_threshold,
    f_measure,
    lcs_with_masks,
    token_stream,
    tokenizer_named,
)
from alpacakit.errors import DataError
from alpacakit.io import iter_jsonl, read_records, write_jsonl

_CHUNK = 4096  # texts decided per join; dropped ones leave the index after each chunk
_MAX_JOIN = 4_000_000  # candidate (text, earlier text) events per join before a chunk is split
_MASK_WORDS = 4  # 256-bit occurrence masks for the overlap bound
_PACKED_BITS = 63  # (code, index or probe, text) sorted as one int64 while it fits
_DENSE_KEYS = 1 << 20  # key statistics by a count per key value up to 4 x tokens + this many values
# From this many texts (past the seeds) the decisions run compiled (kernels_jit.bulk_decide)
# when numba loads; smaller files keep the numpy join and never wait for numba's import.
# `COMPILED = False` turns it off.
_COMPILED_FROM = 20_000
COMPILED = True


@dataclass
class DedupStats:
    """What `dedup_file` did."""

    input: Path
    output: Path
    read: int
    seeds: int
    kept: int
    dropped: int
    threshold: float
    seconds: float

    def summary(self) -> str:
        return (
            f"read {self.read}, kept {self.kept}, dropped {self.dropped} as near-duplicates "
            f"(ROUGE-L F > {self.threshold:g} vs {self.seeds} seeds and earlier kept records), "
            f"{self.seconds:.1f}s -> {self.output}"
        )


def dedup_instructions(
    instructions: Sequence[str],
    seeds: Sequence[str] = (),
    threshold: float = 0.7,
    progress: Callable[[int, int], None] | None = None,
    tokenizer: str = "rouge_score",
    stage: Callable[[str], None] | None = None,
) -> list[bool]:
    """Keep flags, in order, for `instructions` checked against `seeds` + earlier kept ones.

    Exactly the decisions of `RougeDeduper(threshold)` fed the seeds and then each instruction
    with `add_if_novel` (and of rouge_score's pairwise loop), computed in bulk. `progress`, if
    given, is called with (instructions decided, total) after each chunk; `stage`, if given,
    with the name of each step as it starts (tokenizing, indexing, deciding).
    """
    t = check_threshold(threshold)
    texts = list(seeds) + list(instructions)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"instruction {i} must be a str, got {type(text).__name__}")
    if len(texts) == len(seeds):
        return []
    with collections_paused():
        return _Bulk(texts, len(seeds), Bounds(t), tokenizer, stage).run(progress)


@contextlib.contextmanager
def collections_paused():
    """Python's cyclic garbage collector off for a block that builds millions of objects that
    hold no cycles (records, token lists, candidate ids): each 700 new containers start a
    collection, and the older generations get traversed again and again as the heap grows. At
    1M instructions that took ~20% of a dedup (1M records read, 1M texts tokenized). The
    collector's state is restored afterwards; reference counting frees everything as usual."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Bulk:
    """The steps of `dedup_instructions` over one list of texts (seeds first)."""

    def __init__(
        self,
        texts: list[str],
        n_seeds: int,
        bounds: Bounds,
        tokenizer: str = "rouge_score",
        stage: Callable[[str], None] | None = None,
    ):
        import numpy as np

        from alpacakit.curate import pool_kernel

        self.np = np
        self.tokenizer = tokenizer
        self.n, self.n_seeds, self.bounds, self.t = len(texts), n_seeds, bounds, bounds.threshold
        self.compiled = COMPILED and self.n - n_seeds >= _COMPILED_FROM and pool_kernel.available()
        self.stage = stage or (lambda name: None)
        self.stage("tokenizing")
        self._tokens(texts)
        self.stage("indexing")
        self._rank_keys()
        self._masks()
        codes, items, inner = self._signatures()
        self._join_tables(codes, items, inner)
        self._need_table = None
        self.kept = np.ones(self.n, dtype=bool)
        self._ids: dict[int, list[int]] = {}

    # 1. tokens, occurrence keys, ranks -----------------------------------------------------

    def _tokens(self, texts: list[str]) -> None:
        """Token ids (numbered in order of first appearance), flat, with each text's offset."""
        np = self.np
        stream = token_stream(texts) if self.tokenizer == "rouge_score" else None
        if stream is not None:  # one flat list of tokens, a NUL token after each text
            flat = stream.split()
            vocab = {w: i for i, w in enumerate(dict.fromkeys(chain((b"\x00",), flat)))}  # NUL: id 0
            ids = np.fromiter(map(vocab.__getitem__, flat), dtype=np.int64, count=len(flat))
            ends = np.flatnonzero(ids == 0)
            self.lens = np.diff(ends, prepend=-1) - 1
            self.flat_ids = ids[ids != 0] - 1
            self.vocab_size = max(len(vocab) - 1, 1)
        else:
            tokenize = tokenizer_named(self.tokenizer)
            tokens = [tokenize(x) for x in texts]
            self.lens = np.fromiter(map(len, tokens), dtype=np.int64, count=self.n)
            flat = list(chain.from_iterable(tokens))
            vocab = {w: i for i, w in enumerate(dict.fromkeys(flat))}
            self.vocab_size = max(len(vocab), 1)
            self.flat_ids = np.fromiter(map(vocab.__getitem__, flat), dtype=np.int64, count=len(flat))
        del flat, vocab
        self.off = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(self.lens, out=self.off[1:])
        self.owner = np.repeat(np.arange(self.n, dtype=np.int64), self.lens)  # text of each token

    def _rank_keys(self) -> None:
        """Occurrence keys (the k-th repeat of a token is a key of its own), ranked by document
        frequency, rarest first; `srk` holds each text's ranks in ascending order."""
        np = self.np
        total = len(self.flat_ids)
        text_token = self.owner * self.vocab_size + self.flat_ids
        order = np.argsort(text_token, kind="stable")
        grouped = text_token[order]
        pos = np.arange(total, dtype=np.int64)
        first = np.ones(total, dtype=bool)
        first[1:] = grouped[1:] != grouped[:-1]
        repeat = np.empty(total, dtype=np.int64)
        repeat[order] = pos - np.maximum.accumulate(np.where(first, pos, 0))
        keys = self.flat_ids + repeat * self.vocab_size
        span = int(keys.max(initial=-1)) + 1
        if span <= 4 * total + _DENSE_KEYS:  # np.unique's results from a count per key value (no sort)
            counts = np.bincount(keys, minlength=span)
            uniq = np.flatnonzero(counts)
            df = counts[uniq]
            dense = np.zeros(span, dtype=np.int64)
            dense[uniq] = np.arange(len(uniq), dtype=np.int64)
            inverse = dense[keys]
            del counts, dense
        else:
            uniq, inverse, df = np.unique(keys, return_inverse=True, return_counts=True)
        self.k = k = len(uniq)
        rank_of = np.empty(k, dtype=np.int64)
        rank_of[np.lexsort((uniq, df))] = np.arange(k, dtype=np.int64)
        base = self.owner * k
        self.srk = np.sort(base + rank_of[inverse.reshape(-1)]) - base
        self.pos_in_text = pos - self.off[self.owner] if total else pos

    def _masks(self) -> None:
        """256-bit masks of each text's keys; rank % 256 puts the 256 most frequent keys on
        distinct bits. overlap <= popcount(mask_a & mask_b) + min(lost_a, lost_b), where lost
        counts a text's keys that share a bit with another of its keys."""
        np = self.np
        self.masks = np.zeros((self.n, _MASK_WORDS), dtype=np.uint64)
        if len(self.srk):
            bit = self.srk % (64 * _MASK_WORDS)
            one = np.left_shift(np.uint64(1), (bit % 64).astype(np.uint64))
            np.bitwise_or.at(self.masks, (self.owner, bit // 64), one)
        self.lost = self.lens - _popcount(self.masks)

    # 2. signatures ---------------------------------------------------------------------------

    def _signatures(self):
        """Every text's signature codes (pairs a*K+b, single keys K*K+a, a and b ranks), the
        text each belongs to, and whether it lies in the short prefix ("inner")."""
        np = self.np
        k, srk, off = self.k, self.srk, self.off
        lengths, length_of = np.unique(self.lens, return_inverse=True)
        plans = [self.bounds.plan(int(x)) for x in lengths]
        p_short, p_long, s_short, s_long = (
            np.array([getattr(p, name) for p in plans], dtype=np.int64)[length_of.reshape(-1)]
            for name in ("pair_short", "pair_long", "single_short", "single_long")
        )
        codes, items, inner = [], [], []
        for width in np.unique(p_long).tolist():
            if width < 2:
                continue
            group = np.flatnonzero(p_long == width)
            r = srk[off[group][:, None] + np.arange(width)]
            ia, ib = _triangle(width)
            codes.append((r[:, ia] * k + r[:, ib]).reshape(-1))
            items.append(np.repeat(group, len(ia)))
            inner.append((ib[None, :] < p_short[group][:, None]).reshape(-1))
        pos, owner = self.pos_in_text, self.owner
        single = pos < s_long[owner]
        codes.append(k * k + srk[single])
        items.append(owner[single])
        inner.append(pos[single] < s_short[owner[single]])
        return np.concatenate(codes), np.concatenate(items), np.concatenate(inner)

    # 3. join ---------------------------------------------------------------------------------

    def _join_tables(self, codes, items, inner) -> None:
        """Index: inner signatures in table S (even codes), outer ones in table X (odd codes),
        as sorted keys code_id * n + text. Probes (texts after the seeds): every signature in
        S, inner ones in X; sorted by chunk, then code id, so each chunk's binary searches get
        ascending keys."""
        if self.compiled and self._join_compiled(codes, items, inner):
            return
        self.compiled = False
        np, n = self.np, self.n
        index_codes = codes * 2 + (~inner)
        probing = items >= self.n_seeds
        probe_codes = np.concatenate([codes[probing] * 2, codes[probing & inner] * 2 + 1])
        probe_items = np.concatenate([items[probing], items[probing & inner]])
        # One stable sort of index and probe codes together numbers them alike (`gid`, ascending
        # along the sort) and puts, within a code, index entries first, in their own order; a probe
        # code with no index entry is dropped. At 1M texts (~47M codes) this replaces a unique,
        # a sort of the probes, a binary search and a lexsort (about 2x faster in all).
        m = len(index_codes)
        both = np.concatenate([index_codes, probe_codes])
        order = np.argsort(both, kind="stable")
        ordered = both[order]
        new = np.ones(len(both), dtype=bool)
        np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
        gid = np.cumsum(new) - 1
        del both, ordered, new
        is_index = order < m
        index_gid = gid[is_index]
        # already in code order; within a code the items need ordering (timsort: nearly sorted)
        self.index_key = np.sort(index_gid * n + items[order[is_index]], kind="stable")
        indexed = np.zeros(int(gid[-1]) + 1 if len(gid) else 0, dtype=bool)
        indexed[index_gid] = True
        probe = ~is_index
        cid, text = gid[probe], probe_items[order[probe] - m]
        found = indexed[cid]
        cid, text = cid[found], text[found]
        chunk = (text - self.n_seeds) // _CHUNK
        by_chunk = np.argsort(
            chunk.astype(np.int16 if len(chunk) == 0 or chunk.max() < 2**15 else np.int64), kind="stable"
        )
        self.probe_cid, self.probe_text, self.probe_chunk = cid[by_chunk], text[by_chunk], chunk[by_chunk]

    def _join_compiled(self, codes, items, inner) -> bool:
        """The join for the compiled decisions: every index and probe signature packed into one
        int64, (code, index before probe, text), sorted in place; then one pass gives the index
        entries' texts in code order and each text's probes as ranges of them, grouped by text
        (`kernels_jit.probes_by_text`). At 1M texts (~60M signatures) this is ~3x faster than
        the stable argsort below and its gathers. False (nothing done) when a packed signature
        would not fit in 63 bits (over ~1.4M distinct keys)."""
        from alpacakit.curate import kernels_jit

        shift = max(1, (self.n - 1).bit_length()) + 1
        if (int(codes.max(initial=0)) * 2 + 1).bit_length() + shift > _PACKED_BITS:
            return False
        packed = kernels_jit.pack_signatures(codes, items, inner, self.n_seeds, shift)
        packed.sort()
        self.index_text, self.ptr, self.glo, self.ghi = kernels_jit.probes_by_text(packed, shift, self.n)
        return True

    def run(self, progress) -> list[bool]:
        np = self.np
        self.stage("deciding")
        if self.compiled:
            decide = self._compiled_decisions()
        for chunk, c0 in enumerate(range(self.n_seeds, self.n, _CHUNK)):
            c1 = min(self.n, c0 + _CHUNK)
            if self.compiled:
                decide(c0, c1)
            else:
                p0, p1 = np.searchsorted(self.probe_chunk, [chunk, chunk + 1])
                self._decide(c0, c1, self.probe_cid[p0:p1], self.probe_text[p0:p1])
            if progress is not None:
                progress(c1 - self.n_seeds, self.n - self.n_seeds)
        return self.kept[self.n_seeds :].tolist()

    def _compiled_decisions(self) -> Callable[[int, int], None]:
        """decide(c0, c1): texts c0..c1-1 decided in order by `kernels_jit.bulk_decide`."""
        np = self.np
        from alpacakit.curate import kernels_jit

        flat1 = self.flat_ids + 1  # (token id + 1: what the LCS kernel reads)
        table = np.zeros(self.vocab_size + 2, dtype=np.uint64)
        dp = np.zeros(int(self.lens.max(initial=0)) + 1, dtype=np.int64)
        stamp = np.full(self.n, -1, dtype=np.int64)
        need = self._need_matrix()
        arrays = (self.kept, self.ptr, self.glo, self.ghi, self.index_text, self.lens, self.masks, self.lost, need)
        rest = (self.flat_ids, flat1, self.off, table, dp, stamp, float(self.t))
        return lambda c0, c1: kernels_jit.bulk_decide(c0, c1, *arrays, *rest)

    def _decide(self, c0: int, c1: int, cid, text) -> None:
        """Decide texts c0..c1-1 (their probes: `cid`, `text`, sorted by cid)."""
        np, n = self.np, self.n
        alive = self._alive()
        lo = np.searchsorted(alive, cid * n)
        hi = np.searchsorted(alive, cid * n + text)  # earlier texts only
        counts = hi - lo
        volume = int(counts.sum())
        if volume > _MAX_JOIN and c1 - c0 > 1:
            mid = (c0 + c1) // 2
            first = text < mid
            self._decide(c0, mid, cid[first], text[first])
            self._decide(mid, c1, cid[~first], text[~first])
            return
        starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
        earlier = alive[starts + np.arange(volume)] % n
        self._resolve(np.repeat(text, counts), earlier)

    def _alive(self):
        """The index without the signatures of dropped texts (dropped texts never drop others).

        Filtering the whole index is a pass over tens of millions of keys at 1M texts, so it is
        redone only once the drops since the last pass reach 5% of the texts: until then the
        index holds a few dropped texts too, and `_resolve` skips them (it checks `kept`)."""
        dropped = self.n - int(self._kept_count())
        if getattr(self, "_alive_keys", None) is None or dropped - self._alive_dropped > max(1000, self.n // 20):
            n = self.n
            self._alive_keys = self.index_key[self.kept[self.index_key % n]]
            self._alive_dropped = dropped
        return self._alive_keys

    def _kept_count(self) -> int:
        return int(self.kept.sum())

    # 4. exact decisions ----------------------------------------------------------------------

    def _resolve(self, later, earlier) -> None:
        """Filter candidate pairs by exact bounds, then decide their texts in order: a text is
        dropped at its first kept candidate whose exact F exceeds the threshold."""
        np, n = self.np, self.n
        if not len(later):
            return
        lens = self.lens
        need = self._need(lens[later], lens[earlier])
        overlap = _popcount(self.masks[later] & self.masks[earlier])
        ok = overlap + np.minimum(self.lost[later], self.lost[earlier]) >= need
        pair = np.unique(later[ok] * n + earlier[ok])  # by later text, then earlier text
        later, earlier = pair // n, pair % n
        kept, t = self.kept, self.t
        current, a, masks = -1, [], {}
        for j, i in zip(later.tolist(), earlier.tolist()):
            if not kept[j] or not kept[i]:
                continue
            if j != current:
                current, a = j, self._text_ids(j)
                masks = char_masks(a)
            if f_measure(lcs_with_masks(masks, len(a), self._text_ids(i)), len(a), int(lens[i])) > t:
                kept[j] = False

    def _text_ids(self, i: int) -> list[int]:
        got = self._ids.get(i)
        if got is None:
            got = self._ids[i] = self.flat_ids[self.off[i] : self.off[i + 1]].tolist()
        return got

    def _need_matrix(self):
        """need(m, k) for both lengths up to the longest text, at most 256."""
        np = self.np
        if self._need_table is None:
            top = min(int(self.lens.max(initial=0)), 256) + 1
            need = self.bounds.need
            self._need_table = np.array([[need(a, b) for b in range(top)] for a in range(top)], dtype=np.int64)
        return self._need_table

    def _need(self, m, k):
        """need(m, k) elementwise: the matrix for lengths up to 256, the cache beyond."""
        np = self.np
        table = self._need_matrix()
        top = len(table)
        small = (m < top) & (k < top)
        out = table[np.where(small, m, 0), np.where(small, k, 0)]
        if not small.all():
            big = np.flatnonzero(~small)
            out[big] = [self.bounds.need(int(a), int(b)) for a, b in zip(m[big], k[big])]
        return out


def _popcount(words):
    """Set bits per row of a uint64 matrix (np.bitwise_count needs numpy >= 2)."""
    import numpy as np

    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words).sum(axis=1, dtype=np.int64)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
    return table[np.ascontiguousarray(words).view(np.uint8)].reshape(len(words), -1).sum(axis=1)


def _triangle(width: int):
    """Index pairs (i, j), i < j < width, ordered by j then i."""
    import numpy as np

    j = np.concatenate([np.full(k, k, dtype=np.int64) for k in range(1, width)])
    i = np.concatenate([np.arange(k, dtype=np.int64) for k in range(1, width)])
    return i, j


# ------------------------------------------------------------------------------------- files


def _instruction_texts(path: Path, records: list[dict]) -> list[str]:
    """The `instruction` of each record, with file:line for any that is not a string."""
    texts = []
    for i, r in enumerate(records):
        value = r["instruction"]
        if not isinstance(value, str):
            raise DataError(
                f"{_where(path, i)}: field 'instruction' must be a string, found {type(value).__name__}",
                hint="every record needs a text 'instruction'",
            )
        texts.append(value)
    return texts


def _where(path: Path, index: int) -> str:
    """file:line of the index-th record of a JSONL file (or 'file: item N' for a JSON list)."""
    try:
        if not path.read_text(encoding="utf-8").lstrip().startswith("["):
            for k, (lineno, _) in enumerate(iter_jsonl(path)):
                if k == index:
                    return f"{path}:{lineno}"
    except (OSError, UnicodeDecodeError, DataError):
        pass
    return f"{path}: item {index}"


def dedup_file(
    input: str | Path,
    output: str | Path,
    seeds: str | Path | None = None,
    threshold: float = 0.7,
    tokenizer: str = "rouge_score",
) -> DedupStats:
    """Write the records of `input` whose instruction is not a near-duplicate, as JSONL.

    `input`: JSON list or JSONL of records with an `instruction` field (other fields are kept).
    `seeds`: optional self-instruct seed JSONL (or any records file with `instruction`); seeds
    start the pool and are never written. The output keeps input order and is written
    atomically, so a failed run leaves no partial file.
    """
    start = time.perf_counter()
    t = check_threshold(threshold)
    tokenizer_named(tokenizer)  # an unknown name fails before reading anything
    input, output = Path(input), Path(output)
    with collections_paused(), _ProgressBar(input) as bar:
        bar.stage("reading")
        records = read_records(input, required=["instruction"])
        texts = _instruction_texts(input, records)
        seed_texts: list[str] = []
        if seeds is not None:
            seeds = Path(seeds)
            seed_texts = _instruction_texts(seeds, read_records(seeds, required=["instruction"]))
        keep = dedup_instructions(texts, seed_texts, t, progress=bar.update, tokenizer=tokenizer, stage=bar.stage)
        bar.stage("writing")
        kept = write_jsonl(output, (r for r, k in zip(records, keep) if k))
    return DedupStats(
        input=input,
        output=output,
        read=len(records),
        seeds=len(seed_texts),
        kept=kept,
        dropped=len(records) - kept,
        threshold=t,
        seconds=time.perf_counter() - start,
    )


class _ProgressBar:
    """A transient rich progress bar on a terminal for a large input (2 MB or more, ~20K
    records), naming the step under way (reading, tokenizing, indexing, deciding, writing);
    nothing otherwise."""

    def __init__(self, path: Path):
        self._show = sys.stderr.isatty() and path.is_file() and path.stat().st_size >= 2_000_000
        self._progress = None
        self._task = None

    def __enter__(self) -> _ProgressBar:
        if self._show:
            from rich.console import Console
            from rich.progress import Progress

            self._progress = Progress(console=Console(stderr=True), transient=True)
            self._progress.start()
            self._task = self._progress.add_task("dedup", total=None)
        return self

    def stage(self, name: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=f"dedup: {name}")

    def update(self, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
