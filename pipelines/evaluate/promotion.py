"""Champion / challenger: claims, decisions and the lock that keeps concurrent evaluations apart.

Every evaluation of a version goes through two short critical sections, each under a lock
per registered model:

1. claim: read the version's tags; if it was already evaluated (or another evaluation holds a
   fresh claim, or it failed `max_attempts` times) do nothing, unless forced; else mark it
   `eval.status=running` with this evaluation's token.
2. record: if the claim is still ours, write the metrics and pass/fail as version tags, compare
   with the current champion, move the champion alias when the challenger wins, and record the
   decision on the version (and `eval.demoted_by` on the champion it replaced).

Mechanism. MLflow offers no transaction or compare-and-swap on tags and aliases, but creating a
registered model is atomic on every backend (a unique key in SQL, passed through by a tracking
server). The lock is therefore a registered model named `<model>.evaluation-lock`, created to
acquire and deleted to release; it carries its holder and an expiry time, so a lock left by a
crashed holder is broken after `lock_ttl_s`. Evaluations serialise only on these two short
steps, never on the metrics in between. Without the lock, two challengers judged against the
same old champion would both "win" and one decision would be lost; two schedulers picking the
same version would both evaluate it. Breaking an expired lock is the one remaining race (two
waiters may break it at once); keep `lock_ttl_s` well above the seconds a critical section takes.

Example:
    >>> with RegistryLock(client, "linearizer-onestep"):
    ...     ...                                                  # read, decide, write
    >>> decide(Scorecard(3, True, "fid", 12.0, False, "sampling/fid"), champion_card, 0.0).action
    'promoted'
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .common import TAG, EvalResult, set_version_tags, version_tags
from .config import PromotionConfig

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

Action = Literal["promoted", "kept", "rejected", "recorded", "superseded"]
#: the outcome of a finished evaluation.
STATUS, CLAIMED_BY, CLAIMED_AT, ATTEMPTS = f"{TAG}status", f"{TAG}claimed_by", f"{TAG}claimed_at", f"{TAG}attempts"
METRIC = f"{TAG}metric."


class LockTimeout(TimeoutError):
    """Another evaluation held the registry lock for longer than `lock_timeout_s`."""


# --------------------------------------------------------------------------------------------
# The lock
# --------------------------------------------------------------------------------------------


class RegistryLock:
    """Mutual exclusion between evaluations of one registered model, held in the registry itself.

    Args:
        client: an MLflow client of the registry.
        model: the registered model the lock protects.
        ttl_s: a lock older than this is treated as abandoned and broken.
        timeout_s: how long to wait before raising `LockTimeout`.
        poll_s: mean wait between attempts (jittered so waiters do not retry in step).
    """

    def __init__(self, client: MlflowClient, model: str, ttl_s: float = 60.0, timeout_s: float = 120.0,
                 poll_s: float = 0.2):
        self.client, self.name = client, f"{model}.evaluation-lock"
        self.ttl_s, self.timeout_s, self.poll_s = ttl_s, timeout_s, poll_s
        self.owner = uuid.uuid4().hex

    def __enter__(self) -> RegistryLock:
        from mlflow.exceptions import MlflowException

        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                self.client.create_registered_model(
                    self.name, tags={"owner": self.owner, "expires_at": f"{time.time() + self.ttl_s:.3f}"},
                    description="Held while an evaluation claims a version or records a promotion decision.")
                return self
            except MlflowException as e:
                # ALREADY_EXISTS: held. DOES_NOT_EXIST: released between our insert and MLflow's re-read.
                if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                    raise
            holder = self._break_if_expired()
            if time.monotonic() > deadline:
                raise LockTimeout(f"registry lock {self.name!r} still held after {self.timeout_s:g} s "
                                  f"(holder {holder}); if no evaluation is running, delete that registered model")
            time.sleep(self.poll_s * (0.5 + random.random()))

    def _break_if_expired(self) -> str:
        """Delete the lock if its holder's time is up; returns the holder's id."""
        from mlflow.exceptions import MlflowException

        try:
            tags = self.client.get_registered_model(self.name).tags or {}
            if float(tags.get("expires_at", "inf")) < time.time():
                self.client.delete_registered_model(self.name)
            return tags.get("owner", "unknown")
        except MlflowException:
            return "gone"  # released (or broken by another waiter) meanwhile: just retry

    def __exit__(self, *exc: object) -> None:
        from mlflow.exceptions import MlflowException

        try:
            if (self.client.get_registered_model(self.name).tags or {}).get("owner") == self.owner:
                self.client.delete_registered_model(self.name)
        except MlflowException:
            pass  # already broken as expired: nothing of ours left to release


# --------------------------------------------------------------------------------------------
# Claims
# --------------------------------------------------------------------------------------------


def evaluation_state(tags: dict[str, str], cfg: PromotionConfig, now: float | None = None) -> str:
    """Where a version stands: "new", "done", "running" (fresh claim), "stale" (abandoned claim),
    "failed" (retry allowed) or "exhausted" (failed `max_attempts` times)."""
    now = time.time() if now is None else now
    status = tags.get(STATUS)
    if status is None:
        return "new"
    if status == "done":
        return "done"
    if status == "running":
        return "running" if now - float(tags.get(CLAIMED_AT, 0)) < cfg.claim_ttl_s else "stale"
    return "exhausted" if int(tags.get(ATTEMPTS, 0)) >= cfg.max_attempts else "failed"


def needs_evaluation(tags: dict[str, str], cfg: PromotionConfig, now: float | None = None) -> bool:
    """True for versions a scheduler should pick up: never evaluated, abandoned, or failed with
    attempts left."""
    return evaluation_state(tags, cfg, now) in ("new", "stale", "failed")


def claim(client: MlflowClient, name: str, version: str, cfg: PromotionConfig, token: str,
          force: bool = False) -> tuple[bool, str]:
    """Mark a version as being evaluated by `token`, unless it needs no evaluation.

    Returns:
        (claimed, state): the state found before claiming ("new", "done", ...).
    """
    with RegistryLock(client, name, cfg.lock_ttl_s, cfg.lock_timeout_s):
        tags = version_tags(client, name, version)
        state = evaluation_state(tags, cfg)
        if not force and state not in ("new", "stale", "failed"):
            return False, state
        set_version_tags(client, name, version, {STATUS: "running", CLAIMED_BY: token, CLAIMED_AT: f"{time.time():.3f}",
                                                 ATTEMPTS: int(tags.get(ATTEMPTS, 0)) + 1})
        return True, state


def mark_failed(client: MlflowClient, name: str, version: str, cfg: PromotionConfig, token: str, error: str) -> None:
    """Record a failed evaluation (if the claim is still ours), so the scheduler may retry it."""
    with RegistryLock(client, name, cfg.lock_ttl_s, cfg.lock_timeout_s):
        if version_tags(client, name, version).get(CLAIMED_BY) == token:
            set_version_tags(client, name, version, {STATUS: "failed", f"{TAG}error": error[:4000]})


# --------------------------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scorecard:
    """A version's recorded evaluation, as promotion compares it."""

    version: int
    passed: bool
    primary: str
    value: float
    higher_is_better: bool
    comparable: str
    failures: str = ""

    @classmethod
    def from_tags(cls, version: int | str, tags: dict[str, str]) -> Scorecard | None:
        """The scorecard recorded in a version's tags, or None when it has no finished evaluation."""
        if tags.get(STATUS) != "done" or f"{TAG}primary_value" not in tags:
            return None
        failures = tags.get(f"{TAG}failures", "")
        return cls(int(version), tags.get(f"{TAG}passed") == "true", tags[f"{TAG}primary"],
                   float(tags[f"{TAG}primary_value"]), tags.get(f"{TAG}higher_is_better") == "true",
                   tags.get(f"{TAG}comparable", ""), "" if failures == "none" else failures)

    @classmethod
    def from_result(cls, version: int | str, result: EvalResult) -> Scorecard:
        return cls(int(version), result.passed, result.primary, result.primary_value, result.higher_is_better,
                   result.comparable, "; ".join(map(str, result.failures)))


@dataclass(frozen=True)
class Decision:
    """What promotion did and why; `replaced` is the former champion's version."""

    action: Action
    reason: str
    champion: int | None = None
    replaced: int | None = None
    forced: bool = False


def decide(challenger: Scorecard, champion: Scorecard | None, min_improvement: float = 0.0,
           champion_version: int | None = None, force: bool = False) -> Decision:
    """The promotion rule, as a pure function of two scorecards.

    A challenger below one of its quality floors is rejected (it keeps its own alias, e.g.
    `challenger`; the reason names each failed floor and by how much). One that passes them
    becomes champion when there is no champion, when the champion fails its own floors, or when
    it beats the champion's primary metric by more than `min_improvement`. A champion without a
    comparable score (never evaluated, or scored on another scale or by another FID network) is
    kept: re-evaluate it first.

    Args:
        challenger: the version just evaluated.
        champion: the champion's scorecard (None: no champion, or one never evaluated).
        min_improvement: margin in the primary metric's unit.
        champion_version: the champion's version when it exists but has no scorecard.
        force: judge a challenger that fails its floors as if it passed them; the decision says
            so (`forced`, and the reason starts with the floors it was forced past).
    """
    current = champion.version if champion is not None else champion_version
    forced = force and not challenger.passed
    if not challenger.passed and not forced:
        return Decision("rejected", f"fails its quality floors: {challenger.failures or 'see the checks'}", current)
    decision = _rank(challenger, champion, current, min_improvement)
    if forced:
        return Decision(decision.action, f"FORCED past failed floors ({challenger.failures}); {decision.reason}",
                        decision.champion, decision.replaced, forced=True)
    return decision


def _rank(challenger: Scorecard, champion: Scorecard | None, current: int | None, min_improvement: float) -> Decision:
    """The champion / challenger comparison of a challenger admitted by its floors."""
    if current is None:
        return Decision("promoted", "no champion yet", challenger.version)
    if current == challenger.version:
        return Decision("kept", "is the champion already (scores refreshed)", current)
    if champion is None:
        return Decision("kept", f"champion v{current} has no recorded evaluation; evaluate it first", current)
    if not champion.passed:
        return Decision("promoted", f"champion v{current} fails its quality floors", challenger.version, current)
    if champion.comparable != challenger.comparable:
        return Decision("kept", f"champion v{current} was scored as {champion.comparable!r}, not "
                                f"{challenger.comparable!r}; re-evaluate it with force=true", current)
    sign = 1.0 if challenger.higher_is_better else -1.0
    margin = sign * (challenger.value - champion.value)
    vs = f"{challenger.primary} {challenger.value:.6g} vs {champion.value:.6g} of v{current}"
    if margin > min_improvement:
        return Decision("promoted", f"beats the champion: {vs}", challenger.version, current)
    return Decision("kept", f"does not beat the champion by more than {min_improvement:g}: {vs}", current)


def _champion(client: MlflowClient, name: str, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def result_tags(result: EvalResult, run_id: str) -> dict[str, str]:
    """The version tags of a finished evaluation (metrics, pass/fail, primary metric, run id)."""
    tags = {f"{METRIC}{k}": f"{v:.8g}" for k, v in result.metrics.items()}
    tags.update({
        f"{TAG}evaluation": result.evaluation, f"{TAG}run_id": run_id, f"{TAG}passed": str(result.passed).lower(),
        f"{TAG}failures": "; ".join(map(str, result.failures))[:4000] or "none",
        f"{TAG}primary": result.primary, f"{TAG}primary_value": f"{result.primary_value!r}",
        f"{TAG}higher_is_better": str(result.higher_is_better).lower(), f"{TAG}comparable": result.comparable,
    })
    return tags


def record_and_promote(client: MlflowClient, name: str, version: str, result: EvalResult, run_id: str,
                       cfg: PromotionConfig, token: str, force: bool = False) -> Decision:
    """Write the evaluation onto the version and apply the promotion rule, atomically with
    respect to other evaluations of the same registered model (see the module docstring).

    Args:
        force: promote past failed quality floors (`decide`); recorded as `eval.forced=true`.

    Returns:
        The decision ("superseded" when a forced evaluation took the claim meanwhile: nothing
        is written).
    """
    with RegistryLock(client, name, cfg.lock_ttl_s, cfg.lock_timeout_s):
        tags = version_tags(client, name, version)
        if tags.get(CLAIMED_BY) != token:
            return Decision("superseded", f"claim taken over by {tags.get(CLAIMED_BY)}; nothing recorded")
        for key in tags:  # a forced re-evaluation replaces the old metrics, not merges with them
            if key.startswith(METRIC):
                client.delete_model_version_tag(name, version, key)
        set_version_tags(client, name, version, result_tags(result, run_id))
        current = _champion(client, name, cfg.champion_alias)
        if not cfg.enabled:
            decision = Decision("recorded", "promotion disabled", current)
        else:
            card = Scorecard.from_tags(current, version_tags(client, name, str(current))) if current else None
            decision = decide(Scorecard.from_result(version, result), card, cfg.min_improvement, current, force)
        if decision.action == "promoted":
            client.set_registered_model_alias(name, cfg.champion_alias, version)
            if decision.replaced is not None:
                set_version_tags(client, name, decision.replaced, {f"{TAG}demoted_by": version,
                                                                   f"{TAG}demoted_at": f"{time.time():.3f}"})
        set_version_tags(client, name, version, {
            f"{TAG}decision": decision.action, f"{TAG}decision_reason": decision.reason[:4000],
            f"{TAG}decided_at": f"{time.time():.3f}", f"{TAG}replaced": decision.replaced or "none",
            f"{TAG}forced": str(decision.forced).lower(), STATUS: "done",
        })
        return decision
