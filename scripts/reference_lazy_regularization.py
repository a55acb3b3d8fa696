#!/usr/bin/env python
"""Make tests/fixtures/official/stylegan2_ada_phases.json from NVlabs' official stylegan2-ada-pytorch code.

    python scripts/reference_lazy_regularization.py --official /path/to/NVlabs/stylegan2-ada-pytorch \
        --out tests/fixtures/official/

StyleGAN2's lazy regularisation (Appendix B) is a schedule of optimizer steps: the training loop sets up
phases (Gmain, Greg, Dmain, Dreg), a main and a regularisation phase sharing one Adam whose lr is scaled
by mb_ratio = k / (k + 1) and whose betas are raised to that power, and runs a phase on minibatch
``batch_idx`` when ``batch_idx % phase.interval == 0``. This script executes the official phase-setup
block itself: it reads ``training/training_loop.py``, takes the ``for name, module, opt_kwargs,
reg_interval in ...`` loop and the defaults of ``G_reg_interval`` / ``D_reg_interval`` from its syntax
tree, and runs that loop with the checkout's ``dnnlib`` on two small stand-in modules and the optimizer
settings of ``train.py`` (``--cfg=paper256``: Adam, lr 0.0025, betas [0, 0.99], eps 1e-8). It records per
phase its name, interval, the lr and betas of the optimizer it built, mb_ratio, and how many optimizer
steps the phase takes over the first BATCHES minibatches under the loop's rule. Needs torch only.
"""

import ast
import json

import torch
from reference_io import official_arguments, official_commit

SCRIPT = "scripts/reference_lazy_regularization.py"
BATCHES = 64
# train.py: args.G_opt_kwargs / D_opt_kwargs for --cfg=paper256 (spec.lrate 0.0025)
OPT_KWARGS = dict(class_name="torch.optim.Adam", lr=0.0025, betas=[0, 0.99], eps=1e-8)


def phase_setup(source: str):
    """(the phase-setup loop as a compiled module, the loop function's keyword defaults)."""
    tree = ast.parse(source)
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "training_loop")
    names = [a.arg for a in fn.args.args]
    defaults = dict(zip(names[len(names) - len(fn.args.defaults):], fn.args.defaults))
    intervals = {k: ast.literal_eval(defaults[k]) for k in ("G_reg_interval", "D_reg_interval")}
    loop = next(n for n in ast.walk(fn) if isinstance(n, ast.For) and isinstance(n.target, ast.Tuple)
                and [e.id for e in n.target.elts] == ["name", "module", "opt_kwargs", "reg_interval"])
    block = ast.Module(body=[ast.parse("phases = []").body[0], loop], type_ignores=[])
    return compile(ast.fix_missing_locations(block), "training_loop.py", "exec"), intervals


def main():
    args = official_arguments(__doc__, "NVlabs/stylegan2-ada-pytorch", ("training/training_loop.py", "dnnlib"),
                              "stylegan2_ada_phases.json")
    import dnnlib  # from the checkout (official_arguments put it first on sys.path)

    source = (args.official / "training" / "training_loop.py").read_text(encoding="utf-8-sig")  # it starts with a BOM
    code, intervals = phase_setup(source)
    scope = {"dnnlib": dnnlib, "G": torch.nn.Linear(2, 2), "D": torch.nn.Linear(2, 1),
             "G_opt_kwargs": dnnlib.EasyDict(OPT_KWARGS), "D_opt_kwargs": dnnlib.EasyDict(OPT_KWARGS), **intervals}
    exec(code, scope)
    phases = []
    for phase in scope["phases"]:
        group = phase.opt.param_groups[0]
        reg = intervals[phase.name[0] + "_reg_interval"]
        phases.append({"name": phase.name, "interval": phase.interval, "lr": group["lr"],
                       "betas": list(group["betas"]), "mb_ratio": reg / (reg + 1),
                       "optimizer": phases_sharing(scope["phases"], phase),
                       "steps": sum(1 for batch_idx in range(BATCHES) if batch_idx % phase.interval == 0)})
    fixture = {"source": "NVlabs/stylegan2-ada-pytorch training/training_loop.py (phase setup) with train.py's "
                         "paper256 Adam settings", "commit": official_commit(args.official), "script": SCRIPT,
               "base": {"lr": OPT_KWARGS["lr"], "betas": OPT_KWARGS["betas"], "eps": OPT_KWARGS["eps"]},
               "reg_intervals": intervals, "batches": BATCHES, "phases": phases}
    path = args.out / "stylegan2_ada_phases.json"
    path.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"{path}: {', '.join(p['name'] for p in phases)}")


def phases_sharing(phases, phase) -> list:
    """Names of the phases that step the same optimizer object as ``phase`` (main and reg share one)."""
    return [p.name for p in phases if p.opt is phase.opt]


if __name__ == "__main__":
    main()
