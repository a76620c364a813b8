"""`stepdpo search`: step-level MCTS per problem (MCTS-DPO's tree search over "Step k:" steps).

Every simulation of every problem in a chunk runs in lockstep, so each phase is ONE backend call for the whole
chunk (the engines' prefix caches share the trees' common prefixes):

1. select: each problem's tree (search/mcts.py) walks by PUCT to a leaf;
2. expand: a leaf that is not terminal and above `depth` gets `expand` sampled next steps (`root_expand` at the
   root) with their log-probs: prior = exp(sum log pi / len^length_penalty) over siblings; a step that ends
   without a further marker is terminal and its answer is graded against the gold one. `expansion`:
   - "step": each candidate is sampled up to the next "\\nStep" marker (`max_step_tokens`);
   - "continuation" (our choice for speed; the papers expand single steps): each candidate is a whole
     continuation to an answer (`max_tokens`); its first step is the child, the prior reads that step's tokens
     only (counted by tokenizing the step, so a token spanning the step's end may be off by one), and the rest,
     graded, is the child's first rollout. Long decodes instead of two short calls: one backend call per
     simulation at `rollouts` 1;
3. evaluate: each new child (or a leaf that cannot grow) gets a value: terminal 1/0 by its grade; otherwise the
   success rate of `rollouts` continuations from it (graded; under "continuation" its expansion's own tail is
   the first of them), or, with a value model / PRM (`value.score`), the reward of its last step;
4. backup: one visit and the value for the node and its ancestors.

`parallel_simulations` K > 1 (our choice for speed; the papers run one simulation at a time) runs up to K
simulations of a problem per round: `Tree.select_many` picks K distinct leaves under a virtual loss, and all of
them are expanded and valued in the same two calls, so each call is up to K times wider. Every problem still
gets exactly `simulations`; a young tree (the root alone) yields fewer leaves per round. K = 1 is the sequential
search, byte for byte.

Output: the input record plus `tree` (node records: id, parent, step, visits, evaluations, q, prior, terminal,
correct), `chosen_path` (node ids along the most visited child), `chosen_steps`, and `search` (settings,
`status` done | timeout, `simulations` run, `generated_tokens`; no wall times, so a resumed run writes the same
bytes). A chunk that runs past `max_seconds`
stops simulating and writes its trees as they are with status timeout: recorded, never dropped. Seeds derive from
the run seed, the problem id, the simulation and the node, so a problem's tree never depends on its neighbours.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from ..backends.base import Backend, Completion, Request, SamplingParams, truncate_at_stop
from ..grading import grade_many
from ..records import InputError, batched, derive_seed, normalize_problem
from ..search.mcts import Tree, priors_from_logprobs
from ..steps import join_steps, prefix_text
from ..templates import generation_prompt

STEP_STOP = "\nStep"
EXPANSIONS = ("step", "continuation")


@dataclass(frozen=True)
class SearchSettings:
    simulations: int = 16
    expand: int = 2
    root_expand: int = 4
    depth: int = 8
    c_puct: float = 1.0
    rollouts: int = 2
    temperature: float = 1.0
    top_p: float = 1.0
    max_step_tokens: int = 128
    max_tokens: int = 512
    length_penalty: float = 1.25
    max_seconds: float = 0.0  # 0: no limit
    expansion: str = "step"
    parallel_simulations: int = 1  # per problem, run together (virtual loss); 1: one at a time, as the papers

    def check(self) -> None:
        if self.expansion not in EXPANSIONS:
            raise InputError(f"choose one of {', '.join(EXPANSIONS)}", field="--expansion")
        for name in ("simulations", "expand", "root_expand", "depth", "max_step_tokens", "max_tokens",
                     "parallel_simulations"):
            if getattr(self, name) < 1:
                raise InputError(f"must be >= 1, got {getattr(self, name)}", field="--" + name.replace("_", "-"))
        if self.rollouts < 0:
            raise InputError("must be >= 0 (0 needs --value)", field="--rollouts")
        if self.c_puct < 0 or self.max_seconds < 0:
            raise InputError("must be >= 0", field="--c-puct" if self.c_puct < 0 else "--max-seconds")

    def check_leaf_values(self, has_value: bool) -> None:
        """Leaves need rollouts or a value model; continuation expansion values children by rollouts only."""
        if self.rollouts == 0 and not has_value:
            raise InputError("leaves need a value: --rollouts >= 1 or --value PATH", field="--rollouts")
        if self.expansion == "continuation" and (has_value or self.rollouts == 0):
            raise InputError("continuation expansion values children by rollouts (its tail is the first): use "
                             "--rollouts >= 1 without --value, or --expansion step", field="--expansion")


def validate_searchable(record: dict) -> dict:
    """A problem with a gold answer (leaves are graded against it)."""
    return normalize_problem(record)


def _prompt(problem: str, steps: list[str], template: str, tokenizer: Any) -> str:
    return generation_prompt(problem, template, tokenizer, reason_prefix=prefix_text(steps, len(steps) + 1))


def search_records(records: Iterable[dict], backend: Backend, *, template: str, settings: SearchSettings,
                   seed: int = 0, chunk_size: int = 8, value: Any = None, grade_timeout: float = 5.0,
                   advance: Callable[[int], Any] = lambda n: None) -> Iterator[dict]:
    """Yield each problem record with its tree (see the module doc)."""
    settings.check()
    settings.check_leaf_values(value is not None)
    for problems in batched(records, max(1, chunk_size)):
        yield from _search_chunk(problems, backend, template, settings, seed, value, grade_timeout)
        advance(len(problems))


def _search_chunk(problems: list[dict], backend: Backend, template: str, s: SearchSettings, seed: int, value: Any,
                  grade_timeout: float) -> Iterator[dict]:
    for problem in problems:
        normalize_problem(problem)
    trees = {p["id"]: Tree() for p in problems}
    tokens = {p["id"]: 0 for p in problems}
    start, status = time.perf_counter(), "done"
    done = {p["id"]: 0 for p in problems}  # simulations run per problem
    tok = backend.tokenizer
    whole = s.expansion == "continuation"
    while any(n < s.simulations for n in done.values()):
        if s.max_seconds and time.perf_counter() - start > s.max_seconds:
            status = "timeout"
            break
        # Each problem's leaves this round (`parallel_simulations` at most), numbered by simulation: seeds
        # derive from that number.
        leaves = {pid: trees[pid].select_many(min(s.parallel_simulations, s.simulations - n), s.c_puct)
                  if n < s.simulations else [] for pid, n in done.items()}
        sims = {pid: {leaf: done[pid] + k for k, leaf in enumerate(chosen)} for pid, chosen in leaves.items()}
        grow = [(p, leaf) for p in problems for leaf in leaves[p["id"]]
                if not trees[p["id"]].nodes[leaf].terminal and trees[p["id"]].depth(leaf) < s.depth]
        requests = [Request(_prompt(p["problem"], trees[p["id"]].steps_to(leaf), template, tok),
                            seed=derive_seed(seed, p["id"], "expand", sims[p["id"]][leaf]),
                            n=s.root_expand if leaf == 0 else s.expand) for p, leaf in grow]
        outputs = backend.generate(requests, SamplingParams(
            n=s.expand, temperature=s.temperature, top_p=s.top_p, logprobs=True,
            max_tokens=s.max_tokens if whole else s.max_step_tokens, stop=() if whole else (STEP_STOP,))
        ) if requests else []
        new: dict[str, list[tuple[int, int]]] = {p["id"]: [] for p in problems}  # (node id, its simulation)
        finals = []  # (pid, node id, solution text) to grade
        tails = []  # continuation expansion: (pid, node id, the whole solution its expansion sampled)
        grown = set()
        for (p, leaf), completions in zip(grow, outputs):
            tree = trees[p["id"]]
            steps = [_first_step(c, tok) if whole else (c.text, c.stop_reason, c.logprobs or [0.0], c.num_tokens)
                     for c in completions]
            priors = priors_from_logprobs([sum(lp) for _, _, lp, _ in steps], [n for _, _, _, n in steps],
                                          s.length_penalty)
            for c, (text, marker, _, _), prior in zip(completions, steps, priors):
                tokens[p["id"]] += c.num_tokens
                node = tree.add_child(leaf, text, prior, terminal=marker is None)
                new[p["id"]].append((node.id, sims[p["id"]][leaf]))
                grown.add((p["id"], leaf))
                if node.terminal:
                    finals.append((p, node.id, join_steps(tree.steps_to(node.id))))
                elif whole:
                    before = tree.steps_to(leaf)
                    tails.append((p, node.id, join_steps(before + [c.text]) if before else c.text))
        for p in problems:  # a leaf that cannot grow is evaluated again
            for leaf in leaves[p["id"]]:
                if (p["id"], leaf) not in grown:
                    new[p["id"]].append((leaf, sims[p["id"]][leaf]))
                    node = trees[p["id"]].nodes[leaf]
                    if node.terminal and node.correct is None:
                        finals.append((p, node.id, join_steps(trees[p["id"]].steps_to(node.id))))
        graded = grade_many([(text, p["answer"]) for p, _, text in finals + tails], timeout=grade_timeout)
        for (p, node_id, _), (_, _, ok) in zip(finals, graded):
            trees[p["id"]].nodes[node_id].correct = bool(ok)
        tail_wins = {(p["id"], node_id): [1.0 if ok else 0.0]
                     for (p, node_id, _), (_, _, ok) in zip(tails, graded[len(finals):])}
        values = _evaluate(problems, trees, new, backend, template, s, seed, value, tokens, grade_timeout,
                           tail_wins)
        for p in problems:
            for node_id, _ in new[p["id"]]:
                trees[p["id"]].backup(node_id, values[(p["id"], node_id)])
        for pid, chosen in leaves.items():
            done[pid] += len(chosen)
    for p in problems:
        tree = trees[p["id"]]
        path = tree.chosen_path()
        yield {**p, "template": template, "tree": tree.as_records(), "chosen_path": path,
               "chosen_steps": tree.steps_to(path[-1]),
               "search": {"method": "mcts", "status": status, "simulations": done[p["id"]],
                          "settings": {k: v for k, v in vars(s).items()}, "seed": seed,
                          "value": getattr(value, "path", None), "model": backend.model,
                          "generated_tokens": tokens[p["id"]]}}


def _first_step(completion: Completion, tokenizer: Any) -> tuple[str, str | None, list[float], int]:
    """A whole continuation's first step: (its text, the marker after it or None, its tokens' log-probs, their
    count). The count tokenizes the step text (without a tokenizer: its share of the characters)."""
    text, marker = truncate_at_stop(completion.text, (STEP_STOP,))
    logprobs = completion.logprobs or [0.0]
    if marker is None:
        return text, None, logprobs, completion.num_tokens
    if tokenizer is not None:
        count = len(tokenizer.encode(text, add_special_tokens=False))
    else:
        count = round(completion.num_tokens * len(text) / max(len(completion.text), 1))
    count = min(max(count, 1), len(logprobs))
    return text, marker, logprobs[:count], count


def _evaluate(problems, trees, new, backend, template, s, seed, value, tokens, grade_timeout,
              tail_wins) -> dict:
    """The value of every node to back up this simulation (see the module doc, step 3)."""
    values: dict[tuple[str, int], float] = {}
    pending = []
    sims = {}
    for p in problems:
        for node_id, sim in new[p["id"]]:
            node = trees[p["id"]].nodes[node_id]
            if node.terminal:
                values[(p["id"], node_id)] = 1.0 if node.correct else 0.0
            else:
                pending.append((p, node_id))
                sims[(p["id"], node_id)] = sim
    if not pending:
        return values
    if value is not None:
        rewards = value.score([(p["problem"], trees[p["id"]].steps_to(n) or [""]) for p, n in pending])
        for (p, node_id), r in zip(pending, rewards):
            values[(p["id"], node_id)] = float(r[-1])
        return values
    have = {(p["id"], n): tail_wins.get((p["id"], n), []) for p, n in pending}
    rolled = [(p, n) for p, n in pending if s.rollouts > len(have[(p["id"], n)])]
    # A rollout continues after the node's step: its prompt asks for the next step.
    requests = [Request(_prompt(p["problem"], trees[p["id"]].steps_to(n), template, backend.tokenizer),
                        seed=derive_seed(seed, p["id"], "rollout", sims[(p["id"], n)], n),
                        n=s.rollouts - len(have[(p["id"], n)]))
                for p, n in rolled]
    outputs = backend.generate(requests, SamplingParams(n=s.rollouts, temperature=s.temperature, top_p=s.top_p,
                                                        max_tokens=s.max_tokens)) if requests else []
    texts = []
    for (p, n), completions in zip(rolled, outputs):
        done = trees[p["id"]].steps_to(n)
        for c in completions:
            tokens[p["id"]] += c.num_tokens
            texts.append((join_steps(done + [c.text]) if done else c.text, p["answer"]))
    graded = iter(grade_many(texts, timeout=grade_timeout))
    for (p, node_id), completions in zip(rolled, outputs):
        have[(p["id"], node_id)] = have[(p["id"], node_id)] + [1.0 if next(graded)[2] else 0.0 for _ in completions]
    for p, node_id in pending:
        wins = have[(p["id"], node_id)]
        values[(p["id"], node_id)] = sum(wins) / len(wins) if wins else 0.0
    return values
