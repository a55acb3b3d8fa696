"""perf.threads (issue #24 item 5): the CPUs this process may use from fake cgroup files, the affinity
mask and OMP_NUM_THREADS; every run sets them and says so in its first line."""
import pytest
import torch

import fastmine as fm
from fastmine.config import ConfigError, ModelConfig
from fastmine.threads import apply_threads, cgroup_cpus, default_threads, resolve_threads


def _cgroup(tmp_path, proc_line, files):
    for rel, text in files.items():
        path = tmp_path / "sys" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(proc_line + "\n")
    return tmp_path / "sys", proc


def test_cgroup_v2_quota_of_the_process_group_rounds_up(tmp_path):
    root, proc = _cgroup(tmp_path, "0::/user.slice/job", {"user.slice/job/cpu.max": "150000 100000\n",
                                                           "cpu.max": "max 100000\n"})
    assert cgroup_cpus(root, proc) == 2


def test_cgroup_v2_the_tightest_ancestor_wins_and_max_is_no_limit(tmp_path):
    root, proc = _cgroup(tmp_path, "0::/a/b", {"a/b/cpu.max": "max 100000", "a/cpu.max": "100000 100000"})
    assert cgroup_cpus(root, proc) == 1
    root, proc = _cgroup(tmp_path / "2", "0::/a", {"a/cpu.max": "max 100000"})
    assert cgroup_cpus(root, proc) is None


def test_cgroup_v1_cfs_quota(tmp_path):
    root, proc = _cgroup(tmp_path, "12:memory:/x\n4:cpu,cpuacct:/docker/abc",
                         {"cpu/docker/abc/cpu.cfs_quota_us": "300000", "cpu/docker/abc/cpu.cfs_period_us": "100000"})
    assert cgroup_cpus(root, proc) == 3
    root, proc = _cgroup(tmp_path / "2", "4:cpu,cpuacct:/", {"cpu/cpu.cfs_quota_us": "-1",
                                                             "cpu/cpu.cfs_period_us": "100000"})
    assert cgroup_cpus(root, proc) is None


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert cgroup_cpus(tmp_path / "none", tmp_path / "missing") is None


def test_default_is_affinity_capped_by_quota_unless_omp_num_threads_is_set():
    assert default_threads({}, affinity=8, quota=None) == (8, "CPUs in this process's affinity mask")
    assert default_threads({}, affinity=8, quota=2) == (2, "cgroup CPU quota (affinity: 8 CPUs)")
    assert default_threads({}, affinity=2, quota=4)[0] == 2
    assert default_threads({"OMP_NUM_THREADS": "3"}, affinity=8, quota=2) == (3, "OMP_NUM_THREADS")
    assert default_threads({"OMP_NUM_THREADS": "junk"}, affinity=8, quota=None)[0] == 8
    assert default_threads({"OMP_NUM_THREADS": "0"}, affinity=4, quota=None)[0] == 4


def test_an_explicit_setting_wins_and_bad_ones_are_one_line():
    assert resolve_threads(5, {"OMP_NUM_THREADS": "1"}, affinity=1, quota=1) == (5, "perf.threads")
    for bad in (0, -2, 1.5, True, "4"):
        with pytest.raises(ValueError, match="perf.threads must be a positive number of threads or null"):
            resolve_threads(bad)


def test_apply_sets_torch_threads_and_says_so():
    before = torch.get_num_threads()
    try:
        assert apply_threads(1) == "threads: 1 torch CPU threads (perf.threads; perf.threads sets them)"
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_python_run_sets_threads_and_logs_it_first(capsys):
    before = torch.get_num_threads()
    target = torch.rand(16, 1, 8, 8) * 2 - 1
    model = ModelConfig(latent_dim=4, width=4)
    try:
        fm.prepare(fm.new_generator(target, model), target, method="transfergan", device="cpu", batch_size=4,
                   progress=False, model_cfg=model, perf_cfg={"threads": 1})
        assert torch.get_num_threads() == 1
        assert capsys.readouterr().out.splitlines()[0].startswith("threads: 1 torch CPU threads (perf.threads")
        with pytest.raises(ConfigError, match="perf.threads' must be positive"):
            fm.prepare(None, target, method="scratch", device="cpu", model_cfg=model, perf_cfg={"threads": 0})
    finally:
        torch.set_num_threads(before)
