"""Run one of llama.cpp's converter scripts with two additions (see `llama_cpp_convert`):

    python -m alpacakit.export.llama_cpp_runner DIR SCRIPT [--alpacakit-pre NAME]
        [--alpacakit-kv KEY=VALUE ...] -- SCRIPT-ARGS...

- `--alpacakit-pre NAME`: when llama.cpp does not recognise the tokenizer's pre-tokenizer (it
  knows them by the hash of a test string's tokens, so a tokenizer trained here is unknown to
  it), use NAME instead of stopping. Recognised tokenizers keep llama.cpp's own answer.
- `--alpacakit-kv KEY=VALUE`: string metadata written into every GGUF file the script makes.

The script itself runs unchanged, as `__main__`, with DIR and DIR/gguf-py first on sys.path so
that it uses the `gguf` package of its own llama.cpp version.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def _patch(pre: str | None, kv: dict[str, str]) -> None:
    if pre:
        from conversion.base import TextModel  # the converter's own module (llama.cpp's layout since 2026)

        original = TextModel.get_vocab_base_pre

        def get_vocab_base_pre(self, tokenizer):  # noqa: ANN001, ANN202 - their signature
            try:
                return original(self, tokenizer)
            except NotImplementedError:
                return pre

        TextModel.get_vocab_base_pre = get_vocab_base_pre
    if kv:
        import gguf

        write_header = gguf.GGUFWriter.write_header_to_file

        def with_ours(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            for key, value in kv.items():
                self.add_string(key, value)
            return write_header(self, *args, **kwargs)

        gguf.GGUFWriter.write_header_to_file = with_ours


def main(argv: list[str]) -> None:
    if len(argv) < 3 or "--" not in argv:
        raise SystemExit(__doc__)
    folder, script, rest = Path(argv[0]), argv[1], argv[2:]
    sep = rest.index("--")
    ours, theirs = rest[:sep], rest[sep + 1 :]
    pre: str | None = None
    kv: dict[str, str] = {}
    i = 0
    while i < len(ours):
        if ours[i] == "--alpacakit-pre":
            pre = ours[i + 1]
        elif ours[i] == "--alpacakit-kv":
            key, _, value = ours[i + 1].partition("=")
            kv[key] = value
        else:
            raise SystemExit(f"unknown option {ours[i]}")
        i += 2
    sys.path[:0] = [str(folder), str(folder / "gguf-py")]
    _patch(pre, kv)
    sys.argv = [str(folder / script), *theirs]
    runpy.run_path(str(folder / script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
