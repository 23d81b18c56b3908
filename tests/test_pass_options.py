"""Typed pass options: conversion from real type hints, the spec syntax for lists, format_spec round trips."""
import enum
from dataclasses import dataclass
from typing import Literal

import pytest

import fxopt
from fxopt import PipelineSpecError, graph_pass
from fxopt.pass_options import convert, format_value
from fxopt.pipeline import build_pipeline, format_spec, parse_spec


class Granularity(enum.Enum):
    TENSOR = "per-tensor"
    CHANNEL = "per-channel"


@dataclass
class QuantLikeOptions:
    mode: Literal["int8", "int8-weight-only"] = "int8"
    skip: tuple[str, ...] = ()
    layers: list[int] = None
    percentile: float | None = None
    granularity: Granularity = Granularity.CHANNEL
    symmetric: bool = True
    window: tuple[int, int] = (1, 2)
    label: str = "plain"


@graph_pass("quant-like", options=QuantLikeOptions)
def quant_like(gm, ctx):
    """Does nothing; has options of every supported kind."""
    return fxopt.PassResult(changed=False)


EXTRA = {"quant-like": quant_like}


def test_spec_lists_literals_enums_optionals_are_typed():
    [(p, opts)] = build_pipeline("quant-like{mode=int8-weight-only,skip=[lm_head,down_proj],layers=[1,2],"
                                 "percentile=none,granularity=TENSOR,symmetric=no,window=[3,4],label='a, b'}",
                                 extra=EXTRA)
    assert opts == QuantLikeOptions(mode="int8-weight-only", skip=("lm_head", "down_proj"), layers=[1, 2],
                                    percentile=None, granularity=Granularity.TENSOR, symmetric=False,
                                    window=(3, 4), label="a, b")


def test_a_single_value_for_a_list_option_is_a_one_element_list():
    [(_, opts)] = build_pipeline("quant-like{skip=lm_head,percentile=99.9,granularity=per-tensor}", extra=EXTRA)
    assert opts.skip == ("lm_head",) and opts.percentile == 99.9 and opts.granularity is Granularity.TENSOR


@pytest.mark.parametrize("spec, message", [
    ("quant-like{mode=int4}", "not one of int8, int8-weight-only"),
    ("quant-like{layers=[1,x]}", "'x' is not an integer"),
    ("quant-like{window=[1,2,3]}", "expected 2 values"),
    ("quant-like{symmetric=maybe}", "not a boolean"),
    ("quant-like{label=[a,b]}", "expected a single str"),
    ("quant-like{nope=1}", "has no option nope"),
])
def test_bad_option_values_name_the_option_and_the_problem(spec, message):
    with pytest.raises(PipelineSpecError, match=message):
        build_pipeline(spec, extra=EXTRA)


@pytest.mark.parametrize("spec, message", [
    ("a,b{x=1", "never closed: add '}'"),
    ("a{x=[1,2}", "expected ',' or ']'"),
    ("a{x}", "needs a value"),
    ("a,,b", "expected a pass name"),
    ("a b", "expected ',' between passes"),
    ("a{x='open}", "quoted string .* never closed"),
    ("", "empty"),
])
def test_malformed_specs_say_what_is_missing_and_where(spec, message):
    with pytest.raises(PipelineSpecError, match=message):
        parse_spec(spec)


def test_format_spec_parses_back_to_the_same_pipeline():
    original = build_pipeline("eliminate-dead-nodes,quant-like{skip=[lm_head,'x,y'],percentile=0.5,"
                              "granularity=TENSOR,symmetric=false,label=none},select-gemm-backend{margin=0.1}",
                              extra=EXTRA)
    text = format_spec(original)
    assert text == ("eliminate-dead-nodes,quant-like{skip=[lm_head,\"x,y\"],percentile=0.5,granularity=TENSOR,"
                    "symmetric=false,label=\"none\"},select-gemm-backend{margin=0.1}")
    again = build_pipeline(text, extra=EXTRA)
    assert [(p.name, o) for p, o in again] == [(p.name, o) for p, o in original]


def test_default_pipeline_spec_round_trips():
    pipeline = build_pipeline(None)
    assert build_pipeline(format_spec(pipeline)) == pipeline


def test_convert_and_format_are_inverse_for_plain_values():
    for value, hint in [(3, int), (0.25, float), (True, bool), ("x", str), (("a", "b"), tuple[str, ...]),
                        (None, float | None), (Granularity.CHANNEL, Granularity)]:
        parsed = parse_spec(f"p{{v={format_value(value)}}}")[0][1]["v"]
        assert convert(parsed, hint) == value
