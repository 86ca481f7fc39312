"""How many teacher examples does the student need? The quickstart recipe on 25..N examples.

    python experiments/data_scaling.py --run runs/qs1 --sizes 25,50,100,200 -o runs/scaling \
        [--pool runs/pool/data/examples.jsonl]

For each size n, the first n examples of the pool (the run's own `data/train.jsonl`, then any
further teacher examples from `--pool`, minus the run's held-out examples and anything that
copies an eval instruction) are trained with the run's quickstart profile (`cpu-quick` LoRA on
Gemma 3 270M base), exported the default way (verified), and scored exactly as the quickstart
scores its student: verifiable instructions (the headline, paired with the base on the same
items), answers that end by themselves, and the likelihood of the run's held-out teacher
answers. Each size is an ordinary run folder (`OUT/n025/...`, resumable: rerun the command and
finished sizes are skipped); the base's answers are computed once and shared.

Written: `OUT/scaling.json` (every figure) and `OUT/scaling.png` (the headline with its 95%
interval against n, the base as a band).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _jsonl(path: Path) -> list[dict]:
    from alpacakit.io import iter_jsonl

    return [r for _, r in iter_jsonl(path)] if path.is_file() else []


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def build_pool(run: Path, extra: Path | None, out: Path) -> list[dict]:
    """The run's training examples, then clean extra teacher examples not already used."""
    from alpacakit.evaluate.contamination import check_contamination

    pool = _jsonl(run / "data" / "train.jsonl")
    held = {r["instruction"] for r in _jsonl(run / "data" / "heldout.jsonl")}
    seen = {r["instruction"] for r in pool} | held
    if extra is not None:
        clean = out / "pool-extra-clean.jsonl"
        check_contamination(extra, "alpacakit", write_clean=clean)
        for r in _jsonl(clean):
            if r["instruction"] not in seen:
                seen.add(r["instruction"])
                pool.append(r)
    return pool


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished quickstart run folder")
    ap.add_argument("--pool", type=Path, help="more teacher examples (examples.jsonl) for sizes above the run's own")
    ap.add_argument("--sizes", default="25,50,100,200")
    ap.add_argument("-o", "--out", type=Path, default=Path("runs/scaling"))
    args = ap.parse_args()

    from alpacakit.evaluate.evidence import follow_metrics, likelihood_metric
    from alpacakit.quickstart.pipeline import Run, load_profile, stage_export, stage_follow, stage_likelihood, \
        stage_train

    run, out = args.run, args.out
    out.mkdir(parents=True, exist_ok=True)
    profile = load_profile("default", ["follow_teacher_limit=0"])
    pool = build_pool(run, args.pool, out)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]  # none: only collect and plot
    print(f"pool: {len(pool)} teacher examples; sizes {sizes}", flush=True)
    results: list[dict] = []
    for n in sizes:
        if n > len(pool):
            print(f"n={n}: only {len(pool)} examples in the pool; skipped (pass more with --pool)", flush=True)
            continue
        root = out / f"n{n:03d}"
        r = Run(root, profile, lambda m: print(m, flush=True))
        _write_jsonl(r.train_file, pool[:n])
        shutil.copyfile(run / "data" / "heldout.jsonl", r.heldout_file)
        # the base's answers are the same for every size: reuse the run's (journal replay, no model call)
        (root / "eval" / "follow").mkdir(parents=True, exist_ok=True)
        for name in ("follow-base.json", "likelihood-base.json"):
            if (run / "eval" / name).is_file():
                shutil.copyfile(run / "eval" / name, root / "eval" / name)
        src = run / "eval" / "follow"
        for item in ("outputs-base.json", "outputs-base.work"):
            dst = root / "eval" / "follow" / item
            if (src / item).exists() and not dst.exists():
                (shutil.copytree if (src / item).is_dir() else shutil.copyfile)(src / item, dst)
        for name, stage in (("train", stage_train), ("export", stage_export), ("follow", stage_follow),
                            ("likelihood", stage_likelihood)):
            print(f"== n={n}: {name}", flush=True)
            print("  ", stage(r) or "already complete", flush=True)
    # every size in OUT, this invocation's and earlier ones' (the sizes can be run in parts)
    for root in sorted(out.glob("n[0-9][0-9][0-9]*")):
        metrics = {m["key"]: m for m in follow_metrics(root / "eval", 5.0)}
        lik = likelihood_metric(root / "eval", 10)
        if lik:
            metrics["likelihood"] = lik
        if "follow" in metrics:
            results.append({"n": int(root.name[1:]), "examples": sum(1 for _ in open(root / "data" / "train.jsonl")),
                            "metrics": metrics})
    results.sort(key=lambda r: r["n"])
    (out / "scaling.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    plot(results, out / "scaling.png")
    print(f"wrote {out / 'scaling.json'} and {out / 'scaling.png'}")
    for row in results:
        f = row["metrics"]["follow"]
        print(f"n={row['n']:4d}: follow {f['student']:.1f}% vs base {f['base']:.1f}%: {f['diff']:+.1f} points "
              f"(95% CI {f['ci'][0]:+.1f} to {f['ci'][1]:+.1f}, SE {f['se']:.1f})")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    if not results:
        return
    ns = [r["n"] for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, key, title in ((axes[0], "follow", "verifiable instructions passed (%)"),
                           (axes[1], "clean_stop", "answers that end by themselves (%)"),
                           (axes[2], "likelihood", "NLL per token of held-out teacher answers")):
        ms = [r["metrics"][key] for r in results]
        ses = [m["se"] for m in ms]
        ax.errorbar(ns, [m["student"] for m in ms], yerr=[1.96 * s for s in ses], fmt="o-", capsize=4,
                    label="student (95% CI of the paired difference)")
        base = ms[0]["base"]
        unit = "" if key == "likelihood" else "%"
        ax.axhline(base, color="#b03a2e", ls="--", label=f"base ({base:.{3 if unit == '' else 1}f}{unit})")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("teacher examples trained on")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("Gemma 3 270M base + cpu-quick LoRA on Qwen2.5-Coder 1.5B self-instruct data", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
