"""Strict config validation: every mistake names the key and the valid choices."""

import pytest

from diffrep.config import apply_overrides, config_from_dict, load_config
from diffrep.errors import UserError


def test_defaults_and_method_defaults_come_from_signatures():
    cfg = config_from_dict({"method": {"name": "vae"}})
    assert cfg.method_name == "vae" and cfg.method_args == {}
    assert cfg.data.name == "digits"


def test_unknown_section_key_and_method_option_are_named():
    with pytest.raises(UserError, match="unknown config section.*trian"):
        config_from_dict({"trian": {}})
    with pytest.raises(UserError, match=r"data\.nme: unknown option; valid options: .*name"):
        config_from_dict({"data": {"nme": "digits"}})
    with pytest.raises(UserError, match="unknown option 'latent'; valid options: .*latent_dim"):
        config_from_dict({"method": {"name": "vae", "latent": 3}})
    with pytest.raises(UserError, match="unknown method 'vea'; choose one of: .*vae"):
        config_from_dict({"method": {"name": "vea"}})


def test_wrong_types_and_literal_choices():
    with pytest.raises(UserError, match="latent_dim: expected an integer, got 'big'"):
        config_from_dict({"method": {"name": "vae", "latent_dim": "big"}})
    with pytest.raises(UserError, match="likelihood: 'poisson' is not allowed; choose one of"):
        config_from_dict({"method": {"name": "vae", "likelihood": "poisson"}})
    with pytest.raises(UserError, match="train.ema: expected a number, got True"):
        config_from_dict({"method": {"name": "vae"}, "train": {"ema": True}})
    with pytest.raises(UserError, match="expected a number, got 'fast'"):
        config_from_dict({"train": {"lr": "fast"}})


def test_out_of_range_values_are_rejected():
    with pytest.raises(UserError, match="train"):
        config_from_dict({"train": {"steps": -5}})


def test_overrides_parse_yaml_scalars_and_nest():
    raw = apply_overrides(
        {"method": {"name": "vae"}},
        ["method.latent_dim=4", "train.lr=1e-3", "data.options.size=16"],
    )
    cfg = config_from_dict(raw)
    assert cfg.method_args["latent_dim"] == 4
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.data.options == {"size": 16}
    with pytest.raises(UserError, match="KEY=VALUE"):
        apply_overrides({}, ["train.steps"])
    with pytest.raises(UserError, match="needs a section"):
        apply_overrides({}, ["steps=3"])


def test_config_files(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("method:\n  name: vae\n  latent_dim: 5\n")
    assert load_config(p, ["method.width=8"]).method_args == {"latent_dim": 5, "width": 8}
    p.write_text("method: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_every_shipped_config_validates():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs
    for c in configs:
        load_config(c)
