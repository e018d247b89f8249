"""CompressOptions: every field carries its group and flag as metadata, and data-free mode refuses the options
it would silently ignore (checked against what onnxbc.datafree reads)."""

import dataclasses
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from onnxbc.cli import app
from onnxbc.errors import UsageError
from onnxbc.options import (
    ActivationType,
    BiasCorrection,
    BiasShape,
    CompressOptions,
    Device,
    OptionGroup,
    RangeMethod,
    Rounding,
    Target,
    WeightType,
    flag_of,
    option_groups,
)
from onnxbc.solvers.schemes import Scheme


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def compress_flags() -> set[str]:
    command = typer.main.get_command(app).commands["compress"]
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def test_every_field_has_a_group_and_a_real_flag():
    fields = dataclasses.fields(CompressOptions)
    groups = option_groups()
    assert set(groups) == set(OptionGroup) and all(groups.values())
    assert sorted(n for names in groups.values() for n in names) == sorted(f.name for f in fields)
    flags = compress_flags()
    for f in fields:
        assert isinstance(f.metadata["group"], OptionGroup), f.name
        assert set(f.metadata["flag"].split("/")) <= flags, f.metadata["flag"]
    assert groups[OptionGroup.BUDGET] == (
        "avg_bits",
        "max_size",
        "candidates",
        "price_compensated",
        "price_measured",
        "block_candidates",
    )
    assert groups[OptionGroup.DATA_FREE] == ("data_free", "next_weights")


def test_flag_of_spells_what_the_user_typed():
    assert flag_of("smoothing", False) == "--no-smoothing"
    assert flag_of("smoothing", True) == "--smoothing"
    assert flag_of("price_measured", False) == "--closed-form-prices"
    assert flag_of("bias_correction", BiasCorrection.SEQUENTIAL) == "--bias-correction sequential"
    assert flag_of("scheme", "pow2") == "--scheme pow2"
    assert flag_of("policy", Path("p.toml")) == "--policy p.toml"
    assert flag_of("max_size", 1000) == "--max-size"


def test_activations_default_depends_on_the_mode():
    assert CompressOptions().activations is ActivationType.INT8
    assert CompressOptions(data_free=True).activations is ActivationType.NONE  # data-free is weight-only
    assert CompressOptions(activations="int16").activations is ActivationType.INT16
    # replace() keeps the resolved value
    assert dataclasses.replace(CompressOptions(data_free=True), data_free=False).activations is ActivationType.NONE


# Each option onnxbc.datafree never reads, set to a non-default value, and how the error names it.
IGNORED_BY_DATA_FREE = [
    ({"activations": ActivationType.INT8}, "--activations int8"),
    ({"activation_range": RangeMethod.PERCENTILE}, "--activation-range percentile"),
    ({"percentile": 99.9}, "--percentile"),  # read only with --weight-range percentile
    ({"bias_correction": BiasCorrection.SEQUENTIAL}, "--bias-correction sequential"),
    ({"bias_shape": BiasShape.POSITION}, "--bias-shape position"),
    ({"quantize_attention": True}, "--quantize-attention"),
    ({"smoothing": False}, "--no-smoothing"),
    ({"device": Device.CUDA}, "--device cuda"),
    ({"avg_bits": 4.0}, "--avg-bits"),
    ({"max_size": 10_000}, "--max-size"),
    ({"candidates": (4, 8)}, "--candidates"),
    ({"price_compensated": False}, "--raw-prices"),
    ({"price_measured": False}, "--closed-form-prices"),
    ({"block_candidates": (0, 64), "max_size": 10_000}, "--block-candidates"),
    ({"policy": Path("p.toml")}, "--policy"),
    ({"rounding": Rounding.GPTQ}, "--rounding gptq"),
    ({"scheme": "pow2"}, "--scheme pow2"),
    ({"emulate": True}, "--emulate"),
    ({"int32_bias": True}, "--int32-bias"),
]


@pytest.mark.parametrize("given, flag", IGNORED_BY_DATA_FREE, ids=[f for _, f in IGNORED_BY_DATA_FREE])
def test_data_free_refuses_each_option_it_ignores(given, flag, tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="^--data-free ignores ") as info:
        CompressOptions(weights=WeightType.INT4, data_free=True, **given)
    assert flag in str(info.value) and info.value.exit_code == 2
    monkeypatch.chdir(tmp_path)
    Path("p.toml").write_text('[[layer]]\nname = "fc"\nbits = 8\n')
    CompressOptions(weights=WeightType.INT4, **given)  # the same option without --data-free is fine


def test_data_free_names_every_ignored_flag_in_one_line():
    with pytest.raises(UsageError) as info:
        CompressOptions(data_free=True, policy=Path("p.toml"), smoothing=False)
    message = str(info.value)
    assert message.startswith("--data-free ignores --policy p.toml, --no-smoothing: drop them (data-free mode reads ")
    assert "--next-weights" in message and "--bias-correction none|independent" in message and "\n" not in message


def test_data_free_takes_every_option_it_reads():
    options = CompressOptions(
        weights=WeightType.INT4,
        next_weights=WeightType.INT8,
        block_size=32,
        weight_range=RangeMethod.PERCENTILE,
        percentile=99.9,
        bias_correction=BiasCorrection.NONE,
        target=Target.ONNXRUNTIME,
        opset=21,
        data_free=True,
    )
    assert options.activations is ActivationType.NONE
    CompressOptions(weights=WeightType.INT8, reduce_range=True, per_tensor_weights=True, data_free=True)
    CompressOptions(weights=WeightType.INT4, block_size=64, target=Target.TENSORRT, data_free=True)


def test_cli_data_free_refuses_ignored_flags_before_reading_the_model(tmp_path):
    r = cli("compress", tmp_path / "missing.onnx", "--data-free", "--no-smoothing", "--scheme", "pow2")
    assert r.exit_code == 2
    assert "--data-free ignores --scheme pow2, --no-smoothing: drop them" in r.output
    r = cli("compress", tmp_path / "missing.onnx", "--data-free", "--activations", "int8")
    assert r.exit_code == 2 and "--data-free ignores --activations int8: drop it" in r.output


def test_cli_scheme_is_a_typed_choice(tmp_path):
    help_text = " ".join(cli("compress", "--help").output.split())
    choices = "|".join([*(s.value for s in Scheme), "auto"])
    assert f"--scheme <{choices}>" in help_text or f"--scheme [{choices}]" in help_text
    r = cli("compress", tmp_path / "m.onnx", "--random-data", "--scheme", "pow3")
    assert r.exit_code == 2 and "'pow3' is not one of" in r.output
