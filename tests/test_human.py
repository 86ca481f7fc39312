"""Human A/B evaluation: pairing, storage, blind layout, agreement statistics, the HTTP API.

The browser end to end test is in test_human_browser.py.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alpacakit.errors import AlpacakitError, ConfigError, DataError
from alpacakit.evaluate.human.stats import cohen_kappa, export_results, pairwise_agreement
from alpacakit.evaluate.human.store import HumanEvalStore, pair_outputs, rater_key


def write_outputs(path: Path, generator: str, answers: dict[str, str], dataset: str = "team-eval") -> Path:
    path.write_text(
        json.dumps(
            [{"instruction": k, "output": v, "generator": generator, "dataset": dataset} for k, v in answers.items()],
            indent=1,
        ),
        encoding="utf-8",
    )
    return path


INSTRUCTIONS = [f"Give one tip for task number {i}." for i in range(12)]


@pytest.fixture
def ab_files(tmp_path: Path) -> tuple[Path, Path]:
    a = write_outputs(
        tmp_path / "student.json", "student", {q: f"student answer {i}" for i, q in enumerate(INSTRUCTIONS)}
    )
    # the teacher's file lists the same instructions in another order: matching is by instruction
    b = write_outputs(
        tmp_path / "teacher.json",
        "teacher",
        {q: f"teacher answer {i}" for i, q in reversed(list(enumerate(INSTRUCTIONS)))},
    )
    return a, b


@pytest.fixture
def store(tmp_path: Path, ab_files: tuple[Path, Path]) -> HumanEvalStore:
    return HumanEvalStore.open(tmp_path / "study.sqlite", *ab_files, seed=7)


# --------------------------------------------------------------------------- kappa


def test_kappa_matches_a_hand_computed_example() -> None:
    # 10 items; F = first system, S = second, T = tie.
    r1 = list("FFFFSSSTTF")
    r2 = list("FFFSSSTTFF")
    # agreement on items 1,2,3,5,6,8,10 -> p_o = 7/10
    # r1: F 5, S 3, T 2; r2: F 5, S 3, T 2 -> p_e = (25 + 9 + 4) / 100 = 0.38
    # kappa = (0.7 - 0.38) / (1 - 0.38) = 0.32 / 0.62 = 16/31
    assert cohen_kappa(r1, r2) == pytest.approx(16 / 31, abs=1e-12)


def test_kappa_is_one_for_perfect_agreement_and_negative_for_systematic_disagreement() -> None:
    assert cohen_kappa(["F", "S", "T", "F"], ["F", "S", "T", "F"]) == pytest.approx(1.0)
    assert cohen_kappa(["F", "S", "F", "S"], ["S", "F", "S", "F"]) == pytest.approx(-1.0)


def test_kappa_is_undefined_when_both_raters_always_give_the_same_single_label() -> None:
    assert cohen_kappa(["T", "T", "T"], ["T", "T", "T"]) is None


def test_kappa_refuses_unpaired_labels() -> None:
    with pytest.raises(ValueError):
        cohen_kappa(["F", "S"], ["F"])
    with pytest.raises(ValueError):
        cohen_kappa([], [])


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("FST"), st.sampled_from("FST")), min_size=1, max_size=40))
def test_kappa_equals_scikit_learn(pairs: list[tuple[str, str]]) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    a = [x for x, _ in pairs]
    b = [y for _, y in pairs]
    ours = cohen_kappa(a, b)
    if ours is None:  # scikit-learn answers nan (0/0) for the same case
        return
    assert ours == pytest.approx(metrics.cohen_kappa_score(a, b), abs=1e-9)


def test_pairwise_agreement_uses_only_items_both_raters_judged() -> None:
    labels = {"ana": {1: "F", 2: "S", 3: "T"}, "bo": {2: "S", 3: "T", 4: "F"}, "cy": {9: "F"}}
    pairs = {tuple(p["raters"]): p for p in pairwise_agreement(labels)}
    assert pairs[("ana", "bo")]["n"] == 2
    assert pairs[("ana", "bo")]["percent_agreement"] == 100.0
    assert pairs[("ana", "cy")]["n"] == 0 and pairs[("ana", "cy")]["kappa"] is None


# --------------------------------------------------------------------------- pairing


def test_outputs_are_matched_by_instruction_and_unmatched_ones_counted(tmp_path: Path) -> None:
    a = write_outputs(tmp_path / "a.json", "base", {"Name a colour.": "red", "Say hi.": "hi", "Only in A.": "x"})
    b = write_outputs(tmp_path / "b.json", "tuned", {"Say hi.": "Hello!", "Name a colour.": "Blue.", "Only in B.": "y"})
    p = pair_outputs(a, b)
    assert p.names == ("base", "tuned")
    assert {(it["instruction"], it["output_1"], it["output_2"]) for it in p.items} == {
        ("Name a colour.", "red", "Blue."),
        ("Say hi.", "hi", "Hello!"),
    }
    assert (p.only_in_1, p.only_in_2) == (1, 1)


def test_pairing_files_with_nothing_in_common_is_an_error(tmp_path: Path) -> None:
    a = write_outputs(tmp_path / "a.json", "x", {"One?": "1"})
    b = write_outputs(tmp_path / "b.json", "y", {"Two?": "2"})
    with pytest.raises(DataError, match="share no instruction"):
        pair_outputs(a, b)


def test_a_record_without_output_is_reported_with_its_position(tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    a.write_text(json.dumps([{"instruction": "Hi?", "output": "hi"}, {"instruction": "Bye?"}]), encoding="utf-8")
    b = write_outputs(tmp_path / "b.json", "y", {"Hi?": "hello"})
    with pytest.raises(DataError, match=r"a\.json: item 1: missing field 'output'"):
        pair_outputs(a, b)


def test_same_generator_names_are_told_apart_by_file_name(tmp_path: Path) -> None:
    a = write_outputs(tmp_path / "a.json", "model", {"Q?": "1"})
    b = write_outputs(tmp_path / "b.json", "model", {"Q?": "2"})
    assert pair_outputs(a, b).names == ("model (a.json)", "model (b.json)")


# --------------------------------------------------------------------------- the store


def test_pressing_a_records_the_system_that_was_on_the_left(store: HumanEvalStore) -> None:
    item = store.next_item("Ana")
    left = store.left_slot("Ana", item.item_id)
    assert store.judge("Ana", item.item_id, "A", seconds=3.5)
    (row,) = store.judgments()
    assert (row["pressed"], row["left_slot"], row["winner"]) == ("A", left, left)
    item2 = store.next_item("Ana")
    store.judge("Ana", item2.item_id, "B")
    assert store.judgments()[1]["winner"] == 3 - store.left_slot("Ana", item2.item_id)
    item3 = store.next_item("Ana")
    store.judge("Ana", item3.item_id, "tie")
    assert store.judgments()[2]["winner"] == 0


def test_one_judgment_per_rater_and_item(store: HumanEvalStore) -> None:
    item = store.next_item("Ana")
    assert store.judge("Ana", item.item_id, "A") is True
    assert store.judge("ana", item.item_id, "B") is False  # same rater, second press: ignored
    assert [r["pressed"] for r in store.judgments()] == ["A"]
    with sqlite3.connect(store.path) as c:  # the database itself refuses a duplicate
        with pytest.raises(sqlite3.IntegrityError):
            c.execute(
                "INSERT INTO judgments(rater, item_id, left_slot, pressed, winner, created_at) "
                "VALUES ('ana', ?, 1, 'B', 1, 'now')",
                (item.item_id,),
            )


def test_a_rater_resumes_by_name_case_and_spacing_aside(tmp_path: Path, ab_files: tuple[Path, Path]) -> None:
    db = tmp_path / "study.sqlite"
    s1 = HumanEvalStore.open(db, *ab_files)
    first = [s1.next_item("Ana Lee") for _ in range(1)][0]
    s1.judge("Ana Lee", first.item_id, "A")
    s2 = HumanEvalStore.open(db)  # a new process: no files needed to resume
    assert rater_key("  ana   LEE ") == rater_key("Ana Lee")
    assert s2.progress(" ana  lee")["done"] == 1
    assert s2.next_item("ANA LEE").item_id == s1.order_for("Ana Lee")[1]
    assert s2.raters()[0]["display"] == "Ana Lee"


def test_each_rater_has_a_seeded_order_and_sides_are_mixed(
    store: HumanEvalStore, tmp_path: Path, ab_files: tuple[Path, Path]
) -> None:
    ana, bo = store.order_for("Ana"), store.order_for("Bo")
    assert sorted(ana) == sorted(bo) == list(range(1, len(INSTRUCTIONS) + 1))
    assert ana != bo
    sides = {store.left_slot("Ana", i) for i in ana}
    assert sides == {1, 2}
    again = HumanEvalStore.open(tmp_path / "other.sqlite", *ab_files, seed=7)
    assert again.order_for("Ana") == ana  # same seed, same layout
    assert [again.left_slot("Ana", i) for i in ana] == [store.left_slot("Ana", i) for i in ana]


def test_undo_removes_the_last_judgment_and_shows_that_item_again(store: HumanEvalStore) -> None:
    a = store.next_item("Ana")
    store.judge("Ana", a.item_id, "A")
    b = store.next_item("Ana")
    store.judge("Ana", b.item_id, "B")
    assert store.undo("Ana") == b.item_id
    assert store.next_item("Ana").item_id == b.item_id
    assert store.progress("Ana")["done"] == 1
    store.undo("Ana")
    assert store.undo("Ana") is None


def test_reopening_a_study_with_other_answer_files_is_refused(tmp_path: Path, ab_files: tuple[Path, Path]) -> None:
    db = tmp_path / "study.sqlite"
    HumanEvalStore.open(db, *ab_files)
    changed = write_outputs(tmp_path / "teacher2.json", "teacher", {q: "other" for q in INSTRUCTIONS})
    with pytest.raises(ConfigError, match="differs"):
        HumanEvalStore.open(db, ab_files[0], changed)
    HumanEvalStore.open(db, *ab_files)  # the same files are fine


def test_a_new_study_needs_both_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="two answer files"):
        HumanEvalStore.open(tmp_path / "empty.sqlite")


def test_a_file_that_is_not_sqlite_is_not_overwritten(tmp_path: Path, ab_files: tuple[Path, Path]) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a SQLite database"):
        HumanEvalStore.open(notes, *ab_files)
    assert notes.read_text(encoding="utf-8") == "my notes"


def test_bad_rater_names_and_choices_are_rejected(store: HumanEvalStore) -> None:
    item = store.next_item("Ana")
    for bad in ("", "   ", "x" * 65, "a\x00b"):
        with pytest.raises(DataError):
            store.judge(bad, item.item_id, "A")
    with pytest.raises(DataError):
        store.judge("Ana", item.item_id, "left")
    with pytest.raises(DataError):
        store.judge("Ana", 999, "A")


def test_the_database_runs_in_wal_mode(store: HumanEvalStore) -> None:
    with sqlite3.connect(store.path) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --------------------------------------------------------------------------- export


def _judge_as(store: HumanEvalStore, rater: str, winners: dict[int, int]) -> None:
    """Make `rater` prefer system `winners[item]` (0 = tie), pressing whichever side it is on."""
    for item_id, win in winners.items():
        if win == 0:
            pressed = "tie"
        else:
            pressed = "A" if store.left_slot(rater, item_id) == win else "B"
        assert store.judge(rater, item_id, pressed)


def test_export_computes_win_rates_kappa_and_names_the_systems(store: HumanEvalStore) -> None:
    ana = {1: 2, 2: 2, 3: 1, 4: 0, 5: 2, 6: 2}
    bo = {1: 2, 2: 1, 3: 1, 4: 0, 7: 2}
    _judge_as(store, "Ana", ana)
    _judge_as(store, "Bo", bo)
    res = export_results(store.path)
    assert [s["name"] for s in res["systems"]] == ["student", "teacher"]
    assert res["n_judgments"] == 11 and res["n_raters"] == 2 and res["n_items_judged"] == 7
    # per item, raters averaged: item1 2, item2 (2+1)/2, item3 1, item4 1.5, item5 2, item6 2, item7 2
    prefs = [2, 1.5, 1, 1.5, 2, 2, 2]
    expected = 100 * sum(p - 1 for p in prefs) / len(prefs)
    assert res["win_rate"]["win_rate"] == pytest.approx(expected)
    assert res["systems"][1]["win_rate"] == pytest.approx(expected)
    assert res["systems"][0]["win_rate"] == pytest.approx(100 - expected)
    pooled = [2, 2, 1, 1.5, 2, 2, 2, 1, 1, 1.5, 2]
    assert res["pooled"]["win_rate"] == pytest.approx(100 * sum(p - 1 for p in pooled) / len(pooled))
    (pair,) = res["agreement"]["pairs"]
    assert pair["raters"] == ["Ana", "Bo"] and pair["n"] == 4
    lab = {0: "tie", 1: "first", 2: "second"}
    common = [1, 2, 3, 4]
    assert pair["kappa"] == pytest.approx(cohen_kappa([lab[ana[i]] for i in common], [lab[bo[i]] for i in common]))
    j = res["judgments"][0]
    assert j["rater"] == "Ana" and j["winner"] == "teacher" and {j["left"], j["right"]} == {"student", "teacher"}
    pos = res["position"]
    assert pos["left"] + pos["right"] + pos["tie"] == 11 and pos["tie"] == 2
    json.dumps(res, allow_nan=False)  # standard JSON: no NaN anywhere


def test_export_of_a_study_without_judgments_has_no_win_rate(store: HumanEvalStore) -> None:
    res = export_results(store.path)
    assert res["n_judgments"] == 0 and res["win_rate"]["win_rate"] is None
    json.dumps(res, allow_nan=False)


def test_export_of_a_missing_database_says_so(tmp_path: Path) -> None:
    with pytest.raises(AlpacakitError, match="no such database"):
        export_results(tmp_path / "nope.sqlite")


def test_cli_export_writes_results_json(store: HumanEvalStore, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from alpacakit.cli.main import app

    _judge_as(store, "Ana", {1: 1, 2: 2})
    out = tmp_path / "res" / "human.json"
    r = CliRunner().invoke(app, ["eval", "human-export", str(store.path), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "win rate" in r.output
    assert json.loads(out.read_text(encoding="utf-8"))["n_judgments"] == 2


# --------------------------------------------------------------------------- the HTTP API


@pytest.fixture
def server(store: HumanEvalStore):
    from alpacakit.evaluate.human.app import create_app
    from alpacakit.serve.server import BackgroundServer

    with BackgroundServer(create_app(store)) as srv:
        yield srv


def test_the_page_and_api_never_reveal_which_system_wrote_an_answer(server, store: HumanEvalStore) -> None:
    import httpx

    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "Answer A" in page.text
    state = httpx.get(server.url + "/api/state", params={"t": store.invite("Ana")}).json()
    text = json.dumps(state)
    for leak in ("student", "teacher", "slot", "output_1", "generator"):
        assert leak not in text.replace("student answer", "").replace("teacher answer", "")
    item = store.item(state["item"]["item_id"])
    assert {state["item"]["A"], state["item"]["B"]} == {item.output_1, item.output_2}
    assert state["progress"] == {"done": 0, "total": len(INSTRUCTIONS)}


def test_judging_over_http_stores_the_choice_and_returns_the_next_item(server, store: HumanEvalStore) -> None:
    import httpx

    ana = store.invite("Ana")
    s0 = httpx.get(server.url + "/api/state", params={"t": ana}).json()
    shown_a = s0["item"]["A"]
    s1 = httpx.post(
        server.url + "/api/judge", json={"t": ana, "item_id": s0["item"]["item_id"], "choice": "A", "seconds": 2.0}
    ).json()
    assert s1["recorded"] is True and s1["progress"]["done"] == 1
    assert s1["item"]["item_id"] != s0["item"]["item_id"]
    (row,) = store.judgments()
    assert store.item(row["item_id"]).output(row["winner"]) == shown_a
    again = httpx.post(server.url + "/api/judge", json={"t": ana, "item_id": s0["item"]["item_id"], "choice": "B"})
    assert again.json()["recorded"] is False
    undone = httpx.post(server.url + "/api/undo", json={"t": ana}).json()
    assert undone["undone"] == s0["item"]["item_id"] and undone["item"]["item_id"] == s0["item"]["item_id"]


def test_bad_requests_get_a_readable_400(server, store: HumanEvalStore) -> None:
    import httpx

    ana = store.invite("Ana")
    r = httpx.post(server.url + "/api/judge", json={"t": ana, "item_id": 1, "choice": "left"})
    assert r.status_code == 400 and "'A', 'B' or 'tie'" in r.json()["error"]
    r = httpx.post(server.url + "/api/judge", json={"t": ana, "item_id": "1", "choice": "A"})
    assert r.status_code == 400
    with pytest.raises(DataError, match="name is empty"):
        store.invite("   ")


def test_finished_raters_get_no_item(server, store: HumanEvalStore) -> None:
    import httpx

    _judge_as(store, "Ana", {i: 1 for i in range(1, len(INSTRUCTIONS) + 1)})
    ana = store.invite("ana")  # the same rater, case aside
    s = httpx.get(server.url + "/api/state", params={"t": ana}).json()
    assert s["finished"] is True and s["item"] is None
    summary = httpx.get(server.url + "/api/summary", params={"t": ana}).json()
    assert summary["raters"] == [{"name": "Ana", "done": len(INSTRUCTIONS)}]


# --------------------------------------------------------------------------- hostile raters


@pytest.mark.slow
def test_nobody_rates_or_undoes_as_somebody_else(server, store: HumanEvalStore) -> None:
    import httpx

    ana, ben = store.invite("Ana"), store.invite("Ben")
    s = httpx.get(server.url + "/api/state", params={"t": ana}).json()
    httpx.post(server.url + "/api/judge", json={"t": ana, "item_id": s["item"]["item_id"], "choice": "A"})
    forged = ana.split(".")[0] + "." + ben.split(".")[1]  # Ana's name with Ben's signature
    for token in (forged, "", "x", ana + "x", None):
        r = httpx.post(server.url + "/api/undo", json={"t": token})
        assert r.status_code == 403 and "link" in r.json()["error"]
        assert httpx.get(server.url + "/api/state", params={"t": token or ""}).status_code == 403
    r = httpx.post(server.url + "/api/judge", json={"rater": "Ana", "item_id": 2, "choice": "B"})  # the old API
    assert r.status_code == 403
    assert len(store.judgments()) == 1
    assert httpx.get(server.url + "/api/summary").status_code == 403  # no peeking at who rates


def test_a_cross_site_post_is_refused(server, store: HumanEvalStore) -> None:
    import httpx

    ana = store.invite("Ana")
    r = httpx.post(server.url + "/api/undo", content=json.dumps({"t": ana}), headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_raters_exist_only_by_invitation_and_are_capped(store: HumanEvalStore) -> None:
    for i in range(3):
        store.invite(f"r{i}", max_raters=3)
    store.invite("R0", max_raters=3)  # an existing rater again: fine
    with pytest.raises(ConfigError, match="already has 3 raters"):
        store.invite("r3", max_raters=3)
    with pytest.raises(PermissionError):
        store.rater_for_token("cjM." + "0" * 32)  # a name never invited, made-up signature


def test_the_blinding_seed_is_random_unless_given(tmp_path: Path, ab_files: tuple[Path, Path]) -> None:
    seeds = {HumanEvalStore.open(tmp_path / f"s{i}.sqlite", *ab_files).seed for i in range(4)}
    assert len(seeds) > 1
    assert HumanEvalStore.open(tmp_path / "fixed.sqlite", *ab_files, seed=7).seed == 7
