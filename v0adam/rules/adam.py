"""Adam (Kingma & Ba) and AdamW (Loshchilov & Hutter): the rule V0Adam and V0AdamW step with."""

from v0adam import reference
from v0adam.rules.rule import UpdateRule

RULE = UpdateRule("adam", reference.adam_step_reference, torch_fused=True)
