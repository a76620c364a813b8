"""scripts/gpu-check.sh --dry-run: the GPU check's code paths on CPU (tiny model, 2 steps), so the script is
known to work when a GPU machine is lent. It writes its report where --out says, never docs/gpu.md."""
from __future__ import annotations

import os
import subprocess

import pytest
from conftest import ROOT


@pytest.mark.slow  # 45 s: the slow tier keeps CI under 30 minutes
def test_gpu_check_dry_run_writes_its_report(tmp_path):
    out = tmp_path / "gpu.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GPU_CHECK_DEEPSPEED", None)
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu-check.sh"), "--dry-run", "--out", str(out)],
                            capture_output=True, env=env, cwd=ROOT, timeout=540)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    report = out.read_text()
    assert report.startswith("# GPU check (DRY RUN on CPU")
    assert "Result: all checks passed" in report
    for heading in ("## 1.", "## 2. Packed shared-prefix", "## 3. stepdpo train vs TRL", "## 4. hf backend generation"):
        assert heading in report
    assert "| plain |" in report and "tokens/s" in report
