"""`certaindex evaluate` on Governor folders: policies, profiles, the --json schema and the error paths,
on a small hand-made folder whose outcomes are worked out by hand."""

from __future__ import annotations

import json

import pytest

from certaindex import cli
from certaindex.evaluation.governor import PolicySpec, parse_policy
from certaindex.evaluation.profiles import load_profile, parse_profile, profile_for_model, shipped_profiles
from tests.governor_data import probe_rows, traj, trial, write_boxed_run, write_run

KEYS = {"model", "dataset", "n", "full_accuracy", "full_tokens", "accuracy", "tokens", "saved", "harmful_exits"}


def folder(tmp_path, deer=True):
    """Three R1-7B problems: 0 settles on the right answer, 1 agrees early on a wrong one (false
    consensus) and ends right, 2 is wrong throughout. Probes every 64 tokens cost 10 tokens each."""
    trajs = [traj(0, "5", 640, "5"), traj(1, "7", 640, "7"), traj(2, "9", 320, "3", correct=False)]
    rows = (probe_rows(0, ["1", "5", "5", "5", "5", "5", "5", "5", "5"])
            + probe_rows(1, ["4", "4", "4", "7", "7", "7", "7", "7", "7"])
            + probe_rows(2, ["3", "3", "3", "3"]))
    trials = {0: [trial(100, "5", 0.99)], 1: [trial(100, "4", 0.999), trial(300, "7", 0.9)], 2: []} if deer else None
    return write_run(tmp_path / "gov", trajs, rows, deer=trials, splits={0: "dev", 1: "dev", 2: "train"})


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Tables are printed 200 columns wide, so cell text is not wrapped."""
    from certaindex.cli import common

    monkeypatch.setattr(common.out, "width", 200)
    monkeypatch.setattr(common.err, "width", 400)


def run(capsys, *args):
    code = cli.main(["evaluate", *args, "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_schema_and_values_for_dynasor(tmp_path, capsys):
    path = folder(tmp_path)
    out = tmp_path / "out.json"
    code, stdout, _ = run(capsys, str(path.parent), "--policy", "dynasor:k=3", "--json", str(out), "--no-png",
                          "--grade-cache", str(tmp_path / "g.json"))
    assert code == 0, stdout
    data = json.loads(out.read_text())
    assert list(data) == ["groups", "deployable_peers", "default_profiles", "missing_files", "notes"]
    assert data["missing_files"] == {"events.jsonl.gz": ["r1-distill-qwen-7b__math500__seed_42"]}
    (g,) = data["groups"]
    assert set(g) == KEYS
    assert (g["model"], g["dataset"], g["n"]) == ("r1-distill-qwen-7b", "math500", 3)
    # full: 640 + 640 + 320 tokens, 2 of 3 right. k=3: problem 0 exits at 256 (+40 probe tokens) right,
    # problem 1 at 192 (+30) on the wrong "4", problem 2 at 192 (+30) wrong as before.
    assert g["full_accuracy"] == pytest.approx(2 / 3) and g["full_tokens"] == pytest.approx(1600 / 3)
    assert g["accuracy"] == pytest.approx(1 / 3) and g["tokens"] == pytest.approx((296 + 222 + 222) / 3)
    assert g["saved"] == pytest.approx(1 - 740 / 1600)
    assert g["harmful_exits"] == 1
    assert "r1-distill-qwen-7b · math500" in stdout


def test_a_missing_optional_file_is_named_once_on_stderr_and_in_json(tmp_path, capsys):
    """Issue 20: a run without deer.jsonl.gz or events.jsonl.gz changes what evaluate can report; it
    says so, once per file, instead of dropping the DEER / events rows silently."""
    path = folder(tmp_path, deer=False)
    out = tmp_path / "out.json"
    code, _, err = run(capsys, str(path), "--json", str(out), "--no-png", "--grade-cache", str(tmp_path / "g.json"))
    assert code == 0
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 2, err
    assert sum("deer.jsonl.gz is missing in 1 of 1 runs (r1-distill-qwen-7b__math500__seed_42)" in n for n in notes) == 1
    assert sum("events.jsonl.gz is missing" in n for n in notes) == 1
    assert any("no DEER results" in n and "without trials" in n for n in notes)
    data = json.loads(out.read_text())
    assert set(data["missing_files"]) == {"deer.jsonl.gz", "events.jsonl.gz"} and len(data["notes"]) == 2
    # with every optional file present, nothing is said
    path = write_run(tmp_path / "full", [traj(0, "5", 640, "5")], probe_rows(0, ["5"] * 9),
                     events={0: []}, deer={0: [trial(100, "5", 0.99)]})
    code, _, err = run(capsys, str(path), "--json", str(out), "--no-png", "--grade-cache", str(tmp_path / "g.json"))
    assert code == 0 and "note:" not in err and json.loads(out.read_text())["missing_files"] == {}


def test_missing_notes_group_runs_by_model():
    from certaindex.cli.governor import missing_notes

    missing = {"deer.jsonl.gz": [f"r1-distill-qwen-32b__math500__seed_{s}" for s in (42, 43, 44)]
               + ["qwen3-8b__aime24__seed_42"]}
    (note,) = missing_notes(missing, 36)
    assert note.startswith("deer.jsonl.gz is missing in 4 of 36 runs (r1-distill-qwen-32b (3 runs); "
                           "qwen3-8b__aime24__seed_42)")


def test_peers_chosen_on_train_are_read_on_dev():
    """The deployable contest: each peer's knob is the one saving most within a point of full
    reasoning on TRAIN; its figures are read on the reported problems. None in band on train: the
    user keeps full reasoning. DEER at the fixed 0.999 is reported beside them."""
    from certaindex.evaluation.governor import Point, deployable_points

    def pt(family, label, acc, saved):
        return Point(family, label, acc, 1000 * (1 - saved), saved, 0)

    train = [pt("full", "full reasoning", 0.90, 0.0), pt("dynasor", "dynasor k=4 interval=64", 0.85, 0.5),
             pt("dynasor", "dynasor k=8 interval=64", 0.895, 0.3), pt("deer", "deer 0.9", 0.80, 0.6),
             pt("deer", "deer 0.999", 0.85, 0.4)]
    dev = [pt("full", "full reasoning", 0.80, 0.0), pt("dynasor", "dynasor k=4 interval=64", 0.80, 0.55),
           pt("dynasor", "dynasor k=8 interval=64", 0.78, 0.35), pt("deer", "deer 0.9", 0.79, 0.6),
           pt("deer", "deer 0.999", 0.75, 0.45), pt("events", "events k=2", 0.8, 0.2)]
    peers = {p.family: p for p in deployable_points(dev, train)}
    assert set(peers) == {"dynasor-train", "deer-train", "deer-fixed"}  # no events on train: left out
    assert peers["dynasor-train"].label == "dynasor k=8 interval=64" and peers["dynasor-train"].saved == 0.35
    assert peers["deer-train"].label.startswith("none in band on train") and peers["deer-train"].saved == 0.0
    assert peers["deer-fixed"].label == "deer 0.999" and peers["deer-fixed"].accuracy == 0.75
    assert [p.family for p in deployable_points(dev, None)] == ["deer-fixed"]


def test_split_dev_shows_the_peers_chosen_on_train(tmp_path, capsys):
    path = folder(tmp_path)
    out = tmp_path / "out.json"
    code, stdout, _ = run(capsys, str(path), "--split", "dev", "--json", str(out), "--no-png",
                          "--grade-cache", str(tmp_path / "g.json"))
    assert code == 0 and "dynasor, chosen on train" in stdout and "DEER, fixed threshold" in stdout
    rows = {r["family"]: r for r in json.loads(out.read_text())["deployable_peers"]}
    assert {"dynasor-train", "deer-train", "deer-fixed"} <= set(rows)
    assert rows["deer-fixed"]["label"] == "deer 0.999" and rows["deer-fixed"]["n"] == 2
    code, stdout, _ = run(capsys, str(path), "--no-png", "--grade-cache", str(tmp_path / "g.json"))
    assert "dynasor, chosen on train" not in stdout and "shown with --split dev" in " ".join(stdout.split())


def test_a_shipped_profile_by_name(tmp_path, capsys):
    """--policy profile:NAME is the shipped file of that name, applied to every model."""
    from importlib import resources

    path = folder(tmp_path)
    named, explicit = tmp_path / "named.json", tmp_path / "explicit.json"
    shipped = resources.files("certaindex") / "data" / "profiles" / "conservative.json"
    for policy, target in (("profile:conservative", named), (str(shipped), explicit)):
        assert run(capsys, str(path), "--policy", policy, "--json", str(target), "--no-png",
                   "--grade-cache", str(tmp_path / "g.json"))[0] == 0
    assert json.loads(named.read_text())["groups"] == json.loads(explicit.read_text())["groups"]
    assert parse_policy("profile:qwen3").profile.name == "qwen3"
    code, _, err = run(capsys, str(path), "--policy", "profile:nope", "--no-png")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "no shipped profile is called 'nope'" in lines[0]
    assert all(p.name in lines[0] for p in shipped_profiles())


def test_a_wrong_path_is_named_as_missing(tmp_path, capsys):
    """Issue 20: a mistyped folder is reported as missing, not as 'a trace file'."""
    wrong = str(tmp_path / "governr")
    for argv in (["evaluate", wrong, "--policy", "default", "--quiet"], ["evaluate", wrong, "--quiet"],
                 ["calibrate", wrong, "--quiet"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert f"{wrong}: no such file or folder" in " ".join(err.split()) and "apply to" not in err


def test_deer_oracle_and_split(tmp_path, capsys):
    path = folder(tmp_path)
    out = tmp_path / "deer.json"
    assert run(capsys, str(path), "--policy", "deer:0.995", "--json", str(out), "--no-png",
               "--grade-cache", str(tmp_path / "g.json"))[0] == 0
    (g,) = json.loads(out.read_text())["groups"]
    # problem 0: no trial reaches 0.995, runs on (640 + 7); problem 1 exits at 100 on "4" (+7); 2 has none.
    assert g["tokens"] == pytest.approx((647 + 107 + 320) / 3) and g["harmful_exits"] == 1
    assert run(capsys, str(path), "--policy", "oracle", "--split", "dev", "--json", str(out), "--no-png",
               "--grade-cache", str(tmp_path / "g.json"))[0] == 0
    (g,) = json.loads(out.read_text())["groups"]
    # dev: problems 0 and 1. Oracle exits at 128 (+20) and 256 (+40); both right.
    assert g["n"] == 2 and g["accuracy"] == 1.0 and g["tokens"] == pytest.approx((148 + 296) / 2)


def test_default_policy_uses_the_models_shipped_profile(tmp_path, capsys):
    path = folder(tmp_path)
    out = tmp_path / "default.json"
    png = tmp_path / "plot.png"
    code, stdout, _ = run(capsys, str(path.parent), "--json", str(out), "--png", str(png), "--grade-cache", str(tmp_path / "g.json"))
    assert code == 0 and png.stat().st_size > 0
    (g,) = json.loads(out.read_text())["groups"]
    profile = profile_for_model("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B")
    assert profile.name == "r1-distill-qwen"
    # the same numbers as naming the profile's file explicitly
    from importlib import resources

    shipped = resources.files("certaindex") / "data" / "profiles" / f"{profile.name}.json"
    explicit = tmp_path / "explicit.json"
    assert run(capsys, str(path.parent), "--policy", str(shipped),
               "--json", str(explicit), "--no-png", "--grade-cache", str(tmp_path / "g.json"))[0] == 0
    assert json.loads(explicit.read_text())["groups"] == [g]
    assert "certaindex default" in stdout


def test_the_default_runs_the_no_trial_profile_where_no_trials_are_recorded(tmp_path, capsys):
    """Issue 19: a default profile reading DEER trials on trajectories without recorded trials runs the
    conservative profile there (the proxy's rule for an engine without logprobs), and says so; with
    trials recorded it runs as shipped."""
    from certaindex.evaluation.profile_choice import reads_trials

    assert reads_trials(profile_for_model("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"))
    g = str(tmp_path / "g.json")
    results = {}
    for deer in (False, True):
        path = folder(tmp_path / str(deer), deer=deer)
        for policy in ("default", "profile:conservative"):
            target = tmp_path / f"{deer}-{policy.replace(':', '-')}.json"
            code, stdout, _ = run(capsys, str(path), "--policy", policy, "--json", str(target), "--no-png", "--grade-cache", g)
            assert code == 0
            results[deer, policy] = json.loads(target.read_text())
    (named,) = results[False, "default"]["default_profiles"]
    assert named["profile"].startswith("conservative (score ") and named["profile"].endswith(
        "[no trials recorded; r1-distill-qwen reads them]")
    assert results[False, "default"]["groups"] == results[False, "profile:conservative"]["groups"]
    (named,) = results[True, "default"]["default_profiles"]
    assert named["profile"].startswith("r1-distill-qwen (score ") and "no trials" not in named["profile"]


def test_default_profile_stands_in_only_for_trial_profiles_without_trials(tmp_path):
    from dataclasses import replace

    from certaindex.evaluation.governor import default_label, default_profile
    from certaindex.traces.governor import read_governor

    def prof(name, schedule):
        rule = {"kind": "score", "schedule": schedule, "threshold": 0.9, "trials": {"suffix": "T"},
                "model": {"features": ["box_agree"], "mean": [0.0], "scale": [1.0], "coef": [1.0], "intercept": 0.0}}
        return parse_profile({"format": "certaindex-profile", "version": 1, "name": name, "models": [name],
                              "probe_suffix": "S", "probe_interval": 64, "rule": rule})

    (recorded,) = read_governor(folder(tmp_path), "all")
    t = recorded.trajectories[0]
    with_trials, without = replace(t, trials=[]), replace(t, trials=None)
    for schedule, stands_in in (("bx+tc+tr", True), ("bx+tc+g512", False)):
        own = prof("fam", schedule)
        assert default_profile(with_trials, lambda _m: own) is own
        picked = default_profile(without, lambda _m: own)
        assert (picked.name == "conservative") is stands_in and (picked is own) is not stands_in
    own = prof("fam", "bx+tr")
    label = default_label([with_trials, without], lambda _m: own)
    assert label.startswith("default: conservative (score ") and "[no trials recorded; fam reads them]" in label
    assert "; fam (score bx+tr" in label


def test_a_profile_file_as_policy(tmp_path, capsys):
    path = folder(tmp_path)
    prof = tmp_path / "mine.json"
    prof.write_text(json.dumps({"format": "certaindex-profile", "version": 1, "name": "mine", "models": [],
                                "probe_suffix": "S", "probe_interval": 128, "rule": {"kind": "dynasor", "k": 2}}))
    out = tmp_path / "p.json"
    assert run(capsys, str(path), "--policy", str(prof), "--json", str(out), "--no-png", "--grade-cache", str(tmp_path / "g.json"))[0] == 0
    (g,) = json.loads(out.read_text())["groups"]
    # interval 128, k=2: problem 0 probes at 128 ("5"), 256 ("5") -> exit 256 (+20); 1: 128 "4", 256 "7", 384 "7"
    # -> exit 384 (+30) right; 2: 128 "3", 256 "3" -> exit 256 (+20) wrong.
    assert g["tokens"] == pytest.approx((276 + 414 + 276) / 3) and g["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--policy", "dynasor:k=0"], "needs k >= 1"),
        (["--policy", "dynasor:k=8,interval=100"], "not a multiple of the traces' 64-token grid"),
        (["--policy", "deer:high"], "confidence threshold"),
        (["--policy", "sometimes"], "is not a policy"),
        (["--policy", "missing.json"], "no such profile file"),
        (["--split", "test"], "--split on a Governor folder takes"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, args, fragment):
    path = folder(tmp_path)
    code, _, err = run(capsys, str(path), *args, "--no-png", "--grade-cache", str(tmp_path / "g.json"))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], err


def test_cli_errors_about_the_data(tmp_path, capsys):
    path = folder(tmp_path, deer=False)
    code, _, err = run(capsys, str(path), "--policy", "deer:0.9", "--no-png", "--grade-cache", str(tmp_path / "g.json"))
    assert code == 2 and "no DEER trials" in err
    (path / "trajectories.jsonl.gz").write_bytes(b"\x1f\x8b broken")
    code, _, err = run(capsys, str(path), "--no-png")
    assert code == 2 and "trajectories.jsonl.gz:1" in err
    code, _, err = run(capsys, "--no-png")
    assert code == 2 and "needs a PATH" in err
    code, _, err = run(capsys, str(path), "--sample", "--no-png")
    assert code == 2 and "either a PATH or --sample" in err


def test_trace_file_options_still_checked(tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    trace.write_text("{}\n")
    code, _, err = run(capsys, str(trace), "--policy", "oracle")
    assert code == 2 and "apply to Governor folders" in err
    code, _, err = run(capsys, str(trace), "--split", "dev")
    assert code == 2 and "fraction" in err


def test_parse_policy_forms():
    assert parse_policy("default") == PolicySpec("default")
    assert parse_policy("dynasor:k=8") == PolicySpec("dynasor", k=8, interval=64)
    assert parse_policy("dynasor:k=8,interval=128") == PolicySpec("dynasor", k=8, interval=128)
    assert parse_policy("events:k=4") == PolicySpec("events", k=4)
    assert parse_policy("deer:0.95") == PolicySpec("deer", threshold=0.95)
    with pytest.raises(ValueError, match="no interval"):
        parse_policy("events:k=4,interval=128")


def test_shipped_profiles_cover_the_families_and_never_use_k3():
    profiles = {p.name: p for p in shipped_profiles()}
    assert set(profiles) >= {"r1-distill-qwen", "qwen3", "r1-distill-llama", "conservative"}
    for p in profiles.values():
        assert not (p.kind == "dynasor" and p.rule["k"] <= 3), p.name
        assert p.probe_interval % 64 == 0 and p.probe_suffix
    assert profile_for_model("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B").name == "generic"  # issue 19
    assert profile_for_model("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B").name == "r1-distill-qwen"
    assert profile_for_model("Qwen/Qwen3-8B").name == "qwen3"
    assert profile_for_model("deepseek-ai/DeepSeek-R1-Distill-Llama-8B").name == "generic"
    assert profile_for_model("HuggingFaceTB/SmolLM2-135M-Instruct").name == "generic"
    assert profile_for_model("HuggingFaceTB/SmolLM2-135M-Instruct", logprobs=False).name == "conservative"


def test_profile_validation(tmp_path):
    base = {"format": "certaindex-profile", "version": 1, "name": "x", "models": ["x"], "probe_suffix": "S",
            "probe_interval": 64, "rule": {"kind": "dynasor", "k": 8}}
    assert parse_profile(base).label.startswith("x (dynasor k=8")
    for bad, fragment in ((dict(base, rule={"kind": "magic"}), "rule kind 'magic' is unknown"),
                          (dict(base, rule={"kind": "dynasor"}), "integer k"),
                          (dict(base, probe_interval=0), "probe_interval"),
                          (dict(base, format="x"), "not a certaindex profile"),
                          (dict(base, models=["("]), "x.json")):
        with pytest.raises(ValueError, match=fragment):
            parse_profile(bad, "x.json")
    (tmp_path / "p.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"p\.json:1: profile is not valid JSON"):
        load_profile(tmp_path / "p.json")


def test_calibrate_with_nothing_certified_exits_3_for_every_input(tmp_path, capsys):
    """Issue 20: one documented exit status (3, nothing written) when calibrate certifies nothing,
    whether PATH is a Governor folder, a folder of trace files or a trace file (those two are
    covered in test_self_calibration and test_evaluate). 60 problems are too few for alpha 0.02."""
    path = write_boxed_run(tmp_path / "gov", 60)
    prof = tmp_path / "mine.json"
    code = cli.main(["calibrate", str(path.parent), "--schedule", "bx+g256", "--out", str(prof),
                     "--grade-cache", str(tmp_path / "g.json"), "--quiet"])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 3 and not prof.exists() and "no threshold certified" in out and "no profile written" in out
