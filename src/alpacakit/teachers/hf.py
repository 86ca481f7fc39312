"""A Hugging Face model folder as a `Teacher`, through transformers (CPU by default).

This is how `chat`, `serve` and `eval` run a model that `alpacakit train` just wrote, before
it is exported to GGUF. It accepts:

- a plain HF model folder (`config.json` + weights + tokenizer);
- a PEFT adapter folder (`adapter_config.json`): the adapter is loaded onto its base model
  (from `base_model_name_or_path`, or `base=` when the adapter was trained on a path that is
  not here) and merged, so generation runs at the base model's speed;
- an alpacakit model folder (`manifest.json`, `prompt_format.json`, `merged/` or `adapter/`):
  loaded by the training stage's own `train.merge.load_trained`, then merged.

Prompts are built with the folder's saved `PromptFormat`, so the model is asked exactly the
way it was trained. chat() renders the messages with a chat format's template; a template
format (Alpaca) answers one instruction, so the history is folded into (instruction, input)
by `alpacakit.serve.history.fold_messages`. A folder without `prompt_format.json` uses the
tokenizer's chat template when it has one, else the Alpaca template.

Generation runs in a worker thread, one request at a time per model (a lock), and can be
streamed (`stream_chat` / `stream_complete`) and cancelled between tokens.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alpacakit.errors import TeacherError
from alpacakit.teachers.base import Completion, Usage
from alpacakit.teachers.streaming import StopScanner, stream_thread

log = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass
class HFLayout:
    """Where the parts of a model folder are. `weights` is a folder with config.json (a full
    model); `adapter` a PEFT adapter folder whose base is `base`."""

    root: Path
    weights: Path | None = None
    adapter: Path | None = None
    base: str | None = None
    format_file: Path | None = None
    alpacakit: bool = False  # written by `alpacakit train` (has its manifest.json)

    @property
    def tokenizer_dirs(self) -> list[Path]:
        dirs = [d for d in (self.adapter, self.weights, self.root) if d is not None]
        if self.base and Path(self.base).is_dir():
            dirs.append(Path(self.base))
        return dirs


def is_hf_folder(path: str | Path) -> bool:
    """True for a folder this backend can load (HF weights, an adapter, or an alpacakit model folder)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return False
    return any((p / f).is_file() for f in ("config.json", "adapter_config.json", "prompt_format.json")) or any(
        (p / sub / f).is_file() for sub in ("merged", "adapter") for f in ("config.json", "adapter_config.json"))


def find_layout(path: str | Path, base: str | None = None) -> HFLayout:
    """Locate weights / adapter / base / prompt format in `path`; clear errors when something is missing."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise TeacherError(f"{root}: no such model folder")
    layout = HFLayout(root=root.resolve(), alpacakit=_is_alpacakit_model(root))
    if (root / "config.json").is_file():
        layout.weights = root
    elif (root / "merged" / "config.json").is_file():
        layout.weights = root / "merged"
    elif (root / "adapter_config.json").is_file():
        layout.adapter = root
    elif (root / "adapter" / "adapter_config.json").is_file():
        layout.adapter = root / "adapter"
    else:
        raise TeacherError(
            f"{root} holds no model: expected config.json (a Hugging Face model), adapter_config.json "
            "(a LoRA adapter) or an alpacakit model folder with merged/ or adapter/",
            hint="pass the folder `alpacakit train` wrote, a Hugging Face model folder, or a .gguf file",
        )
    if layout.adapter is not None and not (layout.alpacakit and base is None):
        # (an alpacakit folder's base is found by train.merge.load_trained, which re-creates a
        # converted GGUF base if its cache was cleared)
        cfg_path = layout.adapter / "adapter_config.json"
        try:
            adapter_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise TeacherError(f"{cfg_path}:{e.lineno}: not valid JSON: {e.msg}") from None
        layout.base = base or adapter_cfg.get("base_model_name_or_path")
        if not layout.base:
            raise TeacherError(f"{cfg_path}: the adapter does not say which base model it was trained on",
                               hint="pass the base model folder explicitly (base=...)")
        _check_base(layout.base, cfg_path)
    for d in (root, layout.weights, layout.adapter, layout.adapter.parent if layout.adapter else None):
        if d is not None and (d / "prompt_format.json").is_file():
            layout.format_file = d / "prompt_format.json"
            break
    return layout


def _is_alpacakit_model(root: Path) -> bool:
    try:
        return json.loads((root / "manifest.json").read_text(encoding="utf-8")).get("kind") == "alpacakit.model"
    except (OSError, ValueError, AttributeError):
        return False


def _check_base(ref: str, cfg_path: Path) -> None:
    from alpacakit.models import is_embedded

    if is_embedded(ref) or Path(ref).expanduser().exists():
        return
    raise TeacherError(
        f"{cfg_path}: the adapter's base model {ref!r} is not a local folder, .gguf file or embedded model",
        hint="pass the base model's local folder explicitly (base=..., or `--base PATH` on the command line)",
    )


def _load_weights(ref: str | Path, dtype: Any) -> Any:
    """A causal LM from a folder, a .gguf file or an embedded GGUF model name (dequantised)."""
    from transformers import AutoModelForCausalLM

    from alpacakit.models import is_embedded

    ref_s = str(ref)
    if is_embedded(ref_s) or ref_s.endswith(".gguf"):
        from alpacakit.train.base_model import resolve_base  # converts a GGUF to an HF folder once, cached

        ref_s = resolve_base(ref_s).path
    return AutoModelForCausalLM.from_pretrained(str(Path(ref_s).expanduser()), dtype=dtype)


class HFTeacher:
    """A transformers model answering chat() / complete(), with optional streaming.

    `config` is a TeacherConfig (its max_tokens, temperature, top_p, seed and n_threads are the
    defaults of each call); `base` overrides an adapter's recorded base model; `prompt_format`
    (a PromptFormat, a built-in name or a JSON path) overrides the folder's saved one.
    """

    # one generation at a time: requests in flight beyond it are only queued (see run_requests)
    finish_in_flight = False

    def __init__(self, path: str | Path, config: Any | None = None, *, base: str | None = None,
                 prompt_format: Any | None = None, device: str = "cpu"):
        try:
            import torch
            import transformers  # noqa: F401
        except ImportError:
            raise TeacherError("running a Hugging Face model folder needs torch and transformers",
                               hint='pip install "alpacakit[train]", or export the model to GGUF and run that') from None
        from alpacakit.config import TeacherConfig
        from alpacakit.prompting import PromptFormat

        self.config = config or TeacherConfig(model=str(path))
        self.layout = find_layout(path, base)
        self.path = self.layout.root
        root = self.layout.root  # runs/NAME/model is served as "NAME/model", not just "model"
        self.name = f"{root.parent.name}/{root.name}" if root.name in ("model", "merged", "adapter") else root.name
        if self.config.n_threads:
            torch.set_num_threads(self.config.n_threads)
        t0 = time.monotonic()
        dtype = torch.float32 if device == "cpu" else "auto"
        saved_fmt = None
        try:
            if self.layout.alpacakit and base is None:
                # the training stage's own loader: manifest checks, base re-creation, tokenizer, format
                from alpacakit.train.merge import load_trained

                model, self.tokenizer, saved_fmt = load_trained(self.path, dtype=torch.float32)
                if hasattr(model, "merge_and_unload"):  # base + LoRA adapter: merge for speed
                    model = model.merge_and_unload()
            else:
                self.tokenizer = self._load_tokenizer()
                if self.layout.weights is not None:
                    model = _load_weights(self.layout.weights, dtype)
                else:
                    from peft import PeftModel

                    model = _load_weights(self.layout.base, dtype)  # type: ignore[arg-type]
                    model = PeftModel.from_pretrained(model, str(self.layout.adapter)).merge_and_unload()
        except (OSError, ValueError, KeyError) as e:
            raise TeacherError(f"transformers could not load the model in {self.path}: {e}",
                               hint="check that the folder is complete (config.json, weights, tokenizer)") from None
        self.model = model.to(device).eval()
        self.device = device
        self.load_s = time.monotonic() - t0

        if prompt_format is not None:
            fmt = PromptFormat.load(prompt_format)
        elif saved_fmt is not None:
            fmt = saved_fmt
        elif self.layout.format_file is not None:
            fmt = PromptFormat.from_file(self.layout.format_file)
        elif getattr(self.tokenizer, "chat_template", None):
            fmt = PromptFormat.load("chat")
        else:
            fmt = PromptFormat.load("alpaca")
        self.prompt_format = fmt.bind(self.tokenizer)
        self._eos_ids = self._stop_token_ids()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading helpers

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        from alpacakit.models import is_embedded

        for d in self.layout.tokenizer_dirs:
            if any((d / f).is_file() for f in _TOKENIZER_FILES):
                return AutoTokenizer.from_pretrained(str(d))
        base = self.layout.base
        if base and (is_embedded(base) or base.endswith(".gguf")):
            from alpacakit.train.base_model import resolve_base

            return AutoTokenizer.from_pretrained(resolve_base(base).path)
        raise TeacherError(f"{self.path}: no tokenizer found (looked for {', '.join(_TOKENIZER_FILES)})",
                           hint="save the tokenizer next to the model (tokenizer.save_pretrained(folder))")

    def _stop_token_ids(self) -> list[int]:
        """EOS ids from the generation config, plus stop strings that are single special tokens."""
        ids: list[int] = []
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        ids += list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
        specials = set(self.tokenizer.all_special_tokens) | set(getattr(self.tokenizer, "added_tokens_encoder", {}))
        for s in self.prompt_format.stop:
            if s in specials:
                tid = self.tokenizer.convert_tokens_to_ids(s)
                if isinstance(tid, int) and tid not in ids:
                    ids.append(tid)
        return ids

    def describe(self) -> dict[str, Any]:
        """For manifests: which folder, how it was loaded, and the prompt format used."""
        return {"name": self.name, "source": "folder", "path": str(self.path), "backend": "transformers",
                "adapter": str(self.layout.adapter) if self.layout.adapter else None, "base": self.layout.base,
                "prompt_format": self.prompt_format.name}

    # ------------------------------------------------------------------ prompts and tokens

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text chat() sends to the model for `messages` (see the module doc)."""
        from alpacakit.serve.history import content_text, fold_messages

        fmt = self.prompt_format
        if fmt.kind == "chat":
            msgs = [{"role": m["role"], "content": content_text(m.get("content"))} for m in messages]
            if fmt.system and not any(m["role"] == "system" for m in msgs):
                msgs.insert(0, {"role": "system", "content": fmt.system})
            return fmt.render(msgs, add_generation_prompt=True)
        instruction, inp = fold_messages(messages)
        return fmt.build(instruction, inp)

    @property
    def context_window(self) -> int | None:
        """The model's position limit (prompt + answer), from its config."""
        n = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        return int(n) if n else None

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_chat_tokens(self, messages: list[dict[str, Any]]) -> int:
        return len(self._encode(self.render_chat(messages), self.prompt_format.add_special_tokens))

    def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    # ------------------------------------------------------------------ Teacher protocol

    async def chat(self, messages: list[dict[str, str]], *, max_tokens: int | None = None,
                   temperature: float | None = None, top_p: float | None = None,
                   stop: list[str] | None = None, seed: int | None = None) -> Completion:
        return await _last(self.stream_chat(messages, max_tokens=max_tokens, temperature=temperature,
                                            top_p=top_p, stop=stop, seed=seed))

    async def complete(self, prompt: str, *, max_tokens: int | None = None,
                       temperature: float | None = None, top_p: float | None = None,
                       stop: list[str] | None = None, seed: int | None = None) -> Completion:
        return await _last(self.stream_complete(prompt, max_tokens=max_tokens, temperature=temperature,
                                                top_p=top_p, stop=stop, seed=seed))

    async def stream_chat(self, messages: list[dict[str, str]], **kw: Any) -> AsyncIterator[str | Completion]:
        """Text pieces as they are generated, then the Completion. Stops at the format's stop strings too."""
        try:
            prompt = self.render_chat(messages)
        except Exception as e:  # a chat template refusing the roles, an assistant-last history...
            raise TeacherError(f"{self.name}: cannot build a prompt from these messages: {e}") from None
        stops = [*self.prompt_format.stop, *(kw.pop("stop", None) or [])]
        ids = self._encode(prompt, self.prompt_format.add_special_tokens)
        inner = self._stream(ids, stops, **kw)
        async with contextlib.aclosing(inner):  # closing us closes it now, not at GC
            async for item in inner:
                yield item

    async def stream_complete(self, prompt: str, **kw: Any) -> AsyncIterator[str | Completion]:
        """Raw continuation of `prompt` (no template), streamed like stream_chat()."""
        stops = list(kw.pop("stop", None) or [])
        inner = self._stream(self._encode(prompt, True), stops, **kw)
        async with contextlib.aclosing(inner):  # closing us closes it now, not at GC
            async for item in inner:
                yield item

    async def aclose(self) -> None:
        self.model = None

    # ------------------------------------------------------------------ generation

    def _stream(self, ids: list[int], stops: list[str], *, max_tokens: int | None = None,
                temperature: float | None = None, top_p: float | None = None,
                seed: int | None = None) -> AsyncIterator[str | Completion]:
        cfg = self.config
        max_new = max_tokens if max_tokens is not None else cfg.max_tokens
        temp = temperature if temperature is not None else cfg.temperature
        top_p = top_p if top_p is not None else cfg.top_p
        seed = seed if seed is not None else cfg.seed

        def produce(emit: Callable[[str], None], cancelled: threading.Event) -> Completion:
            return self._generate(ids, stops, max_new, temp, top_p, seed, emit, cancelled)

        return stream_thread(produce, name=f"hf-{self.name}")

    def _generate(self, ids: list[int], stops: list[str], max_new: int, temp: float, top_p: float,
                  seed: int | None, emit: Callable[[str], None], cancelled: threading.Event) -> Completion:
        """Runs in a worker thread: generate under the model lock, emitting decoded pieces."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        tok = self.tokenizer
        scanner = StopScanner(stops)
        generated: list[int] = []
        t0 = time.monotonic()

        class Pieces(BaseStreamer):
            """Decodes the whole answer so far and emits what is new: multi-byte characters
            split across tokens come out whole, and stop strings are cut by the scanner."""

            def __init__(self) -> None:
                self.first = True
                self.shown = 0

            def put(self, value: Any) -> None:
                if self.first:  # generate() hands over the prompt first
                    self.first = False
                    return
                generated.extend(int(t) for t in value.reshape(-1).tolist())
                text = tok.decode(generated, skip_special_tokens=True)
                if text.endswith("\ufffd"):  # half a UTF-8 character: wait for the rest
                    return
                new, self.shown = text[self.shown:], len(text)
                emit(scanner.feed(new))

            def end(self) -> None:
                text = tok.decode(generated, skip_special_tokens=True)
                emit(scanner.feed(text[self.shown:]))  # whatever was held back, even a broken character
                emit(scanner.flush())

        deadline = [float("inf")]  # set once the model lock is held: waiting for it is not generating
        timed_out = threading.Event()

        class Halt(StoppingCriteria):
            """Stops after a stop string, when the reader has gone, or past the deadline."""

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                if time.monotonic() > deadline[0]:
                    timed_out.set()
                flag = cancelled.is_set() or scanner.stopped or timed_out.is_set()
                return torch.full((input_ids.shape[0],), flag, dtype=torch.bool, device=input_ids.device)

        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": max_new,
            "streamer": Pieces(),
            "stopping_criteria": StoppingCriteriaList([Halt()]),
            "eos_token_id": self._eos_ids or None,
            "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else (self._eos_ids or [0])[0],
        }
        if temp and temp > 0:
            gen_kwargs.update(do_sample=True, temperature=temp, top_p=top_p, top_k=0)
        else:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with self._lock:
            if self.model is None:
                raise TeacherError(f"{self.name} was closed")
            if seed is not None:
                torch.manual_seed(seed)
            input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
            deadline[0] = time.monotonic() + float(self.config.timeout_s)
            with torch.inference_mode():
                self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **gen_kwargs)
        if timed_out.is_set():
            raise TeacherError(f"{self.name}: generation timed out after {self.config.timeout_s:g} s",
                               hint="raise the timeout, lower max_tokens, or use a smaller model")
        stopped_by = "stop_string" if scanner.stopped else (
            "eos" if generated and generated[-1] in self._eos_ids else None)
        if stopped_by is not None:
            finish = "stop"
        elif len(generated) >= max_new:
            finish = "length"
        else:
            finish = "stop"
        return Completion(text=scanner.text, finish_reason=finish, usage=Usage(len(ids), len(generated)),
                          model=self.name, request_id=f"hf-{uuid.uuid4().hex[:12]}",
                          latency_s=time.monotonic() - t0, stopped_by=stopped_by)


async def _last(stream: AsyncIterator[str | Completion]) -> Completion:
    final: Completion | None = None
    async for item in stream:
        if isinstance(item, Completion):
            final = item
    assert final is not None, "a stream always ends with its Completion"
    return final
