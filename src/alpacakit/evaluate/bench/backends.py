"""Log-likelihoods and greedy answers: Hugging Face folders, GGUF files and endpoints.

The local backends answer the same two questions:

- `loglikelihood(context, continuations)`: for each continuation, the sum of the log-
  probabilities of its tokens given the context (and how many tokens that was). Tokens are
  split the way lm-evaluation-harness splits them: the context and context+continuation are
  encoded, and the continuation's tokens are those after the context's, so a word that merges
  with the space before it is scored as the model would actually write it;
- `generate(context, max_tokens, stop)`: greedy decoding (temperature 0), cut at the first
  stop string.

An OpenAI-compatible endpoint (`openai:MODEL`, `EndpointBackend`) answers only the second:
an API gives log-probabilities of the tokens it writes, not of a prompt's continuation, so
multiple-choice tasks need local weights, while short-answer tasks (EM/F1) run anywhere. That
is how an API teacher's knowledge gets measured, and its row in the imitation-gap report.

`native_format` is the prompt format the model was trained on, if it has one (used by the
runner's `auto` prompt mode): an alpacakit folder's `prompt_format.json`, else the chat
template of its tokenizer or of its GGUF metadata, else None (a base model).

torch/transformers and llama_cpp are imported inside the functions that need them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from alpacakit.errors import ConfigError, DataError
from alpacakit.prompting import PromptFormat


class Backend:
    """Shared continuation splitting; subclasses provide `_encode` and `_score`."""

    can_score: bool = True  # log-likelihoods of given continuations (multiple-choice tasks)
    chat_only: bool = False  # prompts go in as one chat message, not as raw text
    name: str = "model"
    native_format: PromptFormat | None = None
    n_ctx: int | None = None
    load_s: float = 0.0

    # -- subclass hooks
    def _encode(self, text: str, add_special: bool) -> list[int]:
        raise NotImplementedError

    def _score(self, ids: list[int], n_cont: int) -> float:
        """Sum of log P(ids[i] | ids[:i]) over the last `n_cont` positions."""
        raise NotImplementedError

    def generate(self, context: str, *, max_tokens: int, stop: list[str], add_special: bool) -> str:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def eos_text(self) -> str:
        """The end-of-sequence token as text that tokenizes back to it ('' when unknown)."""
        return ""

    def close(self) -> None:
        pass

    # -- shared
    def split(self, context: str, continuation: str, add_special: bool) -> tuple[list[int], int]:
        """(token ids of context+continuation, number of continuation tokens at the end)."""
        # Trailing spaces of the context belong to the continuation (as in lm-eval-harness):
        # most tokenizers attach a space to the word after it.
        n_spaces = len(context) - len(context.rstrip(" "))
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        ctx = self._encode(context, add_special)
        whole = self._encode(context + continuation, add_special)
        if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
            return whole, len(whole) - len(ctx)
        # The tokenizer merged across the boundary: score the continuation encoded alone.
        cont = self._encode(continuation, False)
        if not cont:
            raise DataError(f"the continuation {continuation!r} encodes to no tokens")
        return ctx + cont, len(cont)

    def loglikelihood(
        self, context: str, continuations: list[str], *, add_special: bool = True
    ) -> list[tuple[float, int]]:
        out = []
        for cont in continuations:
            ids, n = self.split(context, cont, add_special)
            self._check_fits(len(ids))
            out.append((float(self._score(ids, n)), n))
        return out

    def _check_fits(self, n_tokens: int) -> None:
        if self.n_ctx is not None and n_tokens > self.n_ctx:
            raise ContextTooLong(
                f"a benchmark prompt needs {n_tokens} tokens, more than the context window ({self.n_ctx})",
                hint="raise --n-ctx",
                tokens=n_tokens,
                n_ctx=self.n_ctx,
            )


class ContextTooLong(DataError):
    """A prompt (plus what it must generate or score) longer than the model's context window."""

    def __init__(self, message: str, hint: str | None = None, *, tokens: int, n_ctx: int):
        super().__init__(message, hint=hint)
        self.tokens, self.n_ctx = tokens, n_ctx


def _cut(text: str, stops: list[str]) -> str:
    cut = len(text)
    for s in stops:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


# --------------------------------------------------------------------------- transformers


class HFBackend(Backend):
    """A Hugging Face model folder (or an alpacakit model folder / LoRA adapter), on the device
    `HFModel` picks (the first CUDA GPU in bf16 when there is one, else the CPU in fp32).

    Loading goes through `alpacakit.models.backends.hf.HFModel`, so adapters are merged onto their
    base and the folder's saved prompt format is found the same way `chat` and `serve` find it.
    """

    def __init__(self, path: str | Path, *, base: str | None = None, n_threads: int | None = None):
        from alpacakit.models.backends.hf import HFModel
        from alpacakit.teachers.config import TeacherConfig

        t0 = time.monotonic()
        self.teacher = HFModel(path, TeacherConfig(model=str(path), n_threads=n_threads), base=base)
        self.load_s = time.monotonic() - t0
        self.model = self.teacher.model
        self.tokenizer = self.teacher.tokenizer
        self.name = self.teacher.name
        layout = self.teacher.layout
        if layout.format_file is not None:
            self.native_format = PromptFormat.from_file(layout.format_file).bind(self.tokenizer)
        elif getattr(self.tokenizer, "chat_template", None):
            self.native_format = PromptFormat.load("chat").bind(self.tokenizer)
        else:
            self.native_format = None
        self.n_ctx = getattr(self.model.config, "max_position_embeddings", None)
        self._eos = self._eos_ids()

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        ids += list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
        fmt = self.native_format
        for s in fmt.stop if fmt else []:
            tid = self.tokenizer.convert_tokens_to_ids(s) if s in self.tokenizer.get_vocab() else None
            if isinstance(tid, int) and tid not in ids:
                ids.append(tid)
        return ids

    def describe(self) -> dict[str, Any]:
        info = self.teacher.describe()
        info.pop("prompt_format", None)  # the teacher's chat fallback; ours is native_format
        info.update(
            backend="transformers",
            n_ctx=self.n_ctx,
            native_format=self.native_format.name if self.native_format else None,
        )
        return info

    def _encode(self, text: str, add_special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])

    def eos_text(self) -> str:
        return self.tokenizer.eos_token or ""

    def _score(self, ids: list[int], n_cont: int) -> float:
        import torch

        input_ids = torch.tensor([ids], dtype=torch.long, device=self.teacher.device)
        with torch.inference_mode():
            try:  # only the logits we need: Gemma's 262K vocabulary makes the full matrix large
                logits = self.model(input_ids=input_ids, logits_to_keep=n_cont + 1).logits
            except TypeError:
                logits = self.model(input_ids=input_ids).logits
            logits = logits[0, -(n_cont + 1) : -1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            target = torch.tensor(ids[-n_cont:], dtype=torch.long, device=logprobs.device)
            return float(logprobs.gather(1, target[:, None]).sum())

    def generate(self, context: str, *, max_tokens: int, stop: list[str], add_special: bool) -> str:
        import torch

        ids = self._encode(context, add_special)
        self._check_fits(len(ids) + max_tokens)
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.teacher.device)
        tok = self.tokenizer
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "do_sample": False,
            "temperature": None,
            "top_p": None,
            "top_k": None,
            "eos_token_id": self._eos or None,
            "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else (self._eos or [0])[0],
        }
        stops = [s for s in stop if s]
        if stops:
            kwargs.update(stop_strings=stops, tokenizer=tok)
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        text = tok.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True)
        return _cut(text, stops)

    def close(self) -> None:
        self.model = None
        self.teacher.model = None


# --------------------------------------------------------------------------- llama.cpp


class LlamaCppBackend(Backend):
    """A GGUF file or embedded model, in process, with `logits_all=True` so that one evaluation
    of the prompt gives the logits at every position (what log-likelihood scoring needs)."""

    def __init__(self, ref: str | Path, *, n_ctx: int = 2048, n_threads: int | None = None):
        from alpacakit.models import is_embedded, resolve_gguf
        from alpacakit.models.backends.llamacpp import default_threads

        self.ref = str(ref)
        self.path = resolve_gguf(ref)
        self.name = self.ref.strip().lower() if is_embedded(self.ref) else self.path.stem
        try:
            import llama_cpp
        except ImportError:
            raise ConfigError(
                f"running {self.ref!r} needs llama-cpp-python, which is not installed",
                hint='pip install "alpacakit[llama]"  (builds llama.cpp from source: several minutes)',
            ) from None
        from alpacakit.models.backends.llama_log import quiet_llama_logs

        quiet_llama_logs(llama_cpp)
        t0 = time.monotonic()
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(self.path),
                n_ctx=n_ctx,
                n_batch=min(512, n_ctx),
                n_threads=self.n_threads,
                logits_all=True,
                seed=0,
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise ConfigError(
                f"llama.cpp could not load {self.path}: {e}", hint="check that the file is a complete GGUF model"
            ) from None
        self.load_s = time.monotonic() - t0
        self.native_format = self._find_format()

    def _token_text(self, token: int) -> str | None:
        if token is None or token < 0:
            return None
        try:
            return self._llm.detokenize([token], special=True).decode("utf-8", errors="replace")
        except TypeError:  # older llama-cpp-python without `special`
            return self._llm.detokenize([token]).decode("utf-8", errors="replace")

    def _find_format(self) -> PromptFormat | None:
        sibling = self.path.parent / "prompt_format.json"
        if sibling.is_file():
            return PromptFormat.from_file(sibling)
        tmpl = self._llm.metadata.get("tokenizer.chat_template")
        if not tmpl:
            return None
        return PromptFormat(
            name="chat",
            kind="chat",
            description="the chat template in the GGUF metadata",
            chat_template=tmpl,
            bos_token=self._token_text(self._llm.token_bos()),
            eos_token=self._token_text(self._llm.token_eos()),
        )

    def describe(self) -> dict[str, Any]:
        from alpacakit.models import describe, is_embedded

        info = describe(self.ref if is_embedded(self.ref) else self.path)
        info.update(
            backend="llama.cpp", n_ctx=self.n_ctx, native_format=self.native_format.name if self.native_format else None
        )
        return info

    def _encode(self, text: str, add_special: bool) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))

    def eos_text(self) -> str:
        return self._token_text(self._llm.token_eos()) or ""

    reuse_prefix = True

    def loglikelihood(
        self, context: str, continuations: list[str], *, add_special: bool = True
    ) -> list[tuple[float, int]]:
        """Like the base class, but the prompt is evaluated once per item and each choice on top
        of it (llama.cpp keeps the prompt's KV cache), instead of the whole prompt once per
        choice: several times faster for multiple choice. The prompt is evaluated without its
        output layer (only the logits at the prompt's last token are needed, and those are
        computed with each choice), which for Gemma's 262K vocabulary is most of the cost.

        Every choice is computed as "prompt minus its last token, then last token + choice",
        whatever was evaluated before, so scores do not depend on item order (llama.cpp's matrix
        products differ in the last bits with the batch size, so the split must always be the
        same). A model whose cache cannot be cut there is evaluated from scratch per choice.
        """
        splits = [self.split(context, c, add_special) for c in continuations]
        for ids, _ in splits:
            self._check_fits(len(ids))
        p = min(len(ids) - n for ids, n in splits)
        if not self.reuse_prefix or p == 0 or any(ids[:p] != splits[0][0][:p] for ids, _ in splits):
            return [(self._score(ids, n), n) for ids, n in splits]
        llm = self._llm
        q = p - 1
        llm.reset()
        if q:
            self._eval_without_logits(splits[0][0][:q])
        out = []
        for ids, n in splits:
            if q and not self._cut_to(q):
                return [(self._score(ids, n), n) for ids, n in splits]
            if not q:
                llm.reset()
            llm.eval(ids[q:])
            out.append((self._read(ids, n), n))
        return out

    def _eval_without_logits(self, ids: list[int]) -> None:
        """Evaluate `ids` into the KV cache without computing their logits (llama-cpp-python
        reads its logits_all flag on every evaluation)."""
        llm = self._llm
        saved = llm._logits_all
        llm._logits_all = False
        try:
            llm.eval(ids)
        finally:
            llm._logits_all = saved

    def _cut_to(self, p: int) -> bool:
        """Forget every token after the first `p`; False when llama.cpp cannot."""
        llm = self._llm
        try:
            if not llm._ctx.kv_cache_seq_rm(-1, p, -1):
                return False
        except AttributeError:  # a llama-cpp-python without partial removal
            return False
        llm.n_tokens = p
        return True

    def _read(self, ids: list[int], n_cont: int) -> float:
        """Sum of the continuation's log-probabilities from the stored logits rows."""
        import numpy as np

        llm = self._llm
        start = len(ids) - n_cont - 1
        if llm.n_tokens != len(ids):  # the rows read must be those of this very evaluation
            raise RuntimeError(f"internal: {llm.n_tokens} tokens evaluated, {len(ids)} expected")
        logits = np.asarray(llm.scores[start : len(ids) - 1], dtype=np.float64)
        top = logits.max(axis=1, keepdims=True)
        logz = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        target = np.asarray(ids[-n_cont:])
        return float((logits[np.arange(n_cont), target] - logz).sum())

    def _score(self, ids: list[int], n_cont: int) -> float:
        self._llm.reset()
        self._llm.eval(ids)
        return self._read(ids, n_cont)

    _gen_logits_all = False

    def generate(self, context: str, *, max_tokens: int, stop: list[str], add_special: bool) -> str:
        """Greedy answer. The model was opened with `logits_all=True` for scoring, but a
        generation needs only the last position's logits: computing the output layer for every
        prompt token too costs more than the rest of the model for Gemma's 262K vocabulary, so
        it is switched off for the call (llama-cpp-python reads that flag on each evaluation)."""
        ids = self._encode(context, add_special)
        self._check_fits(len(ids) + max_tokens)
        llm = self._llm
        saved = llm._logits_all
        llm._logits_all = self._gen_logits_all
        try:
            out = llm.create_completion(
                ids, max_tokens=max_tokens, temperature=0.0, top_k=1, top_p=1.0, stop=[s for s in stop if s] or None
            )
        finally:
            llm._logits_all = saved
        return _cut(out["choices"][0]["text"], stop)

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            try:
                llm.close()
            except Exception:  # noqa: BLE001 - best effort
                pass

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown
        self.close()


class EndpointBackend(Backend):
    """An OpenAI-compatible endpoint (`openai:MODEL`): greedy answers through the chat API, with
    the endpoint teacher's retries and backoff. No log-likelihoods (see the module doc)."""

    can_score = False
    chat_only = True

    def __init__(
        self, ref: str, *, base_url: str | None = None, api_key_env: str | None = None, timeout_s: float = 120.0
    ):
        import asyncio

        from alpacakit.models.backends import make_backend
        from alpacakit.teachers.config import TeacherConfig

        t0 = time.monotonic()
        fields: dict[str, Any] = {
            "model": ref,
            "base_url": base_url,
            "temperature": 0.0,
            "timeout_s": timeout_s,
            "api": "chat",
        }
        if api_key_env:
            fields["api_key_env"] = api_key_env
        self.teacher = make_backend(TeacherConfig(**fields))
        self.name = ref.removeprefix("openai:")
        self.base_url = base_url
        self._loop = asyncio.new_event_loop()
        self.load_s = time.monotonic() - t0

    def loglikelihood(
        self, context: str, continuations: list[str], *, add_special: bool = True
    ) -> list[tuple[float, int]]:
        raise ConfigError(
            f"openai:{self.name}: multiple-choice tasks need log-likelihoods of the choices, which an "
            "endpoint does not give",
            hint="run short-answer tasks on the endpoint (--tasks facts_qa,arithmetic_qa,reading_qa), "
            "and multiple choice on local weights",
        )

    def generate(self, context: str, *, max_tokens: int, stop: list[str], add_special: bool) -> str:
        c = self._loop.run_until_complete(
            self.teacher.chat([{"role": "user", "content": context}], max_tokens=max_tokens, temperature=0.0)
        )
        return _cut(c.text, stop).strip()

    def describe(self) -> dict[str, Any]:
        info = {"name": self.name, "kind": "endpoint", "api": "chat"}
        if self.base_url:
            info["base_url"] = self.base_url
        return info

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self.teacher.aclose())
            self._loop.close()


# --------------------------------------------------------------------------- resolving


def open_backend(
    model: str,
    *,
    base: str | None = None,
    n_ctx: int = 2048,
    n_threads: int | None = None,
    base_url: str | None = None,
    api_key_env: str | None = None,
) -> Backend:
    """The backend for a model reference: an HF / alpacakit model folder, a .gguf file, a folder
    holding one .gguf, an embedded model name, or `openai:MODEL` (an endpoint at `base_url`)."""
    from alpacakit.models.registry import classify

    ref = model.strip()
    kind = classify(ref, base_url=base_url).kind
    if kind == "endpoint":
        return EndpointBackend(
            ref if ref.startswith("openai:") else f"openai:{ref}", base_url=base_url, api_key_env=api_key_env
        )
    if kind == "vllm":
        raise ConfigError(
            f"{ref}: benchmarks run the model folder itself (transformers scores and answers)",
            hint=f"pass {ref.removeprefix('vllm:')} without the vllm: prefix",
        )
    if kind == "hf":
        return HFBackend(Path(ref).expanduser(), base=base, n_threads=n_threads)
    return LlamaCppBackend(ref, n_ctx=n_ctx, n_threads=n_threads)
