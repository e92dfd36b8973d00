"""Recipes: the whole pipeline as YAML/JSON, validated by pydantic (DESIGN §6).

Every error names the key path, e.g. `recipe.yaml: passes[1].distill.stpes: unknown key`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compressor.budget import Budget
from compressor.errors import UserError
from passes import get_pass
from passes.base import Pass


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(Strict):
    train: str | None = Field(default=None, description="training text (blank-line separated, .jsonl, or .tsv)")
    eval: str | None = Field(default=None, description="held-out text; default: 10% of train held out")
    sts: str | None = Field(default=None, description="STS-B-style TSV for encoder Spearman")
    text_column: str | None = Field(default=None, description="column or field holding the text (tables, datasets)")


class GatesSpec(Strict):
    min_quality_retention: float | None = Field(default=None, gt=0, le=1)


class Recipe(Strict):
    teacher: str | None = None
    target: Literal["cpu", "gpu", "edge"] = "cpu"
    data: DataSpec = DataSpec()
    budget: Budget = Budget()
    passes: list[dict[str, dict[str, Any] | None]] = Field(default_factory=list)
    gates: GatesSpec = GatesSpec()
    seed: int = 0
    device: str = "auto"


def location(loc: tuple) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def describe(error: dict) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    message = error["msg"].removeprefix("Value error, ")  # our validators' own words, without pydantic's label
    given = error.get("input")
    if isinstance(given, str | int | float | bool):
        return f"{message} (got {given!r})"
    return message


def first_error(exc: ValidationError, prefix: str = "") -> str:
    error = exc.errors()[0]
    where = location(error["loc"])
    where = f"{prefix}.{where}" if prefix and where else (prefix or where)
    return f"{where}: {describe(error)}"


def set_training(passes: list[dict], override: bool = False, **values: Any) -> None:
    """Write `values` (those not None) into the `train` section of every pass that trains (`Pass.trains`): over
    what the recipe says with `override` (`--steps`), else only where it says nothing."""
    for entry in passes:
        for name in list(entry):
            try:
                trains = get_pass(name).trains
            except UserError:
                continue  # an unknown pass is reported, with its key path, when the recipe is parsed
            if not trains:
                continue
            config = dict(entry[name] or {})
            section = config.get("train") if isinstance(config.get("train"), dict) else {}
            for key, value in values.items():
                given = f"train.{key}" in config or key in section
                if value is not None and (override or not given):
                    config[f"train.{key}"] = value  # a dotted key wins over the nested one
            entry[name] = config


def apply_training_budget(passes: list[dict], train_tokens: int | None, seconds: float | None) -> None:
    """Copy the recipe's training budget into every training pass that does not set its own (so it is part of
    that pass's config and of its cache key)."""
    set_training(passes, tokens=train_tokens, time=seconds)


def build_passes(entries: list[dict[str, dict[str, Any] | None]], source: str) -> list[Pass]:
    """Instantiate each `{name: config}` entry with its validated Config."""
    built = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise UserError(f"{source}: passes[{index}]: each pass is a one-key mapping like `distill: {{steps: 100}}`")
        name, raw = next(iter(entry.items()))
        try:
            cls = get_pass(name)
        except UserError as exc:
            raise UserError(f"{source}: passes[{index}]: {exc}") from None
        try:
            built.append(cls(cls.Config(**(raw or {})), where=f"{source}: passes[{index}].{name}"))
        except ValidationError as exc:
            raise UserError(f"{source}: {first_error(exc, f'passes[{index}].{name}')}") from None
    return built


def parse_recipe(raw: Any, source: str) -> Recipe:
    if not isinstance(raw, dict):
        raise UserError(f"{source}: a recipe is a mapping of keys (teacher, target, data, budget, passes, gates)")
    try:
        recipe = Recipe(**raw)
    except ValidationError as exc:
        raise UserError(f"{source}: {first_error(exc)}") from None
    build_passes(recipe.passes, source)  # validates every pass config now, before any work
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: recipe file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: recipe is not UTF-8 text") from None
    try:
        if path.suffix != ".json":
            check_expansion(yaml.compose(text), path)
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise UserError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({str(exc).splitlines()[0]})"
        ) from None
    if isinstance(raw, dict) and "passes" in raw and not raw["passes"]:
        raise UserError(
            f"{path}: passes: the pipeline is empty; list at least one pass, or drop the key for the default"
        )
    return parse_recipe(raw, str(path))


MAX_RECIPE_NODES = 10_000  # a recipe is a few dozen keys; YAML aliases can make a tiny file expand to billions


def check_expansion(root, path: Path) -> None:
    """Refuse a YAML document whose aliases expand past MAX_RECIPE_NODES (a "billion laughs" bomb)."""
    sizes: dict[int, int] = {}

    def size(node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = 1  # a recursive alias counts once instead of looping
        if isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            total = 1
        sizes[id(node)] = min(total, MAX_RECIPE_NODES + 1)
        return sizes[id(node)]

    if root is not None and size(root) > MAX_RECIPE_NODES:
        raise UserError(f"{path}: recipe expands to more than {MAX_RECIPE_NODES:,} values (YAML aliases); refusing it")


def default_passes(
    teacher: str | None = None, budget_kind: str | None = None
) -> list[dict[str, dict[str, Any] | None]]:
    """The default pipeline of the teacher's family for a size budget of `budget_kind` ("params", "flops",
    "layers", or None when none was asked for); an unreadable teacher fails later, when it loads."""
    from compressor.ir.families import ADAPTERS
    from compressor.ir.loading import family_of

    adapter = (family_of(Path(teacher)) if teacher else None) or ADAPTERS[0]
    return adapter.default_pipeline(budget_kind)


def parse_assignments(assignments: list[str], source: str = "--set") -> dict[str, Any]:
    """`key=value` pairs (values parsed as YAML scalars/lists), for `compress pass NAME --set ...`."""
    values: dict[str, Any] = {}
    for item in assignments:
        if "=" not in item:
            raise UserError(f"{source} {item!r}: expected key=value")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"{source} {item!r}: value is not a valid scalar or list") from None
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-3 as a string; a number is meant
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        values[key.strip()] = parsed
    return values
