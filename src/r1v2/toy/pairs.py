"""Stage 5 of the toy build: offline preference pairs in the InternVL/MMPR layout (data/pairs).

One pair per prompt of the RL pool (``data/train``): chosen is the prompt's reference trace
(right and faithful by construction), rejected a hallucinated trace of the same prompt
(:func:`r1v2.toy.reward.hallucinated_response`: at least one false claim about the image,
consistent with itself). ``r1v2 mpo data=OUT/data/pairs`` trains on them in MPO's offline
mode, the way InternVL's MPO trains on MMPR's pairs of correct and incorrect responses. The
demo's MPO stage trains on them; its ``mpo_sampled`` arm samples and scores its own pairs
instead (iterative MPO, with the reward model), and ``--ablations`` compares the two.

The pairs point at the pool's images (``../train/images/ID.png``): nothing is drawn twice.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from r1v2.data.pairs import PreferenceRecord, write_pairs
from r1v2.data.synthetic import SynthSample, iter_samples
from r1v2.data.synthetic.generate import IMAGES_DIR
from r1v2.toy.common import PAIRS_STREAM, completion_text
from r1v2.toy.reward import hallucinated_response

PAIRS_FILE = "pairs.jsonl"


def reference_pairs(
    samples: Iterable[SynthSample], images: Path, seed: int
) -> Iterator[PreferenceRecord]:
    """A pair per sample: its reference completion over a hallucinated one, with the prompt's
    question and choices as the sample file has them and its image ``images/ID.png``."""
    rng = random.Random(seed + PAIRS_STREAM)
    for s in samples:
        rejected, kind = hallucinated_response(s, rng)
        yield PreferenceRecord(
            id=s.id,
            question=s.question.text,
            chosen=completion_text(s),
            rejected=rejected,
            images=((images / f"{s.id}.png").absolute(),),
            choices=tuple(s.question.options) if s.question.options else None,
            metadata={"answer": s.answer, "rejected_kind": kind, "level": s.question.level},
        )


def write_reference_pairs(
    train_dir: Path, out_dir: Path, n: int, *, seed: int, levels: list[int]
) -> dict[str, Any]:
    """Write the pairs of the pool in ``train_dir`` (``n`` samples of ``seed``) to
    ``out_dir/pairs.jsonl``; returns ``{"pairs", "path"}``."""
    samples = iter_samples(n, seed, levels=levels)
    path = write_pairs(reference_pairs(samples, train_dir / IMAGES_DIR, seed), out_dir / PAIRS_FILE)
    return {"pairs": n, "path": str(path)}
