import LoRA
