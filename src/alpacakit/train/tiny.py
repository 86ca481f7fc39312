"""Tiny real models, built offline in a second: for tests and for trying the pipeline.

A byte-level BPE tokenizer is trained on a few sentences (`resources/tiny_corpus.txt`) and
wrapped as a `PreTrainedTokenizerFast` with BOS/EOS/PAD tokens; a Llama- (or Gemma 3-)
architecture model (or Mistral, Qwen2, Qwen3, Phi-3) with a hidden size of 32 and 2 layers is
initialised from a config. The
saved folder is an ordinary Hugging Face model folder, so every code path that takes a base
model (train, merge, eval, chat, serve) can be exercised without a model hub.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

# A ChatML-style template (the role names and layout of many instruct models), used when a
# test needs a tokenizer that has a chat template of its own.
_TINY_CHAT_TEMPLATE_FILE = "tiny_chat_template.txt"


def corpus_lines() -> list[str]:
    text = resources.files("alpacakit.train").joinpath("resources", "tiny_corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def tiny_chat_template() -> str:
    return (
        resources.files("alpacakit.train").joinpath("resources", _TINY_CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    )


def make_tiny_tokenizer(vocab_size: int = 384, chat_template: bool = False) -> Any:
    """A byte-level BPE tokenizer (no unknown tokens) with <pad>=0, <s>=1 (BOS, added), </s>=2 (EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=2048
    )
    if chat_template:
        fast.chat_template = tiny_chat_template()
    return fast


TinyArch = Literal["llama", "gemma3", "mistral", "qwen2", "qwen3", "phi3"]


def make_tiny_model(
    tokenizer: Any, arch: TinyArch = "llama", seed: int = 0, hidden: int = 32, layers: int = 2, positions: int = 512
) -> Any:
    """A randomly initialised causal LM sized for the tokenizer (deterministic for a seed).

    `positions` is the context window (`max_position_embeddings`). The tokenizer is byte-level
    BPE with few merges (~0.6 tokens per character of English), so a window of N tokens holds
    at least N characters of prompt and answer."""
    import torch

    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        return LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False))
    if arch == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        cfg = Gemma3TextConfig(
            **common,
            head_dim=16,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention"][:layers] + ["full_attention"] * max(0, layers - 2),
        )
        return Gemma3ForCausalLM(cfg)
    if arch == "mistral":
        from transformers import MistralConfig, MistralForCausalLM

        return MistralForCausalLM(MistralConfig(**common, sliding_window=None, tie_word_embeddings=False))
    if arch == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        # transformers loads a qwen2 folder's tokenizer as a Qwen2Tokenizer, which adds one token
        # (<|endoftext|>): pad the embedding to 448 rows, as real Qwen2 checkpoints pad theirs.
        return Qwen2ForCausalLM(Qwen2Config(**{**common, "vocab_size": 448}, tie_word_embeddings=True))
    if arch == "qwen3":
        from transformers import Qwen3Config, Qwen3ForCausalLM

        return Qwen3ForCausalLM(Qwen3Config(**common, head_dim=16, tie_word_embeddings=True))
    if arch == "phi3":
        from transformers import Phi3Config, Phi3ForCausalLM

        return Phi3ForCausalLM(Phi3Config(**common, tie_word_embeddings=False))
    raise ValueError(f"unknown tiny arch {arch!r}")


def make_tiny_base(
    path: str | Path, arch: TinyArch = "llama", chat_template: bool = False, seed: int = 0, positions: int = 512
) -> Path:
    """Write a tiny base model folder (config, safetensors, tokenizer) to `path` and return it."""
    path = Path(path)
    tok = make_tiny_tokenizer(chat_template=chat_template)
    model = make_tiny_model(tok, arch=arch, seed=seed, positions=positions)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
