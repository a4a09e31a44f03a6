"""Fine-tuning MAGE encoders for image classification with the official recipe (LTH14/mage
main_finetune.py), and the evaluation of fine-tuned checkpoints."""
from .config import FinetuneConfig, config_for
from .evaluate import eval_transform, evaluate_checkpoint, validate
from .loop import finetune
from .optim import layer_id, param_groups_lrd
from .weights import describe_finetuned, load_pretrained

__all__ = ["FinetuneConfig", "config_for", "describe_finetuned", "eval_transform", "evaluate_checkpoint",
           "finetune", "layer_id", "load_pretrained", "param_groups_lrd", "validate"]
