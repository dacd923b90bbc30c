"""A tiny distillation run used by test_distill_ddp.py: the same script single-process and under accelerate launch.

    python tests/distill_ddp_script.py TEACHER_DIR OUT_JSON GLOBAL_BATCH
    accelerate launch --num_processes 2 --cpu tests/distill_ddp_script.py TEACHER_DIR OUT_JSON GLOBAL_BATCH
"""

import json
import os
import sys

import torch
from transformers import Trainer

sys.path.insert(0, os.path.dirname(__file__))
from distill_utils import load_pair, token_data, train_args  # noqa: E402

from hf_onebit.training import DistillationLoss, OneBitDistillationCallback, onebit_optimizer  # noqa: E402


def main():
    teacher_dir, out_json, global_batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    student, teacher = load_pair(teacher_dir)
    # the plain hidden-state distance: the default dim-scaled one divides by medians over each process's own rows,
    # so its loss depends on how the batch is split (docs/distillation.md, "Several processes")
    loss = DistillationLoss(hidden_metric="cosine")
    cb = OneBitDistillationCallback(teacher, recipe="progressive", loss=loss, init_steps=2, phases=3)
    args = train_args(os.path.dirname(out_json) + f"/run-{world}", 6, per_device_train_batch_size=global_batch // world,
                      ddp_backend="gloo" if world > 1 else None)
    trainer = Trainer(model=student, args=args, train_dataset=token_data(48, 16), callbacks=[cb],
                      optimizers=(onebit_optimizer(student, lr=2e-3), None))
    trainer.train()
    if trainer.args.process_index == 0:
        x = token_data(4, 16, seed=5).blocks
        with torch.no_grad():
            logits = student(x).logits
        result = {"world": world, "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
                  "logits": logits.flatten()[:200].tolist()}
        with open(out_json, "w") as fh:
            json.dump(result, fh)
    if torch.distributed.is_initialized():
        # every rank waits for rank 0's result, then leaves the process group before the interpreter exits: a rank
        # that exits with the gloo group still up can abort in its teardown ("terminate called without an active
        # exception", seen once in CI)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
