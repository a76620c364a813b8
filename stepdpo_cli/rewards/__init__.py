"""Process rewards: a PRM (rewards/prm.py: load, score steps, aggregate) and its training labels (labels.py).

    from stepdpo_cli.rewards import load_prm
    prm = load_prm("ckpt/prm")
    prm.score([(problem, steps)])  # -> [[reward of step 1, ...]]

An SVPO model's value head (value.py) scores steps the same way: `rewards.value.load_step_scorer(DIR)` takes a
PRM dir or an SVPO dir.
"""
from .prm import AGGREGATES, ProcessRewardModel, aggregate, check_prm_dir, load_prm

__all__ = ["AGGREGATES", "ProcessRewardModel", "aggregate", "check_prm_dir", "load_prm"]
