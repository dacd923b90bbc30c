"""LoRA fine-tuning of a 1-bit model with PEFT and the stock transformers Trainer.

    python examples/lora_finetune.py            # SmolLM2-135M-Instruct, 1-bit, LoRA on every 1-bit layer
    python examples/lora_finetune.py --tiny     # a random tiny model, a few seconds

The 1-bit base stays frozen and packed; only the LoRA matrices train (with gradient checkpointing). The adapter is
saved, reloaded onto a freshly loaded 1-bit base, and the logits are compared. On a CPU the 1-bit layers run the
reference path in training (measured ~30 s per step for SmolLM2 on a busy 2-core machine): use --steps or a GPU.
"""

from __future__ import annotations

import os

import torch
from _common import base_parser, float_model_path, workdir
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

import hf_onebit
import hf_onebit.interop.peft
from hf_onebit.interop.peft import get_peft_model  # peft.get_peft_model with the 1-bit LoRA layer registered on the config
from hf_onebit.integration.compat import checkpointing_kwargs


class TextChunks(torch.utils.data.Dataset):
    """Fixed-length causal-LM samples cut from one text."""

    def __init__(self, ids: torch.Tensor, seq_len: int):
        self.chunks = [ids[i : i + seq_len] for i in range(0, ids.numel() - seq_len + 1, seq_len)]

    def __len__(self):
        return len(self.chunks)

    def __getitem__(self, i):
        return {"input_ids": self.chunks[i], "labels": self.chunks[i]}


def training_text() -> str:
    """Wikipedia training articles (hf_onebit.fixtures.real_text; the held-out evaluation articles are not among them)."""
    from hf_onebit.fixtures.real_text import real_text_files

    with open(real_text_files()[0], encoding="utf-8") as fh:
        return fh.read(200_000)


def main(argv=None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: 30, --tiny: 15)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-3, --tiny: 1e-2)")
    args = parser.parse_args(argv)
    root = workdir(args)
    src = float_model_path(args, root)
    steps = args.steps or (15 if args.tiny else 30)
    lr = args.lr or (1e-2 if args.tiny else 1e-3)
    seq_len = 32 if args.tiny else 128

    # 1. a packed 1-bit checkpoint (quantize once, save, load like any user would)
    base_dir = os.path.join(root, "onebit")
    AutoModelForCausalLM.from_pretrained(src, quantization_config=hf_onebit.OneBitConfig()).save_pretrained(base_dir)
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)

    # 2. LoRA on every 1-bit layer
    config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=hf_onebit.interop.peft.target_modules(model),
                        task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    peft_model.print_trainable_parameters()

    ids = tokenizer(training_text(), return_tensors="pt").input_ids[0][: seq_len * 16]
    training_args = TrainingArguments(
        output_dir=os.path.join(root, "trainer"), max_steps=steps, per_device_train_batch_size=4,
        learning_rate=lr, lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[],
        use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
        **checkpointing_kwargs(True),  # activation (gradient) checkpointing, named as the installed transformers names it
    )
    trainer = Trainer(model=peft_model, args=training_args, train_dataset=TextChunks(ids, seq_len))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print(f"loss: first {losses[0]:.3f} -> last {losses[-1]:.3f} over {len(losses)} steps")

    # 3. save the adapter, reload it onto a fresh 1-bit base, compare
    adapter_dir = os.path.join(root, "adapter")
    peft_model.save_pretrained(adapter_dir)
    fresh = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    reloaded = hf_onebit.interop.peft.load_adapter(fresh, adapter_dir)
    sample = ids[:seq_len].unsqueeze(0)
    peft_model.eval()
    with torch.no_grad():
        same = torch.equal(peft_model(sample).logits, reloaded(sample).logits)
    print(f"adapter saved to {adapter_dir}; reloaded logits identical: {same}")
    return 0 if same and losses[-1] < losses[0] else 1


if __name__ == "__main__":
    raise SystemExit(main())
