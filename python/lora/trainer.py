"""lora.Trainer: LoRA (or full) fine-tuning of a model (lora_trainer)."""
from __future__ import annotations

import math
import os
import ctypes
from ctypes import byref, c_char_p, c_float, sizeof

from . import _capi as C
from ._convert import cpath, flag, int32, int32_matrix, real, uint64
from ._owner import Owner
from .adapter import Adapter
from .errors import AbortedError, LoraError, Status, file_not_found
from .model import Model

_SCHEDULERS = {
    "constant": C.LORA_SCHEDULER_CONSTANT,
    "constant_with_warmup": C.LORA_SCHEDULER_CONSTANT_WITH_WARMUP,
    "linear": C.LORA_SCHEDULER_LINEAR,
    "cosine": C.LORA_SCHEDULER_COSINE,
}


def _scheduler_value(s) -> int:
    if isinstance(s, str):
        try:
            return _SCHEDULERS[s.lower()]
        except KeyError:
            raise ValueError(f"lr_scheduler must be one of {sorted(_SCHEDULERS)}, got {s!r}") from None
    if isinstance(s, int) and not isinstance(s, bool):
        return int32(s, "lr_scheduler")  # a LORA_SCHEDULER_* value; the library checks it
    raise ValueError(f"lr_scheduler must be one of {sorted(_SCHEDULERS)}, got {s!r}")


def _progress_dict(p) -> dict:
    v = p.validation_loss
    return {
        "step": p.step,
        "max_steps": p.max_steps,
        "loss": p.loss,
        "learning_rate": p.learning_rate,
        "grad_norm": p.grad_norm,
        "tokens_per_second": p.tokens_per_second,
        # NaN in C when this step did not evaluate.
        "validation_loss": None if math.isnan(v) else v,
    }


class _ProgressRelay:
    """The lora_progress_callback handed to C: never lets an exception cross into C."""

    def __init__(self, on_progress):
        if on_progress is not None and not callable(on_progress):
            raise TypeError(f"on_progress must be callable, got {type(on_progress).__name__}")
        self.on_progress = on_progress
        self.last: dict | None = None
        self.error: BaseException | None = None
        self.stopped = False
        # Referenced by this object for as long as C may call it (the duration of the call).
        self.c_callback = C.lora_progress_callback(self._call)

    def _call(self, progress, user_data):
        try:
            d = _progress_dict(progress.contents)
            self.last = d
            if self.on_progress is not None:
                r = self.on_progress(dict(d))
                if r is not None and not r:
                    self.stopped = True
                    return 1
            return 0
        except BaseException as e:  # noqa: BLE001 - re-raised after the C call returns
            self.error = e
            return 1

    def raise_pending(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise err


class _ReducerRelay:
    """The lora_gradient_reducer handed to C: gives `reduce` the buffer as a
    float32 numpy array (a ctypes float array without numpy), in place; an
    exception stops training and is re-raised by Trainer.train."""

    def __init__(self, reduce):
        if not callable(reduce):
            raise TypeError(f"reduce must be callable, got {type(reduce).__name__}")
        self.reduce = reduce
        self.error: BaseException | None = None
        self.c_callback = C.lora_gradient_reducer(self._call)

    def _call(self, buffer, count, user_data):
        try:
            try:
                import numpy as np
                view = np.ctypeslib.as_array(buffer, shape=(count,))
            except ImportError:
                view = (c_float * count).from_address(ctypes.addressof(buffer.contents))
            self.reduce(view)
            return 0
        except BaseException as e:  # noqa: BLE001 - re-raised after the C call returns
            self.error = e
            return 1

    def raise_pending(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise err


class _ProgressBar:
    """A tqdm-style line on stderr: bar, step/max_steps, loss, rate, ETA; chains to a user callback."""

    def __init__(self, then=None):
        import time
        self.then = then
        self.start = time.monotonic()
        self.first = None
        self.shown = False

    def __call__(self, d):
        import shutil
        import sys
        import time
        step, total = d["step"], max(1, d["max_steps"])
        if self.first is None:
            self.first = step - 1
        elapsed = time.monotonic() - self.start
        done = step - self.first
        eta = elapsed / done * (total - step) if done > 0 else 0.0
        text = f" {step}/{total} loss {d['loss']:.4f} {d['tokens_per_second']:.0f} tok/s ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        if d.get("validation_loss") is not None:
            text += f" val {d['validation_loss']:.4f}"
        width = shutil.get_terminal_size((80, 24)).columns - 1
        bar_width = min(30, width - len(text) - 2)
        bar = ""
        if bar_width >= 5:
            filled = int(bar_width * step / total)
            bar = "|" + "█" * filled + " " * (bar_width - filled) + "|"
        sys.stderr.write("\r" + (bar + text)[:width])
        sys.stderr.flush()
        self.shown = True
        return self.then(d) if self.then is not None else True

    def close(self):
        import sys
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


class Trainer(Owner):
    """Trains an adapter (or, with adapter None, every weight) of a model.

    The adapter is attached while training if it is not already. The trainer
    keeps its model and adapter alive; closing either closes the trainer.
    """

    _kind = "Trainer"
    _close_rank = 0

    def __init__(self, model: Model, adapter: Adapter | None = None, learning_rate: float | None = None,
                 weight_decay: float | None = None, lr_scheduler=None, warmup_steps: int | None = None,
                 max_steps: int | None = None, gradient_accumulation_steps: int | None = None,
                 max_grad_norm: float | None = None, batch_size: int | None = None,
                 block_size: int | None = None, seed: int | None = None, gradient_checkpointing: bool | None = None,
                 adam_beta1: float | None = None, adam_beta2: float | None = None, adam_epsilon: float | None = None,
                 num_train_epochs: float | None = None, loraplus_lr_ratio: float | None = None,
                 model_dropout: bool | None = None):
        """Arguments left at None take the library's defaults
        (lora_trainer_default_params: learning_rate 2e-4, linear schedule,
        100 steps, batch 4, block_size min(256, n_positions), seed 42, ...).
        num_train_epochs (when max_steps is not given) makes each train() call
        last that many epochs of its data, as transformers' Trainer does.
        max_grad_norm 0 disables clipping. loraplus_lr_ratio: LoRA+ (B's
        learning rate is that times A's, as PEFT's create_loraplus_optimizer).
        model_dropout: GPT-2's own dropouts while training (config.json's
        embd_pdrop, attn_pdrop, resid_pdrop), as transformers' model.train();
        off by default; evaluation never drops."""
        self._handle = None   # so close()/__del__ are safe if the checks below raise
        if not isinstance(model, Model):
            raise TypeError(f"expected a lora.Model, got {type(model).__name__}")
        if adapter is not None and not isinstance(adapter, Adapter):
            raise TypeError(f"expected a lora.Adapter or None, got {type(adapter).__name__}")
        mh = model._require()
        ah = adapter._require() if adapter is not None else None
        p = C.lora_trainer_params()
        C.lora_trainer_default_params_v2(byref(p), sizeof(p))
        if learning_rate is not None:
            p.learning_rate = real(learning_rate, "learning_rate")
        if weight_decay is not None:
            p.weight_decay = real(weight_decay, "weight_decay")
        if adam_beta1 is not None:
            p.adam_beta1 = real(adam_beta1, "adam_beta1")
        if adam_beta2 is not None:
            p.adam_beta2 = real(adam_beta2, "adam_beta2")
        if adam_epsilon is not None:
            p.adam_epsilon = real(adam_epsilon, "adam_epsilon")
        if lr_scheduler is not None:
            p.lr_scheduler = _scheduler_value(lr_scheduler)
        if warmup_steps is not None:
            p.warmup_steps = int32(warmup_steps, "warmup_steps")
        if max_steps is not None:
            p.max_steps = int32(max_steps, "max_steps")
        if gradient_accumulation_steps is not None:
            p.gradient_accumulation_steps = int32(gradient_accumulation_steps, "gradient_accumulation_steps")
        if max_grad_norm is not None:
            p.max_grad_norm = real(max_grad_norm, "max_grad_norm")
        if batch_size is not None:
            p.batch_size = int32(batch_size, "batch_size")
        if block_size is not None:
            p.block_size = int32(block_size, "block_size")
        if seed is not None:
            p.seed = uint64(seed, "seed")
        if gradient_checkpointing is not None:
            p.gradient_checkpointing = flag(gradient_checkpointing)
        if loraplus_lr_ratio is not None:
            p.loraplus_lr_ratio = real(loraplus_lr_ratio, "loraplus_lr_ratio")
            if p.loraplus_lr_ratio == 0:  # the C struct reads 0 as 1 (0.1.0's padding); here it is an error
                raise LoraError(Status.INVALID_ARGUMENT, "LORA_INVALID_ARGUMENT",
                                "loraplus_lr_ratio must be a finite number > 0", "lora_trainer_create")
        if model_dropout is not None:
            p.model_dropout = flag(model_dropout)
        self.num_train_epochs = None
        if num_train_epochs is not None and max_steps is None:
            self.num_train_epochs = real(num_train_epochs, "num_train_epochs")
            if not self.num_train_epochs > 0:
                raise ValueError(f"num_train_epochs must be > 0, got {num_train_epochs!r}")
        h = C.lora_trainer_p()
        C.lora_trainer_create(byref(h), mh, ah, byref(p))
        super().__init__(h, C.lora_trainer_free)
        # A trainer must not outlive its model or adapter.
        self.model = model
        self.adapter = adapter
        self.batch_size = p.batch_size
        # 0 asks for min(256, n_positions): the value the trainer uses.
        self.block_size = p.block_size or min(256, model.info.n_positions)
        model._dependents.add(self)
        if adapter is not None:
            adapter._dependents.add(self)
            model._attached.add(adapter)   # lora_trainer_create attached it if it was not

    def _on_close(self) -> None:
        self.model._dependents.discard(self)
        if self.adapter is not None:
            self.adapter._dependents.discard(self)

    def __repr__(self) -> str:
        if self.closed:
            return "<lora.Trainer (closed)>"
        kind = "full" if self.adapter is None else "lora"
        return f"<lora.Trainer {kind} step={self.step_count}>"

    @property
    def step_count(self) -> int:
        """Optimizer steps taken so far."""
        return int(C.lora_trainer_get_step(self._require()))

    def step(self, input_ids, labels=None) -> float:
        """One optimizer step on a batch [batch, seq_len] of token ids; returns the mean loss.

        input_ids: a list of equal-length lists or a 2-D integer numpy array
        (batch <= batch_size, 2 <= seq_len <= block_size). labels: the same
        shape, -100 for ignored positions, None to use input_ids (shifted
        inside, as transformers does).
        """
        h = self._require()
        tokens, b, t = int32_matrix(input_ids, "input_ids")
        labs = None
        if labels is not None:
            labs, lb, lt = int32_matrix(labels, "labels")
            if (lb, lt) != (b, t):
                raise ValueError(f"labels have shape [{lb}, {lt}], input_ids [{b}, {t}]")
        loss = c_float(0.0)
        C.lora_trainer_step(h, tokens, labs, int32(b, "batch"), int32(t, "seq_len"), byref(loss))
        return float(loss.value)

    def train(self, data_path_or_paths, validation_fraction: float = 0.0, eval_steps: int = 0,
              save_steps: int = 0, checkpoint_dir=None, skip_bad_records: bool = False, on_progress=None,
              progress_bar: bool | None = None):
        """Trains until max_steps (or num_train_epochs) on .txt and .jsonl files.

        on_progress(dict) runs after each optimizer step with step, max_steps,
        loss, learning_rate, grad_norm, tokens_per_second and validation_loss
        (None when the step did not evaluate); returning False stops training
        quietly after that step. An exception raised by on_progress stops
        training and is re-raised here. Returns the last progress dict (None
        when no step ran) with "stop_reason": "callback" or "completed".
        progress_bar: a one-line bar on stderr (tqdm-style); None shows it
        when stderr is a terminal and no on_progress is given.
        """
        h = self._require()
        import sys
        if progress_bar is None:
            progress_bar = on_progress is None and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        if progress_bar:
            on_progress = _ProgressBar(on_progress)
        if isinstance(data_path_or_paths, (str, bytes, os.PathLike)):
            paths = [cpath(data_path_or_paths, "data path")]
        else:
            paths = [cpath(p, "data path") for p in data_path_or_paths]
        for path in paths:
            if not os.path.exists(path):
                raise file_not_found(path, "training data", "lora_trainer_train")
        arr = (c_char_p * max(1, len(paths)))(*paths)
        p = C.lora_train_params()
        C.lora_train_default_params_v2(byref(p), sizeof(p))
        p.validation_fraction = real(validation_fraction, "validation_fraction")
        p.eval_steps = int32(eval_steps, "eval_steps")
        p.save_steps = int32(save_steps, "save_steps")
        ckpt = cpath(checkpoint_dir, "checkpoint_dir") if checkpoint_dir is not None else None
        p.checkpoint_dir = ckpt
        p.skip_bad_records = flag(skip_bad_records)
        if self.num_train_epochs is not None:
            p.num_train_epochs = self.num_train_epochs
        relay = _ProgressRelay(on_progress)
        reducer = getattr(self, "_reducer", None)
        reason = "completed"
        try:
            C.lora_trainer_train(h, arr, len(paths), byref(p), relay.c_callback, None)
        except AbortedError:
            relay.raise_pending()
            if reducer is not None:
                reducer.raise_pending()
            if not relay.stopped:
                raise
            reason = "callback"
        except LoraError:
            relay.raise_pending()
            if reducer is not None:
                reducer.raise_pending()
            raise
        finally:
            if isinstance(on_progress, _ProgressBar):
                on_progress.close()
        relay.raise_pending()
        if relay.last is not None:
            relay.last["stop_reason"] = reason
        return relay.last

    def set_gradient_reducer(self, rank: int, world_size: int, reduce) -> None:
        """Makes this trainer rank `rank` of `world_size` data-parallel
        processes (lora_trainer_set_gradient_reducer). `reduce(buffer)` must
        replace every element of the float32 buffer by its sum over all ranks,
        in place; with mpi4py: ``comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)``.
        `train` then shards each global batch (batch_size × world_size ×
        gradient_accumulation_steps) and writes checkpoints on rank 0 only.
        reduce None: one process again."""
        h = self._require()
        if reduce is None:
            C.lora_trainer_set_gradient_reducer(h, 0, 1, C.lora_gradient_reducer(), None)
            self._reducer = None
            return
        relay = _ReducerRelay(reduce)
        C.lora_trainer_set_gradient_reducer(h, int32(rank, "rank"), int32(world_size, "world_size"),
                                            relay.c_callback, None)
        self._reducer = relay   # referenced while C may call it

    def evaluate(self, data_path, return_perplexity: bool = False):
        """Mean loss of the model (with its enabled adapters) on a data file;
        (loss, perplexity) when return_perplexity is true."""
        loss = c_float(0.0)
        ppl = c_float(0.0)
        C.lora_trainer_evaluate(self._require(), cpath(data_path, "data_path"), byref(loss), byref(ppl))
        if return_perplexity:
            return float(loss.value), float(ppl.value)
        return float(loss.value)

    def perplexity(self, data_path) -> float:
        """Perplexity on a data file (exp of the mean loss)."""
        return self.evaluate(data_path, return_perplexity=True)[1]

    def save_checkpoint(self, dir) -> str:
        """Writes dir/checkpoint-<step> (weights, AdamW moments, step, RNG state); returns its path."""
        h = self._require()
        C.lora_trainer_save_checkpoint(h, cpath(dir, "dir"))
        return os.path.join(os.fsdecode(os.fspath(dir)), f"checkpoint-{self.step_count}")

    def resume(self, checkpoint_path) -> None:
        """Restores a checkpoint directory written with the same trainer settings."""
        C.lora_trainer_resume(self._require(), cpath(checkpoint_path, "checkpoint_path"))
