"""The fast MAGE module against the reference: same weights, noise and mask ratio, dropout off:
the loss and every parameter gradient; tokenize, logits, generation, state_dict, backends."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import mage_fast
from helpers import assert_error_bounded, assert_nearest_codes, poisoned_allocations, rel_err, without_host_sync
from mage_fast import model as fast
from mage_fast.backends import backend_report
from mage_fast.configs import MASK_ID
from mage_fast.cuda_graphs import capture
from mage_fast.ops import mlm_loss as mlm_loss_module
from mage_fast.ops.mlm_loss import mlm_loss, mlm_loss_ref
from mage_fast.ops.token_drop import mask_sets
from mage_fast.reference import mage_vit_tiny_test as reference_tiny
from mage_fast.sampling.sampler import Sampler
from mage_fast.training import TrainConfig
from mage_fast.training.contrastive import ContrastiveMAGE

pytestmark = pytest.mark.triton  # runs the kernels: under the interpreter without CUDA

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNEL = "triton" if DEVICE == "cuda" else "triton-interpret"


@pytest.fixture(scope="module")
def pair():
    """A fast and a reference tiny model with the same weights (a spread-out codebook, so the
    tokenizer's argmin is far from ties), in eval mode: no dropout."""
    torch.manual_seed(0)
    ours = fast.mage_vit_tiny_test().eval()
    with torch.no_grad():
        ours.vqgan.quantize.embedding.weight.normal_()
    ref = reference_tiny().eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ours, ref


def test_the_kernels_run(pair):
    report = backend_report("cpu" if DEVICE == "cpu" else "cuda")
    for op in ("attention", "token_drop", "vq_nearest"):
        assert report[op]["implementation"] == KERNEL, (op, report[op])
    assert report["decode_step"]["implementation"] in ("c++", "cuda")


def loss_and_gradients_match(ours, ref, *args, **kwargs):
    """The training loss of both models on the same inputs, then every parameter's gradient:
    zero (or none) in both, or within 1e-4 relative error. Returns our loss."""
    losses = []
    for model in (ours, ref):
        model.zero_grad(set_to_none=True)
        losses.append(model(*args, **kwargs))
        losses[-1].backward()
    assert rel_err(losses[0], losses[1]) < 1e-5
    theirs = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        q = theirs[name]
        if q.grad is None or not q.grad.abs().sum():
            assert p.grad is None or not p.grad.abs().sum(), name
            continue
        assert rel_err(p.grad, q.grad) < 1e-4, name
    return losses[0]


@pytest.mark.parametrize("ratio", [0.5, 0.73, 1.0])
def test_loss_and_every_gradient_match_the_reference(pair, images, ratio):
    ours, ref = pair
    noise = torch.rand(2, 256, generator=torch.Generator().manual_seed(int(ratio * 100)))
    loss_and_gradients_match(ours, ref, images, mask_ratio=ratio, noise=noise)


@pytest.fixture(scope="module")
def conditional_pair(pair):
    """pair's weights in class-conditional models (3 classes), the label parameters fresh."""
    ours, _ = pair
    models = (fast.mage_vit_tiny_test(class_conditional=True, num_classes=3).eval(),
              reference_tiny(class_conditional=True, num_classes=3).eval())
    for model in models:
        assert model.load_state_dict(ours.state_dict(), strict=False).missing_keys == ["class_pos_embed",
                                                                                        "class_emb.weight"]
    with torch.no_grad():  # labels that matter: embeddings of the size of the decoder's other inputs
        models[0].class_emb.weight.normal_(generator=torch.Generator().manual_seed(5))
    models[1].load_state_dict(models[0].state_dict())
    return models


@pytest.mark.parametrize("ratio", [0.6, 1.0])
def test_class_conditional_loss_and_every_gradient_match_the_reference(conditional_pair, images, ratio):
    """The label token (slot 257: the decoder's attention over 258 rows in the kernel), "no
    class" (3) among the labels; the label parameters' gradients included."""
    ours, ref = conditional_pair
    noise = torch.rand(2, 256, generator=torch.Generator().manual_seed(int(ratio * 100) + 1))
    labels = torch.tensor([1, 3])
    loss = loss_and_gradients_match(ours, ref, images, mask_ratio=ratio, noise=noise, labels=labels)
    assert all(ref.get_parameter(name).grad.abs().sum() > 0 for name in ("class_emb.weight", "class_pos_embed"))
    other = ours(images, mask_ratio=ratio, noise=noise, labels=torch.tensor([0, 3]))
    assert not torch.equal(other, loss)        # the label reaches the loss


def test_class_conditional_generation_matches_the_reference(conditional_pair, images):
    """The guided logits (both passes in one batch) against the reference's, as the
    unconditional logits are compared; the guided generation (linear schedule) of the fast
    module is the sampler's."""
    ours, ref = conditional_pair
    ids = ref.tokenize(images)
    ids[:, ::3] = MASK_ID
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        assert rel_err(ours.guided_logits(ids, labels, 1.5), ref.guided_logits(ids, labels, 1.5)) < 1e-5
    kwargs = dict(num_iter=2, guidance_scale=2.0, guidance_schedule="linear")
    assert torch.equal(ours.generate([4], labels=[2], **kwargs), Sampler(ours, **kwargs).generate([4], [2]))


def test_ids_entry_is_the_images_entry_without_the_tokenizer(pair, images):
    """ours(tokens=ours.tokenize(images)) is ours(images), loss and every gradient (the same
    ids, then the same computation; the reference's: test_reference_api); int16 ids, as
    `train --tokens` feeds them, are taken."""
    ours, _ = pair
    noise = torch.rand(2, 256, generator=torch.Generator().manual_seed(3))
    runs = []
    for batch in ({"images": images}, {"tokens": ours.tokenize(images).to(torch.int16)}):
        ours.zero_grad(set_to_none=True)
        loss = ours(**batch, mask_ratio=0.6, noise=noise)
        loss.backward()
        runs.append((loss, {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}))
    (loss, grads), (tokens_loss, tokens_grads) = runs
    assert torch.equal(loss, tokens_loss) and grads.keys() == tokens_grads.keys() and len(grads) > 10
    assert all(torch.equal(g, tokens_grads[n]) for n, g in grads.items())


def test_device_mask_count_equals_host_count(pair, images):
    """With num_masked as a device tensor all 256 rows go through the head, weighted 0/1; the
    loss and gradients equal the host-count path that gathers only the masked rows."""
    ours, _ = pair
    x = torch.randn(2, 257, 96, requires_grad=True)
    gt = torch.randint(0, 1024, (2, 256))
    masked = mask_sets(torch.rand(2, 256), 128, 181)[1]
    results = []
    for count in (181, torch.tensor(181)):
        loss = ours._masked_loss(x, gt, masked, count)
        grad, = torch.autograd.grad(loss, x)
        results.append((loss, grad))
    assert rel_err(results[0][0], results[1][0]) < 1e-6 and rel_err(results[0][1], results[1][1]) < 1e-5


def mlm_inputs(g):
    """h [300, 64] and bias requiring grad, a detached weight [1024, 64], targets [300]."""
    h = torch.randn(300, 64, generator=g, requires_grad=True)
    weight = torch.randn(1024, 64, generator=g)
    bias = torch.randn(1024, generator=g, requires_grad=True)
    return h, weight, bias, torch.randint(0, 1024, (300,), generator=g)


def test_mlm_loss_against_the_materialised_reference(monkeypatch):
    """Three chunks, the last one ragged (300 = 128 + 128 + 44), every output written."""
    monkeypatch.setattr(mlm_loss_module, "CHUNK_ROWS", 128)
    g = torch.Generator().manual_seed(3)
    h, weight, bias, targets = mlm_inputs(g)
    rows = (torch.rand(300, generator=g) < 0.7).float()
    for row_weights in (None, rows):
        with poisoned_allocations():
            got = mlm_loss(h, weight, bias, targets, row_weights)
            got_grads = torch.autograd.grad(got, (h, bias))
        want = mlm_loss_ref(h, weight, bias, targets, row_weights)
        assert rel_err(got, want) < 1e-6
        for a, b in zip(got_grads, torch.autograd.grad(want, (h, bias))):
            assert rel_err(a, b) < 1e-5
    for bad, match in ((dict(weight=weight[:, :32]), r"weight must have shape \[\*, 64\]"),
                       (dict(h=h.long()), "h must be a tensor of torch.float32"),
                       (dict(bias=bias[:10]), r"bias must have shape \[1024\]"),
                       (dict(targets=targets.float()), "targets must be a tensor of torch.int32, torch.int64"),
                       (dict(targets=targets.to("meta")), "targets must be on cpu"),
                       (dict(targets=targets + 1024), r"\[0, 1024\)"),
                       (dict(row_weights=rows[:10]), r"row_weights must have shape \[300\]"),
                       (dict(smoothing=1.0), "smoothing")):
        args = {**dict(h=h, weight=weight, bias=bias, targets=targets), **bad}
        with pytest.raises(ValueError, match=match):
            mlm_loss(**args)


def test_mlm_loss_computes_only_the_gradients_autograd_wants(monkeypatch):
    """Under no_grad (a validation loss) or with no input requiring grad, the forward skips the
    gradient GEMM: the same loss at half the flops. With one input requiring grad, its gradient
    is the reference's."""
    monkeypatch.setattr(mlm_loss_module, "CHUNK_ROWS", 128)
    h, weight, bias, targets = mlm_inputs(torch.Generator().manual_seed(5))

    def run(h, bias, grad=True):
        with torch.set_grad_enabled(grad), FlopCounterMode(display=False) as counter:
            loss = mlm_loss(h, weight, bias, targets)
        return loss, counter.get_total_flops()

    loss, flops = run(h, bias)
    assert flops == 2 * (2 * 300 * 64 * 1024)   # the logits' GEMM and d loss / d h's
    for args in ((h, bias, False), (h.detach(), bias.detach())):
        got, got_flops = run(*args)
        assert torch.equal(got, loss) and got_flops == flops // 2
    want = torch.autograd.grad(mlm_loss_ref(h, weight, bias, targets), (h, bias))
    for i in range(2):
        inputs = [h.detach(), bias.detach()]
        inputs[i] = (h, bias)[i]
        got, = torch.autograd.grad(run(*inputs)[0], inputs[i])
        assert rel_err(got, want[i]) < 1e-5


def test_drawn_mask_ratio_and_noise(pair, images):
    ours, _ = pair
    torch.manual_seed(1)
    num_dropped = ours.token_counts(ours.mask_ratio_min)[0]
    counts = torch.stack([ours._num_masked(ours.draw_mask_ratio(), num_dropped) for _ in range(2000)]).float()
    assert counts.min() >= 128 and counts.max() <= 256
    assert abs(counts.mean().item() / 256 - 0.694) < 0.015   # ceil adds ~0.5/256 to the 0.694 mean
    ours.train()
    try:
        loss = ours(images)
        loss.backward()
    finally:
        ours.eval()
    assert torch.isfinite(loss)


def test_tokenize_logits_and_features_match(pair, images):
    ours, ref = pair
    with torch.no_grad():
        z = ref.vqgan.encoder(images)
    for model in (ours, ref):
        assert_nearest_codes(model.tokenize(images), z, ref.vqgan.quantize.embedding.weight)
    ids = ref.tokenize(images)
    ids[:, ::3] = MASK_ID
    with torch.no_grad():
        assert rel_err(ours.logits(ids), ref.logits(ids)) < 1e-5
    assert rel_err(ours.features(images), ref.features(images)) < 1e-5


def test_generation_uses_the_decoding_op(pair):
    ours, _ = pair
    ids = torch.cat([ours.generate([s], num_iter=3) for s in (3, 4)])  # per image, as the CPU sampler runs
    assert ids.shape == (2, 256) and ids.max() < 1024 and ids.min() >= 0
    assert torch.equal(ids, Sampler(ours, num_iter=3).generate([3, 4]))


def test_drop_in_api():
    assert mage_fast.MAGE is fast.MAGE
    with torch.device("meta"):
        a, b = fast.mage_vit_base_patch16().state_dict(), mage_fast.reference.mage_vit_base_patch16().state_dict()
    assert list(a) == list(b)
    with pytest.raises(ValueError, match="mask_ratio"):
        fast.mage_vit_tiny_test()(torch.rand(1, 3, 256, 256), mask_ratio=0.2)


def test_each_implementation_builds_every_config_by_name_config_and_build_model():
    """One from_config, one set of factories per implementation: each way of building a size
    gives that implementation's class at that configuration, kwargs passed on."""
    from mage_fast.configs import CONFIGS
    with torch.device("meta"):
        for impl, module in (("fast", mage_fast), ("reference", mage_fast.reference)):
            for name, cfg in CONFIGS.items():
                for model in (getattr(module, name)(dropout=0.0), module.mage_from_config(cfg, dropout=0.0),
                              fast.build_model(name, impl, dropout=0.0)):
                    assert type(model) is module.MAGE and model.config == cfg and model.token_emb.dropout.p == 0.0


# ---------------------------------------------------------------- GPU
def _loss_and_grads(model, images, noise, dtype):
    model.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = model(images, mask_ratio=0.7, noise=noise)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    return {"loss": loss.detach().float(), **grads}


@pytest.mark.parametrize("size,device", [("tiny", "cpu"), pytest.param("base", "cuda", marks=pytest.mark.gpu)])
def test_fp32_and_bf16_match_the_reference(size, device):
    """fp32: the loss within 1e-4 and every gradient within 1e-3 of the reference's (relative).
    bf16 autocast: the loss and every gradient no further from the fp32 reference than 3x the
    reference's own bf16 run (flash-attention's rule; the reference keeps the official fp32
    attention scores)."""
    torch.manual_seed(0)
    ours = getattr(fast, f"mage_vit_{size}_patch16" if size == "base" else "mage_vit_tiny_test")().to(device).eval()
    ref = getattr(mage_fast.reference, f"mage_vit_{size}_patch16" if size == "base" else "mage_vit_tiny_test")()
    ref = ref.to(device).eval()
    ref.load_state_dict(ours.state_dict())
    images = torch.rand(8 if device == "cuda" else 2, 3, 256, 256, device=device)
    noise = torch.rand(images.shape[0], 256, device=device)
    exact = _loss_and_grads(ref, images, noise, torch.float32)
    fp32 = _loss_and_grads(ours, images, noise, torch.float32)
    same, bf16 = (_loss_and_grads(m, images, noise, torch.bfloat16) for m in (ref, ours))
    assert exact.keys() == fp32.keys() == same.keys() == bf16.keys()
    for name, e in exact.items():
        assert rel_err(fp32[name], e) < (1e-4 if name == "loss" else 1e-3), name
        assert_error_bounded(bf16[name], same[name], e, factor=3.0, atol=1e-3, what=f"bf16 {name}")


@pytest.mark.gpu
@pytest.mark.parametrize("input", ["images", "tokens", "class-conditional", "contrastive"])
def test_training_step_has_no_host_sync_and_captures_in_a_graph(input):
    """From images, from int16 ids as `train --tokens` feeds them, class-conditional from ids
    with labels over a frozen encoder, and MAGE-C's step (two views of ids, the default head)."""
    torch.manual_seed(0)
    conditional = input == "class-conditional"
    model = fast.mage_vit_base_patch16(class_conditional=conditional).cuda().train()
    if conditional:
        model.freeze_encoder()
    if input == "contrastive":
        settings = TrainConfig(tokens="-", out="-", contrastive=True).contrastive_settings
        model = ContrastiveMAGE(model, settings).cuda().train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, capturable=True)
    views = (2,) if input == "contrastive" else ()
    batch = {"images": torch.rand(16, 3, 256, 256, device="cuda")} if input == "images" else \
        {"tokens": torch.randint(0, 1024, (16, *views, 256), dtype=torch.int16, device="cuda")}
    if conditional:
        batch["labels"] = torch.randint(0, 1001, (16,), device="cuda")

    def step():
        opt.zero_grad(set_to_none=False)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch)
        loss.backward()
        opt.step()
        return loss

    graph, loss = capture(step)
    without_host_sync(step)
    losses = []
    for _ in range(3):
        graph.replay()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and len(set(losses)) > 1   # fresh randomness each replay


@pytest.mark.gpu
def test_compile_and_bf16_autocast():
    torch.manual_seed(0)
    model = fast.mage_vit_tiny_test().cuda().train()
    compiled = torch.compile(model)
    images = torch.rand(4, 3, 256, 256, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = compiled(images, mask_ratio=0.7)
    loss.backward()
    assert torch.isfinite(loss)


def test_mlm_loss_gradient_survives_fp16_loss_scaling():
    """Under fp16 autocast with a loss scale (as GradScaler trains), the head gradient of many
    rows stays accurate: scaled by 1/rows before the fp16 GEMM it would underflow to zero."""
    g = torch.Generator().manual_seed(4)
    rows, dim = 32768, 64
    h = torch.randn(rows, dim, generator=g, requires_grad=True)
    weight = torch.randn(1024, dim, generator=g) * dim ** -0.5
    bias = torch.zeros(1024, requires_grad=True)
    targets = torch.randint(0, 1024, (rows,), generator=g)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = mlm_loss(h, weight, bias, targets)
    grad, = torch.autograd.grad(loss * 65536.0, h)
    exact, = torch.autograd.grad(mlm_loss_ref(h.double(), weight.double(), bias.double(), targets) * 65536.0, h)
    assert rel_err(grad, exact) < 2e-3
