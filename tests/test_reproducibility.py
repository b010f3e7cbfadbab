"""trainer.reproducibility: the process set-up that the run's start does, not the Job."""

from __future__ import annotations

import torch

from trainer import config
from trainer.job import Job
from trainer.reproducibility import prepare_process, seed_rank


def weights(job: Job) -> list[torch.Tensor]:
    return list(job.model.state_dict().values())


def test_a_job_is_built_from_the_seeds_its_caller_set() -> None:
    cfg = config.from_dotlist(["model.hidden=[8]"])
    prepare_process(cfg.run.seed, cfg.run.threads)
    first = weights(Job(cfg))
    prepare_process(cfg.run.seed, cfg.run.threads)
    assert all(map(torch.equal, weights(Job(cfg)), first))  # prepared alike: built alike
    # Building a job seeds nothing itself: the process's own seeding is what it draws from.
    torch.manual_seed(cfg.run.seed + 1)
    assert not all(map(torch.equal, weights(Job(cfg)), first))


def test_each_rank_of_several_draws_its_own_numbers_after_the_build() -> None:
    draws = {}
    for rank, world_size in ((0, 1), (0, 2), (1, 2)):
        prepare_process(7, None)
        seed_rank(7, rank, world_size)
        draws[rank, world_size] = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(draws[0, 1], torch.rand(3))  # one rank: the prepared stream goes on
    assert not torch.equal(draws[0, 2], draws[1, 2])
