"""Exports torchvision ResNet18 weights to safetensors, for `labelwise train --init-weights`.

    # ImageNet-pretrained weights (torchvision downloads them into its cache on first use;
    # an already cached copy, e.g. ~/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth, is used
    # without network):
    python scripts/export_torchvision.py --imagenet resnet18-imagenet.safetensors

    # Any ResNet18 state dict saved with torch.save (fine-tuned, any number of classes; a
    # {"state_dict": ...} or {"model": ...} wrapper and DataParallel's "module." prefix are
    # unwrapped):
    python scripts/export_torchvision.py --state-dict my-resnet18.pth out.safetensors

    # A freshly initialised torchvision ResNet18 from a seed (for tests):
    python scripts/export_torchvision.py --random 0 random.safetensors

The state dict is first loaded strictly into torchvision's resnet18, so a file of another
network fails here with PyTorch's own message. The output holds the whole state dict as
float32 (fc.* and num_batches_tracked included; labelwise skips them) and loads back with
`torchvision.models.resnet18().load_state_dict(safetensors.torch.load_file(path))`. It is
written to a temporary file, then renamed.

Needs torch, torchvision and safetensors (see .ci/torch-venv.sh for a throwaway venv).
"""

import argparse
import os
import sys

import torch
import torchvision
from safetensors.torch import save_file


def unwrap(state: dict) -> dict:
    """The bare state dict inside a training checkpoint, without DataParallel's prefix."""
    for key in ("state_dict", "model"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    if args.imagenet:
        weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
        try:
            return torchvision.models.resnet18(weights=weights), f"torchvision {weights}"
        except OSError as e:  # no network: say where a copy of the file can go instead
            cache = os.path.join(torch.hub.get_dir(), "checkpoints")
            sys.exit(
                f"could not fetch {weights.url} ({e}); put that file into {cache} and run "
                "again, or pass it with --state-dict"
            )
    if args.random is not None:
        torch.manual_seed(args.random)
        return torchvision.models.resnet18(), f"torchvision resnet18, torch.manual_seed({args.random})"
    state = unwrap(torch.load(args.state_dict, map_location="cpu", weights_only=True))
    classes = state["fc.weight"].shape[0] if "fc.weight" in state else 1000
    model = torchvision.models.resnet18(num_classes=classes)
    model.load_state_dict(state, strict=True)
    return model, os.path.basename(args.state_dict)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--imagenet", action="store_true", help="ResNet18_Weights.IMAGENET1K_V1")
    source.add_argument("--state-dict", metavar="FILE.pth", help="a ResNet18 state dict")
    source.add_argument("--random", type=int, metavar="SEED", help="a seeded fresh ResNet18")
    parser.add_argument("out", help="the safetensors file to write")
    args = parser.parse_args()

    model, source_name = build(args)
    # Floats as float32 (what labelwise computes in); the int64 counters stay as they are.
    state = {
        k: (v.to(torch.float32) if v.is_floating_point() else v).detach().contiguous()
        for k, v in model.state_dict().items()
    }
    metadata = {"format": "torchvision-resnet18", "source": source_name, "torch": torch.__version__}
    tmp = args.out + ".tmp"
    save_file(state, tmp, metadata=metadata)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {len(state)} tensors from {source_name}")


if __name__ == "__main__":
    main()
