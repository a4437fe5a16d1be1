"""Two CPU processes (gloo) with gathered negatives give the single-process full-batch loss and gradients."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny import tiny_atr_config, tiny_features

from atr import AtrModel


def build_batch(config):
    generator = torch.Generator().manual_seed(7)
    ids = torch.randint(5, 99, (8, 6), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "input_features": tiny_features(config, 8, 2, seed=8)}


def run(model, batch):
    out = model(**batch, return_loss=True)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.loss_contrastive.detach(), out.loss.detach(), grads


def worker(rank, world, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = AtrModel(tiny_atr_config()).train()
    batch = {k: v[rank * 4 : (rank + 1) * 4] for k, v in build_batch(model.config).items()}
    contrastive, loss, grads = run(model, batch)
    # What DDP does: average the gradients over processes.
    for grad in grads.values():
        dist.all_reduce(grad)
        grad /= world
    for value in (contrastive, loss):
        dist.all_reduce(value)
        value /= world
    if rank == 0:
        torch.save({"contrastive": contrastive, "loss": loss, "grads": grads}, os.path.join(out_dir, "dist.pt"))
    dist.destroy_process_group()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one_process_on_the_concatenated_batch(tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    distributed = torch.load(tmp_path / "dist.pt", weights_only=True)
    torch.manual_seed(0)
    model = AtrModel(tiny_atr_config()).train()
    contrastive, loss, grads = run(model, build_batch(model.config))
    assert abs(distributed["contrastive"] - contrastive) < 1e-5
    assert abs(distributed["loss"] - loss) < 1e-5
    assert grads.keys() == distributed["grads"].keys()
    for name, grad in grads.items():
        assert (distributed["grads"][name] - grad).abs().max() < 1e-5, name
