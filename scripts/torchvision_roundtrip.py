"""Checks labelwise against torchvision end to end, through files only: torchvision weights in
(`--init-weights`), a labelwise model out, loaded back into torchvision, and the embeddings of
both on the same images.

    cargo build --release
    python scripts/torchvision_roundtrip.py [--labelwise target/release/labelwise]

Steps: export a seeded torchvision ResNet18 (scripts/export_torchvision.py --random); write a
few RGB and grey PNGs at the model's input size (so neither side resizes); `labelwise train
--init-weights ... --epochs 0` (the saved encoder is then the torchvision one); load that file
into torchvision with strict=False and check that only fc.weight, fc.bias (missing) and
cosface.weight (unexpected) differ and every tensor is unchanged; `labelwise embed` the images
and compare with torchvision's evaluation-mode features (fc = Identity) on the same pixels,
normalised by ImageNet's mean and standard deviation as labelwise does. Exits non-zero on any
difference beyond float32 rounding. Needs torch, torchvision, safetensors and numpy.
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file

SIZE = 40
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def write_task(folder: str, rng: np.random.Generator) -> list[str]:
    os.makedirs(os.path.join(folder, "images"))
    names = []
    with open(os.path.join(folder, "labels.csv"), "w") as f:
        f.write("file,a,b\n")
        for i in range(6):
            name = f"img{i}.png"
            pixels = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            if i % 3 == 2:
                image = image.convert("L")  # grey: labelwise replicates it to three channels
            image.save(os.path.join(folder, "images", name))
            f.write(f"{name},{i % 2},{1 - i % 2}\n")
            names.append(name)
    return names


def run(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}")


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labelwise", default=os.path.join(here, "..", "target", "release", "labelwise"))
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="labelwise-roundtrip-")
    weights = os.path.join(tmp, "torchvision.safetensors")
    model_path = os.path.join(tmp, "labelwise.safetensors")
    task = os.path.join(tmp, "task")

    run(sys.executable, os.path.join(here, "export_torchvision.py"), "--random", "3", weights)
    names = write_task(task, np.random.default_rng(0))
    common = ["--device", "cpu", "--quiet"]
    run(args.labelwise, "train", "--data", task, "--init-weights", weights, "--epochs", "0",
        "--image-size", str(SIZE), "--val-fraction", "0", "--curves", "false", "--out", model_path,
        *common)
    run(args.labelwise, "embed", "--model", model_path, "--images", task, "--out",
        os.path.join(tmp, "embedded"), *common)

    # The labelwise file in torchvision.
    original = load_file(weights)
    model = torchvision.models.resnet18()
    result = model.load_state_dict(load_file(model_path), strict=False)
    print(f"load_state_dict(strict=False): missing {result.missing_keys}, "
          f"unexpected {result.unexpected_keys}")
    ok = sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    ok &= result.unexpected_keys == ["cosface.weight"]
    state = model.state_dict()
    changed = [k for k, v in original.items()
               if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
               and not torch.equal(state[k], v)]
    print(f"tensors changed by the round trip: {changed or 'none'}")
    ok &= not changed

    # Embeddings: labelwise's against torchvision's on the same pixels.
    model.fc = torch.nn.Identity()
    model.eval()
    pixels = np.stack([
        np.asarray(Image.open(os.path.join(task, "images", n)).convert("RGB"), dtype=np.float32)
        for n in names
    ])
    x = torch.from_numpy(((pixels / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        theirs = model(x).numpy()
    with open(os.path.join(tmp, "embedded", "embeddings.csv")) as f:
        rows = {r[0]: np.array(r[1:], dtype=np.float32) for r in list(csv.reader(f))[1:]}
    ours = np.stack([rows[n] for n in names])
    err = np.abs(ours - theirs).max() / np.abs(theirs).max()
    print(f"embeddings of {len(names)} images: max |labelwise - torchvision| / max |torchvision| = {err:.2e}")
    ok &= err < 1e-4
    print("round trip OK" if ok else "round trip FAILED", f"(files in {tmp})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
