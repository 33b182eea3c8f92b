"""Small builders shared by the tests."""

from dualpipe_sim import scenario, simulation


def run_uniform(schedule, stages, microbatches, forward=1.0, backward=2.0, weight=None, p2p=0.0, **extra):
    data = {
        "pipeline": {"schedule": schedule, "stages": stages, "microbatches": microbatches},
        "costs": {"forward": forward, "backward": backward},
        "comm": {"p2p": p2p},
    }
    if weight is not None:
        data["costs"]["weight"] = weight
    for key, value in extra.items():
        section, _, name = key.partition("__")
        data.setdefault(section, {})[name] = value
    return simulation.run(scenario.from_dict(data))
