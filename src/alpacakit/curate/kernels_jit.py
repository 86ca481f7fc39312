"""The numba code of `pool_kernel.py` (the statistics' top-k search), `decide_kernel.py` (the
compiled decisions) and `dedup.py` (the bulk dedup's join and decisions, from 20K texts): what
they do and why is written there.

Imported only by their `kernels()` (and by `dedup._Bulk` in compiled mode), in the processes
that search or decide with them, so numba loads nowhere else (`alpacakit --help` and a generate
run's main process never import it). The functions live at module level so that numba's
on-disk cache finds them again: defined inside a function, each run compiled them anew (~2.5 s
in the worker of every generate run).
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core import types
from numba.extending import intrinsic

jit = numba.njit(cache=True, nogil=True)
inline = numba.njit(cache=True, nogil=True, inline="always")

_EMPTY = -1
_PAIR_S, _PAIR_X, _SINGLE_S, _SINGLE_X = 0, 1, 2, 3

# ----------------------------------------------------------------------- the statistics' search


@intrinsic
def popcount(typingctx, x):
    """The CPU's population count (LLVM ctpop) of a uint64."""

    def codegen(context, builder, signature, args):
        return builder.call(builder.module.declare_intrinsic("llvm.ctpop", [args[0].type]), args)

    return types.int64(types.uint64), codegen


@jit
def f_measure(lcs, m, n):
    precision = lcs / n
    recall = lcs / m
    return 2 * precision * recall / (precision + recall)


@jit
def lcs_row(table, m, row, n):
    """LCS length of the instruction (1 <= m <= 64 tokens, its masks in `table` by token
    id + 1) and the n tokens of `row`: Hyyro's recurrence, as `rouge.lcs_with_masks`."""
    full = np.uint64(0xFFFFFFFFFFFFFFFF) >> np.uint64(64 - m)
    v = full
    for j in range(n):
        mk = table[row[j]]
        if mk:
            u = v & mk
            v = (v + u) | (v - u)
    v &= full
    ones = 0
    while v:
        v &= v - np.uint64(1)
        ones += 1
    return m - ones


@inline
def visit(e, shared, m, k, margin, lens, wide, tok, table, best_f, best_e, deferred, state):
    """Offer entry e (sharing `shared` keys) to the k best (F desc, earlier entry first);
    state = [entries in the k best, entries deferred]. Skipped when its bound
    2 shared / (m + n) cannot reach the k-th best; too wide for the matrix: deferred."""
    filled = state[0]
    n = lens[e]
    if filled == k and 2.0 * shared < (best_f[k - 1] - margin) * (m + n):
        return
    if wide[e]:
        deferred[state[1]] = e
        state[1] += 1
        return
    f = f_measure(1 if shared == 1 else lcs_row(table, m, tok[e], n), m, n)
    if filled < k or f > best_f[k - 1] or (f == best_f[k - 1] and e < best_e[k - 1]):
        j = filled if filled < k else k - 1
        while j > 0 and (best_f[j - 1] < f or (best_f[j - 1] == f and best_e[j - 1] > e)):
            best_f[j] = best_f[j - 1]
            best_e[j] = best_e[j - 1]
            j -= 1
        best_f[j] = f
        best_e[j] = e
        if filled < k:
            state[0] = filled + 1


@inline
def fewest_shared(reach, total):
    """The fewest shared keys s >= 1 with 2 s >= reach * total, the bound `visit` skips below
    (halving a float is exact, so s >= reach * total / 2 is the same test)."""
    return max(1, np.int64(np.ceil(reach * total * 0.5)))


@jit
def search(
    rare,
    common,
    query_bits,
    counts,
    touched,
    marks,
    lens,
    wide,
    tok,
    table,
    m,
    k,
    margin,
    row_entries,
    row_masks,
    row_start,
    row_size,
):
    """Top-k (entries, F) of one instruction, and the entries too wide to score here whose
    bound can reach the floor. `rare`: the posting lists of its keys that have no common
    bit, concatenated; `query_bits`: the common bits of the others; row n of `row_entries`
    and `row_masks` (from `row_start[n]`, `row_size[n]` long): the entries of length n (the
    last row: longer) and their common bits."""
    best_f = np.full(k, -1.0)
    best_e = np.full(k, -1, np.int64)
    state = np.zeros(2, np.int64)
    deferred = np.empty(lens.shape[0], np.int64)
    t = 0
    for i in range(rare.shape[0]):
        e = rare[i]
        if counts[e] == 0:
            touched[t] = e
            t += 1
        counts[e] += 1
    # The entries sharing a rare key first, most shared keys first, so the floor rises early.
    most = 0
    for i in range(t):
        e = touched[i]
        counts[e] += popcount(common[e] & query_bits)
        most = max(most, counts[e])
    starts = np.zeros(most + 2, np.int64)
    for i in range(t):
        starts[counts[touched[i]]] += 1
    at = 0
    for v in range(most, -1, -1):
        size = starts[v]
        starts[v] = at
        at += size
    order = np.empty(t, np.int64)
    for i in range(t):
        e = touched[i]
        order[starts[counts[e]]] = e
        starts[counts[e]] += 1
        marks[e] = 1
    reach = -1.0
    for i in range(t):
        e = order[i]
        if 2.0 * counts[e] >= reach * (m + lens[e]):
            visit(e, counts[e], m, k, margin, lens, wide, tok, table, best_f, best_e, deferred, state)
            reach = best_f[k - 1] - margin if state[0] == k else -1.0
    # Then the entries sharing common keys only, shortest first: one of length n shares at
    # most c = min(common keys of the instruction, n), so F <= 2c / (m + n), which falls with
    # n from n = c on: the walk stops at the first length that cannot reach the k-th best.
    # Each length's entries and masks lie in order in memory (`PoolStats._by_len`).
    n_common = popcount(query_bits)
    for n in range(1, row_start.shape[0] if n_common else 1):
        if 2.0 * min(n_common, n) < reach * (m + n):
            if n >= n_common:
                break
            continue
        # One well-predicted compare per entry: it needs at least `least` shared common keys.
        least = fewest_shared(reach, m + n)
        for j in range(row_start[n], row_start[n] + row_size[n]):
            shared = popcount(row_masks[j] & query_bits)
            if shared >= least and not marks[row_entries[j]]:
                visit(row_entries[j], shared, m, k, margin, lens, wide, tok, table, best_f, best_e, deferred, state)
                reach = best_f[k - 1] - margin if state[0] == k else -1.0
                least = fewest_shared(reach, m + n)
    for i in range(t):
        counts[touched[i]] = 0
        marks[touched[i]] = 0
    filled = state[0]
    return best_e[:filled], best_f[:filled], deferred[: state[1]]


@jit
def scores(entries, lens, wide, tok, table, m, out):
    """Exact F of each entry (0.0 when it shares no token; wide ones left at -1)."""
    for i in range(entries.shape[0]):
        e = entries[i]
        if wide[e]:
            out[i] = -1.0
            continue
        lcs = lcs_row(table, m, tok[e], lens[e])
        out[i] = f_measure(lcs, m, lens[e]) if lcs else 0.0


# ------------------------------------------------------------------------------- the decisions


@inline
def slot_of(codes, kinds, code, kind):
    """The slot holding (code, kind), or the empty slot where it would go."""
    mask = codes.shape[0] - 1
    h = np.uint64(code) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(kind) * np.uint64(0xC2B2AE3D27D4EB4F)
    s = np.int64((h ^ (h >> np.uint64(29))) & np.uint64(mask))
    while True:
        c = codes[s]
        if c == _EMPTY or (c == code and kinds[s] == kind):
            return s
        s = (s + 1) & mask


@inline
def insert(codes, kinds, heads, node_entry, node_next, sizes, code, kind, e):
    s = slot_of(codes, kinds, code, kind)
    if codes[s] == _EMPTY:
        codes[s] = code
        kinds[s] = kind
        heads[s] = -1
        sizes[0] += 1
    nd = sizes[1]
    sizes[1] += 1
    node_entry[nd] = e
    node_next[nd] = heads[s]
    heads[s] = nd


@inline
def rank_sorted(keys, rank_of, sizes):
    """The keys rarest first; a key never seen gets the next new rank now (sizes[2])."""
    for i in range(keys.shape[0]):
        if rank_of[keys[i]] < 0:
            rank_of[keys[i]] = sizes[2]
            sizes[2] += 1
    return keys[np.argsort(rank_of[keys])]


@inline
def index_sorted(sk, e, plan, codes, kinds, heads, node_entry, node_next, sizes):
    """Index entry e under the signatures of its keys `sk` (rarest first), as
    `RougeDeduper._index_entry` does: pairs in the short prefix in S, the other pairs of the
    long prefix in X, single keys likewise."""
    p = plan[sk.shape[0]]
    if p[0]:
        for j in range(1, p[2]):
            kind = _PAIR_S if j < p[1] else _PAIR_X
            for i in range(j):
                insert(codes, kinds, heads, node_entry, node_next, sizes, (sk[i] << 32) | sk[j], kind, e)
    if p[3]:
        for i in range(p[5]):
            insert(codes, kinds, heads, node_entry, node_next, sizes, sk[i], _SINGLE_S if i < p[4] else _SINGLE_X, e)


@jit
def append(ids, keys, first, at, lens, tok, tok_off, key_flat, key_off, firsts, df):
    """Store the next entry (at = [entries, tokens stored, first entries]); a first entry of
    its text is listed in `firsts` and counted in the key frequencies."""
    n, t, m = at[0], at[1], ids.shape[0]
    lens[n] = m
    for i in range(m):
        tok[t + i] = ids[i] + 1  # (as in the statistics' token matrix: 0 is no token)
        key_flat[t + i] = keys[i]
    tok_off[n + 1] = t + m
    key_off[n + 1] = t + m
    at[0] = n + 1
    at[1] = t + m
    if first:
        firsts[at[2]] = n
        at[2] += 1
        for i in range(m):
            df[keys[i]] += 1


@jit
def add(keys, e, plan, rank_of, codes, kinds, heads, node_entry, node_next, sizes):
    index_sorted(rank_sorted(keys, rank_of, sizes), e, plan, codes, kinds, heads, node_entry, node_next, sizes)


@jit
def rebuild(key_flat, key_off, firsts, rank_of, plan, codes, kinds, heads, node_entry, node_next, sizes):
    """Index every first entry again under the current ranks (after a reorder)."""
    codes[:] = _EMPTY
    sizes[0] = 0
    sizes[1] = 0
    for i in range(firsts.shape[0]):
        e = firsts[i]
        keys = key_flat[key_off[e] : key_off[e + 1]]  # (all ranked by now: no new rank is given)
        index_sorted(rank_sorted(keys, rank_of, sizes), e, plan, codes, kinds, heads, node_entry, node_next, sizes)


@jit
def rehash(codes, kinds, heads, new_codes, new_kinds, new_heads):
    """Move every slot into a larger table (the node lists stay as they are)."""
    new_codes[:] = _EMPTY
    for s in range(codes.shape[0]):
        if codes[s] != _EMPTY:
            t = slot_of(new_codes, new_kinds, codes[s], kinds[s])
            new_codes[t] = codes[s]
            new_kinds[t] = kinds[s]
            new_heads[t] = heads[s]


@inline
def lcs_of(ids, m, e, tok_flat, tok_off, table, dp):
    """LCS length of the instruction (`ids`, its masks at token id + 1 in `table` when
    m <= 64) and entry e (its tokens stored as id + 1)."""
    lo, hi = tok_off[e], tok_off[e + 1]
    if m <= 64:
        return lcs_row(table, m, tok_flat[lo:hi], hi - lo)
    dp[: m + 1] = 0  # the dynamic programme, one row at a time (rare: over 64 tokens)
    for j in range(lo, hi):
        diag = 0
        b = tok_flat[j]
        for i in range(1, m + 1):
            up = dp[i]
            if ids[i - 1] + 1 == b:
                dp[i] = diag + 1
            elif dp[i - 1] > up:
                dp[i] = dp[i - 1]
            diag = up
    return dp[m]


@inline
def head_of(codes, kinds, heads, code, kind):
    """The first node of the entries indexed under (code, kind), or -1 when there are none."""
    s = slot_of(codes, kinds, code, kind)
    return heads[s] if codes[s] != _EMPTY else -1


@inline
def take(
    nd, node_entry, node_next, stamp, qno, ids, m, need, lens, tok_flat, tok_off, table, dp, out_e, out_lcs, n_out
):
    """Check every entry of one node list not yet checked for this query."""
    while nd >= 0:
        e = node_entry[nd]
        nd = node_next[nd]
        if stamp[e] == qno:
            continue
        stamp[e] = qno
        n = lens[e]
        least = need[n]
        if least > m or least > n:
            continue
        lcs = lcs_of(ids, m, e, tok_flat, tok_off, table, dp)
        if lcs >= least:
            out_e[n_out] = e
            out_lcs[n_out] = lcs
            n_out += 1
    return n_out


@jit
def find(keys, ids, need, plan, rank_of, codes, kinds, heads, node_entry, node_next, sizes, stamp, qno, lens, tok_flat, tok_off, table, dp, out_e, out_lcs):  # fmt: skip
    """Every indexed entry whose LCS with the instruction reaches need[n] (n: its length):
    the number found; they are in out_e, their LCS in out_lcs."""
    m = ids.shape[0]
    p = plan[keys.shape[0]]
    if not (p[0] or p[3]):
        return 0
    sk = rank_sorted(keys, rank_of, sizes)
    if m <= 64:
        for i in range(m):
            table[ids[i] + 1] |= np.uint64(1) << np.uint64(i)
    n_out = 0
    if p[0]:
        for j in range(1, p[2]):
            for i in range(j):
                code = (sk[i] << 32) | sk[j]
                n_out = take(head_of(codes, kinds, heads, code, _PAIR_S), node_entry, node_next, stamp, qno, ids, m, need, lens, tok_flat, tok_off, table, dp, out_e, out_lcs, n_out)  # fmt: skip
                if j < p[1]:
                    n_out = take(head_of(codes, kinds, heads, code, _PAIR_X), node_entry, node_next, stamp, qno, ids, m, need, lens, tok_flat, tok_off, table, dp, out_e, out_lcs, n_out)  # fmt: skip
    if p[3]:
        for i in range(p[5]):
            n_out = take(head_of(codes, kinds, heads, sk[i], _SINGLE_S), node_entry, node_next, stamp, qno, ids, m, need, lens, tok_flat, tok_off, table, dp, out_e, out_lcs, n_out)  # fmt: skip
            if i < p[4]:
                n_out = take(head_of(codes, kinds, heads, sk[i], _SINGLE_X), node_entry, node_next, stamp, qno, ids, m, need, lens, tok_flat, tok_off, table, dp, out_e, out_lcs, n_out)  # fmt: skip
    if m <= 64:
        for i in range(m):
            table[ids[i] + 1] = 0
    return n_out


# -------------------------------------------------------------- the bulk dedup's decisions (dedup.py)


@jit
def bulk_decide(t0, t1, kept, ptr, glo, ghi, index_text, lens, masks, lost, need, flat_ids, flat1, off, table, dp, stamp, threshold):  # fmt: skip
    """Decide texts t0..t1-1 in order: text j is dropped at its first kept earlier text that
    shares a signature with it (an index entry in one of its probes' groups, texts ascending)
    and whose ROUGE-L F exceeds the threshold. Each pair is looked at once (`stamp`); the
    length and 256-bit mask bounds on the bag overlap skip most before the exact LCS (pairs
    with a text longer than the `need` table are checked exactly)."""
    top = need.shape[0]
    for j in range(t0, t1):
        m = lens[j]
        loaded = False
        dropped = False
        for p in range(ptr[j], ptr[j + 1]):
            for q in range(glo[p], ghi[p]):
                e = index_text[q]
                if e >= j:
                    break  # (a group's texts ascend: the rest are later texts)
                if stamp[e] == j or not kept[e]:
                    continue
                stamp[e] = j
                k = lens[e]
                if m < top and k < top:
                    least = need[m, k]
                    if least > m or least > k:
                        continue
                    ov = min(lost[j], lost[e])
                    for w in range(masks.shape[1]):
                        ov += popcount(masks[j, w] & masks[e, w])
                    if ov < least:
                        continue
                if not loaded and m <= 64:
                    for i in range(m):
                        table[flat1[off[j] + i]] |= np.uint64(1) << np.uint64(i)
                    loaded = True
                lcs = lcs_of(flat_ids[off[j] : off[j + 1]], m, e, flat1, off, table, dp)
                if lcs > 0 and f_measure(lcs, m, k) > threshold:
                    dropped = True
                    break
            if dropped:
                break
        if loaded:
            for i in range(m):
                table[flat1[off[j] + i]] = 0
        if dropped:
            kept[j] = False


@jit
def pack_signatures(codes, items, inner, n_seeds, shift):
    """Index and probe signatures as one int64 each, (code << shift) | (probe bit) | text,
    the probe bit (1 << (shift - 1)) sorting a code's index entries first: index entries
    code * 2 + (not inner) for every text; probes code * 2 (table S) for every text past the
    seeds and code * 2 + 1 (table X) for its inner signatures."""
    probe = np.int64(1) << np.int64(shift - 1)
    size = codes.shape[0]
    for i in range(codes.shape[0]):
        if items[i] >= n_seeds:
            size += 2 if inner[i] else 1
    out = np.empty(size, dtype=np.int64)
    at = 0
    for i in range(codes.shape[0]):
        c, t = codes[i] * 2, items[i]
        out[at] = ((c + (0 if inner[i] else 1)) << shift) | t
        at += 1
        if t >= n_seeds:
            out[at] = (c << shift) | probe | t
            at += 1
            if inner[i]:
                out[at] = ((c + 1) << shift) | probe | t
                at += 1
    return out


@jit
def probes_by_text(packed, shift, n):
    """From the sorted signatures: the index entries' texts in order (`index_text`), and each
    text's probes as ranges of them (the index entries under the probe's code, texts ascending;
    probes under a code with no index entry left out), grouped by text: text t's ranges are
    glo[ptr[t]:ptr[t + 1]] .. ghi[...], in code order."""
    probe = np.int64(1) << np.int64(shift - 1)
    low = probe - 1
    ptr = np.zeros(n + 1, dtype=np.int64)
    index_text = glo = ghi = at = np.zeros(0, dtype=np.int64)
    n_index = 0
    for fill in range(2):  # pass 0 counts each text's probes, pass 1 puts them in place
        if fill:
            for t in range(n):
                ptr[t + 1] += ptr[t]
            index_text = np.empty(n_index, dtype=np.int64)
            glo = np.empty(ptr[n], dtype=np.int64)
            ghi = np.empty(ptr[n], dtype=np.int64)
            at = ptr[:-1].copy()
        n_index = 0
        prev, start = np.int64(-1), 0
        for x in packed:
            code = x >> shift
            if code != prev:  # a new code: its index entries start here
                prev, start = code, n_index
            t = x & low
            if not x & probe:
                if fill:
                    index_text[n_index] = t
                n_index += 1
            elif n_index > start:  # (a probe: its code's index entries all came before it)
                if fill:
                    q = at[t]
                    glo[q], ghi[q] = start, n_index
                    at[t] = q + 1
                else:
                    ptr[t + 1] += 1
    return index_text, ptr, glo, ghi
