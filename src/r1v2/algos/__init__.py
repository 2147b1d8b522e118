"""Pure tensor maths of the recipe: GRPO advantages and loss (:mod:`.grpo`), the MPO losses
(:mod:`.mpo`), the Selective Sample Buffer (:mod:`.ssb`) and lean per-token log-probs
(:mod:`.logprobs`). Imports torch and nothing else of the project."""

from r1v2.algos import grpo, mpo, ssb
from r1v2.algos.logprobs import token_logprobs

__all__ = ["grpo", "mpo", "ssb", "token_logprobs"]
