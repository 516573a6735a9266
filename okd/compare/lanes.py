"""`okd compare --lanes N`: a grid's runs N at a time, each in its own `okd compare --only NAME` process.

On a machine of N cores, N processes of one torch thread each train faster together than one process of
N threads (they do not spin-wait on each other). A run starts once the runs it needs are done (the
run its student comes from, the teacher it distils from, the tuned teacher as exposure bias's oracle),
and no two runs build the same teacher cache at once (the second waits for the first). Each process
trains and evaluates its run, with its output in <output_dir>/lanes/<name>.log; the parent writes the
report at the end. A run that fails is reported and the runs that need it are not started. Ctrl-C
reaches every process (each saves a checkpoint); the same command resumes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from okd.compare.archive import forget_import
from okd.compare.grid import Plan
from okd.compare.settings import exposure_oracle_run, exposure_runs
from okd.compare.state import eval_done, run_status
from okd.errors import OkdError
from okd.progress import fmt_s

Log = Callable[[str], None]


@dataclass
class Job:
    name: str  # a run, or a reference row
    args: list[str]
    needs: set[str] = field(default_factory=set)
    cache: Path | None = None  # the shared teacher cache its run trains from


def _jobs(plan: Plan, selection, evaluate: bool, need: dict) -> tuple[list[Job], set[str]]:
    """(the jobs to run in plan order, the runs already done); a run's job evaluates it where selected.
    need: the runs whose weights the selection reads (okd.compare.execute._weights_needed)."""
    oracle = exposure_oracle_run(plan)
    xruns = exposure_runs(plan)
    done, jobs = set(), []
    for r in plan.runs:
        status = run_status(r)
        if status == "imported" and r.name in need:
            forget_import(plan, r)  # its weights are needed: trained again (its job)
            status = run_status(r)
        if r.same_as or r.name not in selection.train:
            continue
        evaluates = evaluate and plan.spec.eval is not None and r.name in selection.evaluate \
            and r.name != plan.spec.teacher_from
        exposure = evaluates and r.name in xruns
        if status in ("complete", "imported") and (not evaluates or (eval_done(plan, r.name)
                                                                     and (not exposure or eval_done(plan, r.name, True)))):
            done.add(r.name)
            continue
        needs = {plan.trained(plan.run(d)).name for d in (r.same_as, r.student_from, r.teacher_from) if d}
        if exposure and oracle:
            needs.add(oracle)
        cache = plan.cache_of(r)
        jobs.append(Job(r.name, ["--only", r.name] + ([] if evaluates else ["--no-eval"]), needs - {r.name},
                        None if cache is None or cache.built() else cache.path))
    for ref in sorted(selection.references) if evaluate else []:
        if not eval_done(plan, ref):
            jobs.append(Job(ref, ["--only", ref], {plan.spec.teacher_from} if ref == "teacher" and plan.spec.teacher_from
                            else set()))
    return jobs, done


def run_lanes(plan: Plan, selection, lanes: int, *, need: dict, evaluate: bool, log: Log,
              elapsed: Callable[[], str]) -> None:
    """Run the selection's jobs `lanes` at a time (module doc); OkdError naming the runs that failed."""
    if not plan.source or not Path(plan.source).is_file():
        raise OkdError("--lanes runs each run as `okd compare -c GRID --only NAME`: give the grid as a file")
    jobs, done = _jobs(plan, selection, evaluate, need)
    (plan.out / "lanes").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(plan.spec.threads or 1), TOKENIZERS_PARALLELISM="false")
    running: dict = {}  # Popen -> (job, started, log file)
    failed: set[str] = set()
    log(f"lanes: {len(jobs)} jobs on {lanes} lanes ({', '.join(j.name for j in jobs) or 'nothing to do'})")
    try:
        while jobs or running:
            for job in list(jobs):
                if len(running) >= lanes:
                    break
                if job.needs & failed:
                    jobs.remove(job)
                    failed.add(job.name)
                    log(f"lanes: {job.name} not started: {', '.join(sorted(job.needs & failed))} failed")
                    continue
                busy = job.cache is not None and not (job.cache / "manifest.json").is_file() and \
                    any(j.cache == job.cache for j, _, _ in running.values())
                if not job.needs <= done or busy:
                    continue
                out = open(plan.out / "lanes" / f"{job.name}.log", "a")
                cmd = [sys.executable, "-m", "okd", "compare", "-c", str(plan.source), *job.args, "--no-report"]
                running[subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)] = (job, time.time(), out)
                jobs.remove(job)
                log(f"lanes: {job.name} started ({len(running)} running, {len(jobs)} waiting) [grid elapsed {elapsed()}]")
            if running and all(p.poll() is None for p in running):
                time.sleep(0.5)
            for proc in [p for p in running if p.poll() is not None]:
                job, t0, out = running.pop(proc)
                out.close()
                ok = proc.returncode == 0
                (done if ok else failed).add(job.name)
                where = "" if ok else f"; see {plan.out / 'lanes' / (job.name + '.log')}"
                log(f"lanes: {job.name} {'done' if ok else f'FAILED (exit {proc.returncode})'} in "
                    f"{fmt_s(time.time() - t0)}{where}")
            if jobs and not running and all(not j.needs <= done for j in jobs):
                raise OkdError(f"lanes: {', '.join(j.name for j in jobs)} wait for runs that are not in this call")
    except KeyboardInterrupt:  # the processes got it too: let them save their checkpoints
        for proc in running:
            proc.wait()
        raise
    if failed:
        raise OkdError(f"lanes: {', '.join(sorted(failed))} did not finish; see {plan.out / 'lanes'}/<name>.log, "
                       "fix, and run the same command again (finished runs are kept)")
