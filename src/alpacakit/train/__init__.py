"""The train stage: fine-tune a base model on instruction data (full, LoRA, QLoRA; multi-stage).

Library entry points (heavy imports happen inside them):
- `alpacakit.train.recipe.train(cfg: TrainConfig, output_dir=..., resume=False, overwrite=False) -> TrainResult`
- `alpacakit.train.merge.merge(model_dir) -> Path` and `load_trained(model_dir) -> (model, tokenizer, PromptFormat)`
- `alpacakit.train.config.TrainConfig`, `list_presets()`, `load_train_config(path, overrides, extra)`
- `alpacakit.train.tiny.make_tiny_base(path)`: a tiny real model folder for tests.

Nothing is imported here: `alpacakit.train.config` is imported by `alpacakit --help`, and
importing it runs this file first.
"""
