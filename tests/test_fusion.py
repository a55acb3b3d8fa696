"""Fusion (MineGAN++ §4.2, eq. 15-16): N generators into one conditioned through its prior."""
import pytest
import torch

import fastmine as fm
from fastmine.config import ModelConfig
from fastmine.files import load_any, load_fused_sampler, save_sampler
from fastmine.fusion import FusedSampler, PseudoRealData, attach_labels, region_means
from fastmine.nets import MLPGenerator, build_generator
from fastmine.samplers import GeneratorAdapter, Sampler

pytestmark = pytest.mark.usefixtures("one_thread")


def vector_source(shift, seed):
    """A frozen 2-D MLP generator with a non-trivial (non-Gaussian, correlated) output."""
    torch.manual_seed(seed)
    g = MLPGenerator(latent_dim=2, out_dim=2, width=32, depth=3)
    with torch.no_grad():
        g.net[-1].weight.mul_(8)
        g.net[-1].bias.add_(torch.tensor(shift))
    return GeneratorAdapter(g, {"z": ((2,), "normal")})


@pytest.mark.slow
def test_each_region_reproduces_its_source():
    sources = [vector_source([-2.0, 0.0], 1), vector_source([2.0, 1.0], 2)]
    result = fm.fuse(sources, steps=800, lr=5e-4, critic_lr=5e-4, betas=[0.0, 0.9], batch_size=256, progress=False,
                     log_every=800, device="cpu", model_cfg=ModelConfig(width=64, depth=3), seed=0)
    fused = result.sampler
    assert isinstance(fused, FusedSampler) and not fused.label_channels
    gen = torch.Generator().manual_seed(5)
    stats = []
    with torch.no_grad():
        for i, s in enumerate(sources):
            x = s(s.latent_spec.sample(5000, gen))
            y = fused(fused.region_seeds(i, 5000, gen))
            stats.append((x.mean(0), torch.cov(x.T), y.mean(0), torch.cov(y.T)))
    for i, (mx, cx, my, cy) in enumerate(stats):
        assert torch.allclose(my, mx, atol=0.2), (i, mx.tolist(), my.tolist())
        assert torch.allclose(cy, cx, atol=0.1), (i, cx.tolist(), cy.tolist())
    # region i is source i, not the other one (its mean is nearer its own source's)
    assert (stats[0][2] - stats[0][0]).norm() < (stats[0][2] - stats[1][0]).norm()
    assert (stats[1][2] - stats[1][0]).norm() < (stats[1][2] - stats[0][0]).norm()


def test_pseudo_real_batches_are_balanced_and_labelled_like_the_fakes():
    sources = [vector_source([-2.0, 0.0], 1), vector_source([2.0, 1.0], 2), vector_source([0.0, 3.0], 3)]
    data = PseudoRealData(sources, pool=100, seed=0)
    batch = data[torch.randint(len(data), (30,))]
    assert batch.shape == (30, 5)
    labels = batch[:, 2:].argmax(1)
    assert torch.equal(labels, torch.arange(30) % 3) and torch.equal(batch[:, 2:].sum(1), torch.ones(30))
    means = torch.stack([batch[labels == i, :2].mean(0) for i in range(3)])
    assert means[0, 0] < 0 < means[1, 0] and means[2, 1] > 1.5  # row r comes from source r mod N
    adapter = GeneratorAdapter(MLPGenerator(latent_dim=3, out_dim=2), {"z": ((3,), "normal")})
    fused = FusedSampler(adapter, region_means(3, 3, 4.0), sigma=1.0, label_channels=True)
    seeds = fused.draw_seeds(30, torch.Generator().manual_seed(0))
    assert torch.equal(seeds["region"], torch.arange(30) % 3)
    assert torch.allclose(seeds["z"].mean(0), torch.tensor([4.0, 4.0, 4.0]) / 3, atol=0.6)
    fake = fused(seeds)
    assert torch.equal(fake[:, 2:], batch[:, 2:])  # the penalty's interpolates keep one-hot labels
    images = attach_labels(torch.zeros(2, 1, 4, 4), torch.tensor([1, 0]), 2)
    assert images.shape == (2, 3, 4, 4) and images[0, 2].eq(1).all() and images[1, 1].eq(1).all()
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        region_means(3, 2)


def test_cli_fuse_writes_a_generator_that_mines_like_any_other(tmp_path):
    from fastmine.cli import main

    files = []
    arch = {"type": "dcgan", "latent_dim": 8, "image_size": 8, "channels": 1, "width": 8, "norm": "batch"}
    for i in range(2):
        torch.manual_seed(i)
        files.append(tmp_path / f"g{i}.safetensors")
        save_sampler(files[-1], Sampler(GeneratorAdapter(build_generator(arch), {"z": ((8,), "normal")},
                                                         build={"arch": arch})))
    rc = main(["fuse", f"source.generators=[{files[0]},{files[1]}]", f"out_dir={tmp_path}", "name=fused",
               "train.steps=3", "train.batch_size=16", "log.progress=false", "model.width=8", "log.log_every=3"])
    assert rc == 0
    path = tmp_path / "fused" / "model.safetensors"
    sampler = load_fused_sampler(path)
    assert sampler.sample(6).shape == (6, 1, 8, 8)
    assert torch.allclose(sampler.region_means, region_means(2, 8, 4.0))
    assert isinstance(load_any(path), FusedSampler)
    target = torch.rand(30, 1, 8, 8) * 2 - 1
    mined = fm.mine(fm.load_generator(str(path)), target, steps=2, batch_size=8, progress=False,
                    model_cfg=ModelConfig(width=8))
    assert mined.sampler.sample(4).shape == (4, 1, 8, 8)
