"""The synthetic visual-reasoning task: grid scenes, questions by level, reference traces,
the hallucination checker and the generator (``r1v2 data synth``).

Typical use::

    from r1v2.data.synthetic import iter_samples, lm_text, render, hallucination_rate

    for s in iter_samples(1000, seed=0):     # in memory, no images
        text = lm_text(s.scene, s.question)  # scene words + question + reference trace
    image = render(s.scene)                  # 64x64 RGB, one image token per cell
"""

from r1v2.data.synthetic.checker import Claim, claims, hallucination_rate, hallucinations
from r1v2.data.synthetic.generate import (
    SAMPLES_FILE,
    SynthSample,
    generate,
    iter_samples,
    sample_at,
)
from r1v2.data.synthetic.questions import Question, make_question
from r1v2.data.synthetic.render import render
from r1v2.data.synthetic.scene import (
    COLOURS,
    SHAPES,
    Group,
    Scene,
    SceneError,
    cell_word,
    sample_scene,
    scene_text,
)
from r1v2.data.synthetic.traces import boxed, lm_text, reference_trace, vocabulary

__all__ = [
    "COLOURS",
    "SAMPLES_FILE",
    "SHAPES",
    "Claim",
    "Group",
    "Question",
    "Scene",
    "SceneError",
    "SynthSample",
    "boxed",
    "cell_word",
    "claims",
    "generate",
    "hallucination_rate",
    "hallucinations",
    "iter_samples",
    "lm_text",
    "make_question",
    "reference_trace",
    "render",
    "sample_at",
    "sample_scene",
    "scene_text",
    "vocabulary",
]
