"""``hftl run`` for tests that launch real processes (``accelerate launch`` or a plain subprocess).

Same arguments as ``hftl/run.py``. One hook around ``save_checkpoint``, off unless set:
``HFTL_TEST_DUMP=DIR``: after each checkpoint, every rank writes the weights and buffers it
holds to ``DIR/rank{R}-step{S}.safetensors`` (to compare ranks with each other). Kills go
through hftl's own test hook, ``HFTL_TEST_KILL_AT`` (:func:`hftl.training.training_state.kill_point`).
Tests that fork their ranks instead (tests/test_reliability.py's ``run_child``) install the same hook with
:func:`dumping` (e.g. through ``monkeypatch``); the forked ranks inherit it.
"""

import os
import sys
from pathlib import Path

import hftl.training.train
from hftl.cli import main


def dumping(save_checkpoint):
    """``save_checkpoint`` that, with ``HFTL_TEST_DUMP`` set, also writes every rank's weights after each save."""

    def save_and_dump(accelerator, model, optimizer, run_dir, state, keep, *args, **kwargs):
        path = save_checkpoint(accelerator, model, optimizer, run_dir, state, keep, *args, **kwargs)
        if dump := os.environ.get("HFTL_TEST_DUMP"):
            from safetensors.torch import save_file

            tensors = {k: v.detach().contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}
            save_file(tensors, str(Path(dump) / f"rank{accelerator.process_index}-step{state['step']}.safetensors"))
        return path

    return save_and_dump


if __name__ == "__main__":
    hftl.training.train.save_checkpoint = dumping(hftl.training.train.save_checkpoint)
    sys.exit(main(["run", *sys.argv[1:]]))
