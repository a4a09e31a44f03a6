"""Drop-in modules for the official MAGE scripts (LTH14/mage): change `import models_mage` to
`from mage_fast.compat import models_mage` (and models_vit_mage likewise), and main_pretrain.py,
gen_img_uncond.py, main_finetune.py and main_linprobe.py run on the fast modules with the same
numbers. docs/mage.md#the-official-scripts-on-the-fast-modules says what is accepted, what is
refused and what differs."""
from . import models_mage, models_vit_mage

__all__ = ["models_mage", "models_vit_mage"]
