"""Top-1 / top-5 accuracy of a classifier on an image folder with the official evaluation
transform (shorter side resized to 292 bicubic, center crop 256): each epoch of fine-tuning, and
for a fine-tuned checkpoint (`mage-fast evaluate`), resumable like feature extraction."""
import os
import shutil
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..data import EvalTransform, ImageFolder
from ..files import write_json
from ..recognition.classifier import MAGEClassifier, build_classifier
from ..recognition.extract import map_chunks
from ..recognition.linprobe import topk_hits
from ..validation import PRECISIONS
from .weights import read_finetuned

TOP_K = 5


def eval_transform() -> EvalTransform:
    """The official fine-tuning evaluation: Resize(292, bicubic), CenterCrop(256), to [0, 1]."""
    return EvalTransform(size=256, resize=292, interpolation="bicubic")


def check_classes(classes, model: MAGEClassifier, what: str, recorded=None):
    """Labels are class-subfolder indices: the folder must have the classes the head was trained on."""
    if not classes:
        raise ValueError(f"{what} has no class subfolders: labels come from one subfolder per class")
    if recorded is not None and list(recorded) != list(classes):
        raise ValueError(f"{what} has other classes than the run was fine-tuned on: label i must name the same "
                         "class (the same sorted class subfolders)")
    if len(classes) > model.num_classes:
        raise ValueError(f"{what} has {len(classes)} classes, more than the classifier's {model.num_classes}")


def top_k(logits: torch.Tensor) -> torch.Tensor:
    """The indices of the TOP_K (or all, if fewer) highest logits, best first."""
    return logits.float().topk(min(TOP_K, logits.shape[1]), dim=1).indices


@torch.no_grad()
def validate(model: MAGEClassifier, dataset: ImageFolder, batch_size: int, ctx, precision: str,
             workers: int = 0) -> dict:
    """{"top1", "top5" (percent), "loss" (mean cross-entropy), "images"} over all of `dataset`,
    each process taking its shard (ctx: mage_fast.distributed.Dist); the model's mode is kept."""
    was_training = model.training
    model.eval()
    part = dataset.shard(ctx.rank, ctx.world_size)
    loader = torch.utils.data.DataLoader(part, batch_size=batch_size, num_workers=workers,
                                         pin_memory=ctx.device.type == "cuda")
    sums = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # top-1 hits, top-5 hits, loss, images
    dtype = PRECISIONS[precision]
    for images, labels in loader:
        labels = labels.to(ctx.device)
        with torch.autocast(ctx.device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(images.to(ctx.device, non_blocking=True)).float()
        top = top_k(logits)
        sums += torch.stack([topk_hits(top, labels, 1).double(), topk_hits(top, labels, TOP_K).double(),
                             F.cross_entropy(logits, labels, reduction="sum").double(),
                             torch.tensor(float(len(labels)), dtype=torch.float64, device=ctx.device)])
    if ctx.world_size > 1:
        dist.all_reduce(sums)
    model.train(was_training)
    hits1, hits5, loss, n = sums.tolist()
    return {"top1": 100.0 * hits1 / n, "top5": 100.0 * hits5 / n, "loss": loss / n, "images": int(n)}


def evaluate_checkpoint(ckpt: str, data: str, out: str, batch_size: int = 64, chunk_size: int = 1024,
                        device=None, workers: int = 0, impl: str = "fast", trusted: bool = False) -> Optional[dict]:
    """Top-1 and top-5 of the fine-tuned checkpoint `ckpt` (ours or official: its model is read
    off its tensors) on the image folder `data`, written to the JSON file `out`. The top-5
    predictions are kept in chunks under `out`.partial/, so a killed run resumes; under torchrun
    the chunks are shared among the processes. The result on process 0, None on the others."""
    state, spec, classes = read_finetuned(ckpt, trusted)
    model = build_classifier(spec.model, spec.num_classes, spec.global_pool, drop_path=0.0, impl=impl)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{ckpt} does not load into the {spec.model} classifier it describes: {e}") from None
    dataset = ImageFolder(data, eval_transform())
    check_classes(dataset.classes, model, data, classes)
    meta = {"ckpt": os.path.abspath(ckpt), "impl": impl, "transform": "resize 292 bicubic, center crop 256"}
    top = map_chunks(lambda images: top_k(model(images)), model, dataset, out + ".partial", meta, batch_size,
                     chunk_size, device, workers, "evaluate")
    if top is None:
        return None
    top, labels = torch.from_numpy(top), torch.tensor(dataset.labels)
    result = {"top1": 100.0 * topk_hits(top, labels, 1).item() / len(labels),
              "top5": 100.0 * topk_hits(top, labels, TOP_K).item() / len(labels),
              "images": len(labels), "classes": len(dataset.classes), "model": spec.model,
              "global_pool": spec.global_pool, "ckpt": meta["ckpt"], "data": os.path.abspath(data)}
    write_json(out, result, indent=1)
    shutil.rmtree(out + ".partial")
    return result

