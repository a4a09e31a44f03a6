"""Generation: Philox, the exact math, the schedule, and the decoding step (docs/mage.md#generation)."""
import math

import pytest
import torch

from mage_fast.configs import MASK_ID
from mage_fast.reference import decoding_step, sample_categorical, schedule
from mage_fast.reference.decoding import exact_exp, exact_log, gumbel, mask_lengths
from mage_fast.reference.rng import philox4x32, uniform

# Random123's published known-answer vectors (counter, key, output).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
SCHEDULE_T12 = [3, 6, 11, 15, 18, 22, 26, 27, 31, 31, 33, 33]
SCHEDULE_T20 = [1, 3, 4, 5, 7, 8, 10, 11, 13, 13, 15, 16, 17, 17, 19, 18, 20, 19, 20, 20]


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_philox_known_answers(counter, key, expected):
    assert tuple(int(w) for w in philox4x32(counter, key)) == expected


def test_uniforms_are_open_interval_and_uniform():
    u = uniform(torch.arange(64), step=3, num_positions=256, stream=0)
    assert u.dtype == torch.float32 and u.shape == (64, 256)
    assert u.min() > 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    assert not torch.equal(u, uniform(torch.arange(64), 3, 256, stream=1))
    assert not torch.equal(u, uniform(torch.arange(64), 4, 256, stream=0))
    # negative and 64-bit seeds use all their bits
    v = uniform(torch.tensor([-1, 2**40 + 7, 7]), 0, 8, 0)
    assert not torch.equal(v[1], v[2])


def test_exact_exp_and_log_are_accurate():
    x = -torch.rand(100000, generator=torch.Generator().manual_seed(0)) * 79
    rel = (exact_exp(x).double() - x.double().exp()).abs() / x.double().exp()
    # the polynomial, plus rounding y = x log2(e): half an ulp of y and LOG2E's own error
    assert (rel - x.double().abs() * (2.0 ** -24 + 2.0 ** -26)).max() < 3e-7
    assert rel[x > -1].max() < 3e-7
    assert exact_exp(torch.zeros(1)).item() == 1.0 and exact_exp(torch.tensor([-100.0])).item() == 0.0
    uniform = torch.rand(100000, generator=torch.Generator().manual_seed(1))
    y = torch.cat([uniform * 2000, torch.tensor([2.0 ** -24, 1.0])])
    y = y.clamp(min=2.0 ** -24)
    err = (exact_log(y).double() - y.double().log()).abs()
    assert (err / y.double().log().abs().clamp(min=1e-3)).max() < 1e-6
    g = gumbel(torch.tensor([2.0 ** -24, 1 - 2.0 ** -24]))
    assert torch.isfinite(g).all()


def test_schedule_matches_the_documented_tables():
    assert schedule(12) == SCHEDULE_T12 and sum(SCHEDULE_T12) == 256
    assert schedule(20) == SCHEDULE_T20 and sum(SCHEDULE_T20) == 256


@pytest.mark.parametrize("num_iter,table", [(12, SCHEDULE_T12), (20, SCHEDULE_T20)])
def test_generation_fixes_tokens_per_the_schedule(tiny, num_iter, table):
    seeds = torch.tensor([11, 12])
    ids = torch.full((2, 256), MASK_ID)
    fixed = []
    with torch.no_grad():
        for step in range(num_iter):
            before = (ids == MASK_ID).sum(1)
            nxt, filled = decoding_step(tiny.logits(ids), ids, seeds, step, num_iter, 4.5)
            known = ids != MASK_ID
            assert torch.equal(filled[known], ids[known]) and torch.equal(nxt[known], ids[known])
            after = (nxt == MASK_ID).sum(1) if step < num_iter - 1 else torch.zeros(2, dtype=torch.long)
            fixed.append((before - after).tolist())
            ids = nxt
    assert fixed == [[n, n] for n in table]
    assert (filled != MASK_ID).all() and filled.max() < 1024


@pytest.mark.machine
def test_generate_is_deterministic_and_batch_independent(tiny, monkeypatch):
    """An image depends on its seed alone. The logits run one image at a time here: the claim
    is about the random numbers and the decoding, not about whether MKL rounds a batched matrix
    product alike at two batch sizes (on some CPUs it does not)."""
    logits = tiny.logits_unchecked
    monkeypatch.setattr(tiny, "logits_unchecked",
                        lambda ids: torch.cat([logits(ids[i: i + 1]) for i in range(len(ids))]))
    a = tiny.generate([5, 6, 7], num_iter=6)
    assert torch.equal(a, tiny.generate([5, 6, 7], num_iter=6))
    assert torch.equal(a[1:2], tiny.generate([6], num_iter=6))
    assert torch.equal(a[[2, 0]], tiny.generate(torch.tensor([7, 5]), num_iter=6))
    assert not torch.equal(a[0], a[1])
    assert a.dtype == torch.int64 and a.shape == (3, 256) and a.max() < 1024 and a.min() >= 0


def test_generate_restores_training_mode(tiny):
    tiny.train()
    tiny.generate([1], num_iter=2)
    assert tiny.training
    tiny.eval()


def float64_oracle(logits, u_sample, u_gumbel, ids, tau, mask_len):
    """An independent float64 computation of the step: cumulative softmax + searchsorted, over
    the columns in the lane order the definition uses (lane l holds columns l, l+32, ...)."""
    p = torch.softmax(logits.double(), -1)
    order = torch.arange(p.shape[-1]).view(-1, 32).t().reshape(-1)
    cdf = p[..., order].cumsum(-1)
    sampled = order[torch.searchsorted(cdf, (u_sample.double() * cdf[..., -1]).unsqueeze(-1)).squeeze(-1)]
    unknown = ids == MASK_ID
    filled = torch.where(unknown, sampled, ids)
    conf = p.gather(-1, sampled.unsqueeze(-1)).squeeze(-1).log() + tau * -(-u_gumbel.double().log()).log()
    conf = torch.where(unknown, conf, torch.inf)
    remask = torch.zeros_like(unknown)
    for b in range(ids.shape[0]):
        remask[b, conf[b].argsort()[: mask_len[b]]] = True
    return torch.where(remask, MASK_ID, filled), filled


def test_decoding_step_with_given_noise_matches_a_float64_oracle():
    g = torch.Generator().manual_seed(7)
    b, n, v = 4, 256, 1024
    logits = torch.randn(b, n, v, generator=g) * 3
    ids = torch.where(torch.rand(b, n, generator=g) < 0.6, MASK_ID, torch.randint(0, v, (b, n), generator=g))
    noise = (torch.rand(b, n, generator=g).clamp(1e-6, 1 - 1e-6), torch.rand(b, n, generator=g).clamp(1e-6, 1 - 1e-6))
    step, num_iter, temp = 4, 12, 4.5
    nxt, filled = decoding_step(logits, ids, None, step, num_iter, temp, noise=noise)
    mask_len = mask_lengths((ids == MASK_ID).sum(1), torch.full((b,), n), step, num_iter)
    tau = temp * (1 - (step + 1) / num_iter)
    ref_next, ref_filled = float64_oracle(logits, *noise, ids, tau, mask_len)
    assert torch.equal(filled, ref_filled)
    assert torch.equal(nxt, ref_next)
    assert ((nxt == MASK_ID).sum(1) == mask_len).all()


def test_step_with_nothing_unknown_changes_nothing():
    ids = torch.randint(0, 1024, (2, 256))
    nxt, filled = decoding_step(torch.randn(2, 256, 1024), ids, torch.tensor([1, 2]), 0, 12, 4.5)
    assert torch.equal(nxt, ids) and torch.equal(filled, ids)


def test_categorical_draws_follow_softmax():
    """Chi-square of 200k draws over 1024 classes against softmax(logits); the uniforms are
    fixed Philox streams, so the statistic is deterministic."""
    logits = torch.randn(1024, generator=torch.Generator().manual_seed(0)) * 1.5
    p = torch.softmax(logits.double(), -1)
    counts = torch.zeros(1024, dtype=torch.float64)
    for chunk in range(20):
        u = uniform(torch.tensor([chunk]), step=0, num_positions=10000, stream=0)[0]
        ids, log_p = sample_categorical(logits.expand(10000, -1), u)
        counts += torch.bincount(ids, minlength=1024).double()
        torch.testing.assert_close(log_p.double(), p[ids].log(), rtol=0, atol=1e-5)
    expected = p * counts.sum()
    keep = expected >= 5
    chi2 = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum().item()
    dof = int(keep.sum()) - 1
    # mean dof, sd sqrt(2 dof): 6 sd above is p < 1e-7 for a correct sampler
    assert chi2 < dof + 6 * math.sqrt(2 * dof), (chi2, dof)
    assert chi2 > dof - 6 * math.sqrt(2 * dof), (chi2, dof)   # not suspiciously perfect


def test_categorical_never_draws_zero_probability_columns():
    logits = torch.full((5000, 1000), -1e4)
    logits[:, 999] = 0.0
    logits[:, 3] = 0.5
    u = uniform(torch.tensor([1]), 0, 5000, 0)[0]
    ids, _ = sample_categorical(logits, u)
    assert set(ids.tolist()) <= {3, 999}
