"""`engine: trl`: TRL's SFTTrainer runs the steps, on exactly the tokens ours trains on.

What makes the GPU check's ours-vs-TRL comparison fair, and the switch safe to flip: TRL gets our
tokenized rows and supervises the same tokens (checked on its packed dataset, on the batches it
feeds the loss, and on a whole run's per-rank counts), its runs save, reload, resume after
kill -9 to the uninterrupted run's weights, and record the engine in the manifest; what TRL's
path cannot run as asked is refused before a model is loaded.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("trl")

from distributed_helpers import assert_resumed_run_equals, train_until_killed  # noqa: E402
from test_train_resume import ADAPTER, _adapter, _env  # noqa: E402

from alpacakit.errors import ConfigError  # noqa: E402
from alpacakit.train.config import TrainConfig, load_train_config  # noqa: E402
from alpacakit.train.recipe import train  # noqa: E402
from alpacakit.train.tiny import make_tiny_base  # noqa: E402
from alpacakit.train.trainer import CHECKPOINT_MARKER  # noqa: E402

WORDS = ["red", "blue", "cat", "dog", "sun", "tea", "fox", "bread", "milk", "rain", "salt", "tree"]
CLI = [sys.executable, "-m", "alpacakit.cli.main"]

# Reload a finished model folder in a fresh interpreter and greedily continue one instruction.
GENERATE = """
import json, sys, torch
from alpacakit.train.merge import load_trained
model, tok, fmt = load_trained(sys.argv[1])
enc = tok(fmt.build("Repeat the word cat."), return_tensors="pt", add_special_tokens=fmt.add_special_tokens)
with torch.no_grad():
    ids = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
print(json.dumps({"new_tokens": int(ids.shape[1] - enc["input_ids"].shape[1])}))
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_base(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "examples.jsonl"
    records = [{"instruction": f"Repeat the word {w}.", "input": "", "output": f"{w} {w}"} for w in WORDS]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(base, data, **kw) -> TrainConfig:
    # examples are 76-83 tokens: TRL's bins of 2 x 96 tokens hold two each
    vals = dict(base=str(base), data=str(data), engine="trl", epochs=1, batch_size=2, max_length=96, lr=5e-3)
    vals.update(kw)
    return TrainConfig(**vals)


# --------------------------------------------------------------------------- the switch


def test_engine_is_a_flag_a_set_override_and_a_yaml_key(tmp_path):
    from alpacakit.cli.train import train as train_verb

    assert train_verb.config_flags["cfg__train__engine"].field == "train.engine"
    assert TrainConfig().engine == "alpacakit"
    assert load_train_config(None, ["train.engine=trl"]).train.engine == "trl"
    assert load_train_config(None, ["engine=trl"]).train.engine == "trl"
    yaml_file = tmp_path / "t.yaml"
    yaml_file.write_text("engine: trl\n")
    assert load_train_config(yaml_file).train.engine == "trl"
    with pytest.raises(ConfigError, match="engine"):
        load_train_config(None, ["engine=deepspeed"])


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"packing": False}, "packing: false"),
        ({"loss": "full"}, "loss: full"),
        ({"loss_average": "micro_batch"}, "loss_average: micro_batch"),
    ],
)
def test_what_trl_cannot_run_is_refused_before_loading_naming_the_setting(base, data, tmp_path, setting, named):
    with pytest.raises(ConfigError) as e:
        train(_cfg(base, data, **setting), output_dir=tmp_path / "m")
    assert "engine: trl" in e.value.message and named in e.value.message
    assert "engine: alpacakit" in e.value.hint
    assert not (tmp_path / "m.partial").exists()  # refused before anything was written or loaded


def test_the_exact_stanford_preset_is_refused_with_the_packed_one_suggested(base, data, tmp_path):
    with pytest.raises(ConfigError) as e:
        train(_cfg(base, data, preset="alpaca", method="lora"), output_dir=tmp_path / "m")
    msg = e.value.message
    assert "packing: false" in msg and "loss: full" in msg and "loss_average: micro_batch" in msg
    assert "preset alpaca" in msg and "alpaca-fast" in e.value.hint
    assert not (tmp_path / "m.partial").exists()


# --------------------------------------------------------------------------- the same tokens


@pytest.mark.slow
def test_trl_is_given_exactly_our_supervised_tokens(base, data, tmp_path):
    """TRL's packed dataset holds our examples with our labels, and the batches it computes the
    loss on supervise as many tokens as ours: the tokens the speed comparison counts are the same."""
    from alpacakit.train.base_model import load_model, load_tokenizer, resolve_base
    from alpacakit.train.recipe import _stage_data, _training_kwargs, _wrap_lora, load_prompt_format
    from alpacakit.train.trainer import Meter
    from alpacakit.train.trl_engine import build_trainer

    cfg = _cfg(base, data)
    st = cfg.stage_list()[0]
    b = resolve_base(cfg.base)
    tok = load_tokenizer(b)
    rows, _, info = _stage_data(st, cfg, load_prompt_format(cfg.prompt_format).bind(tok), tok)
    model = _wrap_lora(load_model(b, precision="fp32"), cfg)
    kwargs = _training_kwargs(cfg, st, tmp_path / "ck", False, 1)
    trainer, settings = build_trainer(model, tok, st, rows, [], kwargs, [], Meter())
    assert settings["packing_strategy"] == "bfd" and settings["bin_tokens"] == 2 * 96

    packed = trainer.train_dataset
    assert len(packed) < len(rows)  # packed: several examples to a row
    seen = []
    for row in packed:
        start = 0
        for n in row["seq_lengths"]:
            seen.append((row["input_ids"][start : start + n], row["labels"][start : start + n]))
            start += n
    ours = [(r["input_ids"], r["labels"]) for r in rows]
    assert sorted(seen) == sorted(ours)  # the very ids and labels, -100 on every prompt token

    supervised = sum(int((batch["labels"][:, 1:] != -100).sum()) for batch in trainer.get_train_dataloader())
    assert supervised == info["train"]["supervised_tokens"] == sum(sum(x != -100 for x in r[1]) for r in ours)


@pytest.mark.slow
def test_both_engines_train_on_the_same_supervised_tokens_and_examples(base, data, tmp_path):
    reports = {}
    for engine in ("alpacakit", "trl"):
        out = tmp_path / engine
        run = train(_cfg(base, data, engine=engine, epochs=2), output_dir=out)
        reports[engine] = json.loads((out / "logs" / "ranks" / "01-main-rank0.json").read_text())
        assert run.manifest["engine"] == engine and run.stages[0]["engine"] == engine
        per_epoch = run.stages[0]["data"]["train"]
    ours, trl = reports["alpacakit"], reports["trl"]
    assert trl["supervised_tokens"] == ours["supervised_tokens"] == 2 * per_epoch["supervised_tokens"]
    assert trl["examples"] == ours["examples"] == 2 * per_epoch["examples"]
    assert trl["tokens"] == ours["tokens"] == 2 * per_epoch["tokens"]


# --------------------------------------------------------------------------- through the CLI


@pytest.mark.slow
def test_cli_engine_trl_trains_lora_and_the_model_reloads_and_generates(base, data, tmp_path):
    out = tmp_path / "m"
    cmd = [*CLI, "train", "--base", str(base), "--data", str(data), "--engine", "trl", "-o", str(out)]
    cmd += ["--max-steps", "3", "--set", "batch_size=2", "--set", "max_length=96", "--set", "lr=5e-3"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]

    from alpacakit.manifest import TrainManifest, read_manifest

    m = read_manifest(out / "manifest.json")
    assert isinstance(m, TrainManifest) and m.engine == "trl" and m.complete and m.steps == 3
    stage = m.stages[0]
    assert stage["engine"] == "trl"
    settings = stage["engine_settings"]
    assert settings["padding_free"] is True and settings["packing_strategy"] == "bfd"
    if not torch.cuda.is_available():
        assert settings["attn_implementation"] == "sdpa" and settings["liger_kernel"] is False
    assert len(m.losses) == 3 and all(math.isfinite(e["loss"]) for e in m.losses)
    assert stage["supervised_tokens_per_s"] > 0  # the manifest's throughput is filled for TRL too
    lora_b = [v for k, v in _adapter(out).items() if "lora_B" in k]
    assert lora_b and any(bool(v.abs().max() > 0) for v in lora_b)  # trained: B starts at zero

    g = subprocess.run([sys.executable, "-c", GENERATE, str(out)], capture_output=True, text=True, timeout=300)
    assert g.returncode == 0, g.stderr[-3000:]
    assert json.loads(g.stdout.strip().splitlines()[-1])["new_tokens"] >= 1


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_runs_weights_and_losses(base, data, tmp_path):
    cfg = tmp_path / "train.yaml"
    # LoRA dropout and a shuffled order make the RNG state matter; 3 epochs of 3 steps cross epoch boundaries
    cfg.write_text(
        f"base: {base}\ndata: {data}\nengine: trl\nmethod: lora\n"
        "lora: {r: 4, alpha: 8, dropout: 0.1, target_modules: [q_proj, v_proj]}\n"
        "epochs: 3\nbatch_size: 2\nmax_length: 96\ngrad_accum: 2\nlr: 5.0e-3\nscheduler: cosine\n"
        "warmup_ratio: 0.1\nsave_steps: 2\nsave_total_limit: 2\nlogging_steps: 1\n"
    )

    def cmd(out: Path, *extra: str) -> list[str]:
        return [*CLI, "train", str(cfg), "-o", str(out), *extra]

    whole = tmp_path / "whole"
    r = subprocess.run(cmd(whole), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    out = tmp_path / "killed"
    partial = tmp_path / "killed.partial"
    ckdir = partial / "stages" / "01-main" / "checkpoints"
    # killed inside step 5 or 6: the work after the checkpoint is lost
    train_until_killed(cmd(out), ckdir / "checkpoint-4" / CHECKPOINT_MARKER, step_delay_s=0.7, within_s=300, then_s=0.9)
    assert not out.exists() and partial.exists()

    r = subprocess.run(cmd(out, "--resume"), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from checkpoint-" in r.stdout

    assert_resumed_run_equals(whole, out, 9, weights=ADAPTER)
    ma = json.loads((whole / "manifest.json").read_text())
    mb = json.loads((out / "manifest.json").read_text())
    assert ma["engine"] == mb["engine"] == "trl"
    assert mb["stages"][0]["resumed_from"].startswith("checkpoint-")
    assert ma["steps"] == mb["steps"] == 9  # 12 examples, 2 to a bin, 2 bins a step, 3 epochs
