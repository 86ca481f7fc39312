"""Capability benchmarks: scorers, task loading, log-likelihood ranking, the runner's output.

Model tests use a tiny Llama built from a config in a second (alpacakit.train.tiny), so the
expected numbers can be computed directly with torch and compared. The real GGUF runs are in
test_bench_gguf.py.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from alpacakit.errors import ConfigError, DataError
from alpacakit.evaluate.bench.scoring import contains_answer, exact_match, extract_answer, normalize_answer, token_f1
from alpacakit.evaluate.bench.tasks import Task, builtin_tasks, load_mc_csv, load_task, select

# --------------------------------------------------------------------------- scoring


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   apple,  A pear ", "apple pear"),
        ("U.S.A.", "usa"),
        ("«Canberra»", "canberra"),
        ("Théâtre", "théâtre"),
        ("5,165", "5165"),
        ("-47", "-47"),
        ("\u221247", "-47"),
        ("10.75.", "10.75"),
        ("the 2-0 win", "20 win"),
        ("Another theme", "another theme"),  # articles are whole words only
    ],
)
def test_normalisation(raw: str, norm: str) -> None:
    assert normalize_answer(raw) == norm


def test_exact_match_takes_the_best_gold_answer() -> None:
    assert exact_match("the Nile.", ["Nile River", "Nile"]) == 1.0
    assert exact_match("Nile river delta", ["Nile River", "Nile"]) == 0.0
    assert exact_match("54", ["5.4"]) == 0.0
    assert exact_match("47", ["-47"]) == 0.0


def test_token_f1_by_hand() -> None:
    # pred tokens: tallis family boatyard; gold: tallis family -> P = 2/3, R = 1, F1 = 0.8
    assert token_f1("The Tallis family boatyard", ["the Tallis family"]) == pytest.approx(0.8)
    # best over references: "Tallis" alone -> P = 1/3, R = 1 -> 0.5 < 0.8
    assert token_f1("The Tallis family boatyard", ["Tallis", "Tallis family"]) == pytest.approx(0.8)
    assert token_f1("seven", ["six"]) == 0.0
    assert token_f1("", ["six"]) == 0.0
    assert token_f1("the", ["a"]) == 1.0  # both normalise to nothing


def test_contains_credits_a_right_answer_inside_a_sentence_only_as_whole_words() -> None:
    assert contains_answer("The capital of Australia is Canberra.", ["Canberra"]) == 1.0
    assert contains_answer("It is 1874 or so", ["1874"]) == 1.0
    assert contains_answer("18745", ["1874"]) == 0.0


def test_extract_answer_takes_the_first_line_without_an_answer_label() -> None:
    assert extract_answer("\n  Answer: 85\nQuestion: next") == "85"
    assert extract_answer("Paris is the capital.\nMore") == "Paris is the capital."
    assert extract_answer("   ") == ""


# --------------------------------------------------------------------------- tasks


def test_builtin_tasks_are_there_and_large_enough() -> None:
    names = builtin_tasks()
    for required in ("facts_mc", "arithmetic_qa", "reading_qa"):
        assert required in names
    tasks = [load_task(n) for n in names]
    assert sum(len(t.items) for t in tasks) >= 200
    kinds = {t.name: t.kind for t in tasks}
    assert kinds["facts_mc"] == "mc" and kinds["arithmetic_qa"] == "qa" and kinds["reading_qa"] == "qa"
    assert all(it.get("context") for it in load_task("reading_qa").items)


def test_mmlu_style_csv_with_and_without_header(tmp_path: Path) -> None:
    rows = 'What is 2+2?,3,4,5,6,B\n"Capital of France, the city?",Paris,Rome,Oslo,Bern,a\n'
    plain = tmp_path / "elementary_math_test.csv"
    plain.write_text(rows, encoding="utf-8")
    items = load_mc_csv(plain)
    assert [it["answer"] for it in items] == [1, 0]
    assert items[1]["question"] == "Capital of France, the city?" and items[1]["choices"][0] == "Paris"
    assert items[0]["subject"] == "elementary_math" and items[0]["id"] == "elementary_math_1"
    headed = tmp_path / "geo.csv"
    headed.write_text("question,A,B,C,D,answer\n" + rows, encoding="utf-8")
    assert len(load_mc_csv(headed)) == 2
    folder = tmp_path / "mmlu"
    folder.mkdir()
    (folder / "a_test.csv").write_text(rows, encoding="utf-8")
    (folder / "b_test.csv").write_text(rows, encoding="utf-8")
    task = load_task(str(folder))
    assert task.kind == "mc" and len(task.items) == 4 and {it["subject"] for it in task.items} == {"a", "b"}


def test_csv_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("Q1,a,b,c,d,A\nQ2,a,b,c,d,E\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.csv:2: the answer must be a letter"):
        load_mc_csv(bad)
    short = tmp_path / "short.csv"
    short.write_text("Q1,a,A\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"short\.csv:1: expected question"):
        load_mc_csv(short)


def test_jsonl_task_errors_name_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "mine.jsonl"
    f.write_text(
        '{"id": "1", "question": "Q?", "choices": ["a", "b"], "answer": 1}\n'
        '{"id": "2", "question": "Q?", "choices": ["a", "b"], "answer": 2}\n',
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=r"mine\.jsonl:2: 'answer' must be the index"):
        load_task(str(f))
    f.write_text('{"id": "1", "question": "Q?", "answers": []}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"mine\.jsonl:1: 'answers' must be a non-empty list"):
        load_task(str(f))
    f.write_text(
        '{"id": "1", "question": "Q?", "answers": ["x"]}\n{"id": "2", "question": "Q?", "choices": ["a", "b"], "answer": 0}\n',
        encoding="utf-8",
    )
    with pytest.raises(DataError, match="mixes"):
        load_task(str(f))
    with pytest.raises(DataError, match="unknown benchmark task"):
        load_task("no_such_task")


def test_limit_picks_the_same_items_for_every_run_spread_over_the_file() -> None:
    task = load_task("facts_mc")
    first = select(task, 20)
    assert [it["id"] for it in first] == [it["id"] for it in select(load_task("facts_mc"), 20)]
    assert len(first) == 20 and len({it["subject"] for it in first}) > 2
    assert [it["id"] for it in first] != [it["id"] for it in task.items[:20]]
    assert select(task, 10_000) == task.items
    assert [it["id"] for it in select(task, 20, seed=1)] != [it["id"] for it in first]


# --------------------------------------------------------------------------- a tiny HF model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from alpacakit.train.tiny import make_tiny_base

    return make_tiny_base(tmp_path_factory.mktemp("tiny") / "tiny-llama", arch="llama", seed=3)


@pytest.fixture(scope="module")
def backend(tiny: Path):
    from alpacakit.evaluate.bench.backends import open_backend

    b = open_backend(str(tiny))
    yield b
    b.close()


def _direct_loglik(model, tokenizer, context: str, continuation: str) -> float:
    """log P(continuation | context) straight from the full logits, no shortcuts."""
    import torch

    ctx = tokenizer(context, add_special_tokens=True)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=True)["input_ids"]
    assert whole[: len(ctx)] == ctx
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return float(sum(logp[i - 1, whole[i]] for i in range(len(ctx), len(whole))))


MC_ITEMS = [
    {"id": "q1", "question": "What do cats say?", "choices": ["meow", "the moon", "a river of stones"], "subject": "s"},
    {"id": "q2", "question": "Which is a colour?", "choices": ["green", "seven", "happily", "under"], "subject": "s"},
    {"id": "q3", "question": "Pick a fruit.", "choices": ["apple", "table"], "subject": "t"},
]


def test_loglikelihood_equals_a_direct_torch_computation(backend) -> None:
    context = "Question: What do cats say?\nAnswer:"
    for choice in MC_ITEMS[0]["choices"]:
        ((ours, n),) = backend.loglikelihood(context, [" " + choice])
        assert n >= 1
        assert ours == pytest.approx(_direct_loglik(backend.model, backend.tokenizer, context, " " + choice), abs=1e-4)


def test_continuation_tokens_are_the_tail_of_the_whole_encoding(backend) -> None:
    ids, n = backend.split("Question: Which is a colour?\nAnswer: ", "green", True)
    whole = backend.tokenizer("Question: Which is a colour?\nAnswer: green", add_special_tokens=True)["input_ids"]
    assert ids == whole
    # the trailing space moved to the continuation, so " green" is scored as the model writes it
    assert backend.tokenizer.decode(ids[-n:]) == " green"


def test_mc_ranking_follows_the_log_likelihoods(tiny: Path, backend, tmp_path: Path) -> None:
    """Items whose key is the most likely choice (per byte) score 1.0; keyed to the least, 0.0."""
    from alpacakit.evaluate.bench.runner import run_bench

    best, worst = [], []
    for it in MC_ITEMS:
        ctx = f"Question: {it['question']}\nAnswer:"
        per_byte = [
            _direct_loglik(backend.model, backend.tokenizer, ctx, " " + c) / len(c.encode()) for c in it["choices"]
        ]
        hi = max(range(len(per_byte)), key=per_byte.__getitem__)
        lo = min(range(len(per_byte)), key=per_byte.__getitem__)
        assert hi != lo
        best.append({**it, "answer": hi})
        worst.append({**it, "answer": lo, "id": it["id"] + "w"})
    for name, items in (("best", best), ("worst", worst)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    res = run_bench(str(tiny), tasks=[str(tmp_path / "best.jsonl"), str(tmp_path / "worst.jsonl")], backend=backend)
    assert res["tasks"]["best"]["accuracy"] == 1.0
    assert res["tasks"]["worst"]["accuracy"] == 0.0
    assert res["tasks"]["best"]["metric"] == "acc" and res["tasks"]["best"]["n"] == 3


def test_short_answers_are_greedy_generations_cut_at_the_line_end(tiny: Path, backend, tmp_path: Path) -> None:
    import torch

    from alpacakit.evaluate.bench.runner import run_bench

    item = {"id": "a1", "question": "What is 2 + 2?", "answers": ["4"]}
    (tmp_path / "qa.jsonl").write_text(json.dumps(item) + "\n", encoding="utf-8")
    res = run_bench(str(tiny), tasks=[str(tmp_path / "qa.jsonl")], backend=backend, max_new_tokens=12)
    (row,) = res["items"]
    ids = backend.tokenizer("Question: What is 2 + 2?\nAnswer:", add_special_tokens=True)["input_ids"]
    with torch.no_grad():
        out = backend.model.generate(
            torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=backend.tokenizer.pad_token_id
        )
    direct = backend.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True).split("\n")[0]
    assert row["output"] == direct
    assert row["prediction"] == extract_answer(direct)
    assert row["em"] == exact_match(row["prediction"], ["4"])
    assert row["contains"] == contains_answer(row["prediction"], ["4"])  # the headline: on the first line too


def test_bench_output_file_format(tiny: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from alpacakit.cli.main import app

    out = tmp_path / "eval" / "bench-tiny.json"
    r = CliRunner().invoke(
        app,
        [
            "eval",
            "bench",
            "--model",
            str(tiny),
            "--tasks",
            "facts_mc,arithmetic_qa,reading_qa",
            "--limit",
            "2",
            "--max-new-tokens",
            "6",
            "-o",
            str(out),
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["system"] == "tiny" and res["model"] == str(tiny) and res["format"] == "alpacakit-bench/1"
    assert set(res["tasks"]) == {"facts_mc", "arithmetic_qa", "reading_qa"}
    for name, t in res["tasks"].items():
        assert 0.0 <= t["accuracy"] <= 1.0 and t["n"] == 2
        assert t["metric"] == ("acc" if name == "facts_mc" else "contains")
    assert {"em", "f1", "contains"} <= set(res["tasks"]["reading_qa"])
    accs = [t["accuracy"] for t in res["tasks"].values()]
    assert res["overall"]["accuracy"] == pytest.approx(sum(accs) / 3)
    assert len(res["items"]) == 6 and all(isinstance(i["correct"], bool) for i in res["items"])
    assert res["prompt"]["mode"] == "plain"  # a base model without a prompt format
    assert not out.with_name(out.name + ".partial.jsonl").exists()


def test_an_interrupted_run_resumes_without_redoing_items(tiny: Path, backend, tmp_path: Path) -> None:
    from alpacakit.evaluate.bench.runner import run_bench

    out = tmp_path / "bench-tiny.json"
    calls = {"n": 0}

    def stop_after_three(task: str, done: int, total: int) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_bench(str(tiny), tasks=["facts_mc"], limit=5, out=out, backend=backend, progress=stop_after_three)
    assert not out.exists()
    journal = out.with_name(out.name + ".partial.jsonl")
    assert len(journal.read_text(encoding="utf-8").splitlines()) == 3
    resumed = run_bench(str(tiny), tasks=["facts_mc"], limit=5, out=out, backend=backend)
    fresh = run_bench(str(tiny), tasks=["facts_mc"], limit=5, backend=backend)
    assert resumed["resumed_items"] == 3 and not journal.exists()
    assert [i["id"] for i in resumed["items"]] == [i["id"] for i in fresh["items"]]
    flat = lambda res: [x for i in res["items"] for x in i["loglik"]]  # noqa: E731
    assert flat(resumed) == pytest.approx(flat(fresh))
    assert resumed["tasks"]["facts_mc"]["accuracy"] == fresh["tasks"]["facts_mc"]["accuracy"]


def test_auto_prompt_uses_the_folders_trained_format(tiny: Path, tmp_path: Path) -> None:
    import shutil

    from alpacakit.evaluate.bench.backends import open_backend
    from alpacakit.evaluate.bench.runner import plan_prompts
    from alpacakit.prompting import PromptFormat

    tuned = tmp_path / "tuned"
    shutil.copytree(tiny, tuned)
    PromptFormat.load("alpaca").save(tuned)
    b = open_backend(str(tuned))
    try:
        plan = plan_prompts(b, "auto")
        ctx = plan.context({"question": "Which is a colour?"})
        assert plan.mode == "format" and ctx.startswith("Below is an instruction") and ctx.endswith("### Response:\n")
        assert "Which is a colour?" in ctx
        reading = plan.context({"question": "Who?", "context": "Ana met Bo."})
        assert "### Input:\nAna met Bo." in reading
        assert plan_prompts(b, "plain").context({"question": "Q?"}) == "Question: Q?\nAnswer:"
    finally:
        b.close()


def test_an_endpoint_cannot_score_multiple_choice_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """Endpoints answer short-answer tasks (tests/test_bench_endpoint.py); log-likelihoods they cannot give."""
    from alpacakit.evaluate.bench.backends import open_backend

    monkeypatch.setenv("OPENAI_API_KEY", "sk-unused")
    b = open_backend("openai:gpt-4o-mini", base_url="http://127.0.0.1:9/v1")
    try:
        assert not b.can_score and b.chat_only
        with pytest.raises(ConfigError, match="log-likelihoods"):
            b.loglikelihood("Q:", [" a", " b"])
    finally:
        b.close()


# --------------------------------------------------------------------------- lm-evaluation-harness


def test_lm_eval_tasks_without_the_package_say_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tiny: Path) -> None:
    from alpacakit.evaluate.bench.runner import run_bench

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    with pytest.raises(ConfigError) as e:
        run_bench(str(tiny), lm_eval_tasks=["mmlu"])
    assert "pip install lm-eval" in (e.value.hint or "")


def test_lm_eval_results_are_folded_into_our_format(
    monkeypatch: pytest.MonkeyPatch, tiny: Path, tmp_path: Path
) -> None:
    """The call lm-eval gets, and how its metrics map to ours (the package itself is not installed here)."""
    from alpacakit.evaluate.bench.runner import run_bench

    calls = []

    def simple_evaluate(**kwargs):
        calls.append(kwargs)
        return {
            "results": {
                "mmlu": {"alias": "mmlu", "acc,none": 0.31, "acc_stderr,none": 0.01},
                "nq_open": {"alias": "nq_open", "exact_match,remove_whitespace": 0.05},
            },
            "n-samples": {"mmlu": {"original": 14042, "effective": 40}, "nq_open": {"original": 3610, "effective": 40}},
        }

    monkeypatch.setitem(sys.modules, "lm_eval", types.SimpleNamespace(simple_evaluate=simple_evaluate))
    res = run_bench(
        str(tiny), tasks=["facts_mc"], limit=2, lm_eval_tasks=["mmlu", "nq_open"], out=tmp_path / "bench-x.json"
    )
    (call,) = calls
    assert call["model"] == "hf" and call["model_args"]["pretrained"] == str(tiny)
    assert call["tasks"] == ["mmlu", "nq_open"] and call["limit"] == 2 and call["num_fewshot"] == 0
    assert res["tasks"]["lm_eval:mmlu"]["accuracy"] == 0.31 and res["tasks"]["lm_eval:mmlu"]["metric"] == "acc"
    assert res["tasks"]["lm_eval:nq_open"]["metric"] == "em" and res["tasks"]["lm_eval:nq_open"]["n"] == 40
    assert set(res["tasks"]) == {"facts_mc", "lm_eval:mmlu", "lm_eval:nq_open"}


def test_lm_eval_refuses_gguf_models(monkeypatch: pytest.MonkeyPatch) -> None:
    from alpacakit.evaluate.bench.lm_eval_bridge import run_lm_eval

    monkeypatch.setitem(sys.modules, "lm_eval", types.SimpleNamespace(simple_evaluate=lambda **k: {}))
    with pytest.raises(ConfigError, match="GGUF"):
        run_lm_eval("gemma-3-270m", ["mmlu"])


def test_task_objects_describe_themselves() -> None:
    t = Task(name="x", kind="qa", items=[{"id": "1"}], source="here")
    assert t.describe() == {"name": "x", "kind": "qa", "n_items": 1, "source": "here"}


def test_the_headline_of_short_answers_does_not_punish_a_full_sentence() -> None:
    from alpacakit.evaluate.bench.runner import summarize

    rows = [
        {"kind": "qa", "em": 0.0, "f1": 0.4, "contains": 1.0},  # "The capital of Germany is Berlin."
        {"kind": "qa", "em": 1.0, "f1": 1.0, "contains": 1.0},
    ]  # "Berlin"
    entry = summarize("qa", rows)
    assert entry["metric"] == "contains" and entry["accuracy"] == 1.0 and entry["em"] == 0.5


def test_likelihood_leaves_out_answers_longer_than_the_window_and_lists_them(tiny: Path, tmp_path: Path) -> None:
    """A teacher can write an answer longer than a small student's context window: it is left out
    of the mean and listed, not the end of the run (it stopped the quickstart's likelihood stage)."""
    import json

    from alpacakit.errors import DataError
    from alpacakit.evaluate.likelihood import score_likelihood

    answers = tmp_path / "heldout.jsonl"
    answers.write_text(
        json.dumps({"instruction": "Say hi.", "input": "", "output": "hi"})
        + "\n"
        + json.dumps({"instruction": "Say it long.", "input": "", "output": "words " * 3000})
        + "\n"
    )
    res = score_likelihood(str(tiny), answers)
    assert res["n"] == 1 and [i["id"] for i in res["items"]] == ["0"]
    [skipped] = res["skipped_too_long"]
    assert skipped["id"] == "1" and skipped["tokens"] > skipped["n_ctx"]
    only_long = tmp_path / "long.jsonl"
    only_long.write_text(json.dumps({"instruction": "Say it long.", "input": "", "output": "words " * 3000}) + "\n")
    with pytest.raises(DataError, match="every answer is longer than the context window"):
        score_likelihood(str(tiny), only_long)
