"""``r1v2 chat``: one streamed answer from a checkpoint, and one-line errors."""

import pytest
import torch
from fixtures.worlds import tiny_world

from r1v2.cli import main
from r1v2.model.policy import Policy, Prompt, SamplingConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    tiny_world(root, 2)
    return root


def test_chat_streams_the_greedy_answer(world, capsys):
    """The streamed text is the policy's own greedy answer to the same prompt."""
    image = sorted((world / "data" / "images").glob("*.png"))[0]
    question = "how many red circles ?"
    rc = main(
        [
            "chat",
            question,
            "--model",
            str(world / "vlm"),
            "--image",
            str(image),
            "--max-new-tokens",
            "12",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    streamed = capsys.readouterr().out.strip()
    from r1v2.data.images import open_image

    policy = Policy.from_pretrained(world / "vlm")
    torch.manual_seed(0)
    want = policy.generate(
        [Prompt(question, (open_image(image),))],
        SamplingConfig(max_new_tokens=12, do_sample=False),
    ).texts[0]
    assert streamed == want.strip() and streamed


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image", "missing.png"], "field 'image': file not found: missing.png"),
        (["--temperature", "-1"], "temperature"),
    ],
)
def test_chat_errors_are_one_line(world, capsys, args, message):
    rc = main(["chat", "q", "--model", str(world / "vlm"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
