"""What a model's tokens cost when the config does not say: the shipped, dated price table.

`resolve_price(model_config)` -> (Price, source), where source says where the figure came from:
`config` (the user set it), `table YYYY-MM-DD` (teachers/data/prices.yaml: a listed model name,
even behind a proxy on this machine such as LiteLLM's), `local` (a model on this machine:
free), `loopback` (another model name at a server on this machine, e.g. `alpacakit serve` or a
local vLLM: free), or `unknown` (an endpoint model the table does not list: its price is taken
as 0, and `--max-cost` refuses to run on it, since a budget that counts nothing protects
nothing).
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from alpacakit.errors import ConfigError


@lru_cache(maxsize=1)
def price_table() -> dict[str, Any]:
    text = resources.files("alpacakit.teachers").joinpath("data", "prices.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def lookup(name: str) -> dict[str, float] | None:
    """The table's price for an endpoint model name (exact, else the longest listed prefix)."""
    models = price_table()["models"]
    if name in models:
        return dict(models[name])
    prefixes = [m for m in models if name.startswith(m + "-")]
    return dict(models[max(prefixes, key=len)]) if prefixes else None


def table_is_stale(today: date | None = None) -> bool:
    t = price_table()
    as_of = date.fromisoformat(str(t["as_of"]))
    return ((today or date.today()) - as_of).days > int(t.get("stale_after_days", 180))


def resolve_price(cfg: Any) -> tuple[Any, str]:
    """(Price, source) for a TeacherConfig-shaped section (see the module doc)."""
    from alpacakit.teachers.config import Price

    if "price" in cfg.model_fields_set or cfg.price.input_per_1m or cfg.price.output_per_1m:
        return cfg.price, "config"  # set in the config, by --set, or in code (a non-zero price is never a default)
    from alpacakit.models.registry import classify

    try:
        kind = classify(cfg.model, base_url=cfg.base_url).kind
    except Exception:  # noqa: BLE001 - an unknown reference fails later with its own message
        return cfg.price, "unknown"
    if kind != "endpoint":
        return Price(), "local"
    found = lookup(cfg.model.strip().removeprefix("openai:"))
    if found is not None:  # even behind a proxy on this machine (LiteLLM...): the name says who bills
        return Price(**found), f"table {price_table()['as_of']}"
    if cfg.base_url:
        from alpacakit.models.backends.endpoint import is_loopback

        if is_loopback(cfg.base_url):
            return Price(), "loopback"
    return cfg.price, "unknown"


def apply_price(cfg: Any) -> str:
    """Put the resolved price into `cfg` (unless the user set one); return its source."""
    price, source = resolve_price(cfg)
    if source != "config":
        cfg.price = price
        cfg.model_fields_set.discard("price")  # still "not set by the user" for a later resolve
    return source


def require_known_price(cfg: Any, max_cost: float | None, role: str) -> str:
    """The price source; a ConfigError before any request when a budget is set on an unknown price."""
    source = apply_price(cfg)
    if max_cost is not None and source == "unknown":
        listed = ", ".join(price_table()["models"])
        raise ConfigError(
            f"--max-cost {max_cost:g}: alpacakit does not know what {cfg.model} costs, so it could not keep to a budget",
            hint=f"set the {role} price (--set {role}.price.input_per_1m=... --set {role}.price.output_per_1m=..., "
            f"dollars per 1M tokens; 0 for a free server), or use a model in the price table ({listed})",
        )
    return source


def describe_source(source: str) -> str:
    if source.startswith("table"):
        stale = " (over its stale_after_days: check your provider's page)" if table_is_stale() else ""
        return f"price from alpacakit's table as of {source.split()[1]}{stale}"
    return {
        "config": "price from the config",
        "local": "local model: free",
        "loopback": "server on this machine: free",
        "unknown": "price unknown: counted as $0",
    }.get(source, source)
