"""Cluster execution: the SLURM profile in slurm/ against a real one-node SLURM cluster.

tests/slurm/install.sh installs the Debian packages; tests/slurm/cluster.sh starts munge, MariaDB,
slurmdbd, slurmctld and slurmd with one fake GPU, all state in a temp folder. The tiny workflow then
runs through `--profile`, and sacct must show every rule's job with the CPUs, memory, time limit
and GPUs that Snakemake computed for it, in the partition and account the profile names.

The cluster tests skip only when this is not root or apt cannot install the packages; with
QACLIMS_REQUIRE_SLURM=1 (CI) those are failures too. Knobs: QACLIMS_SLURM_TIMEOUT (seconds for the
workflow run, default 1500), QACLIMS_SLURM_TARGETS (extra snakemake arguments, split on spaces:
targets or e.g. `--until vqa`; default: the workflow's default target).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
SCRIPTS = ROOT / "tests" / "slurm"
PROFILE = ROOT / "slurm" / "config.yaml"
TINY = ROOT / "config" / "tiny.yaml"
REQUIRE = os.environ.get("QACLIMS_REQUIRE_SLURM") == "1"
RUN_TIMEOUT_S = int(os.environ.get("QACLIMS_SLURM_TIMEOUT", "1500"))
TARGETS = os.environ.get("QACLIMS_SLURM_TARGETS", "").split()
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# ---------------------------------------------------------------------------------------------
# Parsing what Snakemake prints and what sacct reports
# ---------------------------------------------------------------------------------------------


@dataclass
class JobInfo:
    """One job as Snakemake announced it: `rule NAME:` block, threads and evaluated resources."""

    rule: str
    jobid: int
    local: bool
    threads: int = 1
    resources: dict[str, str] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)

    def res_int(self, name: str) -> int | None:
        value = self.resources.get(name)
        return int(value) if value is not None and value.isdigit() else None

    @property
    def gpus(self) -> int:
        """GPUs Snakemake asks for: the `gpu` resource or a gpu entry of `gres`."""
        n = self.res_int("gpu") or 0
        gres = self.resources.get("gres", "")
        m = re.fullmatch(r"gpu(?::[\w.]+)?(?::(\d+))?", gres)
        if m:
            n = max(n, int(m.group(1) or 1))
        return n

    @property
    def expected_cpus(self) -> int:
        """What the plugin turns into --cpus-per-task / --cpus-per-gpu (see its get_cpu_setting)."""
        if self.res_int("cpus_per_task"):
            return self.res_int("cpus_per_task")
        if self.gpus and self.res_int("cpus_per_gpu"):
            return self.res_int("cpus_per_gpu") * self.gpus
        return self.threads

    @property
    def expected_mem_mb(self) -> int | None:
        if self.res_int("mem_mb_per_cpu"):
            return self.res_int("mem_mb_per_cpu") * self.expected_cpus
        return self.res_int("mem_mb")


JOB_HEADER = re.compile(r"^(local)?(?:rule|checkpoint) (\w+):$")
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+)")


def parse_jobs(log: str) -> dict[int, JobInfo]:
    """Snakemake's job blocks (`rule X:` + indented `key: value` lines), keyed by jobid."""
    jobs: dict[int, JobInfo] = {}
    current: JobInfo | None = None
    for line in log.splitlines():
        header = JOB_HEADER.match(line)
        if header:
            current = JobInfo(rule=header.group(2), jobid=-1, local=bool(header.group(1)))
            continue
        if current is None:
            continue
        item = re.match(r"^    (\w+): (.*)$", line)
        if not item:
            current = None
            continue
        key, value = item.groups()
        if key == "jobid":
            current.jobid = int(value)
            jobs[current.jobid] = current
        elif key == "threads":
            current.threads = int(value)
        elif key == "output":
            current.output = value.split(", ")
        elif key == "resources":
            current.resources = dict(kv.split("=", 1) for kv in value.split(", ") if "=" in kv)
    return jobs


def submissions(log: str) -> dict[int, str]:
    """Snakemake jobid -> SLURM job id, from the plugin's `has been submitted` lines."""
    subs: dict[int, str] = {}
    for m in SUBMITTED.finditer(log):
        subs[int(m.group(1))] = m.group(2)
    return subs


def mem_to_mb(value: str) -> float:
    """sacct ReqMem ('4000M', '8G', older '4000Mn'/'1000Mc') in MB."""
    m = re.fullmatch(r"([\d.]+)([KMGT]?)[nc]?", value)
    assert m, f"unexpected ReqMem {value!r}"
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2)]
    return float(m.group(1)) * scale


def timelimit_to_minutes(value: str) -> float:
    """sacct Timelimit ('30:00', '01:00:00', '1-00:00:00') in minutes."""
    days = 0
    if "-" in value:
        d, value = value.split("-", 1)
        days = int(d)
    parts = [int(p) for p in value.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts
    return days * 1440 + h * 60 + m + s / 60


def tres(value: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in value.split(",") if "=" in kv)


# ---------------------------------------------------------------------------------------------
# The cluster
# ---------------------------------------------------------------------------------------------


def _unavailable(reason: str) -> None:
    """No SLURM here: a skip, or a failure where CI requires the cluster test to run."""
    if REQUIRE:
        pytest.fail(f"QACLIMS_REQUIRE_SLURM=1 but the SLURM test cannot run: {reason}")
    print(f"SLURM test skipped: {reason}", file=sys.stderr)
    pytest.skip(reason)


@dataclass
class Cluster:
    dir: Path
    env: dict[str, str]
    partition: str
    account: str
    gpu_model: str
    cpus: int

    def run(self, *cmd: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True,
                              timeout=timeout, **kw)

    def sacct(self, ids: list[str], wait_s: float = 60) -> dict[str, dict[str, str]]:
        """sacct rows of the given jobs, waiting until each is finished and fully accounted.

        slurmctld hands job records to slurmdbd asynchronously: right after a job ends, its
        ReqTRES can still be empty. Wait (bounded) until every row is complete."""
        fields = ("JobID,State,ExitCode,Comment,ReqCPUS,ReqMem,Timelimit,ReqTRES,AllocTRES,"
                  "Partition,Account")
        deadline = time.monotonic() + wait_s
        while True:
            proc = self.run("sacct", "-X", "-P", "-n", "-j", ",".join(ids), "-o", fields)
            assert proc.returncode == 0, proc.stderr
            rows = {}
            for line in proc.stdout.splitlines():
                row = dict(zip(fields.split(","), line.split("|"), strict=True))
                rows[row["JobID"]] = row
            done = (set(rows) == set(ids) and all(
                r["ReqTRES"] and r["State"] not in ("PENDING", "RUNNING", "COMPLETING")
                for r in rows.values()))
            if done or time.monotonic() > deadline:
                return rows
            time.sleep(1)

    def logs(self) -> str:
        text = []
        for f in sorted((self.dir / "log").glob("*.log")):
            text.append(f"---- {f.name}\n" + "\n".join(f.read_text().splitlines()[-20:]))
        return "\n".join(text)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        _unavailable("not running as root (munged, slurmd and apt-get need root)")
    install = subprocess.run(["bash", str(SCRIPTS / "install.sh")], capture_output=True,
                             text=True, timeout=1200)
    if install.returncode != 0:
        _unavailable(f"tests/slurm/install.sh could not install SLURM:\n{install.stderr[-3000:]}")
    # Not tmp_path: munged runs as the munge user and must enter the folder; pytest's are 0700.
    cdir = Path(tempfile.mkdtemp(prefix="qaclims-slurm-"))
    try:
        started = time.monotonic()
        up = subprocess.run(["bash", str(SCRIPTS / "cluster.sh"), "up", str(cdir)],
                            capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, f"cluster.sh up failed:\n{up.stderr[-6000:]}"
        print(f"SLURM cluster up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        env = dict(os.environ, **OFFLINE)
        for line in up.stdout.splitlines():
            m = re.fullmatch(r"export (\w+)=(.*)", line.strip())
            if m:
                env[m.group(1)] = m.group(2).replace("$PATH", os.environ.get("PATH", ""))
        c = Cluster(dir=cdir, env=env, partition=env["QACLIMS_SLURM_PARTITION"],
                    account=env["QACLIMS_SLURM_ACCOUNT"], gpu_model=env["QACLIMS_SLURM_GPU_MODEL"],
                    cpus=0)
        c.cpus = int(c.run("sinfo", "-h", "-o", "%c").stdout.split()[0])
        yield c
    finally:
        down = subprocess.run(["bash", str(SCRIPTS / "cluster.sh"), "down", str(cdir)],
                              capture_output=True, text=True, timeout=300)
        if down.returncode != 0:
            print(f"cluster.sh down failed:\n{down.stderr}", file=sys.stderr)
        shutil.rmtree(cdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The profile as a user edits it
# ---------------------------------------------------------------------------------------------


def site_profile(dest: Path, partition: str, account: str,
                 gpu_rules: dict[str, str] | None = None) -> Path:
    """A copy of slurm/config.yaml edited as the README tells a user: partition and account
    uncommented and filled in, and the GPU model set for each GPU rule. Fails if a placeholder
    the README refers to has gone."""
    text = PROFILE.read_text()
    for key, value in (("slurm_partition", partition), ("slurm_account", account)):
        text, n = re.subn(rf"(?m)^(\s*)#\s*{key}:.*$", rf'\g<1>{key}: "{value}"', text)
        assert n == 1, f"slurm/config.yaml: no commented '{key}:' placeholder to fill in"
    assert re.search(r"(?m)^#\s*set-resources:", text), "no commented set-resources example"
    assert re.search(r"(?m)^#\s+gpu_model:", text), "no commented gpu_model example"
    if gpu_rules:
        lines = ["set-resources:"]
        for rule, model in gpu_rules.items():
            # gpu=1 turns a rule's GPU on even where the tiny config leaves it at 0 (CPU demo).
            lines += [f"  {rule}:", "    gpu: 1", f'    gpu_model: "{model}"']
        text += "\n" + "\n".join(lines) + "\n"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(text)
    parsed = yaml.safe_load(text)
    assert parsed["default-resources"]["slurm_partition"] == partition
    assert parsed["default-resources"]["slurm_account"] == account
    return dest


def snakemake(args: list[str], env: dict[str, str], cwd: Path, timeout: float,
              ) -> subprocess.CompletedProcess:
    # `timeout -k`: a plugin that lost track of its jobs ignores SIGTERM; this bounds it anyway.
    cmd = ["timeout", "-k", "30", str(int(timeout)), str(SNAKEMAKE), *args]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout + 60)


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_profile_resolves_from_repo_root(tmp_path: Path) -> None:
    """`snakemake --profile slurm` typed in the repository root finds slurm/config.yaml; every key
    is a valid option (Snakemake rejects unknown ones) and the default resources parse."""
    proc = snakemake(["--profile", "slurm", "-n", "--configfile", str(TINY),
                      "--directory", str(tmp_path)],
                     env=dict(os.environ, **OFFLINE), cwd=ROOT, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "Using profile slurm" in out
    jobs = parse_jobs(out)
    assert jobs, "no jobs in the dry run"
    # The target rule declares no resources: the profile's defaults apply ("1h" -> 60 minutes).
    all_job = [j for j in jobs.values() if j.rule == "all"]
    assert all_job and all_job[0].resources.get("runtime") == "60", all_job
    assert all_job[0].resources.get("mem_mb") == "4000", all_job
    for job in jobs.values():
        assert job.res_int("runtime"), f"rule {job.rule}: runtime not in minutes: {job.resources}"


@pytest.mark.slurm
def test_fake_gpu_reaches_a_plain_sbatch_job(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "gpu.out"
    proc = cluster.run("sbatch", "--parsable", "--gpus=1", f"--output={out}",
                       "--wrap", 'echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"')
    assert proc.returncode == 0, proc.stderr
    jid = proc.stdout.strip().split(";")[0]
    row = cluster.sacct([jid])[jid]
    assert row["State"] == "COMPLETED", row
    assert tres(row["AllocTRES"]).get("gres/gpu") == "1", row
    assert out.read_text().strip() == "CUDA_VISIBLE_DEVICES=0"


@pytest.mark.slurm
def test_workflow_runs_through_sbatch_with_declared_resources(
        cluster: Cluster, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    base = ["--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
            "--configfile", str(TINY), *TARGETS]

    # Which rules declare a `gpu` resource: each then gets the fake GPU by its model name.
    dry_profile = site_profile(tmp_path / "profile_dry", cluster.partition, cluster.account)
    dry = snakemake([*base, "--profile", str(dry_profile), "-n"], cluster.env, work, 300)
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-6000:]
    gpu_rules = sorted({j.rule for j in parse_jobs(dry.stdout + dry.stderr).values()
                        if "gpu" in j.resources})
    profile = site_profile(tmp_path / "profile", cluster.partition, cluster.account,
                           {r: cluster.gpu_model for r in gpu_rules})

    started = time.monotonic()
    proc = snakemake([*base, "--profile", str(profile),
                      # quick status polling for a test; no retries so a failure shows at once
                      "--slurm-init-seconds-before-status-checks", "5",
                      "--seconds-between-status-checks", "5", "--retries", "0",
                      # the test node has few CPUs; rules asking for more are capped to fit
                      "--max-threads", str(cluster.cpus),
                      "--slurm-keep-successful-logs"],
                     cluster.env, work, RUN_TIMEOUT_S)
    elapsed = time.monotonic() - started
    log = proc.stdout + proc.stderr
    print(f"workflow on SLURM: {elapsed:.0f} s, GPU rules: {gpu_rules or 'none'}", file=sys.stderr)
    assert proc.returncode == 0, (
        f"snakemake --profile slurm failed (rc {proc.returncode}, 124/137 = timed out after "
        f"{RUN_TIMEOUT_S} s):\n{log[-8000:]}\n{cluster.logs()}")

    jobs = parse_jobs(log)
    subs = submissions(log)
    remote = {jid: j for jid, j in jobs.items() if not j.local}
    assert remote, f"no job was submitted:\n{log[-4000:]}"
    # Every non-local job went through sbatch, and nothing else did.
    assert set(subs) == set(remote), (sorted(subs), sorted(remote))

    rows = cluster.sacct(list(subs.values()))
    problems = []
    for jid, job in sorted(remote.items()):
        sid = subs[jid]
        row = rows.get(sid)
        name = f"rule {job.rule} (snakemake job {jid}, SLURM job {sid})"
        if row is None:
            problems.append(f"{name}: not in sacct")
            continue
        req = tres(row["ReqTRES"])
        checks = [
            ("state", row["State"], "COMPLETED"),
            ("exit code", row["ExitCode"], "0:0"),
            ("comment names the rule",
             row["Comment"] == f"rule_{job.rule}" or
             row["Comment"].startswith(f"rule_{job.rule}_wildcards_"), True),
            ("partition", row["Partition"], cluster.partition),
            ("account", row["Account"], cluster.account),
            ("CPUs", int(row["ReqCPUS"]), job.expected_cpus),
            ("GPUs", int(req.get("gres/gpu", 0)), job.gpus),
        ]
        if job.expected_mem_mb is not None:
            checks.append(("memory MB", round(mem_to_mb(row["ReqMem"])), job.expected_mem_mb))
        if job.res_int("runtime"):
            checks.append(("time limit min", round(timelimit_to_minutes(row["Timelimit"])),
                           job.res_int("runtime")))
        if job.rule in gpu_rules:
            # The profile's gpu_model reached the job and sbatch asked for that model.
            model = cluster.gpu_model
            checks += [("gpu_model", job.resources.get("gpu_model"), model),
                       (f"GPUs of model {model}", int(req.get(f"gres/gpu:{model}", 0)), job.gpus)]
        for what, got, want in checks:
            if got != want:
                problems.append(f"{name}: {what}: sacct {got!r}, declared {want!r}")
        for path in job.output:
            if not (work / path).exists():
                problems.append(f"{name}: output {path} missing")
    assert not problems, "\n".join(problems) + "\n\nsacct:\n" + "\n".join(map(str, rows.values()))

    # The GPU path is exercised as soon as a rule declares `gpu`.
    gpu_jobs = [j for j in remote.values() if j.gpus]
    assert {j.rule for j in gpu_jobs} == set(gpu_rules), (gpu_rules, gpu_jobs)

    # Everything is up to date: a second run through the profile has nothing to do.
    again = snakemake([*base, "--profile", str(profile), "-n"], cluster.env, work, 300)
    again_log = again.stdout + again.stderr
    assert again.returncode == 0, again_log[-4000:]
    assert "Nothing to be done" in again_log, again_log[-4000:]
