"""SchedulerCore: property tests on random operation sequences, plus the policies' exact orders."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from certaindex.scheduler.core import CERTAINTY_SCALE, Gang, SchedulerCore

Q = CERTAINTY_SCALE
CAPACITY = 6
AGING_S = 10.0
FLOOR = 0.25


class CoreMachine(RuleBasedStateMachine):
    """Drives a core with random add/submit/report/dispatch/finish/cancel/remove/advance and checks
    it against a plain model after every step."""

    policy = "certaindex"

    def __init__(self) -> None:
        super().__init__()
        self.core = SchedulerCore(self.policy, capacity=CAPACITY, floor_fraction=FLOOR, aging_s=AGING_S)
        self.now = 0.0
        self.next_pid = 0
        self.programs: dict[str, dict] = {}  # pid -> budget, used, certaindex, deadline, priority
        self.pending: dict[int, Gang] = {}
        self.running: dict[int, Gang] = {}
        self.started_order: list[int] = []
        self.ended_slack = 0  # budgets ended programs left unused (what they could have lent)

    # -- helpers -----------------------------------------------------------------------------

    def reserved(self, pid: str) -> int:
        return sum(g.reserved_tokens for g in (*self.pending.values(), *self.running.values()) if g.program_id == pid)

    def running_width(self) -> int:
        return sum(g.width for g in self.running.values())

    def fits(self, width: int, running: int) -> bool:
        return running == 0 or running + width <= CAPACITY

    def age_key(self, gang: Gang) -> tuple[float, int]:
        return self.programs[gang.program_id]["arrived"], gang.gang_id

    def remaining(self, pid: str) -> int:
        p = self.programs[pid]
        return max(0, p["budget"] - p["used"]) * (Q - round(p["certaindex"] * Q))

    def missed(self, pid: str) -> bool:
        deadline = self.programs[pid]["deadline"]
        return deadline is not None and deadline <= self.now

    # -- rules -------------------------------------------------------------------------------

    @initialize()
    def first_program(self) -> None:
        self.add(budget=500, priority=0, deadline=None)

    @rule(
        budget=st.integers(1, 2000),
        priority=st.integers(0, 2),
        deadline=st.one_of(st.none(), st.floats(0, 100)),
    )
    def add(self, budget: int, priority: int, deadline: float | None) -> None:
        pid = f"p{self.next_pid}"
        self.next_pid += 1
        self.core.add_program(pid, now=self.now, budget=budget, deadline=deadline, priority=priority)
        self.programs[pid] = {"budget": budget, "used": 0, "certaindex": 0.0, "deadline": deadline, "priority": priority,
                              "arrived": self.now}

    @precondition(lambda self: self.programs)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        pid = data.draw(st.sampled_from(sorted(self.programs)))
        self.ended_slack += max(0, self.programs[pid]["budget"] - self.programs[pid]["used"] - self.reserved(pid))
        self.core.remove_program(pid)
        del self.programs[pid]
        self.pending = {i: g for i, g in self.pending.items() if g.program_id != pid}

    @precondition(lambda self: self.programs)
    @rule(data=st.data(), width=st.integers(1, CAPACITY + 2))
    def submit(self, data: st.DataObject, width: int) -> None:
        pid = data.draw(st.sampled_from(sorted(self.programs)))
        allowance = self.core.allowance(pid)
        if allowance // width < 1:
            return  # the runtime refuses (BudgetExhausted): nothing reaches the core
        max_tokens = data.draw(st.integers(1, min(300, allowance // width)))
        gang = self.core.submit(pid, width=width, max_tokens=max_tokens, now=self.now)
        assert gang.width == width and gang.program_id == pid
        assert all(gang.gang_id > g for g in (*self.pending, *self.running, *self.started_order))
        self.pending[gang.gang_id] = gang

    @precondition(lambda self: self.programs)
    @rule(data=st.data(), certaindex=st.floats(0, 1))
    def report(self, data: st.DataObject, certaindex: float) -> None:
        pid = data.draw(st.sampled_from(sorted(self.programs)))
        self.core.report(pid, certaindex=certaindex)
        self.programs[pid]["certaindex"] = certaindex

    @rule(seconds=st.sampled_from([0.0, 1.0, 4.0, 11.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        gang = self.running.pop(data.draw(st.sampled_from(sorted(self.running))))
        tokens = data.draw(st.integers(0, gang.reserved_tokens))
        self.core.finish(gang, tokens=tokens)
        if gang.program_id in self.programs:
            self.programs[gang.program_id]["used"] += tokens

    @precondition(lambda self: self.running or self.pending)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        gang_id = data.draw(st.sampled_from(sorted((*self.running, *self.pending))))
        gang = self.running.pop(gang_id, None) or self.pending.pop(gang_id)
        self.core.cancel(gang)
        with pytest.raises(KeyError):
            self.core.cancel(gang)

    @rule()
    def dispatch(self) -> None:
        running_before = self.running_width()
        oldest = min(self.pending.values(), key=self.age_key, default=None)
        heads = {}
        for g in sorted(self.pending.values(), key=lambda g: g.gang_id):
            heads.setdefault(g.program_id, g)
        started = self.core.dispatch(now=self.now)
        for gang in started:
            assert self.pending.pop(gang.gang_id) == gang, "only pending gangs start, whole and once"
            self.running[gang.gang_id] = gang
        self.check_order(started, running_before, oldest, heads)
        # Work conserving: a dispatch never leaves the engine idle while gangs wait.
        assert self.running or not self.pending
        self.started_order.extend(g.gang_id for g in started)

    def check_order(self, started: list[Gang], running_before: int, oldest: Gang | None, heads: dict) -> None:
        if self.policy == "fcfs":
            # Exact submission order, no overtaking: the first gang left waiting does not fit.
            ids = self.started_order + [g.gang_id for g in started]
            assert ids == sorted(set(ids))
            if self.pending:
                head = min(self.pending.values(), key=lambda g: g.gang_id)
                assert not self.fits(head.width, self.running_width())
                assert all(g.gang_id < head.gang_id for g in started), "a later gang overtook a waiting one"
            return
        if oldest is not None and self.now - self.age_key(oldest)[0] >= AGING_S:
            # Aged (per program): the oldest program's gang goes first, or nothing starts until it
            # fits (no starvation).
            if self.fits(oldest.width, running_before):
                assert started and started[0] == oldest
            else:
                assert started == []
            return
        at_risk = any(
            p["deadline"] is not None and p["deadline"] - AGING_S <= self.now < p["deadline"]
            for p in self.programs.values()
        )
        if started and not at_risk:
            # Shortest remaining work first within the best priority class, among gangs that fit;
            # programs past their deadline after all the others of their class.
            fitting = [g for g in heads.values() if self.fits(g.width, running_before)]
            best = min(
                fitting,
                key=lambda g: (self.programs[g.program_id]["priority"], self.missed(g.program_id),
                               self.remaining(g.program_id), g.gang_id),
            )
            assert started[0] == best

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def capacity_respected(self) -> None:
        width = self.running_width()
        assert self.core.running == width
        assert width <= CAPACITY or (len(self.running) == 1 and width > CAPACITY)

    @invariant()
    def counters_match(self) -> None:
        assert self.core.pending_gangs == len(self.pending)
        assert self.core.live_programs == len(self.programs)

    @invariant()
    def budget_conserved_and_floors_kept(self) -> None:
        total = 0
        for pid, p in self.programs.items():
            allowance = self.core.allowance(pid)
            assert allowance >= 0
            committed = p["used"] + self.reserved(pid)
            # Every program keeps its floor share minus what it used or holds in live gangs.
            assert allowance >= math.ceil(FLOOR * p["budget"]) - committed
            total += allowance + committed
        # Budget is conserved over live programs; the only excess allowed is budget of ended
        # programs that live ones had already borrowed and still hold (carried), never more.
        carried = self.core.carried_budget
        assert total <= sum(p["budget"] for p in self.programs.values()) + carried
        assert carried <= self.ended_slack
        overdrawn = any(p["used"] + self.reserved(pid) > p["budget"] for pid, p in self.programs.items())
        assert overdrawn or carried == 0


class FCFSMachine(CoreMachine):
    policy = "fcfs"


SETTINGS = settings(
    max_examples=120, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestCertaindexCore = CoreMachine.TestCase
TestCertaindexCore.settings = SETTINGS
TestFCFSCore = FCFSMachine.TestCase
TestFCFSCore.settings = SETTINGS


# -- exact behaviour -----------------------------------------------------------------------------


def test_certaindex_prefers_the_program_with_less_remaining_work() -> None:
    core = SchedulerCore("certaindex", capacity=1)
    for pid in ("unsure", "sure"):
        core.add_program(pid, now=0, budget=1000)
    core.report("sure", certaindex=0.9)
    core.report("unsure", certaindex=0.1)
    first = core.submit("unsure", width=1, max_tokens=10, now=0)
    second = core.submit("sure", width=1, max_tokens=10, now=1)
    assert core.dispatch(now=2) == [second]
    core.finish(second, tokens=10)
    assert core.dispatch(now=3) == [first]


def test_fcfs_ignores_certaindex_and_keeps_submission_order() -> None:
    core = SchedulerCore("fcfs", capacity=1)
    for pid in ("unsure", "sure"):
        core.add_program(pid, now=0, budget=1000)
    core.report("sure", certaindex=1.0)
    first = core.submit("unsure", width=1, max_tokens=10, now=0)
    core.submit("sure", width=1, max_tokens=10, now=1)
    assert core.dispatch(now=2) == [first]


def test_priority_class_beats_remaining_work_and_at_risk_deadlines_go_first() -> None:
    core = SchedulerCore("certaindex", capacity=1, aging_s=100, deadline_slack_s=5)
    core.add_program("low", now=0, budget=10, priority=1)  # little work left, but a worse class
    core.add_program("big", now=0, budget=5000)
    core.add_program("due", now=0, budget=9000, deadline=20)
    gangs = {pid: core.submit(pid, width=1, max_tokens=1, now=0) for pid in ("low", "big", "due")}
    assert core.dispatch(now=1) == [gangs["big"]]  # deadline not at risk yet: shortest work in class 0
    core.finish(gangs["big"], tokens=1)
    assert core.dispatch(now=16) == [gangs["due"]]  # 4 s from its deadline: at risk, goes first
    core.finish(gangs["due"], tokens=1)
    assert core.dispatch(now=17) == [gangs["low"]]


def test_a_missed_deadline_no_longer_starves_a_program_that_can_still_make_its_own() -> None:
    # The failure found on real traces: a program past its deadline kept deadline priority, so under
    # overload the core served programs that had already missed and made the feasible ones miss too.
    core = SchedulerCore("certaindex", capacity=1, aging_s=1000, deadline_slack_s=30)
    core.add_program("late", now=0, budget=8000, deadline=10)  # already at risk, and missed at t=10
    core.add_program("feasible", now=5, budget=8000, deadline=60)  # at risk from t=30
    late = core.submit("late", width=1, max_tokens=100, now=5)
    assert core.dispatch(now=5) == [late]  # at risk, before its deadline: first
    core.finish(late, tokens=100)
    gangs = {pid: core.submit(pid, width=1, max_tokens=100, now=31) for pid in ("late", "feasible")}
    # At t=31 both are within 30 s of their deadline, but "late" missed its own at t=10 (the old core
    # ranked it first: the earliest deadline). Now the feasible one goes first, every step.
    for step in range(3):
        started = core.dispatch(now=31 + step)
        assert started == [gangs["feasible"]]
        core.finish(started[0], tokens=100)
        gangs["feasible"] = core.submit("feasible", width=1, max_tokens=100, now=31 + step)
    # The missed program also yields to a program with no deadline (it is behind its whole class) ...
    core.add_program("plain", now=40, budget=8000)
    plain = core.submit("plain", width=1, max_tokens=100, now=40)
    core.cancel(gangs["feasible"])
    core.remove_program("feasible")
    assert core.dispatch(now=40) == [plain]
    core.finish(plain, tokens=100)
    assert core.engine_priority(gangs["late"]) > core.engine_priority(core.submit("plain", width=1, max_tokens=1,
                                                                                    now=40))
    # ... but still runs when nothing else waits, and aging bounds its wait whatever comes.
    core.remove_program("plain")
    assert core.dispatch(now=41) == [gangs["late"]]


def test_a_missed_program_runs_first_once_aged() -> None:
    core = SchedulerCore("certaindex", capacity=1, aging_s=50, deadline_slack_s=5)
    core.add_program("late", now=0, budget=8000, deadline=10)
    late = core.submit("late", width=1, max_tokens=100, now=0)
    core.add_program("short", now=20, budget=100)
    short = core.submit("short", width=1, max_tokens=10, now=20)
    assert core.dispatch(now=20) == [short]  # missed: behind the feasible program
    core.finish(short, tokens=10)
    core.submit("short", width=1, max_tokens=10, now=21)
    assert core.dispatch(now=50) == [late]  # aged 50 s: oldest program first, deadline or not


def test_many_missed_deadlines_keep_the_bookkeeping_bounded() -> None:
    core = SchedulerCore("certaindex", capacity=1, aging_s=10_000, deadline_slack_s=1)
    for i in range(500):
        core.add_program(f"p{i}", now=i, budget=100, deadline=i + 2)
        gang = core.submit(f"p{i}", width=1, max_tokens=10, now=i)
        assert core.dispatch(now=i + 3) == [gang]  # missed, but the only one waiting
        core.finish(gang, tokens=10)
        core.remove_program(f"p{i}")
    assert len(core._misses) <= 64 and len(core._risks) <= 64 and core._unmissed == 0 and core._unrisked == 0


def test_gangs_are_never_split_and_wide_gangs_start_alone() -> None:
    core = SchedulerCore("certaindex", capacity=4)
    core.add_program("a", now=0, budget=10_000)
    wide = core.submit("a", width=6, max_tokens=10, now=0)
    narrow = core.submit("a", width=3, max_tokens=10, now=0)
    assert core.dispatch(now=0) == [wide]  # oversized: alone, since nothing runs
    assert core.running == 6
    assert core.dispatch(now=0) == []  # nothing joins a lone oversized gang
    core.finish(wide, tokens=60)
    assert core.dispatch(now=0) == [narrow]
    three = core.submit("a", width=3, max_tokens=10, now=0)
    assert core.dispatch(now=0) == []  # 3 + 3 > 4: it waits whole rather than running split
    core.cancel(narrow)
    assert core.dispatch(now=0) == [three]


def test_an_aged_gang_holds_back_later_ones_until_it_fits() -> None:
    core = SchedulerCore("certaindex", capacity=4, aging_s=10)
    core.add_program("a", now=0, budget=10_000)
    core.add_program("b", now=0, budget=10_000)
    blockers = [core.submit("a", width=1, max_tokens=1, now=0) for _ in range(3)]
    assert core.dispatch(now=0) == blockers
    wide = core.submit("b", width=4, max_tokens=1, now=1)
    small = core.submit("a", width=1, max_tokens=1, now=2)
    assert core.dispatch(now=3) == [small]  # not aged yet: small work backfills the free slot
    core.finish(small, tokens=1)
    late = core.submit("a", width=1, max_tokens=1, now=12)
    assert core.dispatch(now=12) == []  # `wide` aged: the free slot is kept for it
    for gang in blockers:
        core.finish(gang, tokens=1)
    assert core.dispatch(now=13) == [wide]
    core.finish(wide, tokens=4)
    assert core.dispatch(now=14) == [late]


def test_aging_is_per_program_so_the_oldest_program_keeps_the_engine() -> None:
    """Under overload every gang waits past aging_s. The oldest *program*'s next step goes before a
    gang that has waited longer, so it finishes instead of the engine switching at every step."""
    core = SchedulerCore("certaindex", capacity=1, aging_s=10)
    core.add_program("old", now=0, budget=10_000)
    step = core.submit("old", width=1, max_tokens=10, now=0)
    assert core.dispatch(now=0) == [step]
    core.add_program("new", now=1, budget=100)  # far less remaining work than `old`
    waiting = core.submit("new", width=1, max_tokens=10, now=2)
    assert core.dispatch(now=2) == []
    core.finish(step, tokens=10)
    step = core.submit("old", width=1, max_tokens=10, now=20)
    assert core.dispatch(now=20) == [step]  # `waiting` has waited 18 s, but `old` arrived first
    core.finish(step, tokens=10)
    core.remove_program("old")
    assert core.dispatch(now=21) == [waiting]


def test_budget_moves_from_confident_to_unsure_programs_and_back() -> None:
    core = SchedulerCore("certaindex", capacity=8, floor_fraction=0.25)
    core.add_program("a", now=0, budget=1000)
    core.add_program("b", now=0, budget=1000)
    assert core.allowance("a") == core.allowance("b") == 1000  # equal certainty: own budgets
    core.report("a", certaindex=1.0)
    assert core.allowance("a") == 250  # its floor
    assert core.allowance("b") == 1750  # b may use what a released
    gang = core.submit("b", width=1, max_tokens=1500, now=0)
    core.dispatch(now=0)
    core.finish(gang, tokens=1500)
    assert core.allowance("b") == 250 and core.allowance("a") == 250
    core.report("a", certaindex=0.0)  # a is unsure again, but b already spent a's tokens
    assert core.allowance("a") + core.allowance("b") + 1500 <= 2000
    assert core.allowance("a") >= 250


def test_a_lone_program_keeps_its_whole_budget_whatever_its_certainty() -> None:
    core = SchedulerCore("certaindex", capacity=1)
    core.add_program("a", now=0, budget=777)
    core.report("a", certaindex=1.0)
    assert core.allowance("a") == 777


def test_removed_program_frees_pending_gangs_but_running_ones_keep_slots_until_finished() -> None:
    core = SchedulerCore("certaindex", capacity=2)
    core.add_program("a", now=0, budget=100)
    running = core.submit("a", width=2, max_tokens=5, now=0)
    core.dispatch(now=0)
    core.submit("a", width=1, max_tokens=5, now=0)
    core.remove_program("a")
    assert core.pending_gangs == 0 and core.live_programs == 0 and core.running == 2
    core.add_program("a", now=1, budget=100)  # a new program may reuse the id
    core.finish(running, tokens=10)  # charged to nobody: the old program is gone
    assert core.running == 0 and core.allowance("a") == 100


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda c: c.add_program("a", now=0, budget=10), "already live"),
        (lambda c: c.add_program("b", now=0, budget=0), "budget"),
        (lambda c: c.submit("a", width=0, max_tokens=1, now=0), "width"),
        (lambda c: c.submit("a", width=1, max_tokens=0, now=0), "max_tokens"),
        (lambda c: c.report("a", certaindex=1.5), "certaindex"),
        (lambda c: c.report("a", certaindex=float("nan")), "certaindex"),
    ],
)
def test_bad_input_is_refused_with_a_reason(call, error: str) -> None:
    core = SchedulerCore(capacity=2)
    core.add_program("a", now=0, budget=10)
    with pytest.raises(ValueError, match=error):
        call(core)


def test_unknown_programs_and_gangs_raise_key_error() -> None:
    core = SchedulerCore(capacity=2)
    with pytest.raises(KeyError, match="unknown program"):
        core.submit("ghost", width=1, max_tokens=1, now=0)
    with pytest.raises(KeyError):
        core.report("ghost", certaindex=0.5)
    with pytest.raises(KeyError):
        core.finish(Gang(99, "ghost", 1, 1, 0.0), tokens=1)


@pytest.mark.parametrize(
    "kwargs", [{"capacity": 0}, {"capacity": 2, "floor_fraction": 1.5}, {"capacity": 2, "aging_s": -1}]
)
def test_bad_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SchedulerCore(**kwargs)
    with pytest.raises(ValueError, match="policy"):
        SchedulerCore("lifo", capacity=1)  # type: ignore[arg-type]


def test_engine_priority_orders_classes_then_remaining_work() -> None:
    core = SchedulerCore("certaindex", capacity=4)
    core.add_program("vip", now=0, budget=5000, priority=-1)
    core.add_program("near", now=0, budget=100)
    core.add_program("far", now=0, budget=5000)
    g = {pid: core.submit(pid, width=1, max_tokens=1, now=0) for pid in ("vip", "near", "far")}
    order = sorted(g, key=lambda pid: core.engine_priority(g[pid]))
    assert order == ["vip", "near", "far"]
