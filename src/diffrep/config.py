"""Configuration: frozen dataclasses are the one schema; YAML holds only what differs.

A config has four sections:

    data:   DataConfig fields (dataset name, splits, root, dataset options)
    method: {name: <registered method>, <constructor argument>: value, ...}
    train:  TrainConfig fields (diffrep.train)
    eval:   EvalConfig fields (diffrep.eval)

The `method` section is validated against the registered constructor's signature, so method
defaults live in exactly one place: the constructor. `--set a.b=value` overrides any key;
values are parsed as YAML scalars. Every mistake raises `UserError` naming the key and the
valid choices.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffrep.atomic import write_text
from diffrep.errors import UserError
from diffrep.jsonutil import to_jsonable
from diffrep.validate import check_kwargs, coerce

__all__ = ["Config", "DataConfig", "check_kwargs", "coerce", "config_from_dict", "load_config"]

# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    train_split: str = "train"
    eval_split: str = "test"
    root: str | None = None  # else $DIFFREP_DATA, else ../shared/data-style defaults
    options: dict = field(default_factory=dict)  # dataset-specific keyword arguments

    def load(self, split: str):
        """The dataset's `split` (e.g. self.train_split) as an ImageData."""
        from diffrep.data import load_dataset

        return load_dataset(self.name, split, root=self.root, **self.options)


def _train_config_cls():
    from diffrep.train import TrainConfig

    return TrainConfig


def _eval_config_cls():
    from diffrep.eval import EvalConfig

    return EvalConfig


@dataclass(frozen=True)
class Config:
    data: DataConfig
    method: dict  # {"name": ..., constructor kwargs ...}
    train: Any  # diffrep.train.TrainConfig
    eval: Any  # diffrep.eval.EvalConfig

    @property
    def method_name(self) -> str:
        return self.method["name"]

    @property
    def method_args(self) -> dict:
        return {k: v for k, v in self.method.items() if k != "name"}

    def to_dict(self) -> dict:
        return {
            "data": dataclasses.asdict(self.data),
            "method": dict(self.method),
            "train": dataclasses.asdict(self.train),
            "eval": dataclasses.asdict(self.eval),
        }


def _build_section(cls: type, values: dict, section: str):
    if not isinstance(values, dict):
        raise UserError(f"{section}: expected a mapping of options, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise UserError(
                f"{section}.{key}: unknown option; valid options: {', '.join(sorted(names))}"
            )
        kwargs[key] = coerce(value, hints[key], f"{section}.{key}")
    try:
        return cls(**kwargs)
    except (ValueError, UserError) as e:  # __post_init__ range checks
        raise UserError(f"{section}: {e}") from None


SECTIONS = ("data", "method", "train", "eval")


def config_from_dict(raw: dict | None) -> Config:
    raw = dict(raw or {})
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise UserError(
            f"unknown config section(s) {', '.join(sorted(unknown))}; valid: {', '.join(SECTIONS)}"
        )
    from diffrep.methods import METHODS

    if not isinstance(raw.get("method") or {}, dict):
        raise UserError(
            f"method: expected a mapping like {{name: vae, latent_dim: 16}}, got "
            f"{raw['method']!r}; fix: write `method:` and below it `  name: {raw['method']}`"
        )
    method = dict(raw.get("method") or {})
    method.setdefault("name", "vae")
    ctor = METHODS.get(method["name"])
    args = {k: v for k, v in method.items() if k != "name"}
    check_kwargs(ctor, args, where=f"method {method['name']!r}")
    return Config(
        data=_build_section(DataConfig, raw.get("data") or {}, "data"),
        method={"name": method["name"], **args},
        train=_build_section(_train_config_cls(), raw.get("train") or {}, "train"),
        eval=_build_section(_eval_config_cls(), raw.get("eval") or {}, "eval"),
    )


def parse_override(item: str) -> tuple[list[str], Any]:
    import yaml

    if "=" not in item:
        raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.steps=500")
    key, _, text = item.partition("=")
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise UserError(f"--set {item!r}: the key needs a section, e.g. train.steps or method.beta")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return path, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (raw or {}).items()}
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise UserError(f"--set {item!r}: {part} is not a section")
            else:
                child = node[part] = dict(child)
            node = child
        node[path[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(
            f"config file {str(p)!r} not found; pass a YAML file such as configs/vae-digits.yaml"
        )
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise UserError(
            f"config file {str(p)!r} is not text (not UTF-8); fix: pass a YAML file such as "
            "configs/vae-digits.yaml"
        ) from None
    except yaml.YAMLError as e:
        msg = " ".join(str(e).split())  # one line
        raise UserError(f"config file {str(p)!r} is not valid YAML: {msg}") from None
    if not isinstance(raw, dict):
        raise UserError(
            f"config file {str(p)!r} must hold a mapping of sections ({', '.join(SECTIONS)})"
        )
    return raw


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    raw = read_yaml(path) if path is not None else {}
    return config_from_dict(apply_overrides(raw, list(overrides)))


def dump_config(cfg: Config, path: str | Path) -> None:
    import yaml

    write_text(path, yaml.safe_dump(to_jsonable(cfg.to_dict()), sort_keys=False))
