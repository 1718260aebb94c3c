"""A model recorded without DEER trials runs the same profile live as offline: the replay server
lists no ``logprobs`` among its ``supported_parameters`` (it has no trial to answer), so the proxy's
rule for an engine without logprobs picks ``conservative``, the profile ``evaluate --policy
default`` replays on a trajectory without recorded trials. Hand-made Governor folders; no model."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from certaindex.evaluation.governor import default_profile
from certaindex.server.model_profiles import ModelProfiles
from certaindex.server.replay import create_replay_app
from certaindex.server.settings import ServerSettings
from certaindex.server.upstream_watch import models_without_logprobs
from certaindex.serving.batch_clock import BatchClock
from certaindex.serving.costmodel import CostModel
from certaindex.traces.governor import read_governor
from certaindex.traces.governor_engine import GovernorReplay
from tests.governor_data import probe_rows, traj, trial, write_run
from tests.misbehaving_upstream import serve_in_thread
from tests.test_profile_resolution import COT, proxy

ROOT = Path(__file__).resolve().parents[1]
COST = ROOT / "benchmarks" / "results" / "gpu" / "cost-model-h100-qwen2.5-32b.json"
R1_32B = "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"


def r1_32b_run(tmp_path: Path, with_trials: bool):
    """Three R1-32B MATH500 trajectories, with recorded DEER trials (deer.jsonl.gz) or without."""
    trajs = [traj(pid, "7", 640, "7", run_settings={"model": R1_32B, "dataset": "math500"}) for pid in range(3)]
    rows = [r for pid in range(3) for r in probe_rows(pid, ["7"] * 9)]
    deer = {pid: [trial(128, "7", 0.9)] for pid in range(3)} if with_trials else None
    path = write_run(tmp_path / "gov", trajs, rows, name="r1-distill-qwen-32b__math500__seed_42", deer=deer)
    (run,) = read_governor(path.parent)
    return run.trajectories


@pytest.mark.parametrize("with_trials, expected", [(False, "conservative"), (True, "generic")])
def test_the_proxy_in_front_of_the_replay_runs_the_profile_evaluate_replays(tmp_path, with_trials, expected):
    trajs = r1_32b_run(tmp_path, with_trials)
    offline = {default_profile(t).name for t in trajs}
    app = create_replay_app(GovernorReplay(trajs), BatchClock(CostModel.load(COST), speed=100))
    with serve_in_thread(app) as upstream_url, proxy(upstream_url) as url:
        listed = httpx.get(f"{upstream_url}/v1/models", timeout=30).json()["data"][0]
        health = httpx.get(f"{url}/health", timeout=30).json()
    assert listed["id"] == R1_32B and ("logprobs" in listed["supported_parameters"]) is with_trials
    assert offline == {expected}
    assert health["profile"]["profile"] == expected
    if not with_trials:
        assert "lists no logprobs" in health["profile"]["profile_reason"]


def test_only_a_list_of_supported_parameters_without_logprobs_says_none():
    payload = {"data": [{"id": "a", "supported_parameters": ["max_tokens", "temperature"]},
                        {"id": "b", "supported_parameters": ["max_tokens", "logprobs"]},
                        {"id": "c"},  # vLLM, SGLang, llama.cpp's server: no list, and logprobs returned
                        {"id": "d", "supported_parameters": "logprobs"}, "e"]}
    assert models_without_logprobs(payload) == ("a",)
    assert models_without_logprobs({"data": "x"}) == () and models_without_logprobs(None) == ()


def test_a_model_listed_without_logprobs_is_chosen_apart_from_the_same_name_with_them():
    settings = ServerSettings(upstream="http://127.0.0.1:9/v1", cot=COT, profile_per_model=True)
    profiles = ModelProfiles(settings, returns_logprobs=True, engine_name="up")
    with_them, _ = profiles.choose(None, [R1_32B])
    without, _ = profiles.choose(None, [R1_32B], without_logprobs=[R1_32B])
    named, _ = profiles.choose(R1_32B, [R1_32B], without_logprobs=[R1_32B])
    assert (with_them.name, without.name, named.name) == ("generic", "conservative", "conservative")
    assert "lists no logprobs for" in without.reason and "lists no logprobs" not in with_them.reason
    assert profiles.report([R1_32B], [R1_32B])["profile"]["profile"] == "conservative"
    assert profiles.choose(None, [R1_32B], without_logprobs=["other"])[0] is with_them
