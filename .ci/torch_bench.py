"""PyTorch ResNet18 training throughput, the reference labelwise's CUDA backend is compared to.

Synthetic data already on the GPU (so the input pipeline is not measured), batch 128, at 64 and
224 px, in two modes: fp32 with TF32 disabled (what our kernels compute) and AMP (bf16 autocast)
with channels_last (what a tuned PyTorch user would run). Prints one line per configuration and
optionally writes them as JSON. Runs offline; about a minute on an H200.
"""

import argparse
import json
import time

import torch
import torchvision


def bench(size: int, mode: str, batch: int, warmup: int, steps: int, classes: int) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    model = torchvision.models.resnet18(num_classes=classes).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    if mode == "amp_channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode != "fp32"):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "size": size,
        "mode": mode,
        "batch": batch,
        "steps": steps,
        "img_per_s": batch * steps / seconds,
        "ms_per_step": 1e3 * seconds / steps,
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{torch.cuda.get_device_name()}")
    results = []
    for size in args.sizes:
        for mode in ["fp32", "amp_channels_last"]:
            r = bench(size, mode, args.batch, args.warmup, args.steps, args.classes)
            results.append(r)
            print(f"resnet18 train {size:>3}px {mode:<18} batch {r['batch']}: "
                  f"{r['img_per_s']:8.0f} img/s {r['ms_per_step']:7.1f} ms/step "
                  f"peak {r['peak_mib']:6.0f} MiB", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
