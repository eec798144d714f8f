"""Give back the workers' resources of trials that ASHA stops.

When Tune stops a trial, it ends the trial's actor; the Ray Train controller that actor started
dies with it, and so do the workers, but the workers' placement group does not: Ray Train V2
ties it to the job's driver and relies on a detached cleaner that asks the Ray State API (the
dashboard) whether the controller still lives. Without a dashboard (the embedded, loopback Ray
of this project), or with several Ray instances on one machine, that question fails, the group
keeps its CPUs for the rest of the sweep, and once enough have leaked the next trial waits for
resources forever.

So the sweep does it itself: rank 0 of every trial's worker group records its placement group in
a small named actor owned by the sweep's driver (`PlacementRegistry`), and a Tune callback on
the driver (`ReleaseStoppedTrials`) removes the group when Tune ends the trial, unless it is gone
already (a trial that ran to its end removed it itself).

Example:
    >>> registry = start_registry("rank-depth")      # before Tuner.fit(), also when resuming; keep it
    >>> Tuner(..., run_config=RunConfig(callbacks=[ReleaseStoppedTrials(registry_name("rank-depth"))]))
"""

from __future__ import annotations

from typing import Any

from ray import tune

from ..train.worker import worker_loop

#: loop-config keys telling workers where to record their placement group.
REGISTRY_KEY = "placement_registry"
TRIAL_KEY = "trial_id"
NAMESPACE = "linearizer"


class PlacementRegistry:
    """trial id -> placement group ids (hex) of its worker groups (a restarted group adds one)."""

    def __init__(self) -> None:
        self.groups: dict[str, list[str]] = {}

    def record(self, trial_id: str, group: str) -> None:
        self.groups.setdefault(trial_id, [])
        if group not in self.groups[trial_id]:
            self.groups[trial_id].append(group)

    def pop(self, trial_id: str) -> list[str]:
        return self.groups.pop(trial_id, [])


def registry_name(sweep: str) -> str:
    return f"placements-{sweep}"


def start_registry(sweep: str) -> Any:
    """Start the sweep's registry actor (or find the live one of this name).

    Returns:
        Its handle: keep it for the whole sweep. The actor belongs to the calling driver and is
        collected when its last handle goes (a resumed sweep starts a new one).
    """
    import ray

    return ray.remote(num_cpus=0)(PlacementRegistry).options(name=registry_name(sweep), namespace=NAMESPACE,
                                                             get_if_exists=True).remote()


def _registry(name: str) -> Any:
    import ray

    return ray.get_actor(name, namespace=NAMESPACE)


def trial_worker_loop(config: dict[str, Any]) -> None:
    """The training worker of a trial: record the worker group's placement group, then train
    (`pipelines.train.worker.worker_loop`)."""
    import ray
    import ray.train

    registry, trial_id = config.get(REGISTRY_KEY), config.get(TRIAL_KEY)
    group = ray.get_runtime_context().get_placement_group_id()
    if registry and trial_id and group and ray.train.get_context().get_world_rank() == 0:
        ray.get(_registry(registry).record.remote(trial_id, group))
    worker_loop(config)


def remove_group(group: str) -> bool:
    """Remove the placement group with hex id `group` unless it is gone already; True if removed."""
    import ray
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    handle = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group)))
    if (placement_group_table(handle) or {}).get("state") in (None, "REMOVED"):
        return False
    remove_placement_group(handle)
    return True


class ReleaseStoppedTrials(tune.Callback):
    """Remove the worker placement groups of every trial that ended, once Tune says so.

    A trial that ran to its end has shut its worker group down already (nothing left to do); a
    trial that ASHA stopped, or whose actor failed, has not.

    Args:
        registry: name of the `PlacementRegistry` actor (a name, not a handle: Tune pickles its
            callbacks with the experiment, and a resumed sweep has a new registry actor).
    """

    def __init__(self, registry: str):
        self.registry = registry
        self.ended: set[str] = set()
        self.released: list[str] = []

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial.trial_id)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # An ended trial's controller may have started a new worker group before it died.
        for trial_id in list(self.ended):
            self._release(trial_id)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial_id in list(self.ended):
            self._release(trial_id)

    def _release(self, trial_id: str) -> None:
        import ray

        self.ended.add(trial_id)
        for group in ray.get(_registry(self.registry).pop.remote(trial_id)):
            if remove_group(group):
                self.released.append(group)
