"""Distillation of a latent 1-bit student from its full-precision teacher inside the stock ``transformers.Trainer``.

```python
student = AutoModelForCausalLM.from_pretrained(teacher_dir, quantization_config=OneBitConfig(training=True))
teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
trainer = Trainer(model=student, args=TrainingArguments(...), train_dataset=ds,
                  callbacks=[OneBitDistillationCallback(teacher, recipe="progressive")])
trainer.train()
student.save_pretrained(out)  # packed 1-bit
```
"""

from .binarizers import BinaryAwareInitBinarizer, ProgressiveBinarizer, Temperature, progressive_sign, progressive_ternary
from .callback import OneBitDistillationCallback
from .data import (TokenBlocks, generate_prompted_data, generate_self_data, hf_dataset, self_generated_dataset,
                   text_file_dataset)
from .losses import DistillationLoss
from .optim import AdaptiveGradClipper, onebit_optimizer, onebit_param_groups
from .recipes import Recipe, apply_recipe_, finalize_, get_recipe
from .schedule import ProgressiveSchedule
from .trainer import OneBitDistillationTrainer

__all__ = [
    "OneBitDistillationCallback", "OneBitDistillationTrainer", "DistillationLoss", "Recipe", "get_recipe",
    "ProgressiveSchedule", "ProgressiveBinarizer", "BinaryAwareInitBinarizer", "Temperature", "progressive_sign",
    "progressive_ternary",
    "apply_recipe_", "finalize_", "onebit_optimizer", "onebit_param_groups", "AdaptiveGradClipper", "TokenBlocks",
    "self_generated_dataset", "generate_self_data", "generate_prompted_data", "text_file_dataset", "hf_dataset",
]
