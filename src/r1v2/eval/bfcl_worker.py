"""BFCL's own prompt builder and AST checker, run inside the environment where ``bfcl-eval``
is installed (its own virtual environment: its pins clash with r1v2's).

This file is run by path with that environment's Python and imports nothing of r1v2. It reads
one JSON request on stdin and writes one JSON answer on stdout:

- ``{"op": "prompts", "items": [{"id", "question", "function"}]}`` ->
  ``{"prompts": [[message, ...], ...]}``: each entry's first turn with BFCL's system prompt
  (the function list, JSON format, and the ``[func(arg=value)]`` answer format) as
  ``bfcl-eval`` builds it for a prompting (non-function-calling) model, language hints added;
- ``{"op": "check", "items": [{"id", "function", "output", "possible_answer"}]}`` ->
  ``{"results": [{"valid": bool, "error_type": str | null, "error": str | null}, ...]}``:
  the output decoded by BFCL's prompting decoder and checked by its ``ast_checker``.
"""

import copy
import json
import sys

# A prompting model of BFCL's registry whose function names keep their dots (the checker looks
# the name up to decide whether "." was rewritten to "_").
CHECKER_MODEL = "Qwen/Qwen3-8B"


def prompts(items):
    from bfcl_eval.model_handler.utils import system_prompt_pre_processing_chat_model
    from bfcl_eval.utils import add_language_specific_hint_to_function_doc

    entries = add_language_specific_hint_to_function_doc(copy.deepcopy(items))
    return [
        system_prompt_pre_processing_chat_model(e["question"][0], e["function"], e["id"])
        for e in entries
    ]


def check_one(item):
    from bfcl_eval.constants.enums import Language, ReturnFormat
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    from bfcl_eval.model_handler.utils import default_decode_ast_prompting
    from bfcl_eval.utils import (
        add_language_specific_hint_to_function_doc,
        extract_test_category_from_id,
        is_function_calling_format_output,
    )

    category = extract_test_category_from_id(item["id"])
    try:  # r1v2 scores the Python categories only
        decoded = default_decode_ast_prompting(item["output"], ReturnFormat.PYTHON)
    except Exception as e:  # BFCL's own runner counts any decoding failure as invalid
        return {"valid": False, "error_type": "ast_decoder:decoder_failed", "error": str(e)}
    if not is_function_calling_format_output(decoded):
        return {
            "valid": False,
            "error_type": "ast_decoder:decoder_wrong_output_format",
            "error": "Did not output in the specified format.",
        }
    (function,) = add_language_specific_hint_to_function_doc(
        [{"id": item["id"], "function": copy.deepcopy(item["function"])}]
    )
    result = ast_checker(
        function["function"],
        decoded,
        item["possible_answer"],
        Language.PYTHON,
        category,
        CHECKER_MODEL,
    )
    errors = result.get("error") or []
    return {
        "valid": bool(result["valid"]),
        "error_type": result.get("error_type"),
        "error": "; ".join(map(str, errors)) if errors else None,
    }


def main():
    request = json.loads(sys.stdin.read())
    if request["op"] == "prompts":
        answer = {"prompts": prompts(request["items"])}
    elif request["op"] == "check":
        answer = {"results": [check_one(item) for item in request["items"]]}
    else:
        raise SystemExit(f"unknown op {request['op']!r}")
    sys.stdout.write(json.dumps(answer))


if __name__ == "__main__":
    main()
