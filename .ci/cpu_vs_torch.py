"""labelwise's CPU backend against PyTorch on the same cores, side by side.

For each image size, alternates a PyTorch process and a `labelwise bench` process (same batch,
same thread count, ResNet18, a training step = forward + backward + Adam, and an inference pass),
several times, and prints the medians, the ratio labelwise / PyTorch and each process's peak
resident memory (from the kernel's own accounting, `wait4`). Processes are interleaved so that a
change in the machine's load hits both sides alike.

PyTorch runs in both memory formats (contiguous NCHW and channels_last) and the faster is the
reference, so the comparison is against PyTorch at its best on this machine.

Usage (normally through .ci/cpu-vs-torch.sh, which installs PyTorch first):
    python .ci/cpu_vs_torch.py --labelwise target/release/labelwise [--sizes 32 64] [--rounds 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def torch_worker(size: int, batch: int, threads: int, steps: int, fmt: str) -> None:
    import torch
    import torchvision

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(batch, 3, size, size)
    y = torch.arange(batch) % 10
    if fmt == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        loss.item()

    def timed(f, n):
        f()  # warm-up: oneDNN picks and caches its kernels here
        f()
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            f()
            samples.append(time.perf_counter() - t)
        return statistics.median(samples)

    model.train()
    train_s = timed(train_step, steps)
    model.eval()

    def infer():
        with torch.inference_mode():
            model(x).sum().item()

    infer_s = timed(infer, steps)
    print(json.dumps({
        "train_images_per_s": batch / train_s,
        "inference_images_per_s": batch / infer_s,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }))


def spawn(cmd: list[str], env: dict) -> tuple[str, float]:
    """Runs a command to completion; returns (stdout, peak resident MiB of that process)."""
    with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read()}")
        return out.read(), usage.ru_maxrss / 1024.0  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labelwise", default="target/release/labelwise")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions per size")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per process (median)")
    ap.add_argument("--json", help="also write the table as JSON here")
    ap.add_argument("--worker", choices=["contiguous", "channels_last", "import_only"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker == "import_only":
        import torch  # noqa: F401
        import torchvision  # noqa: F401
        return
    if a.worker:
        torch_worker(a.size, a.batch, a.threads, a.steps, a.worker)
        return

    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               RAYON_NUM_THREADS=str(a.threads))
    rows = []
    for size in a.sizes:
        samples = {"labelwise": [], "contiguous": [], "channels_last": []}
        for r in range(a.rounds):
            for who in ("labelwise", "contiguous", "channels_last"):
                if who == "labelwise":
                    with tempfile.NamedTemporaryFile(suffix=".json") as j:
                        cmd = [a.labelwise, "--quiet", "bench", "--device", "cpu",
                               "--threads", str(a.threads), "--model-only",
                               "--image-size", str(size), "--batch-size", str(a.batch),
                               "--reps", str(a.steps), "--json", j.name]
                        _, rss = spawn(cmd, env)
                        d = json.load(open(j.name))
                else:
                    cmd = [sys.executable, __file__, "--worker", who, "--size", str(size),
                           "--batch", str(a.batch), "--threads", str(a.threads),
                           "--steps", str(a.steps)]
                    out, rss = spawn(cmd, env)
                    d = json.loads(out.strip().splitlines()[-1])
                samples[who].append((d["train_images_per_s"], d["inference_images_per_s"], rss))
                print(f"  {size}px round {r + 1} {who:<13} train {d['train_images_per_s']:7.1f} img/s"
                      f"  inference {d['inference_images_per_s']:7.1f} img/s  peak {rss:7.1f} MiB",
                      file=sys.stderr, flush=True)

        def med(who, i):
            return statistics.median(s[i] for s in samples[who])

        best_train = max(("contiguous", "channels_last"), key=lambda w: med(w, 0))
        best_infer = max(("contiguous", "channels_last"), key=lambda w: med(w, 1))
        rows.append({
            "size": size,
            "labelwise_train": med("labelwise", 0),
            "torch_train": med(best_train, 0),
            "torch_train_format": best_train,
            "labelwise_inference": med("labelwise", 1),
            "torch_inference": med(best_infer, 1),
            "torch_inference_format": best_infer,
            "labelwise_peak_mib": med("labelwise", 2),
            "torch_peak_mib": med(best_train, 2),
        })

    print(f"\nResNet18, batch {a.batch}, {a.threads} threads, medians of {a.rounds} interleaved rounds "
          f"x {a.steps} steps (PyTorch: faster of NCHW and channels_last)")
    print(f"{'size':>5} {'train img/s':>24} {'ratio':>6}  {'inference img/s':>24} {'ratio':>6}  "
          f"{'peak MiB':>18} {'ratio':>6}")
    print(f"{'':>5} {'labelwise':>11} {'PyTorch':>12} {'':>6}  {'labelwise':>11} {'PyTorch':>12} {'':>6}  "
          f"{'labelwise':>9} {'PyTorch':>8}")
    for r in rows:
        print(f"{r['size']:>4}px {r['labelwise_train']:>11.1f} {r['torch_train']:>12.1f} "
              f"{r['labelwise_train'] / r['torch_train']:>6.2f}  "
              f"{r['labelwise_inference']:>11.1f} {r['torch_inference']:>12.1f} "
              f"{r['labelwise_inference'] / r['torch_inference']:>6.2f}  "
              f"{r['labelwise_peak_mib']:>9.0f} {r['torch_peak_mib']:>8.0f} "
              f"{r['labelwise_peak_mib'] / r['torch_peak_mib']:>6.2f}")
    # Context for the memory column: what PyTorch's process holds before any tensor exists.
    _, import_rss = spawn([sys.executable, __file__, "--worker", "import_only"], env)
    print(f"(PyTorch's process peaks at {import_rss:.0f} MiB after `import torch, torchvision` "
          f"alone; labelwise's peaks include its whole process too)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
