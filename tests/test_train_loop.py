"""The training loop on the tiny model: DPO objectives start at log 2, Step-DPO learns its pairs,
LoRA trains only adapters, an interrupted run resumes to the same metrics, multi-process runs complete."""
from __future__ import annotations

import json
import math
import os

import orjson
import pytest
import torch

from conftest import run_cli
from stepdpo_cli.records import InputError
from stepdpo_cli.train.loop import REF_FILE, TrainConfig, train

pytestmark = pytest.mark.timeout(600)


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def _run(config: TrainConfig, stop_at: int | None = None) -> list[dict]:
    """Train in-process; `stop_at` simulates a crash right after that step's metrics."""
    _reset_accelerate()
    metrics: list[dict] = []

    def emit(m):
        metrics.append(m)
        if stop_at is not None and m["step"] == stop_at:
            raise KeyboardInterrupt

    try:
        train(config, emit=emit)
    except KeyboardInterrupt:
        pass
    return metrics


def _pairs(path, n=16, scores=False):
    with open(path, "w") as handle:
        for i in range(n):
            a, b = i, i + 3
            row = {"dataset": "toy", "prompt": f"What is {a}+{b}?",
                   "initial_reason_steps": "Let's think step by step.\nStep 1: We add the numbers.\nStep 2:",
                   "chosen": f" {a}+{b}={a + b}.", "rejected": f" {a}+{b}={a + b + 1}.",
                   "full_chosen": f" {a}+{b}={a + b}.", "full_rejected": f" {a}+{b}={a + b + 1}.",
                   "answer": str(a + b)}
            if scores:
                row.update(chosen=f" {a}+{b}={a + b}.\nStep 3: The answer is {a + b}.",
                           rejected=f" {a}+{b}={a + b + 1}.\nStep 3: The answer is {a + b + 1}.",
                           chosen_step_scores=[1.0, 1.0], rejected_step_scores=[0.0, 0.0])
                del row["initial_reason_steps"]
            handle.write(json.dumps(row) + "\n")
    return str(path)


def _config(model, data, out, **kw) -> TrainConfig:
    base = dict(model=model, data=data, output=str(out), objective="step-dpo", lr=1e-3, batch_size=4,
                scheduler="constant_with_warmup", warmup_ratio=0.0, seed=3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("objective,extra", [("step-dpo", {}), ("dpo", {"label_smoothing": 0.1}),
                                             ("full-step-dpo", {}), ("step-dpo", {"gradient_checkpointing": True})])
def test_preference_loss_starts_at_log2(tiny_model, tmp_path, objective, extra):
    data = _pairs(tmp_path / "p.jsonl", n=8, scores=objective == "full-step-dpo")
    [first] = _run(_config(tiny_model, data, tmp_path / "o", objective=objective, max_steps=1, **extra))
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    # policy == reference at step 1 (up to float noise from different batch padding)
    assert abs(first["chosen_reward"]) < 1e-5 and abs(first["rejected_reward"]) < 1e-5


def test_step_dpo_learns_its_pairs(tiny_model, tmp_path):
    """30 steps on 16 pairs: afterwards the trained model prefers chosen on >= 90% of them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stepdpo_cli.records import iter_jsonl
    from stepdpo_cli.train.data import encode_rows, pack, token_logps
    from stepdpo_cli.train.losses import segment_sums

    data = _pairs(tmp_path / "p.jsonl")
    out = tmp_path / "o"
    metrics = _run(_config(tiny_model, data, out, max_steps=30, report_to="tensorboard"))
    assert len(metrics) == 30
    assert os.listdir(out / "runs")  # tensorboard events

    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    meta = json.loads((out / "stepdpo.json").read_text())
    examples = encode_rows(iter_jsonl(data), tok, meta["template"], "step-dpo", 1024)
    ref = torch.load(out / REF_FILE, weights_only=False)["logps"]
    with torch.no_grad():
        batch = pack(examples, tok.pad_token_id)
        pc, pr = segment_sums(token_logps(model(**batch.model_inputs()).logits, batch), batch.segment)
    rc = torch.stack([ref[e.key][0].sum() for e in examples])
    rr = torch.stack([ref[e.key][1].sum() for e in examples])
    accuracy = ((pc - rc) > (pr - rr)).float().mean().item()
    assert accuracy >= 0.9


def test_lora_trains_only_adapters(tiny_model, tmp_path):
    from safetensors.torch import load_file

    from stepdpo_cli.train.setup import load_model

    config = _config(tiny_model, "", tmp_path / "o", lora=True, lora_r=4)
    trainable = [n for n, p in load_model(config, tiny_model).named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    data = _pairs(tmp_path / "p.jsonl", n=8)
    _run(_config(tiny_model, data, tmp_path / "o", lora=True, lora_r=4, max_steps=3))
    before = load_file(os.path.join(tiny_model, "model.safetensors"))
    after = load_file(str(tmp_path / "o" / "model.safetensors"))  # merged: a plain HF checkpoint
    assert set(after) == set(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith("proj.weight") for k in changed)  # embeddings / norms untouched


def test_interrupted_run_resumes_to_the_same_metrics(tiny_model, tmp_path):
    data = _pairs(tmp_path / "p.jsonl")
    steady = _run(_config(tiny_model, data, tmp_path / "a", max_steps=8, batch_size=2, grad_accum=2,
                          scheduler="cosine", warmup_ratio=0.25))
    crashed = _run(_config(tiny_model, data, tmp_path / "b", max_steps=8, batch_size=2, grad_accum=2,
                           scheduler="cosine", warmup_ratio=0.25, save_steps=3), stop_at=5)
    assert [m["step"] for m in crashed] == [1, 2, 3, 4, 5]
    assert (tmp_path / "b" / REF_FILE).exists() and not (tmp_path / "b" / "model.safetensors").exists()
    resumed = _run(_config(tiny_model, data, tmp_path / "b", max_steps=8, batch_size=2, grad_accum=2,
                           scheduler="cosine", warmup_ratio=0.25, save_steps=3, resume=True))
    assert [m["step"] for m in resumed] == [4, 5, 6, 7, 8]
    for a, b in zip(steady[3:], resumed):
        for key in ("loss", "reward_accuracy", "margin", "chosen_logp", "rejected_logp", "lr", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    assert (tmp_path / "b" / "model.safetensors").exists()


def _multi_process(tiny_model, tmp_path, *extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = _pairs(tmp_path / "p.jsonl", n=8)
    out = tmp_path / "o"
    proc = run_cli("train", "--model", tiny_model, "--data", data, "--output", str(out), "--objective", "step-dpo",
                   "--lr", "1e-3", "--batch-size", "2", "--max-steps", "2", "--num-processes", "2", *extra,
                   timeout=900)  # DeepSpeed compiles an op on its first start (minutes under load)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    metrics = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert json.loads((out / "stepdpo.json").read_text())["summary"]["processes"] == 2
    return metrics


@pytest.mark.distributed
def test_two_process_ddp(tiny_model, tmp_path):
    metrics = _multi_process(tiny_model, tmp_path)
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.distributed
@pytest.mark.slow
def test_two_process_zero2_trains_like_ddp(tiny_model, tmp_path):
    ddp = _multi_process(tiny_model, tmp_path / "ddp")
    zero2 = _multi_process(tiny_model, tmp_path / "zero2", "--deepspeed", "zero2")
    for a, b in zip(ddp, zero2):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5)


@pytest.mark.distributed
@pytest.mark.slow
def test_two_process_zero3(tiny_model, tmp_path):
    metrics = _multi_process(tiny_model, tmp_path, "--deepspeed", "zero3")
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.distributed
@pytest.mark.slow
def test_zero3_offload_uses_deepspeeds_cpu_adam(tiny_model, tmp_path):
    """Optimizer offload runs DeepSpeed's CPU Adam (not torch's AdamW on the host) and trains like DDP."""
    data = _pairs(tmp_path / "p.jsonl", n=8)
    proc = run_cli("train", "--model", tiny_model, "--data", data, "--output", str(tmp_path / "o"), "--lr", "1e-3",
                   "--batch-size", "2", "--max-steps", "2", "--deepspeed", "zero3-offload", timeout=900)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert b"DeepSpeed's CPU Adam" in proc.stderr
    metrics = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-6) and metrics[1]["loss"] != metrics[0]["loss"]


@pytest.mark.distributed
@pytest.mark.slow
def test_accelerate_config_file(tiny_model, tmp_path):
    """--config-file hands an accelerate yaml (the multi-node route) to `accelerate launch`."""
    yaml = tmp_path / "accelerate.yaml"
    # MULTI_GPU as on a cluster; on this CPU machine the launcher adds ACCELERATE_USE_CPU (DDP over gloo).
    yaml.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_processes: 2\n"
                    "num_machines: 1\nmachine_rank: 0\nmain_process_ip: 127.0.0.1\nmain_process_port: 29517\n"
                    "mixed_precision: 'no'\n")
    data = _pairs(tmp_path / "p.jsonl", n=8)
    proc = run_cli("train", "--model", tiny_model, "--data", data, "--output", str(tmp_path / "o"),
                   "--batch-size", "2", "--max-steps", "1", "--config-file", str(yaml), timeout=900)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert json.loads((tmp_path / "o" / "stepdpo.json").read_text())["summary"]["processes"] == 2


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tiny_model, tmp_path):
    """A real kill (SIGKILL mid-run) through the CLI, then --resume: the same metrics as a run never killed."""
    import signal
    import subprocess
    import sys

    data = _pairs(tmp_path / "p.jsonl")
    args = ["--model", tiny_model, "--data", data, "--objective", "step-dpo", "--lr", "1e-3", "--batch-size", "1",
            "--max-steps", "40", "--save-steps", "2", "--seed", "7"]
    steady = run_cli("train", *args, "--output", str(tmp_path / "a"))
    assert steady.returncode == 0
    expected = {m["step"]: m for m in map(orjson.loads, steady.stdout.splitlines())}

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stepdpo_cli", "train", *args, "--output", str(tmp_path / "b")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    for line in proc.stdout:
        if orjson.loads(line)["step"] >= 5:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed = run_cli("train", *args, "--output", str(tmp_path / "b"), "--resume")
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    after = [orjson.loads(line) for line in resumed.stdout.splitlines()]
    assert after and after[0]["step"] > 4 and after[-1]["step"] == 40
    for m in after:
        for key in ("loss", "margin", "chosen_logp", "lr", "grad_norm"):
            assert m[key] == pytest.approx(expected[m["step"]][key], rel=1e-5, abs=1e-6), (m["step"], key)


def test_multi_process_bad_row_exits_2_before_launch(tiny_model, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    proc = run_cli("train", "--model", tiny_model, "--data", str(data), "--output", str(tmp_path / "o"),
                   "--objective", "dpo", "--num-processes", "2")
    assert proc.returncode == 2 and "bad.jsonl:1: field 'rejected'" in proc.stderr.decode()


def _changed_fraction(before_dir: str, after_dir: str) -> float:
    from safetensors.torch import load_file

    before = load_file(os.path.join(before_dir, "model.safetensors"))
    after = load_file(os.path.join(after_dir, "model.safetensors"))
    # a bf16 checkpoint is compared with the initial weights rounded to bf16 (where its training started)
    changed = sum(int((before[k].to(after[k].dtype) != after[k]).sum()) for k in before)
    return changed / sum(before[k].numel() for k in before)


def test_bf16_keeps_fp32_master_weights_at_the_papers_lr(tiny_model, tmp_path):
    """--bf16 (forced on CPU: accelerate's bf16 autocast) at lr 5e-7: nearly every weight moves, as in fp32.
    --pure-bf16 stores the weights in bf16, where such updates round away."""
    data = _pairs(tmp_path / "p.jsonl", n=8)
    fractions = {}
    for name, extra in (("fp32", {}), ("bf16", {"bf16": True}), ("pure", {"pure_bf16": True})):
        _run(_config(tiny_model, data, tmp_path / name, lr=5e-7, max_steps=3, **extra))
        fractions[name] = _changed_fraction(tiny_model, str(tmp_path / name))
    assert fractions["fp32"] > 0.9 and fractions["bf16"] > 0.9, fractions
    assert fractions["pure"] < 0.2, fractions
    # the bf16 run really ran its forwards in bf16: its reference log-probs are not the fp32 ones
    ref32 = torch.load(tmp_path / "fp32" / REF_FILE, weights_only=False)["logps"]
    ref16 = torch.load(tmp_path / "bf16" / REF_FILE, weights_only=False)["logps"]
    assert any(not torch.equal(ref32[k][0], ref16[k][0]) for k in ref32)


def test_reference_cache_follows_the_weights_and_rows(tiny_model, tmp_path, capsys):
    """SFT re-run into the same dir, then Step-DPO into an existing --output: the cached reference
    log-probs of the old weights are recomputed; unchanged weights and rows reuse them."""
    sft_rows = tmp_path / "sft.jsonl"
    sft_rows.write_text("".join(json.dumps({"prompt": f"What is {i}+1?", "completion": f" {i + 1}."}) + "\n"
                                for i in range(4)))
    sft_dir, out = tmp_path / "sft", tmp_path / "dpo"
    data = _pairs(tmp_path / "p.jsonl", n=4)

    def reference_pass(**sft) -> str:
        if sft:
            _run(_config(tiny_model, str(sft_rows), sft_dir, objective="sft", max_steps=1, **sft))
        capsys.readouterr()
        _run(_config(str(sft_dir), data, out, max_steps=1))
        return capsys.readouterr().err

    assert "reference log-probs for 4 row(s)" in reference_pass(seed=1, lr=1e-3)
    first = torch.load(out / REF_FILE, weights_only=False)["logps"]
    assert "reference log-probs" not in reference_pass()  # same weights, same rows: cache reused
    assert "reference log-probs for 4 row(s)" in reference_pass(seed=2, lr=3e-3)  # SFT re-run: new weights
    second = torch.load(out / REF_FILE, weights_only=False)["logps"]
    assert any(not torch.equal(first[k][0], second[k][0]) for k in first)
    _pairs(tmp_path / "p.jsonl", n=5)  # one more row changes the rows' fingerprint
    assert "reference log-probs for 5 row(s)" in reference_pass()


def test_dropout_is_off_in_the_trained_policy(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from stepdpo_cli.train.setup import load_model

    noisy = tmp_path / "noisy"
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attention_dropout=0.5)
    model.save_pretrained(noisy)
    policy = load_model(_config(str(noisy), "", tmp_path / "o"), str(noisy))
    assert policy.config.attention_dropout == 0.0
    assert all(m.attention_dropout == 0.0 for m in policy.modules() if hasattr(m, "attention_dropout"))
    assert all(m.p == 0.0 for m in policy.modules() if isinstance(m, torch.nn.Dropout))


HOST_MEMORY_PROBE = """
import resource, sys
import torch
from stepdpo_cli.train.setup import keep_host_memory
if sys.argv[1] == "keep":
    assert keep_host_memory()
def step():  # a forward's activations: blocks of several sizes, all freed at the end
    blocks = [torch.ones(n << 18) for n in (1, 2, 4, 8, 16, 24) * 3]  # 1-24 MiB, 165 MiB in all
    del blocks
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/maps") or os.uname().sysname != "Linux", reason="glibc only")
def test_cpu_training_reuses_freed_activation_memory():
    """keep_host_memory (called by train on the CPU): a step's freed activations are reused by the next step
    instead of being handed back to the kernel and page-faulted in again (~14% of a CPU run's time)."""
    import subprocess
    import sys

    faults = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", HOST_MEMORY_PROBE, mode], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
        faults[mode] = int(out.stdout.split()[-1])
    pages_touched = 5 * 165 * (1 << 20) // 4096
    largest_block = 24 * (1 << 20) // 4096
    # measured: glibc's default faults 23-97% of the pages in again every step (48k-205k); kept, at most the
    # largest block once or twice (211-6144), however many steps run: the kept run's faults do not grow per step
    assert faults["default"] > pages_touched // 10, faults
    assert faults["keep"] <= 2 * largest_block < faults["default"], faults


def test_a_rows_label_smoothing_trains_as_cdpo_with_that_epsilon(tiny_model, tmp_path):
    """Rows carrying label_smoothing 0.3 train exactly as --label-smoothing 0.3 on the same rows without it,
    and differently from plain DPO."""
    plain = _pairs(tmp_path / "plain.jsonl", n=8)
    rows = [json.loads(line) for line in open(plain)]
    own = tmp_path / "own.jsonl"
    own.write_text("".join(json.dumps({**r, "label_smoothing": 0.3}) + "\n" for r in rows))
    by_row = _run(_config(tiny_model, str(own), tmp_path / "a", max_steps=3))
    by_option = _run(_config(tiny_model, plain, tmp_path / "b", max_steps=3, label_smoothing=0.3))
    dpo = _run(_config(tiny_model, plain, tmp_path / "c", max_steps=3))
    assert [m["loss"] for m in by_row] == pytest.approx([m["loss"] for m in by_option], abs=1e-6)
    assert by_row[-1]["loss"] != pytest.approx(dpo[-1]["loss"], abs=1e-4)
    own.write_text(json.dumps({**rows[0], "label_smoothing": 0.7}) + "\n")
    with pytest.raises(InputError) as bad:
        _run(_config(tiny_model, str(own), tmp_path / "d", max_steps=1))
    assert bad.value.field == "label_smoothing"


def test_tdpo_runs_its_reference_beside_the_policy(tiny_model, tmp_path):
    """TDPO starts at log 2 with zero KL (policy == reference), the KL grows as the policy moves, no reference
    cache is written; TDPO2 at alpha 0 trains exactly as the sigmoid loss with cached reference log-probs."""
    data = _pairs(tmp_path / "p.jsonl", n=8)
    tdpo = _run(_config(tiny_model, data, tmp_path / "t", max_steps=4, loss="tdpo2", beta=0.1))
    assert tdpo[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(tdpo[0]["chosen_kl"]) < 1e-6 and abs(tdpo[0]["rejected_kl"]) < 1e-6
    assert tdpo[-1]["chosen_kl"] > 1e-4 and tdpo[-1]["rejected_kl"] > 1e-4
    assert not (tmp_path / "t" / REF_FILE).exists() and (tmp_path / "t" / "model.safetensors").exists()
    as_dpo = _run(_config(tiny_model, data, tmp_path / "a", max_steps=4, loss="tdpo2", tdpo_alpha=0.0, beta=0.1))
    dpo = _run(_config(tiny_model, data, tmp_path / "d", max_steps=4, beta=0.1))
    for a, b in zip(as_dpo, dpo):
        for key in ("loss", "margin", "chosen_logp", "rejected_logp", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    assert tdpo[-1]["loss"] != pytest.approx(dpo[-1]["loss"], abs=1e-5)


def test_tdpo_usage_errors(tiny_model, tmp_path):
    data = _pairs(tmp_path / "p.jsonl", n=2)
    for extra, field in ((["--objective", "sft", "--loss", "tdpo2"], "--loss"),
                         (["--loss", "tdpo2", "--tdpo-alpha", "-1"], "--tdpo-alpha")):
        proc = run_cli("train", "-m", tiny_model, "--data", data, "--output", str(tmp_path / "o"), *extra)
        assert proc.returncode == 2 and field in proc.stderr.decode() and b"Traceback" not in proc.stderr


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_two_process_tdpo_with_deepspeed(tiny_model, tmp_path, stage):
    """The reference is a whole copy per process under ZeRO-2 and sharded like the policy under ZeRO-3: TDPO
    trains like its DDP run."""
    ddp = _multi_process(tiny_model, tmp_path / "ddp", "--loss", "tdpo2")
    zero = _multi_process(tiny_model, tmp_path / stage, "--loss", "tdpo2", "--deepspeed", stage)
    assert ddp[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    for a, b in zip(ddp, zero):
        for key in ("loss", "chosen_kl", "rejected_kl"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key
    assert ddp[1]["chosen_kl"] > 0
