"""Build the self-instruct request: our requirements, N seed tasks as numbered examples, and
the opening of the next task for the teacher to continue.

The prompt text is data (`prompts/self_instruct.txt`, `prompts/self_instruct_example.txt`,
`prompts/task_types.yaml`); this module only fills it in. Which seed tasks and task types a
request shows depends only on (rng_seed, request index), so a resumed run asks the same
questions it would have asked.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import yaml

from alpacakit.generate.seeds import SeedTask

NO_INPUT = "<noinput>"


def _prompt_file(name: str) -> str:
    return (resources.files("alpacakit.generate") / "prompts" / name).read_text(encoding="utf-8")


@cache
def _default_templates() -> tuple[str, str, tuple[str, ...]]:
    header = _prompt_file("self_instruct.txt")
    example = _prompt_file("self_instruct_example.txt")
    types = tuple(yaml.safe_load(_prompt_file("task_types.yaml")))
    return header, example, types


@dataclass(frozen=True)
class SelfInstructRequest:
    index: int
    prompt: str
    seed_ids: tuple[str, ...]
    first_new_number: int
    stop: tuple[str, ...]


class PromptBuilder:
    """Turns a request index into a prompt. `header_path` replaces our requirements text."""

    def __init__(
        self,
        seeds: list[SeedTask],
        *,
        num_examples: int = 3,
        tasks_per_request: int = 20,
        rng_seed: int = 42,
        header_path: str | Path | None = None,
        num_task_types: int = 6,
        input_requests: float = 0.0,
        language: str = "English",
    ):
        header, example, types = _default_templates()
        if header_path:
            header = Path(header_path).read_text(encoding="utf-8")
        # {language}: the language the teacher writes in (a custom header may leave it out)
        self.header, self.example, self.task_types = header.replace("{language}", language), example, types
        self.seeds = seeds
        self.num_examples = min(num_examples, len(seeds))
        self.tasks_per_request = tasks_per_request
        self.rng_seed = rng_seed
        self.num_task_types = num_task_types
        self.input_requests = input_requests
        self._with_input = [s for s in seeds if s.input]
        self._by_category = self._categories(seeds)
        self._with_input_by_category = self._categories(self._with_input)

    @staticmethod
    def _categories(seeds: list[SeedTask]) -> dict[str, list[SeedTask]]:
        out: dict[str, list[SeedTask]] = {}
        for s in seeds:
            out.setdefault(s.category or "", []).append(s)
        return out

    @staticmethod
    def _stratified(by_category: dict[str, list[SeedTask]], k: int, rng: random.Random) -> list[SeedTask]:
        if len(by_category) >= k > 1:
            return [rng.choice(by_category[c]) for c in rng.sample(sorted(by_category), k)]
        pool = [s for group in by_category.values() for s in group]
        return rng.sample(pool, min(k, len(pool)))

    def _pick_seeds(self, rng: random.Random) -> list[SeedTask]:
        """Draw examples from distinct categories when the seed file has them, so no single
        kind of task (say, code) dominates what the teacher imitates."""
        # A teacher copies what it sees: with no example that has an input it writes <noinput>
        # every time (seen with Qwen2.5-Coder), so one example always carries an input. Even so
        # Qwen wrote an input for only 4% of its tasks (Stanford's data: 40%); `input_requests`
        # makes every example of a share of requests have one (see GenerateConfig).
        if self.input_requests and len(self._with_input) >= self.num_examples and rng.random() < self.input_requests:
            return self._stratified(self._with_input_by_category, self.num_examples, rng)
        picked = self._stratified(self._by_category, self.num_examples, rng)
        with_input = [s for s in self._with_input if s not in picked]
        if with_input and not any(s.input for s in picked):
            picked[-1] = rng.choice(with_input)
        return picked

    def build(self, index: int) -> SelfInstructRequest:
        rng = random.Random(f"{self.rng_seed}:{index}")
        examples = self._pick_seeds(rng)
        types = rng.sample(self.task_types, min(self.num_task_types, len(self.task_types)))
        parts = [
            self.header.replace("{last_number}", str(self.tasks_per_request)).replace("{task_types}", "; ".join(types))
        ]
        for i, task in enumerate(examples, start=1):
            parts.append(
                self.example.replace("{number}", str(i))
                .replace("{instruction}", task.instruction)
                .replace("{input}", task.input or NO_INPUT)
                .replace("{output}", task.output)
            )
        nxt = len(examples) + 1
        prompt = "".join(p if p.endswith("\n") else p + "\n" for p in parts) + f"###\n{nxt}. Instruction:"
        after_last = self.tasks_per_request + 1
        return SelfInstructRequest(
            index=index,
            prompt=prompt,
            seed_ids=tuple(t.id for t in examples),
            first_new_number=nxt,
            stop=(f"\n{after_last}. Instruction", f"\n{after_last}.", f"{after_last}. Instruction"),
        )
