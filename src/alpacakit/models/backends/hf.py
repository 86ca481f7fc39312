"""A Hugging Face model folder as a `ModelBackend`, through transformers (CPU by default).

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
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alpacakit.errors import TeacherError
from alpacakit.models.backends.base import Completion, Usage
from alpacakit.models.backends.streaming import StopScanner, stream_thread

if TYPE_CHECKING:
    from alpacakit.teachers.config import TeacherConfig

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
        (p / sub / f).is_file() for sub in ("merged", "adapter") for f in ("config.json", "adapter_config.json")
    )


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
            raise TeacherError(
                f"{cfg_path}: the adapter does not say which base model it was trained on",
                hint="pass the base model folder explicitly (base=...)",
            )
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


def _load_weights(ref: str | Path, dtype: Any, device_map: str | None = None) -> Any:
    """A causal LM from a folder, a .gguf file or an embedded GGUF model name (dequantised).
    `device_map="auto"` spreads the layers over every GPU (accelerate), for models larger than one."""
    from transformers import AutoModelForCausalLM

    from alpacakit.models import is_embedded

    ref_s = str(ref)
    if is_embedded(ref_s) or ref_s.endswith(".gguf"):
        from alpacakit.train.base_model import resolve_base  # converts a GGUF to an HF folder once, cached

        ref_s = resolve_base(ref_s).path
    extra = {"device_map": device_map} if device_map else {}
    return AutoModelForCausalLM.from_pretrained(str(Path(ref_s).expanduser()), dtype=dtype, **extra)


def folder_prompt_format(
    layout: HFLayout, tokenizer: Any, override: Any | None = None, saved: Any | None = None
) -> Any:
    """The prompt format a model folder is asked in, bound to its tokenizer: `override` (a
    PromptFormat, a built-in name or a JSON path), else the one training saved, else the folder's
    prompt_format.json, else the tokenizer's chat template, else Alpaca's (a base model)."""
    from alpacakit.prompting import PromptFormat

    if override is not None:
        fmt = PromptFormat.load(override)
    elif saved is not None:
        fmt = saved
    elif layout.format_file is not None:
        fmt = PromptFormat.from_file(layout.format_file)
    elif getattr(tokenizer, "chat_template", None):
        fmt = PromptFormat.load("chat")
    else:
        fmt = PromptFormat.load("alpaca")
    return fmt.bind(tokenizer)


def render_messages(fmt: Any, messages: list[dict[str, Any]]) -> str:
    """The prompt text for chat `messages` in `fmt`: a chat template renders the turns (with the
    format's system message unless one is given); a template format folds the history into its
    instruction and input (serve/history.py)."""
    from alpacakit.serve.history import content_text, fold_messages

    if fmt.kind == "chat":
        msgs = [{"role": m["role"], "content": content_text(m.get("content"))} for m in messages]
        if fmt.system and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": fmt.system})
        return fmt.render(msgs, add_generation_prompt=True)
    instruction, inp = fold_messages(messages)
    return fmt.build(instruction, inp)


def pick_device(device: str = "auto") -> str:
    """`auto`: the first CUDA GPU when torch sees one ($ALPACAKIT_DEVICE overrides), else the CPU."""
    import torch

    if device == "auto":
        device = os.environ.get("ALPACAKIT_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return device


class HFModel:
    """A transformers model answering chat() / complete(), with optional streaming.

    `config` is a TeacherConfig (its max_tokens, temperature, top_p, seed and n_threads are the
    defaults of each call); `base` overrides an adapter's recorded base model; `prompt_format`
    (a PromptFormat, a built-in name or a JSON path) overrides the folder's saved one.
    """

    # requests still queued when a run stops need not finish (see alpacakit.jobs.engine)
    finish_in_flight = False

    def __init__(
        self,
        path: str | Path,
        config: TeacherConfig | None = None,
        *,
        base: str | None = None,
        prompt_format: Any | None = None,
        device: str = "auto",
    ):
        try:
            import torch
            import transformers  # noqa: F401
        except ImportError:
            raise TeacherError(
                "running a Hugging Face model folder needs torch and transformers",
                hint='pip install "alpacakit[train]", or export the model to GGUF and run that',
            ) from None
        from alpacakit.teachers.config import TeacherConfig

        self.config = config or TeacherConfig(model=str(path))
        self.layout = find_layout(path, base)
        self.path = self.layout.root
        root = self.layout.root  # runs/NAME/model is served as "NAME/model", not just "model"
        self.name = f"{root.parent.name}/{root.name}" if root.name in ("model", "merged", "adapter") else root.name
        if self.config.n_threads:
            torch.set_num_threads(self.config.n_threads)
        t0 = time.monotonic()
        device = pick_device(device)
        # a GPU computes in bf16 (fp16 where bf16 is missing); a CPU in fp32, which it runs fastest
        dtype = (
            torch.float32 if device == "cpu" else (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        )
        saved_fmt = None
        # several GPUs: the layers spread over all of them (a 7B+ model in bf16 may not fit one)
        spread = "auto" if device == "cuda" and torch.cuda.device_count() > 1 else None
        try:
            if self.layout.alpacakit and base is None:
                # the training stage's own loader: manifest checks, base re-creation, tokenizer, format
                from alpacakit.train.merge import load_trained

                model, self.tokenizer, saved_fmt = load_trained(self.path, dtype=dtype)
                if hasattr(model, "merge_and_unload"):  # base + LoRA adapter: merge for speed
                    model = model.merge_and_unload()
            else:
                self.tokenizer = self._load_tokenizer()
                if self.layout.weights is not None:
                    model = _load_weights(self.layout.weights, dtype, spread)
                else:
                    from alpacakit.peft_quiet import load_adapter

                    model = _load_weights(self.layout.base, dtype, spread)  # type: ignore[arg-type]
                    model = load_adapter(model, self.layout.adapter).merge_and_unload()
        except (OSError, ValueError, KeyError) as e:
            raise TeacherError(
                f"transformers could not load the model in {self.path}: {e}",
                hint="check that the folder is complete (config.json, weights, tokenizer)",
            ) from None
        if getattr(model, "hf_device_map", None):  # placed by device_map: inputs go to the first layer's device
            self.model = model.eval()
            self.device = str(next(model.parameters()).device)
        else:
            self.model = model.to(device).eval()
            self.device = device
        self.load_s = time.monotonic() - t0

        self.prompt_format = folder_prompt_format(self.layout, self.tokenizer, prompt_format, saved_fmt)
        self._eos_ids = self._stop_token_ids()
        self._lock = threading.Lock()
        self._pending: list[_Request] = []
        self._pending_lock = threading.Lock()
        self.max_batch = int(getattr(self.config, "max_concurrency", 1) or 1)
        self.max_concurrency = self.max_batch  # requests worth having in flight: they are decoded together

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
        raise TeacherError(
            f"{self.path}: no tokenizer found (looked for {', '.join(_TOKENIZER_FILES)})",
            hint="save the tokenizer next to the model (tokenizer.save_pretrained(folder))",
        )

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
        return {
            "name": self.name,
            "source": "folder",
            "path": str(self.path),
            "backend": "transformers",
            "adapter": str(self.layout.adapter) if self.layout.adapter else None,
            "base": self.layout.base,
            "prompt_format": self.prompt_format.name,
        }

    # ------------------------------------------------------------------ prompts and tokens

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text chat() sends to the model for `messages` (see the module doc)."""
        return render_messages(self.prompt_format, messages)

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

    # ------------------------------------------------------------------ ModelBackend protocol

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> Completion:
        return await _last(
            self.stream_chat(
                messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed
            )
        )

    async def complete(
        self,
        prompt: str,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> Completion:
        return await _last(
            self.stream_complete(
                prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed
            )
        )

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

    def _stream(
        self,
        ids: list[int],
        stops: list[str],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> AsyncIterator[str | Completion]:
        cfg = self.config
        max_new = max_tokens if max_tokens is not None else cfg.max_tokens
        temp = temperature if temperature is not None else cfg.temperature
        top_p = top_p if top_p is not None else cfg.top_p
        seed = seed if seed is not None else cfg.seed

        def produce(emit: Callable[[str], None], cancelled: threading.Event) -> Completion:
            return self._generate(ids, stops, max_new, temp, top_p, seed, emit, cancelled)

        return stream_thread(produce, name=f"hf-{self.name}")

    def _generate(
        self,
        ids: list[int],
        stops: list[str],
        max_new: int,
        temp: float,
        top_p: float,
        seed: int | None,
        emit: Callable[[str], None],
        cancelled: threading.Event,
    ) -> Completion:
        """Runs in a worker thread. Greedy requests that are waiting at the same time are decoded
        together, up to `config.max_concurrency` per `generate()` call (left-padded, one forward
        pass per step for all of them: a CPU reads the weights once per step instead of once per
        request). The first waiting thread that gets the model lock runs the batch for everyone;
        the others wait for their own result. A sampled request runs alone, so its seed gives the
        same answer whatever else is in flight."""
        req = _Request(ids, stops, max_new, temp, top_p, seed, emit, cancelled, StopScanner(stops))
        batchable = not (temp and temp > 0) and self.max_batch > 1
        if not batchable:
            with self._lock:
                self._run_batch([req])
        else:
            with self._pending_lock:
                self._pending.append(req)
            while not req.done.is_set():
                if not self._lock.acquire(timeout=0.02):
                    continue
                try:
                    with self._pending_lock:
                        batch = self._pending[: self.max_batch]
                        del self._pending[: len(batch)]
                    if batch:
                        self._run_batch(batch)
                finally:
                    self._lock.release()
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def _run_batch(self, batch: list[_Request]) -> None:
        """Generate every request of `batch` in one `generate()` call (the model lock is held)."""
        try:
            self._decode(batch)
        except BaseException as e:  # every waiting request gets the failure, not a hang
            for r in batch:
                r.error = e if isinstance(e, TeacherError) else TeacherError(f"{self.name}: generation failed: {e}")
            raise
        finally:
            for r in batch:
                r.done.set()

    def _decode(self, batch: list[_Request]) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        tok = self.tokenizer
        eos = set(self._eos_ids)
        t0 = time.monotonic()
        deadline = [float("inf")]
        timed_out = threading.Event()

        def finished(r: _Request) -> bool:
            return r.ended or r.cancelled.is_set() or r.scanner.stopped or len(r.generated) >= r.max_new

        class Pieces(BaseStreamer):
            """Per request: decode the answer so far and emit what is new (multi-byte characters
            come out whole; stop strings are cut by the request's scanner)."""

            def __init__(self) -> None:
                self.first = True

            def put(self, value: Any) -> None:
                if self.first:  # generate() hands over the prompts first
                    self.first = False
                    return
                for r, t in zip(batch, value.reshape(-1).tolist()):
                    if finished(r):
                        continue  # a finished row keeps receiving padding
                    r.generated.append(int(t))
                    if int(t) in eos:
                        r.ended = True
                    text = tok.decode(r.generated, skip_special_tokens=True)
                    if text.endswith("\ufffd"):  # half a UTF-8 character: wait for the rest
                        continue
                    new, r.shown = text[r.shown :], len(text)
                    r.emit(r.scanner.feed(new))

            def end(self) -> None:
                for r in batch:
                    text = tok.decode(r.generated, skip_special_tokens=True)
                    r.emit(r.scanner.feed(text[r.shown :]))  # whatever was held back, even a broken character
                    r.emit(r.scanner.flush())

        class Halt(StoppingCriteria):
            """Per row: stop after a stop string, at the row's own max_tokens, when its reader has
            gone; all rows past the deadline."""

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                if time.monotonic() > deadline[0]:
                    timed_out.set()
                flags = [timed_out.is_set() or finished(r) for r in batch]
                return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)

        pad = tok.pad_token_id if tok.pad_token_id is not None else (self._eos_ids or [0])[0]
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": max(r.max_new for r in batch),
            "streamer": Pieces(),
            "stopping_criteria": StoppingCriteriaList([Halt()]),
            "eos_token_id": self._eos_ids or None,
            "pad_token_id": pad,
        }
        head = batch[0]
        if head.temp and head.temp > 0:
            gen_kwargs.update(do_sample=True, temperature=head.temp, top_p=head.top_p, top_k=0)
        else:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.model is None:
            raise TeacherError(f"{self.name} was closed")
        if head.seed is not None:
            torch.manual_seed(head.seed)
        width = max(len(r.ids) for r in batch)  # left padding: every prompt ends where generation starts
        input_ids = torch.tensor(
            [[pad] * (width - len(r.ids)) + r.ids for r in batch], dtype=torch.long, device=self.device
        )
        mask = torch.tensor(
            [[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in batch], dtype=torch.long, device=self.device
        )
        deadline[0] = time.monotonic() + float(self.config.timeout_s)
        with torch.inference_mode():
            self.model.generate(input_ids=input_ids, attention_mask=mask, **gen_kwargs)
        if timed_out.is_set():
            raise TeacherError(
                f"{self.name}: generation timed out after {self.config.timeout_s:g} s",
                hint="raise the timeout, lower max_tokens, or use a smaller model",
            )
        for r in batch:
            stopped_by = "stop_string" if r.scanner.stopped else ("eos" if r.ended else None)
            finish = "stop" if stopped_by is not None or len(r.generated) < r.max_new else "length"
            r.result = Completion(
                text=r.scanner.text,
                finish_reason=finish,
                usage=Usage(len(r.ids), len(r.generated)),
                model=self.name,
                request_id=f"hf-{uuid.uuid4().hex[:12]}",
                latency_s=time.monotonic() - t0,
                stopped_by=stopped_by,
            )


@dataclass
class _Request:
    """One generation waiting for, or inside, a batch."""

    ids: list[int]
    stops: list[str]
    max_new: int
    temp: float
    top_p: float
    seed: int | None
    emit: Callable[[str], None]
    cancelled: threading.Event
    scanner: Any
    generated: list[int] = field(default_factory=list)
    shown: int = 0
    ended: bool = False  # wrote an end-of-sequence token
    done: threading.Event = field(default_factory=threading.Event)
    result: Completion | None = None
    error: BaseException | None = None


async def _last(stream: AsyncIterator[str | Completion]) -> Completion:
    final: Completion | None = None
    async for item in stream:
        if isinstance(item, Completion):
            final = item
    assert final is not None, "a stream always ends with its Completion"
    return final
