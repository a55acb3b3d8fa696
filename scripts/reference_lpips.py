"""Reference LPIPS distances from torchmetrics' implementation, for tests/test_lpips.py.

    python scripts/reference_lpips.py --out tests/fixtures/lpips_reference.json

Needs torchvision and torchmetrics (its ``_LPIPS`` builds AlexNet through torchvision). No
ImageNet weights are needed: both sides use the same seeded random backbone
(:func:`random_backbone`) and the LPIPS v0.1 linear weights torchmetrics ships, on seeded
images (:func:`image_pairs`): 64 px pairs compared directly, 16 px gray pairs through
fastmine's resize to 64 px (done here by hand before torchmetrics sees them). Only the
distances are written.
"""
from __future__ import annotations

import argparse
import json

import torch
from torch.nn import functional as F

SHAPES = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}


def random_backbone(seed: int = 0) -> dict:
    """A torchvision-layout AlexNet state dict with He-scaled random weights."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for idx, shape in SHAPES.items():
        fan_in = shape[1] * shape[2] * shape[3]
        state[f"features.{idx}.weight"] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        state[f"features.{idx}.bias"] = torch.randn(shape[0], generator=g) * 0.1
    return state


def image_pairs(seed: int = 1) -> dict:
    """name -> (x, y) in [-1, 1]: smooth random RGB at 64 px and gray digits-sized ones at 16 px."""
    g = torch.Generator().manual_seed(seed)
    smooth = lambda n, c, s: torch.tanh(F.interpolate(torch.randn(n, c, s // 4, s // 4, generator=g), size=(s, s),
                                                      mode="bilinear", align_corners=False) * 1.5)
    x64 = smooth(5, 3, 64)
    y64 = (x64 + 0.3 * smooth(5, 3, 64)).clamp(-1, 1)
    x16 = smooth(4, 1, 16)
    y16 = (x16 + 0.5 * smooth(4, 1, 16)).clamp(-1, 1)
    return {"rgb64": (x64, y64), "gray16": (x16, y16)}


def main(argv=None):
    # torchvision from PyPI is built against CUDA torch: on a CPU build its compiled ops do not
    # load and registering their fake kernels fails at import. AlexNet itself is plain Python.
    register_fake = torch.library.register_fake
    torch.library.register_fake = lambda *a, **k: (lambda f: f)
    import torchvision  # noqa: F401
    torch.library.register_fake = register_fake
    from torchmetrics.functional.image.lpips import _LPIPS  # needs torchvision: only here

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    net = _LPIPS(pretrained=True, net="alex", pnet_rand=True).eval()  # the shipped lin weights, random backbone
    slices = {0: "slice1.0", 3: "slice2.3", 6: "slice3.6", 8: "slice4.8", 10: "slice5.10"}
    state = net.net.state_dict()
    for idx, name in slices.items():
        for kind in ("weight", "bias"):
            state[f"{name}.{kind}"] = random_backbone()[f"features.{idx}.{kind}"]
    net.net.load_state_dict(state)
    out = {}
    with torch.no_grad():
        for name, (x, y) in image_pairs().items():
            if x.shape[-1] < 64:  # fastmine's preprocessing of small gray images, by hand
                x, y = (F.interpolate(t.expand(-1, 3, -1, -1), size=(64, 64), mode="bilinear", align_corners=False)
                        for t in (x, y))
            out[name] = net(x, y).flatten().tolist()
    with open(args.out, "w") as f:
        json.dump({"torchmetrics_lpips_alex_v0.1_random_backbone": out}, f, indent=1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
