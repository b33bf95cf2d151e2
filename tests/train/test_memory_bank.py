"""The contrastive memory bank: empty (ours) or full of random unit vectors from step 1 (the authors')."""

from __future__ import annotations

import torch

from construct.train.losses import MemoryBank


def test_empty_bank_holds_only_what_was_pushed():
    bank = MemoryBank(size=4, dim=3)
    assert bank.get().shape == (0, 3)
    bank.push(torch.eye(3)[:2])
    torch.testing.assert_close(bank.get(), torch.eye(3)[:2])


def test_random_bank_is_full_of_unit_vectors_from_the_start_and_reproducible():
    bank = MemoryBank(size=8, dim=5, init="random", seed=3)
    negatives = bank.get()
    assert negatives.shape == (8, 5)
    torch.testing.assert_close(negatives.norm(dim=1), torch.ones(8))
    torch.testing.assert_close(MemoryBank(size=8, dim=5, init="random", seed=3).get(), negatives)
    assert not torch.allclose(MemoryBank(size=8, dim=5, init="random", seed=4).get(), negatives)


def test_pushed_embeddings_replace_the_random_ones_oldest_first():
    bank = MemoryBank(size=4, dim=3, init="random", seed=0)
    start = bank.get()
    bank.push(torch.eye(3)[:3])
    now = bank.get()
    assert now.shape == (4, 3)
    torch.testing.assert_close(now[:3], torch.eye(3))
    torch.testing.assert_close(now[3], start[3])
