"""Writes tests/fixtures/torch_golden.safetensors: torchvision ResNet18's outputs and gradients,
the reference tests/torch_golden.rs holds labelwise's encoder to.

The weights are not stored: every tensor comes from a formula (a 64-bit hash of the tensor's
name and element index, scaled per kind) that tests/torch_golden.rs computes bit for bit in
Rust, so the file stays small. The formula is `golden_tensor` below; change it in both places
or not at all.

What is recorded (reference values computed in float64, stored as float32):
- `eval.features`: the 512-wide encoder output (fc = Identity) in evaluation mode;
- `train.features`, `train.loss`: the same in training mode (batch statistics), and the scalar
  loss sum(features * loss_weights);
- `running.<bn>.running_mean|running_var`: every batch norm's running statistics after that one
  training-mode forward (momentum 0.1, unbiased variance);
- `grad.<name>`: full gradients of that loss for a few tensors, and `grad_norms`, `grad_sums`
  and `grad_abs_sums` (L2 norm, sum, L1 norm) for every parameter, in the order of metadata
  `parameters`;
- `weights.sums` (float64) and `weights.first` ([tensors, 4]): fingerprints of the formula's
  weights, so a drift between the Python and Rust formulas is reported as such.
Metadata also holds the state dict's names and shapes, and how far PyTorch's own float32 run is
from the float64 reference (the accumulation-order noise the tolerances are chosen from).

Usage (CPU only, no network; PyTorch in a throwaway venv, see .ci/torch-venv.sh):
    python scripts/torch_golden.py [--out tests/fixtures/torch_golden.safetensors]
"""

import argparse
import os

import numpy as np
import torch
import torchvision
from safetensors.numpy import save_file

BATCH, HEIGHT, WIDTH = 3, 37, 29
# Tensors whose whole gradient is stored: the stem, a batch norm scale, a first-stage
# convolution, a last-stage shift and a strided 1x1 downsample.
FULL_GRADS = [
    "conv1.weight",
    "bn1.weight",
    "layer1.0.conv1.weight",
    "layer2.0.downsample.0.weight",
    "layer4.1.bn2.bias",
]

MASK64 = (1 << 64) - 1


def fnv1a64(text: str) -> int:
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) & MASK64
    return h


def uniform_signed(name: str, n: int) -> np.ndarray:
    """n float32 values in [-1, 1): splitmix64 seeded by FNV-1a of the name, top 24 bits."""
    with np.errstate(over="ignore"):
        z = np.uint64(fnv1a64(name)) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(
            0x9E3779B97F4A7C15
        )
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)
    return u * np.float32(2.0) - np.float32(1.0)  # exact in float32


def golden_tensor(name: str, shape) -> np.ndarray:
    """The formula's value of state-dict tensor `name` (PyTorch layout), float32."""
    n = int(np.prod(shape))
    s = uniform_signed(name, n)
    f32 = np.float32
    if name.endswith("running_mean"):
        v = f32(0.1) * s
    elif name.endswith("running_var"):
        v = f32(1.0) + f32(0.5) * s
    elif len(shape) == 4:
        # Uniform with He's variance 2 / fan_in, so activations keep their scale.
        fan_in = shape[1] * shape[2] * shape[3]
        v = s * f32(np.sqrt(6.0 / fan_in))
    elif name.endswith("weight"):
        v = f32(1.0) + f32(0.25) * s
    elif name.endswith("bias"):
        v = f32(0.1) * s
    else:
        raise ValueError(f"no formula for {name}")
    return v.astype(np.float32).reshape(shape)


def rel_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Max absolute difference over the reference's largest magnitude."""
    scale = ref.abs().max().item()
    return (a.double() - ref.double()).abs().max().item() / (scale if scale > 0 else 1.0)


def run(dtype: torch.dtype):
    """Eval forward, then one train forward + backward, all in `dtype`."""
    torch.manual_seed(0)  # the formula sets every tensor; this only pins torchvision's init
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    state = {
        k: torch.from_numpy(golden_tensor(k, tuple(v.shape)))
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    model.load_state_dict(state, strict=False)
    model = model.to(dtype)
    x = torch.from_numpy(
        uniform_signed("input", BATCH * 3 * HEIGHT * WIDTH).reshape(BATCH, 3, HEIGHT, WIDTH) * 2
    ).to(dtype)
    loss_weights = torch.from_numpy(uniform_signed("loss_weights", BATCH * 512).reshape(BATCH, 512))

    model.eval()
    with torch.no_grad():
        eval_features = model(x)
    model.train()
    model.zero_grad()
    train_features = model(x)
    loss = (train_features * loss_weights.to(dtype)).sum()
    loss.backward()
    out = {
        "input": x,
        "loss_weights": loss_weights,
        "eval.features": eval_features,
        "train.features": train_features.detach(),
        "train.loss": loss.detach().reshape(1),
    }
    for name, buf in model.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            out["running." + name] = buf.detach().clone()
    params = [(n, p) for n, p in model.named_parameters()]
    for name in FULL_GRADS:
        out["grad." + name] = dict(params)[name].grad.detach().clone()
    out["grad_norms"] = torch.stack([p.grad.double().norm() for _, p in params])
    out["grad_sums"] = torch.stack([p.grad.double().sum() for _, p in params])
    out["grad_abs_sums"] = torch.stack([p.grad.double().abs().sum() for _, p in params])
    return out, [n for n, _ in params]


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", default=os.path.join(here, "..", "tests", "fixtures", "torch_golden.safetensors")
    )
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)

    ref, param_names = run(torch.float64)
    f32, _ = run(torch.float32)

    # PyTorch's own float32 error against the float64 reference, measured as
    # tests/torch_golden.rs measures ours: per tensor, the worst over the running statistics,
    # and each gradient sum relative to its tensor's L1 norm (what bounds a sum's rounding).
    noise = {}
    for key in ref:
        if key in ("input", "loss_weights", "grad_sums", "grad_abs_sums"):
            continue
        group = "running" if key.startswith("running.") else key
        noise[group] = max(noise.get(group, 0.0), rel_error(f32[key], ref[key]))
    noise["grad_sums"] = (
        ((f32["grad_sums"] - ref["grad_sums"]).abs() / ref["grad_abs_sums"]).max().item()
    )

    # Fingerprints of the formula's weights (every state-dict tensor but the integer counters).
    full = torchvision.models.resnet18().state_dict()
    weight_names = [k for k in full if not k.endswith("num_batches_tracked") and not k.startswith("fc.")]
    weights = [golden_tensor(k, tuple(full[k].shape)) for k in weight_names]
    tensors = {k: v.detach().to(torch.float32).contiguous().numpy() for k, v in ref.items()}
    tensors["weights.sums"] = np.array([w.astype(np.float64).sum() for w in weights])
    tensors["weights.first"] = np.stack([w.reshape(-1)[:4] for w in weights])

    metadata = {
        "generator": "scripts/torch_golden.py",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "input_shape": f"{BATCH},3,{HEIGHT},{WIDTH}",
        "parameters": "\n".join(param_names),
        "weight_names": "\n".join(weight_names),
        "state_dict": "\n".join(
            f"{k} {'x'.join(str(d) for d in v.shape)} {str(v.dtype).removeprefix('torch.')}"
            for k, v in full.items()
        ),
        "torch_f32_error": "\n".join(f"{k} {v:.3e}" for k, v in sorted(noise.items())),
    }
    out = os.path.normpath(args.out)
    tmp = out + ".tmp"
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, out)
    size = os.path.getsize(out)
    print(f"wrote {out} ({size} bytes); PyTorch float32 against the float64 reference:")
    for k, v in sorted(noise.items()):
        print(f"  {k:<40} {v:.3e}")


if __name__ == "__main__":
    main()
