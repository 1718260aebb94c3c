"""Which early-exit profile the proxy runs, and why, with no flag (issue 18 item 1), and the models
it accepts (issue 20): the pure choice, the served-models reading, the per-model cache, and the
proxy answering from them (usage.certaindex, /health, 404 for an unknown model)."""

from __future__ import annotations

import logging
import socket
from dataclasses import replace

import httpx
import pytest

from certaindex.engines.http import HTTPEngine
from certaindex.evaluation import profile_choice
from certaindex.evaluation.profile_choice import ProfileChoice, apply_profile, choose_profile, reads_trials
from certaindex.evaluation.profiles import parse_profile, shipped_profiles
from certaindex.programs.cot import CoTConfig
from certaindex.server.app import create_app
from certaindex.server.model_profiles import ModelProfiles, unknown_model
from certaindex.server.settings import ServerSettings
from certaindex.server.upstream_watch import merge, served_model_ids
from tests.misbehaving_upstream import FakeUpstream, serve_in_thread

R1_QWEN = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
QWEN3 = "Qwen/Qwen3-8B"
LLAMA = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
COT = CoTConfig(budget=64, probe_interval=4, k=2, probe_tokens=8)
QUESTION = [{"role": "user", "content": "What is 6 * 7?"}]


def profile(name: str, models: list[str], schedule: str = "bx+g512") -> object:
    rule = {"kind": "score", "schedule": schedule, "threshold": 0.9,
            "model": {"features": ["box_agree"], "mean": [0.0], "scale": [1.0], "coef": [1.0], "intercept": 0.0}}
    if "tr" in schedule.split("+"):
        rule["trials"] = {"suffix": "T"}
    return parse_profile({"format": "certaindex-profile", "version": 1, "name": name, "models": models,
                          "probe_suffix": "S", "probe_interval": 64, "rule": rule})


# -- the pure choice ---------------------------------------------------------------------------


@pytest.mark.parametrize("flag, request_model, served, model, reason", [
    (LLAMA, QWEN3, [R1_QWEN], LLAMA, f"--model '{LLAMA}'"),  # --model overrides both
    (None, QWEN3, [R1_QWEN], QWEN3, f"request model '{QWEN3}'"),  # the request's model before the served one
    (None, None, [R1_QWEN, QWEN3], R1_QWEN, f"the engine serves '{R1_QWEN}'"),  # the first served
    (None, "", [R1_QWEN], R1_QWEN, f"the engine serves '{R1_QWEN}'"),  # an empty name names nothing
    ("", None, [], None, "no model name known: the generic profile"),
])
def test_the_model_name_comes_from_the_flag_then_the_request_then_the_engine(flag, request_model, served, model, reason):
    choice = choose_profile(flag_model=flag, request_model=request_model, served_models=served)
    assert choice.model == model and choice.reason == reason
    expected = {LLAMA: "generic", QWEN3: "qwen3", R1_QWEN: "r1-distill-qwen", None: "generic"}[model]  # generic names R1-Llama
    assert choice.name == expected


def test_a_name_of_no_family_gets_the_fallback_and_says_so():
    choice = choose_profile(request_model="gpt-4o", served_by="the upstream")
    assert choice.name == "generic"
    assert choice.reason == "request model 'gpt-4o', which matches no model family: the generic profile"
    assert choice.to_dict() == {"profile": "generic", "profile_reason": choice.reason}


def test_the_fallback_is_one_constant_and_used_when_that_profile_exists(monkeypatch):
    family, conservative, generic = profile("fam", ["fam"]), profile("conservative", []), profile("generic", [])
    profiles = [family, generic, conservative]
    assert profile_choice.FALLBACK_PROFILE == "generic"
    assert choose_profile(request_model="other", profiles=profiles).name == "generic"
    assert choose_profile(request_model="other", profiles=[family, conservative]).name == "conservative"
    assert choose_profile(request_model="my-fam-7b", profiles=profiles).name == "fam"
    monkeypatch.setattr(profile_choice, "FALLBACK_PROFILE", "conservative")
    assert choose_profile(request_model="other", profiles=profiles).name == "conservative"
    with pytest.raises(ValueError, match="no"):
        choose_profile(request_model="other", profiles=[family])


def test_an_engine_without_logprobs_gets_the_conservative_profile_for_a_trial_profile():
    trials = profile("fam", ["fam"], "bx+tc+tr")
    plain = profile("plain", ["plain"])
    profiles = [trials, plain, profile("generic", [], "bx+tr"), profile("conservative", [])]
    assert reads_trials(trials) and not reads_trials(plain) and not reads_trials(None)
    choice = choose_profile(request_model="fam-1", returns_logprobs=False, engine_name="llama", profiles=profiles)
    assert choice.name == "conservative" and choice.model == "fam-1"
    assert "its profile fam reads DEER trials" in choice.reason and "which llama does not return" in choice.reason
    assert choose_profile(request_model="fam-1", profiles=profiles).name == "fam"  # with logprobs
    assert choose_profile(request_model="plain", returns_logprobs=False, profiles=profiles).name == "plain"
    # a fallback that reads trials gives way too
    assert choose_profile(request_model="x", returns_logprobs=False, profiles=profiles).name == "conservative"
    assert choose_profile(request_model="x", profiles=profiles).name == "generic"


def test_the_shipped_r1_distill_qwen_profile_reads_trials_and_applies_to_a_config():
    choice = choose_profile(request_model=R1_QWEN)
    assert choice.name == "r1-distill-qwen" and reads_trials(choice.profile)
    config = apply_profile(COT, choice.profile)
    assert config.certainty == choice.profile.rule and config.probe_interval == choice.profile.probe_interval
    assert config.probe_suffix == choice.profile.probe_suffix and config.probe_tokens == choice.profile.probe_tokens
    assert config.budget == COT.budget
    dynasor = parse_profile({"format": "certaindex-profile", "version": 1, "name": "d", "models": [],
                             "probe_suffix": "S", "probe_interval": 32, "rule": {"kind": "dynasor", "k": 7}})
    assert apply_profile(COT, dynasor).k == 7 and apply_profile(COT, dynasor).certainty is None


# -- the models the proxy accepts ---------------------------------------------------------------


def test_an_unknown_model_is_refused_only_when_the_served_list_is_known():
    assert unknown_model("a", ["a", "b"]) is None
    assert unknown_model("alias", ["a"], ["alias"]) is None
    assert unknown_model(None, ["a"]) is None  # no model named: the served one, as vLLM does
    assert unknown_model("anything", []) is None  # the list is unknown (upstream down): not refused here
    refused = unknown_model("gpt-4o", ["a"], ["alias"])
    assert refused.status == 404 and refused.body()["error"] == {
        "message": "the model 'gpt-4o' does not exist here; this proxy serves 'a', 'alias'",
        "type": "invalid_request_error", "param": "model", "code": "model_not_found"}


def test_served_model_ids_and_the_merged_state_of_several_upstreams():
    assert served_model_ids({"object": "list", "data": [{"id": "a"}, {"id": "b"}, {"id": ""}, {"x": 1}, "c"]}) == ("a", "b")
    assert served_model_ids({"data": "nope"}) == () and served_model_ids([1]) == () and served_model_ids(None) == ()
    both = merge([(False, (), "u1: ConnectError"), (True, ("a", "b"), None), (True, ("b", "c"), None)], now=5.0)
    assert both.reachable and both.models == ("a", "b", "c") and both.error == "u1: ConnectError"
    assert both.checked_at == 5.0
    down = merge([(False, (), "u1: ReadTimeout")], now=1.0)
    assert not down.reachable and down.models == ()


def test_each_model_is_chosen_once_logged_once_and_the_cache_is_bounded(caplog):
    settings = ServerSettings(upstream="http://127.0.0.1:9/v1", cot=COT, profile_per_model=True)
    profiles = ModelProfiles(settings, returns_logprobs=True, engine_name="up", max_models=2)
    with caplog.at_level(logging.INFO, logger="certaindex.server"):
        first, cot = profiles.choose(QWEN3, [R1_QWEN])
        again, cot_again = profiles.choose(QWEN3, [R1_QWEN])
        assert not caplog.records  # chosen, not yet run: a passed-through request runs no profile
        for _ in range(3):
            profiles.announce(first)
    assert first is again and cot is cot_again and first.name == "qwen3"
    assert cot.certainty == first.profile.rule and cot.budget == COT.budget
    lines = [r.getMessage() for r in caplog.records if "early-exit profile" in r.getMessage()]
    assert len(lines) == 1 and "qwen3" in lines[0] and f"request model '{QWEN3}'" in lines[0]
    default, _ = profiles.choose(None, [R1_QWEN])
    assert default.name == "r1-distill-qwen" and default.reason == f"the upstream serves '{R1_QWEN}'"
    profiles.choose("x1", [])
    profiles.choose("x2", [])
    assert len(profiles._chosen) == 2  # the oldest names were forgotten
    report = profiles.report([R1_QWEN])
    assert report["profile"] == default.to_dict() and set(report["profiles_by_model"]) == {"x2"}


def test_a_fixed_profile_is_used_as_given():
    fixed = ProfileChoice(None, "--probe-interval/--k given")
    settings = ServerSettings(cot=COT, profile=fixed)
    profiles = ModelProfiles(settings, returns_logprobs=False, engine_name="e")
    assert profiles.choose(R1_QWEN, [QWEN3]) == (fixed, COT)
    assert profiles.report([]) == {"profile": {"profile": "none", "profile_reason": "--probe-interval/--k given"},
                                   "profiles_by_model": {}}
    with pytest.raises(ValueError, match="needs an upstream"):
        ServerSettings(profile_per_model=True)


# -- through the proxy --------------------------------------------------------------------------


def proxy(upstream_url: str, **changes):
    settings = replace(ServerSettings(upstream=upstream_url, policy="cot", cot=COT, upstream_timeout_s=5.0,
                                      profile_per_model=True, check_model=True), **changes)
    engine = HTTPEngine(upstream_url, backoff_s=0.01, max_retries=0, timeout_s=5.0)
    return serve_in_thread(create_app(settings, engine=engine))


def test_the_proxy_picks_the_profile_of_the_request_or_the_served_model_and_refuses_others():
    upstream = FakeUpstream(model=R1_QWEN, finish_after=6)
    with serve_in_thread(upstream.app()) as upstream_url, proxy(upstream_url) as url:
        chat = f"{url}/v1/chat/completions"
        reply = httpx.post(chat, json={"model": R1_QWEN, "messages": QUESTION}, timeout=30)
        assert reply.status_code == 200, reply.text
        usage = reply.json()["usage"]["certaindex"]
        assert usage["profile"] == "r1-distill-qwen" and usage["profile_reason"] == f"request model '{R1_QWEN}'"
        reply = httpx.post(chat, json={"messages": QUESTION}, timeout=30)  # no model: the served one's
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["certaindex"]["profile_reason"] == f"the upstream serves '{R1_QWEN}'"
        refused = httpx.post(chat, json={"model": "gpt-4o", "messages": QUESTION, "stream": True}, timeout=30)
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
        streamed = httpx.post(chat, json={"model": R1_QWEN, "messages": QUESTION, "stream": True}, timeout=30)
        finish = [line for line in streamed.text.splitlines() if '"finish_reason":"' in line]
        assert streamed.status_code == 200 and '"profile":"r1-distill-qwen"' in finish[-1]
        health = httpx.get(f"{url}/health", timeout=30).json()
        assert health["upstream_reachable"] is True and health["upstream_models"] == [R1_QWEN]
        assert health["profile"] == {"profile": "r1-distill-qwen", "profile_reason": f"the upstream serves '{R1_QWEN}'"}
        assert health["profiles_by_model"][R1_QWEN]["profile"] == "r1-distill-qwen"


def test_health_shows_the_upstream_only_to_an_authorised_caller():
    upstream = FakeUpstream(model=QWEN3)
    with serve_in_thread(upstream.app()) as upstream_url, proxy(upstream_url, api_key="s3cret") as url:
        anonymous = httpx.get(f"{url}/health", timeout=30)
        assert anonymous.status_code == 200
        assert anonymous.json() == {"status": "ok", "upstream_reachable": True}
        assert upstream_url not in anonymous.text and QWEN3 not in anonymous.text
        wrong = httpx.get(f"{url}/health", headers={"Authorization": "Bearer nope"}, timeout=30).json()
        assert set(wrong) == {"status", "upstream_reachable"}
        shown = httpx.get(f"{url}/health", headers={"Authorization": "Bearer s3cret"}, timeout=30).json()
        assert upstream_url.split("//")[1] in shown["engine"] and shown["upstream_models"] == [QWEN3]
        assert shown["profile"]["profile"] == "qwen3"


def test_health_answers_from_memory_while_the_upstream_hangs():
    """An upstream that accepts connections and never answers: the watch's bounded read marks it
    unreachable, and /health answers from that (the generous client timeout is a bound, not a measurement)."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        upstream_url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        with proxy(upstream_url) as url:
            for _ in range(3):
                health = httpx.get(f"{url}/health", timeout=10)
                assert health.status_code == 503 and health.json()["status"] == "degraded"
            assert "ReadTimeout" in health.json()["upstream_error"] or "Timeout" in health.json()["upstream_error"]
            # the served list is unknown: nothing is refused as unknown, the request fails upstream instead
            assert health.json()["upstream_models"] == []


def test_a_model_the_last_read_did_not_list_is_read_again_before_it_is_refused():
    upstream = FakeUpstream(model=QWEN3, finish_after=6)
    with serve_in_thread(upstream.app()) as upstream_url:
        settings = ServerSettings(upstream=upstream_url, policy="cot", cot=COT, profile_per_model=True, check_model=True)
        app = create_app(settings, engine=HTTPEngine(upstream_url, max_retries=0))
        with serve_in_thread(app) as url:
            assert httpx.get(f"{url}/health", timeout=30).json()["upstream_models"] == [QWEN3]
            app.state.proxy.watch.min_gap_s = 0.0  # any read is old enough to be read again
            upstream.model = LLAMA  # the upstream now serves another model
            reply = httpx.post(f"{url}/v1/chat/completions", json={"model": LLAMA, "messages": QUESTION}, timeout=30)
            assert reply.status_code == 200, reply.text
            assert reply.json()["usage"]["certaindex"]["profile"] == "generic"  # generic names R1-Llama
            assert httpx.get(f"{url}/health", timeout=30).json()["upstream_models"] == [LLAMA]
            gone = httpx.post(f"{url}/v1/chat/completions", json={"model": QWEN3, "messages": QUESTION}, timeout=30)
            assert gone.status_code == 404


# -- serve, as the docs show it (no --model), in front of the replay server ---------------------


@pytest.mark.skipif(not __import__("certaindex.traces.tokenmap", fromlist=["x"]).quicktok_available("qwen3"),
                    reason="quicktok-v1 not installed (tokenizer extra)")
def test_serve_without_model_in_front_of_the_replay_server_picks_r1_distill_qwen(tmp_path):
    """The replay server's GET /v1/models names the recorded model; `serve` with no --model reads it
    and runs its shipped profile. Outcomes only: which profile, why, and the refusal of another model."""
    import sys
    from pathlib import Path

    from certaindex.traces.governor import read_governor
    from tests.conftest import free_port, server_process

    root = Path(__file__).resolve().parents[1]
    sample = root / "src" / "certaindex" / "data" / "governor_sample"
    trajs = [t for run in read_governor(sample) for t in run.trajectories if t.seed == 42]
    served = trajs[0].model_name
    rport, pport = free_port(), free_port()
    replay = [sys.executable, "-m", "certaindex.cli", "replay-server", str(sample), "--port", str(rport),
              "--speed", "200", "--seeds", "42"]
    proxy_cmd = [sys.executable, "-m", "certaindex.cli", "serve", "--upstream", f"http://127.0.0.1:{rport}/v1",
                 "--port", str(pport), "--budget", "2048", "--log-level", "info"]
    url = f"http://127.0.0.1:{pport}"
    with server_process(replay, tmp_path / "replay.log", f"http://127.0.0.1:{rport}/health", "replay-server"), \
            server_process(proxy_cmd, tmp_path / "proxy.log", f"{url}/health", "certaindex serve"):
        health = httpx.get(f"{url}/health", timeout=30).json()
        assert health["upstream_models"] == [served]
        assert health["profile"] == {"profile": "r1-distill-qwen", "profile_reason": f"the upstream serves '{served}'"}
        for model, reason in ((None, f"the upstream serves '{served}'"), (served, f"request model '{served}'")):
            body = {"messages": [{"role": "user", "content": trajs[1].problem.strip()}], "max_tokens": 4096}
            if model:
                body["model"] = model
            reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
            assert reply.status_code == 200, reply.text[:300]
            usage = reply.json()["usage"]["certaindex"]
            assert (usage["profile"], usage["profile_reason"]) == ("r1-distill-qwen", reason)
        other = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
            "model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
        assert other.status_code == 404 and other.json()["error"]["code"] == "model_not_found"
    log = (tmp_path / "proxy.log").read_text()
    assert log.count("early-exit profile r1-distill-qwen") == 2  # once per model name: none given, and the served one


def test_solve_on_an_http_engine_without_model_picks_the_served_models_profile(capsys):
    import json

    from certaindex import cli

    upstream = FakeUpstream(model=LLAMA, finish_after=6)
    with serve_in_thread(upstream.app()) as upstream_url:
        code = cli.main(["solve", "What is 6 * 7?", "--engine", upstream_url, "--budget", "64", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["rule"].startswith("early-exit profile generic")
    assert f"the engine serves '{LLAMA}'" in payload["rule"] and "http:" not in payload["rule"]


@pytest.mark.parametrize("flags, per_model, reason", [
    (["--upstream", "http://127.0.0.1:9/v1"], True, None),
    (["--upstream", "http://127.0.0.1:9/v1", "--model", QWEN3], False, f"--model '{QWEN3}'"),
    (["--upstream", "http://127.0.0.1:9/v1", "--k", "4"], False, "--probe-interval/--k given"),
    (["--upstream", "http://127.0.0.1:9/v1", "--profile", "qwen3"], False, "--profile"),
    ([], False, "no model name known: the generic profile"),  # the embedded engine: chosen at start
])
def test_serve_chooses_per_model_only_with_an_upstream_and_no_rule_flags(flags, per_model, reason):
    from tests.test_profile_choice import serve_args

    from certaindex.cli.serve import settings_from_args

    settings = settings_from_args(serve_args(*flags))
    assert settings.profile_per_model is per_model
    assert settings.check_model is ("--upstream" in flags)
    assert (settings.profile is None) is per_model
    if reason is not None:
        assert settings.profile.reason == reason
    if per_model:
        assert settings.cot.certainty is None  # the profile is applied per request, not here
