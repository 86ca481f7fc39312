"""alpacakit: the Alpaca formula as software.

generate (a teacher writes instruction data) -> curate (filters, exact ROUGE-L dedup)
-> train (full, LoRA, QLoRA) -> evaluate (pairwise + capability) -> run (chat, serve, GGUF).

Each stage is a library function with a typed config and a CLI verb. Heavy libraries
(torch, llama_cpp, openai) are imported only inside the functions that use them.
"""

__version__ = "0.1.0"
