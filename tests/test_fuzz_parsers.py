"""Fuzzing the --model, --data, --branches and --option parsers: any text either works or is a ProbekitError
(one clear line at the CLI), never another exception."""

import functools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probekit.run.options import parse_options
from probekit.models.branches import DiscoveryConfig, discover
from probekit.cli import _parse_option
from probekit.run.data import load_data
from probekit.errors import ProbekitError
from probekit.models.loading import LoadOptions, load_model
from probekit.run.registry import analyses
from probekit.zoo.registry import load_zoo_model

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SCHEMES = ["", "toy1", "toy2", "digits", "cifar10", "cifar10-sample", "imagefolder", "random", "torchvision", "zoo",
           "file", "../", "/dev/null", "nosuch"]
text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
spec = st.one_of(text, st.builds(lambda s, rest: f"{s}:{rest}", st.sampled_from(SCHEMES), text))


def either_works_or_is_clear(call, *args):
    try:
        call(*args)
    except ProbekitError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip()


@FUZZ
@given(spec)
def test_data_specs(value):
    either_works_or_is_clear(load_data, value)


@FUZZ
@given(spec)
def test_model_specs(value):
    either_works_or_is_clear(load_model, value, LoadOptions())


@functools.cache
def digits_model():
    return load_zoo_model("digits-branched8")


@FUZZ
@given(st.one_of(text, st.builds(lambda a, b: f"{a}.*{b}", text, text)))
def test_branch_globs(value):
    either_works_or_is_clear(discover, digits_model(), DiscoveryConfig(value))


@FUZZ
@given(name=st.sampled_from(sorted(analyses())), key=text, value=text, raw=text)
def test_options(name, key, value, raw):
    either_works_or_is_clear(_parse_option, raw)
    either_works_or_is_clear(parse_options, analyses()[name][0], {key: value})
