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
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "generic"),  # 32B and Llama default to generic (issue 19)
    ("Qwen/Qwen3-8B", "qwen3"),
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "generic"),
    ("embedded:SmolLM2-135M-Instruct.Q4_1.gguf", "generic"),  # any model of no known family
])
def test_profile_from_the_model_name(model, name):
    from certaindex.evaluation.profiles import shipped_profiles

    args = parse()
    config = common.cot_config(args, model_name=model, engine=ScriptedFakeEngine(reasoning=[]))
    profile, why = common.resolve_profile(args, model)
    assert profile.name == name and profile.kind == "score" and why.startswith(f"the engine serves '{model}'")
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
    assert "early-exit profile generic " in capsys.readouterr().err  # Llama defaults to generic (issue 19)
    args = parser.parse_args(["serve", "--model", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "--k", "4"])
    assert settings_from_args(args).cot.certainty is None
    # an HTTP upstream returns logprobs: R1-Distill-Qwen's profile takes DEER trials live, and the
    # proxy asks no embedded engine for them
    qwen = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    args = parser.parse_args(["serve", "--upstream", "http://127.0.0.1:9/v1", "--model", qwen])
    settings = settings_from_args(args)
    assert settings.cot.reads_trials and not settings.embedded_logprobs
    assert "r1-distill-qwen" in capsys.readouterr().err


def serve_args(*flags: str) -> argparse.Namespace:
    from certaindex.cli.serve import add_serve_subcommand

    parser = argparse.ArgumentParser()
    add_serve_subcommand(parser.add_subparsers())
    return parser.parse_args(["serve", *flags])


@pytest.mark.parametrize("flags, name", [
    (["--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"], "r1-distill-qwen"),
    (["--model", "/models/DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf"], "r1-distill-qwen"),
    (["--model", "Qwen/Qwen3-8B"], "qwen3"),
    (["--profile", "qwen3"], "qwen3"),
    ([], "generic"),  # the embedded default model: no family, so the generic profile, which reads trials
    (["--model", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"], "generic"),
])
def test_the_proxy_embedded_engine_keeps_logprobs_for_a_profile_with_trials(flags, name, capsys):
    """Like solve: with no upstream, a profile that reads DEER trials is kept (not the conservative
    one) and the embedded engine the proxy creates is asked for token logprobs."""
    settings = settings_from_args(serve_args(*flags))
    assert settings.upstream is None and settings.embedded_logprobs is True
    assert settings.cot.reads_trials
    printed = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert f"early-exit profile {name} " in printed and "keeps token logprobs" in printed
    assert "conservative" not in printed and "does not return" not in printed


@pytest.mark.parametrize("flags", [
    ["--model", "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "--profile", "conservative"],
    ["--model", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "--profile", "r1-distill-llama"],  # a profile without trials
    ["--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "--k", "4"],  # Dynasor's rule
    ["--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "--profile", "none"],
    ["--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "--profile", "conservative"],
])
def test_the_proxy_embedded_engine_has_no_logprobs_without_trials(flags):
    """Kept logits cost memory: only a profile that reads trials asks for them."""
    settings = settings_from_args(serve_args(*flags))
    assert settings.embedded_logprobs is False and not settings.cot.reads_trials


def test_a_calibrated_profile_with_trials_asks_the_embedded_engine_for_logprobs(tmp_path):
    from certaindex.evaluation.profiles import shipped_profiles

    qwen = next(p for p in shipped_profiles() if p.name == "r1-distill-qwen")
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"format": "certaindex-profile", "version": 1, "name": "mine", "models": [],
                                "probe_suffix": qwen.probe_suffix, "probe_interval": qwen.probe_interval,
                                "rule": qwen.rule}))
    settings = settings_from_args(serve_args("--model", "anything", "--calibration", str(path)))
    assert settings.embedded_logprobs and settings.cot.reads_trials
    settings = settings_from_args(serve_args("--upstream", "http://127.0.0.1:9/v1", "--calibration", str(path)))
    assert not settings.embedded_logprobs and settings.cot.reads_trials


def test_the_app_builds_its_embedded_engine_as_the_settings_say(monkeypatch):
    """create_app hands ``embedded_logprobs`` to the engine it builds (each --workers process
    builds its own from the same settings)."""
    import httpx

    from certaindex.server import app as app_module
    from certaindex.server.settings import ServerSettings
    from tests.misbehaving_upstream import serve_in_thread

    built: list[dict] = []

    def fake_make_engine(spec, **kwargs):
        built.append({"spec": spec, **kwargs})
        return ScriptedFakeEngine(reasoning=[], logprobs=kwargs["logprobs"])

    monkeypatch.setattr(app_module, "make_engine", fake_make_engine)
    for wanted in (True, False):
        with serve_in_thread(app_module.create_app(ServerSettings(embedded_logprobs=wanted))) as url:
            assert httpx.get(f"{url}/health").status_code == 200
        assert built[-1]["spec"] == "embedded" and built[-1]["logprobs"] is wanted
    with pytest.raises(ValueError, match="embedded engine only"):
        ServerSettings(upstream="http://127.0.0.1:9/v1", embedded_logprobs=True)


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
