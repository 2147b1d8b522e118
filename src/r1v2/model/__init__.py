"""The model: assembly (vision + adapter + LLM), freezing, the policy wrapper, tiny models.

Submodules import transformers; import them directly (``from r1v2.model.policy import Policy``).
"""
