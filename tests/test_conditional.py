"""Conditional mining (MineGAN++ §4.1): one seed, two heads M^z and M^c."""
import json

import pytest
import torch

import fastmine as fm
from fastmine.cli import main as cli_main
from fastmine.conditional import (
    FACTORY_BIGGAN,
    BigGANAdapterModule,
    conditional_adapter,
    conditional_dcgan,
    load_biggan,
)
from fastmine.config import ModelConfig
from fastmine.files import load_sampler
from fastmine.miner import Miner
from fastmine.samplers import Sampler

pytestmark = pytest.mark.usefixtures("one_thread")


def _heads(miner):
    return {name: [p.detach().clone() for p in head.parameters()] for name, head in miner.heads.items()}


def test_conditional_mining_trains_both_heads():
    torch.manual_seed(0)
    adapter = conditional_adapter(conditional_dcgan(latent_dim=8, embed_dim=6, num_classes=10, image_size=8, width=8),
                                  build={"factory": "fastmine.conditional:conditional_dcgan", "kwargs": {}})
    assert adapter.latent_spec["class_embedding"].prior == "none"
    miner = Miner(adapter.latent_spec)  # z: residual head; class embedding (prior none): the paper's init
    sampler = Sampler(adapter, miner)
    u = sampler.draw_seeds(16, torch.Generator().manual_seed(1))
    from fastmine.nets import DCGANCritic

    critic = DCGANCritic(image_size=8, channels=1, width=8)
    (-critic(sampler(u)).mean()).backward()
    for name, head in miner.heads.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters()), name
    assert all(p.grad is None for p in adapter.parameters())  # the generator stays frozen
    before = _heads(miner)
    data = torch.rand(40, 1, 8, 8) * 2 - 1
    fm.train(adapter, data, method="minegan_noft", miner=miner, miner_cfg={"seed_dim": 8}, steps=5, batch_size=16,
             progress=False, model_cfg=ModelConfig(width=8))
    after = _heads(miner)
    for name in before:
        assert any(not torch.equal(a, b) for a, b in zip(before[name], after[name])), f"head {name} did not train"


def test_conditional_digits_recipe_writes_a_mineable_generator(tmp_path):
    images, labels = fm.load_digits(labels=[0, 1], size=8, limit=60, return_labels=True)
    result = fm.pretrain_conditional(images, labels, num_classes=2, latent_dim=8, embed_dim=4, width=8, steps=3,
                                     batch_size=16, run_dir=tmp_path / "cond", progress=False, checkpoint_every=1000,
                                     sample_every=1000, log_every=3)
    assert isinstance(result, fm.Result) and result.model_path == tmp_path / "cond" / "model.safetensors"
    assert (tmp_path / "cond" / "metrics.jsonl").is_file()
    adapter = result.sampler.generator
    assert result.sampler.miner is None and adapter.frozen
    loaded = fm.load_generator(str(result.model_path))
    assert list(loaded.latent_spec) == ["z", "class_embedding"]
    e = loaded.module.embed(torch.tensor([0, 1]))
    with torch.no_grad():
        a = loaded({"z": torch.zeros(2, 8), "class_embedding": e})
        b = adapter({"z": torch.zeros(2, 8), "class_embedding": adapter.module.embed(torch.tensor([0, 1]))})
    assert a.shape == (2, 1, 8, 8) and torch.allclose(a, b, atol=1e-6)

    # the returned generator mines as it is: one seed, heads M^z and M^c, an unconditional critic
    frozen = {k: v.clone() for k, v in adapter.module.state_dict().items()}
    miner = Miner(adapter.latent_spec)
    before = _heads(miner)
    mined = fm.mine(adapter, images[labels == 1], miner=miner, steps=3, batch_size=16, progress=False,
                    model_cfg=ModelConfig(width=8))
    after = _heads(mined.sampler.miner)
    assert set(after) == {"z", "class_embedding"}
    for name in before:
        assert any(not torch.equal(p, q) for p, q in zip(before[name], after[name])), f"head {name} did not train"
    for k, v in mined.sampler.generator.module.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    assert mined.sampler.sample(4, seed=0).shape == (4, 1, 8, 8)


TINY_BIGGAN = {"output_dim": 16, "z_dim": 8, "class_embed_dim": 8, "channel_width": 4, "num_classes": 10,
               "layers": [[True, 16, 8], [False, 8, 4], [True, 4, 2], [False, 2, 1]], "attention_layer_position": 2,
               "eps": 1e-4, "n_stats": 51}


def test_biggan_adapter_gradients_reach_both_heads(tmp_path):
    pytest.importorskip("pytorch_pretrained_biggan")
    torch.manual_seed(0)
    module = BigGANAdapterModule(TINY_BIGGAN, truncation=0.5)
    # a "downloaded" checkpoint: the package's own state-dict format, read weights-only
    torch.save(module.model.state_dict(), tmp_path / "pytorch_model.bin")
    import json

    (tmp_path / "config.json").write_text(json.dumps(TINY_BIGGAN))
    adapter = load_biggan(tmp_path, truncation=0.5)
    assert adapter.build["factory"] == FACTORY_BIGGAN
    assert dict(adapter.latent_spec)["class_embedding"].shape == (8,)
    miner = Miner(adapter.latent_spec)
    sampler = Sampler(adapter, miner)
    x = sampler(sampler.draw_seeds(4, torch.Generator().manual_seed(0)))
    assert x.shape == (4, 3, 16, 16) and x.abs().max() <= 1
    (x.square().mean()).backward()
    for name, head in miner.heads.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters()), name
    assert all(p.grad is None for p in adapter.parameters())
    # same weights as the module they came from
    u = {"z": torch.randn(2, 8), "class_embedding": module.embed(torch.tensor([1, 2]))}
    module.eval()
    with torch.no_grad():
        assert torch.allclose(adapter(u), module(**u), atol=1e-6)
    with pytest.raises(ValueError, match="truncation"):
        BigGANAdapterModule(TINY_BIGGAN, truncation=1.5)
    with pytest.raises(FileNotFoundError):
        load_biggan(tmp_path / "missing.bin")


def test_a_biggan_folder_is_a_source_for_the_command_line(tmp_path, capsys):
    """A pytorch-pretrained-biggan folder (config.json + pytorch_model.bin) named as source.generator."""
    pytest.importorskip("pytorch_pretrained_biggan")
    torch.manual_seed(0)
    module = BigGANAdapterModule(TINY_BIGGAN, truncation=0.5)
    folder = tmp_path / "biggan-tiny"
    folder.mkdir()
    torch.save(module.model.state_dict(), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(TINY_BIGGAN))
    torch.save(torch.rand(32, 3, 16, 16) * 2 - 1, tmp_path / "target.pt")
    code = cli_main(["mine", f"source.generator={folder}", "data.dataset=tensor", f"data.path={tmp_path / 'target.pt'}",
                 "train.steps=2", "train.batch_size=8", "log.progress=false", f"out_dir={tmp_path}", "name=b"])
    assert code == 0, capsys.readouterr().err
    sampler = load_sampler(tmp_path / "b" / "model.safetensors")
    assert set(sampler.miner.heads) == {"z", "class_embedding"}  # M^z and M^c (MineGAN++ §4.1)
    assert sampler.sample(2, seed=0).shape == (2, 3, 16, 16)
