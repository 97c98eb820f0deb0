"""Several cupyden-train CPU jobs at once against one alone, on the same machine.

Usage:
  bench_cpu_concurrent.py [--steps N] [--jobs N] [--threads T] [--repeat N]

Options:
  --steps N     Training steps of each job (the embedded default: DnCNN-12/32 on the
                shipped K2 crop, batch 16 x 64^2, then the crop denoised) [default: 40]
  --jobs N      Jobs started together in the second part [default: 2]
  --threads T   --threads of every job (auto: each job sees all the CPUs it may use,
                as a user who starts two jobs without thinking about it) [default: auto]
  --repeat N    Runs of each part; the median is printed [default: 1]

Each job is ``cupyden-train -d -1 --steps N --no-progress -o TMP --threads T`` in its own
process, started by this script; its wall time runs from its start to its exit, and its
CPU time (user + system) comes from wait4. The issue's target: each concurrent job takes
at most 2.5x the time of one alone (two jobs on two cores share them: about 2x is the
floor). Prints the CPU model and the thread settings of the environment.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

from docopt import docopt

from cupyden import backend

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bin", "cupyden-train")


def start(steps, threads, out):
    cmd = [sys.executable, TRAIN, "-d", "-1", "--steps", str(steps), "--no-progress",
           "-o", out, "--threads", threads]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def run_together(n, steps, threads):
    """Start n jobs at once; return [(wall s, cpu s)] in start order."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        procs = [start(steps, threads, os.path.join(tmp, "job%d" % i)) for i in range(n)]
        done = {}
        while len(done) < n:
            pid, status, usage = os.wait4(-1, 0)
            done[pid] = (time.perf_counter() - t0, usage.ru_utime + usage.ru_stime, status)
        out = []
        for p in procs:
            wall, cpu, status = done[p.pid]
            if status != 0:
                raise SystemExit("a job failed: %s" % p.stderr.read().decode()[-2000:])
            p.stderr.close()
            out.append((wall, cpu))
        return out


def main():
    args = docopt(__doc__)
    steps, n, repeat = int(args["--steps"]), int(args["--jobs"]), int(args["--repeat"])
    threads = args["--threads"]
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    env = ", ".join("%s=%s" % (k, os.environ[k]) for k in backend.THREAD_VARIABLES
                    if k in os.environ) or "no thread variables set"
    print("CPU: %s; %d CPUs usable (os.cpu_count %d); %s; --threads %s; %d steps"
          % (model, backend.cpu_threads(), os.cpu_count(), env, threads, steps))
    alone = [run_together(1, steps, threads)[0] for _ in range(repeat)]
    wall1 = statistics.median(w for w, _ in alone)
    cpu1 = statistics.median(c for _, c in alone)
    print("one job alone:  %.1f s wall, %.1f s CPU" % (wall1, cpu1), flush=True)
    runs = [run_together(n, steps, threads) for _ in range(repeat)]
    for i in range(n):
        wall = statistics.median(r[i][0] for r in runs)
        cpu = statistics.median(r[i][1] for r in runs)
        print("job %d of %d at once: %.1f s wall (%.2fx alone), %.1f s CPU (%.2fx alone)"
              % (i + 1, n, wall, wall / wall1, cpu, cpu / cpu1))
    worst = max(max(w for w, _ in r) for r in runs) / wall1
    print("slowest concurrent job / alone: %.2fx (target <= 2.5x)" % worst)


if __name__ == "__main__":
    main()
