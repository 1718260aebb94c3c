"""Which early-exit rule solve, bench and the proxy use: the profile picked from the model name,
``--profile NAME|FILE|none``, ``--calibration PROFILE.json``, and explicit ``--k``/``--probe-interval``."""

from __future__ import annotations

import argparse
import json

import pytest

from certaindex.cli import common
from certaindex.cli.serve import settings_from_args
from tests.fakes import ScriptedFakeEngine


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    common.add_cot_args(parser)
    return parser.parse_args(list(flags))


@pytest.mark.parametrize("model, name", [
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "r1-distill-qwen"),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "r1-distill-qwen-32b"),
    ("Qwen/Qwen3-8B", "qwen3"),
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "r1-distill-llama"),
    ("embedded:SmolLM2-135M-Instruct.Q4_1.gguf", "conservative"),
])
def test_profile_from_the_model_name(model, name):
    from certaindex.evaluation.profiles import shipped_profiles

    args = parse()
    config = common.cot_config(args, model_name=model, engine=ScriptedFakeEngine(reasoning=[]))
    profile, why = common.resolve_profile(args, model)
    assert profile.name == name and profile.kind == "score" and why == f"picked for model {model}"
    assert config.certainty == profile.rule and config.probe_interval == profile.probe_interval
    assert config.probe_suffix == profile.probe_suffix
    assert common.describe_rule(args, config, model).startswith(f"early-exit profile {name} (score ")
    # an engine without logprobs cannot take DEER trials: a profile that reads them gives way to the
    # conservative one, and says why
    reads_trials = "tr" in profile.rule["schedule"].split("+")
    plain = ScriptedFakeEngine(reasoning=[], logprobs=False)
    fallback, why = common.resolve_profile(args, model, plain)
    assert fallback.name == ("conservative" if reads_trials else name)
    assert ("does not return" in why) == reads_trials
    assert common.cot_config(args, model_name=model, engine=plain).reads_trials is False


def test_overrides():
    # explicit flags keep Dynasor's rule
    config = common.cot_config(parse("--k", "5"), model_name="Qwen/Qwen3-8B")
    assert config.certainty is None and (config.k, config.probe_interval) == (5, 32)
    assert "Dynasor k=5" in common.describe_rule(parse("--k", "5"), config, "Qwen/Qwen3-8B")
    # --profile none and --profile NAME
    assert common.cot_config(parse("--profile", "none"), model_name="Qwen/Qwen3-8B").certainty is None
    named = common.cot_config(parse("--profile", "qwen3"), model_name="anything")
    assert common.resolve_profile(parse("--profile", "qwen3"), "anything")[0].name == "qwen3" and named.certainty
    with pytest.raises(common.UsageError, match="not a shipped profile"):
        common.cot_config(parse("--profile", "nope"))


def test_calibration_file_that_is_a_profile(tmp_path):
    rule = {"kind": "score", "schedule": "bx+g128", "threshold": 0.8,
            "model": {"features": ["box_agree"], "mean": [0.0], "scale": [1.0], "coef": [1.0], "intercept": 0.0}}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"format": "certaindex-profile", "version": 1, "name": "mine", "models": [],
                                "probe_suffix": "S", "probe_interval": 128, "rule": rule}))
    config = common.cot_config(parse("--calibration", str(path)), model_name="Qwen/Qwen3-8B")
    assert config.certainty == rule and config.probe_interval == 128 and config.probe_suffix == "S"


def test_the_proxy_default_follows_the_model(capsys):
    from certaindex.cli.serve import add_serve_subcommand

    parser = argparse.ArgumentParser()
    add_serve_subcommand(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"])
    settings = settings_from_args(args)
    assert settings.cot.certainty is not None and settings.cot.probe_interval == 512
    assert "r1-distill-llama" in capsys.readouterr().err
    args = parser.parse_args(["serve", "--model", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "--k", "4"])
    assert settings_from_args(args).cot.certainty is None
    # an HTTP upstream returns logprobs: R1-Distill-Qwen's profile takes DEER trials live; the
    # embedded engine the proxy would create has none, so the conservative profile stands in
    qwen = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    args = parser.parse_args(["serve", "--upstream", "http://127.0.0.1:9/v1", "--model", qwen])
    assert settings_from_args(args).cot.reads_trials and "r1-distill-qwen" in capsys.readouterr().err
    args = parser.parse_args(["serve", "--model", qwen])
    assert not settings_from_args(args).cot.reads_trials and "conservative" in capsys.readouterr().err


def test_record_picks_the_profile_from_the_model_name(capsys):
    """record probes with the suffix and length of the model's profile (so its traces calibrate what
    live runs send), says which, and --profile none / --probe-tokens override."""
    from certaindex.cli.traces import _record_profile, add_subcommands
    from certaindex.evaluation.profiles import shipped_profiles
    from certaindex.traces import TraceSettings

    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers())
    base = TraceSettings(granularity=16, budget=64)
    qwen = next(p for p in shipped_profiles() if p.name == "r1-distill-qwen")
    args = parser.parse_args(["record", "--out", "x.jsonl.gz"])
    settings = _record_profile(args, base, "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B")
    assert (settings.probe_suffix, settings.probe_tokens) == (qwen.probe_suffix, qwen.probe_tokens)
    assert "early-exit profile r1-distill-qwen" in capsys.readouterr().err
    args = parser.parse_args(["record", "--out", "x.jsonl.gz", "--probe-tokens", "7"])
    assert _record_profile(args, base, "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B").probe_tokens == 7
    args = parser.parse_args(["record", "--out", "x.jsonl.gz", "--profile", "none"])
    assert _record_profile(args, base, "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B") == base
    assert "default suffix" in capsys.readouterr().err
