"""The toy world's foundation models, built on a CPU in minutes (``r1v2 toy build``).

- :mod:`r1v2.toy.lm`: a tiny Qwen2-shaped reasoning LM pretrained on text traces;
- :mod:`r1v2.toy.vision`: a tiny InternViT-style encoder pretrained on cell recognition;
- :mod:`r1v2.toy.align`: the assembled model's adapter warmed up on image -> cell words;
- :mod:`r1v2.toy.reward`: the reward model trained from the assembled model;
- :mod:`r1v2.toy.build`: all of it, cached, into one folder (``r1v2 toy build``);
- :mod:`r1v2.toy.measure`: greedy accuracy and hallucination rate (``r1v2 toy eval``).
"""
