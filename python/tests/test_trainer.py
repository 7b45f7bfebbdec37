"""Trainer: steps (vs torch fixtures), training on files, evaluation, checkpoints, errors."""
import math
import os

import pytest

import lora
from conftest import fixture
from helpers import TRAJECTORY_TOLERANCE, max_abs_diff, np, read_safetensors

SMALL = dict(batch_size=2, block_size=16)


def fixture_batch(expected):
    t = expected[1]
    return t["batch.ids"].rows(), t["batch.labels"].rows()


def assert_final_weights(adapter, expected, tmp_path):
    """The adapter, saved, holds the fixture's train.final.* within the trajectory tolerance."""
    adapter.save(tmp_path / "final")
    _, saved = read_safetensors(tmp_path / "final" / "adapter_model.safetensors")
    worst = max(max_abs_diff(v.values(), expected[f"train.final.{k}"].values()) for k, v in saved.items())
    assert worst < TRAJECTORY_TOLERANCE, worst


def test_step_loss_matches_peft(model_a, lora_expected):
    """One step on the padded, partly masked fixture batch: the loss before the update is PEFT's."""
    ids, labels = fixture_batch(lora_expected)
    a = lora.Adapter.load(model_a, fixture("lora", "all"))
    t = lora.Trainer(model_a, a, batch_size=3, block_size=16)
    loss = t.step(ids, labels)
    assert isinstance(loss, float)
    assert abs(loss - lora_expected[1]["loss.all"].values()[0]) < TRAJECTORY_TOLERANCE
    assert t.step_count == 1


def test_full_fine_tuning_step_loss_matches_torch(model_a, lora_expected):
    ids, labels = fixture_batch(lora_expected)
    t = lora.Trainer(model_a, None, batch_size=3, block_size=16)
    assert abs(t.step(ids, labels) - lora_expected[1]["loss.full"].values()[0]) < TRAJECTORY_TOLERANCE


def test_twenty_adamw_steps_match_torch(model_a, lora_expected, tmp_path):
    """Every trainer hyperparameter goes through the params struct: the losses and weights match torch."""
    t = lora_expected[1]
    a = lora.Adapter.load(model_a, fixture("lora", "all"))
    tr = lora.Trainer(model_a, a, learning_rate=5e-3, weight_decay=0.05, lr_scheduler="cosine", warmup_steps=3,
                      max_steps=20, max_grad_norm=1.0, batch_size=2, block_size=12)
    want = t["train.losses"].values()
    for k in range(20):
        loss = tr.step(t[f"train.batch{k}.ids"].rows())
        assert abs(loss - want[k]) < TRAJECTORY_TOLERANCE, f"step {k}: {loss} vs {want[k]}"
    assert_final_weights(a, t, tmp_path)


def test_loraplus_ten_steps_match_peft(model_a, tmp_path):
    """LoRA+ through the params struct: PEFT's create_loraplus_optimizer trajectory (make_loraplus_fixtures.py)."""
    _, t = read_safetensors(fixture("loraplus", "expected.safetensors"))
    a = lora.Adapter.load(model_a, fixture("lora", "all"))
    tr = lora.Trainer(model_a, a, learning_rate=2e-3, loraplus_lr_ratio=2.5, weight_decay=0.05, lr_scheduler="cosine",
                      warmup_steps=2, max_steps=10, max_grad_norm=1.0, batch_size=2, block_size=12)
    want = t["train.losses"].values()
    for k in range(10):
        loss = tr.step(t[f"train.batch{k}.ids"].rows())
        assert abs(loss - want[k]) < TRAJECTORY_TOLERANCE, f"step {k}: {loss} vs {want[k]}"
    assert_final_weights(a, t, tmp_path)
    for bad in (0, -2, float("nan")):
        with pytest.raises(lora.LoraError):
            lora.Trainer(model_a, a, loraplus_lr_ratio=bad, block_size=12)


def test_model_dropout_steps_match_transformers(tmp_path):
    """GPT-2's own dropouts through the params struct: the trajectory of
    transformers + PEFT in training mode with liblora's masks
    (make_model_dropout_fixtures.py)."""
    _, t = read_safetensors(fixture("model_dropout", "expected.safetensors"))
    m = lora.Model.load(fixture("model_dropout", "base"))
    a = lora.Adapter.load(m, fixture("model_dropout", "all"))
    tr = lora.Trainer(m, a, learning_rate=5e-3, lr_scheduler="cosine", warmup_steps=2, max_steps=8, max_grad_norm=1.0,
                      batch_size=2, block_size=12, seed=11, model_dropout=True)
    want = t["train.losses"].values()
    for k in range(8):
        loss = tr.step(t[f"train.batch{k}.ids"].rows())
        assert abs(loss - want[k]) < TRAJECTORY_TOLERANCE, f"step {k}: {loss} vs {want[k]}"
    assert_final_weights(a, t, tmp_path)
    # Off (the default), the first step's loss is the deterministic one.
    b = lora.Adapter.load(m, fixture("model_dropout", "all"))
    plain = lora.Trainer(m, b, learning_rate=0.0, batch_size=2, block_size=12, seed=11)
    assert abs(plain.step(t["train.batch0.ids"].rows()) - want[0]) > 1e-3


def test_step_lowers_loss_on_a_repeated_batch(tok_model):
    batch = [tok_model.tokenize("The quick brown fox jumps over the lazy dog.")[:12]] * 2
    a = lora.Adapter.create(tok_model, r=8, target_modules=["c_attn", "c_fc"])
    t = lora.Trainer(tok_model, a, learning_rate=1e-2, lr_scheduler="constant", max_steps=50, **SMALL)
    losses = [t.step(batch) for _ in range(15)]
    assert losses[-1] < losses[0] - 0.1, losses
    assert t.step_count == 15


def test_full_fine_tuning_lowers_loss(tok_model):
    batch = [tok_model.tokenize("Hello, world! Hello, world!")[:10]]
    t = lora.Trainer(tok_model, None, learning_rate=1e-2, lr_scheduler="constant", **SMALL)
    losses = [t.step(batch) for _ in range(8)]
    assert losses[-1] < losses[0], losses


def test_step_inputs(tok_model):
    a = lora.Adapter.create(tok_model)
    rows = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    t1 = lora.Trainer(tok_model, a, lr_scheduler="constant", **SMALL)
    l_list = t1.step(rows)
    a.close()  # closes t1 and detaches a
    assert t1.closed and not tok_model.adapters
    if np is not None:
        b = lora.Adapter.create(tok_model)
        t2 = lora.Trainer(tok_model, b, lr_scheduler="constant", **SMALL)
        assert t2.step(np.array(rows, dtype=np.int64)) == l_list
    # Labels: -100 is ignored; fully masked labels but one still give a finite loss.
    c = lora.Adapter.create(tok_model)
    t3 = lora.Trainer(tok_model, c, **SMALL)
    labels = [[-100, -100, 3, -100, -100], [-100] * 5]
    assert math.isfinite(t3.step(rows, labels))


def test_step_argument_errors(tok_model):
    t = lora.Trainer(tok_model, lora.Adapter.create(tok_model), **SMALL)
    with pytest.raises(ValueError):
        t.step([[1, 2, 3], [4, 5]])           # ragged
    with pytest.raises(ValueError):
        t.step([1, 2, 3])                     # 1-D
    with pytest.raises(ValueError):
        t.step([])
    with pytest.raises(ValueError):
        t.step([[1, 2, 3]], labels=[[1, 2]])
    with pytest.raises(TypeError):
        t.step([[1.0, 2.0]])
    for bad in ([[1, 2]] * 3, [[1] * 17], [[1]], [[1, 5000]], [[-1, 2]]):
        with pytest.raises(lora.LoraError) as ei:
            t.step(bad)
        assert ei.value.status == lora.LORA_INVALID_ARGUMENT, bad
    assert t.step_count == 0


@pytest.mark.parametrize("kw", [
    dict(learning_rate=math.nan), dict(learning_rate=-1.0), dict(weight_decay=math.inf), dict(adam_beta1=1.5),
    dict(max_steps=0), dict(batch_size=0), dict(block_size=65), dict(block_size=1),
    dict(gradient_accumulation_steps=0), dict(warmup_steps=-1), dict(lr_scheduler=17),
])
def test_bad_trainer_params(tok_model, kw):
    params = dict(SMALL)
    params.update(kw)
    with pytest.raises(lora.LoraError) as ei:
        lora.Trainer(tok_model, lora.Adapter.create(tok_model), **params)
    assert ei.value.status == lora.LORA_INVALID_ARGUMENT, ei.value


def test_default_block_size_fits_small_models(tok_model, text_file):
    """Without a block size, a model with n_positions 64 trains with blocks of 64 (min(256, n_positions))."""
    assert tok_model.info.n_positions == 64
    adapter = lora.Adapter.create(tok_model)
    t = lora.Trainer(tok_model, adapter, max_steps=2, batch_size=2)
    assert t.block_size == 64
    last = t.train(text_file)
    assert t.step_count == 2 and last["stop_reason"] == "completed"
    t.step([[1] * 64])
    with pytest.raises(lora.InvalidArgumentError):
        t.step([[1] * 65])


def test_defaults_are_the_librarys(tok_model):
    """Python's keyword defaults are the C default params (one source: the library)."""
    from ctypes import byref
    from lora import _capi as C
    d = C.lora_adapter_params()
    C.lora_adapter_default_params(byref(d))
    a = lora.Adapter.create(tok_model)
    b = lora.Adapter.create(tok_model, r=d.r, alpha=d.lora_alpha, dropout=d.lora_dropout, target_modules=["c_attn"])
    assert a.n_params == b.n_params
    s = C.lora_sampling_params()
    C.lora_sampling_default_params(byref(s))
    assert (s.temperature, s.top_p, s.max_new_tokens) == (1.0, 1.0, 64)
    out = tok_model.generate("Hello", seed=3, stop_at_eos=False)
    assert out == tok_model.generate("Hello", seed=3, stop_at_eos=False, temperature=s.temperature, top_p=s.top_p,
                                     max_new_tokens=s.max_new_tokens)


def test_num_train_epochs(tok_model, text_file):
    t = lora.Trainer(tok_model, lora.Adapter.create(tok_model), num_train_epochs=2, **SMALL)
    last = t.train(text_file)
    once = lora.Trainer(tok_model, lora.Adapter.create(tok_model), num_train_epochs=1, **SMALL).train(text_file)
    assert last["max_steps"] == t.step_count and 2 <= last["max_steps"] < 100
    assert once["max_steps"] in ((last["max_steps"] + 1) // 2, last["max_steps"] // 2)
    with pytest.raises(ValueError):
        lora.Trainer(tok_model, None, num_train_epochs=0, **SMALL)


def test_missing_data_is_file_not_found(tok_model, tmp_path):
    t = lora.Trainer(tok_model, lora.Adapter.create(tok_model), max_steps=1, **SMALL)
    with pytest.raises(FileNotFoundError):
        t.train(str(tmp_path / "nope.txt"))


def test_python_side_trainer_argument_errors(tok_model):
    with pytest.raises(ValueError):
        lora.Trainer(tok_model, None, lr_scheduler="sometimes", **SMALL)
    with pytest.raises(TypeError):
        lora.Trainer("model", None)
    with pytest.raises(TypeError):
        lora.Trainer(tok_model, "adapter")
    with pytest.raises(OverflowError):
        lora.Trainer(tok_model, None, seed=-1, **SMALL)


def test_train_on_a_text_file_with_progress(tok_model, text_file):
    a = lora.Adapter.create(tok_model, r=4)
    t = lora.Trainer(tok_model, a, learning_rate=5e-3, max_steps=6, warmup_steps=2, **SMALL)
    seen = []
    last = t.train(text_file, on_progress=lambda p: seen.append(p))
    assert [p["step"] for p in seen] == [1, 2, 3, 4, 5, 6]
    assert all(p["max_steps"] == 6 for p in seen)
    assert all(math.isfinite(p["loss"]) and p["grad_norm"] >= 0 and p["tokens_per_second"] > 0 for p in seen)
    assert seen[0]["learning_rate"] < seen[1]["learning_rate"]  # warmup
    assert set(seen[0]) == {"step", "max_steps", "loss", "learning_rate", "grad_norm", "tokens_per_second",
                            "validation_loss"}
    assert last == dict(seen[-1], stop_reason="completed")
    assert t.step_count == 6


def test_train_with_validation_and_checkpoints(tok_model, text_file, tmp_path):
    t = lora.Trainer(tok_model, lora.Adapter.create(tok_model), max_steps=4, **SMALL)
    seen = []
    ckpt = tmp_path / "ckpts"
    t.train([text_file], validation_fraction=0.25, eval_steps=2, save_steps=2, checkpoint_dir=ckpt,
            on_progress=seen.append)
    evaluated = [p["step"] for p in seen if p["validation_loss"] is not None]
    assert 2 in evaluated and 4 in evaluated
    assert all(math.isfinite(p["validation_loss"]) for p in seen if p["validation_loss"] is not None)
    assert (ckpt / "checkpoint-2").is_dir() and (ckpt / "checkpoint-4").is_dir()


def test_train_on_jsonl_and_bad_records(tok_model, tmp_path):
    good = fixture("data", "records.jsonl")
    t = lora.Trainer(tok_model, lora.Adapter.create(tok_model), max_steps=2, batch_size=2, block_size=64)
    t.train(good)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 12}\nnot json\n{"text": "also fine, a bit longer"}\n')
    t2 = lora.Trainer(tok_model, lora.Adapter.create(tok_model), max_steps=2, batch_size=2, block_size=64)
    with pytest.raises(lora.LoraError) as ei:
        t2.train(bad)
    assert ei.value.status == lora.LORA_INVALID_FILE
    assert "2" in ei.value.message  # names the line
    t2.train(bad, skip_bad_records=True)
    assert t2.step_count == 2


def test_progress_stop_is_quiet(tok_model, text_file):
    t = lora.Trainer(tok_model, lora.Adapter.create(tok_model), max_steps=10, **SMALL)
    last = t.train(text_file, on_progress=lambda p: p["step"] < 3)
    assert last["step"] == 3 and last["stop_reason"] == "callback"
    assert t.step_count == 3
    # Training goes on from there.
    t.train(text_file)
    assert t.step_count == 10


def test_exception_in_progress_callback_propagates(tok_model, text_file):
    t = lora.Trainer(tok_model, lora.Adapter.create(tok_model), max_steps=10, **SMALL)

    def boom(p):
        raise RuntimeError(f"stop at {p['step']}")

    with pytest.raises(RuntimeError, match="stop at 1"):
        t.train(text_file, on_progress=boom)
    assert t.step_count == 1


def test_train_errors(tok_model, model_a, tmp_path):
    t = lora.Trainer(tok_model, lora.Adapter.create(tok_model), max_steps=2, **SMALL)
    with pytest.raises(lora.LoraError) as ei:
        t.train(tmp_path / "missing.txt")
    assert ei.value.status == lora.LORA_IO_ERROR
    with pytest.raises(lora.LoraError) as ei:
        t.train([])
    assert ei.value.status == lora.LORA_INVALID_ARGUMENT
    p = tmp_path / "x.txt"
    p.write_text("some text " * 50)
    for kw in (dict(validation_fraction=math.nan), dict(eval_steps=-1)):
        with pytest.raises(lora.LoraError) as ei:
            t.train(p, **kw)
        assert ei.value.status == lora.LORA_INVALID_ARGUMENT, kw
    ta = lora.Trainer(model_a, lora.Adapter.create(model_a), **SMALL)
    with pytest.raises(lora.LoraError) as ei:
        ta.train(p)
    assert ei.value.status == lora.LORA_WRONG_STATE


def test_evaluate(tok_model, text_file):
    t = lora.Trainer(tok_model, lora.Adapter.create(tok_model), **SMALL)
    loss = t.evaluate(text_file)
    loss2, ppl = t.evaluate(text_file, return_perplexity=True)
    assert loss == loss2 and math.isfinite(loss) and loss > 0
    assert ppl == pytest.approx(math.exp(loss), rel=1e-4)
    assert t.perplexity(text_file) == ppl
    assert t.step_count == 0
    with pytest.raises(lora.LoraError) as ei:
        t.evaluate(os.path.join(os.path.dirname(text_file), "nope.txt"))
    assert ei.value.status == lora.LORA_IO_ERROR


def test_training_improves_evaluation(tok_model, text_file):
    t = lora.Trainer(tok_model, lora.Adapter.create(tok_model, r=8, target_modules=["c_attn", "c_fc"]),
                     learning_rate=1e-2, lr_scheduler="constant", max_steps=12, **SMALL)
    before = t.evaluate(text_file)
    t.train(text_file)
    assert t.evaluate(text_file) < before


def make_trainer(model, **kw):
    a = lora.Adapter.create(model, r=4, target_modules=["c_attn"])
    return lora.Trainer(model, a, learning_rate=1e-2, max_steps=20, **SMALL, **kw)


def test_checkpoint_and_resume_are_bit_exact(tmp_path):
    rows = [[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18, 19, 20]]
    with lora.Model.load(fixture("gpt2-tok")) as m:
        t = make_trainer(m)
        for _ in range(3):
            t.step(rows)
        path = t.save_checkpoint(tmp_path / "ck")
        assert path == str(tmp_path / "ck" / "checkpoint-3") and os.path.isdir(path)
        after = [t.step(rows) for _ in range(3)]
    with lora.Model.load(fixture("gpt2-tok")) as m:
        t = make_trainer(m)
        t.resume(path)
        assert t.step_count == 3
        assert [t.step(rows) for _ in range(3)] == after


def test_resume_errors(tok_model, tmp_path):
    t = make_trainer(tok_model)
    t.step([[1, 2, 3]])
    path = t.save_checkpoint(tmp_path)
    with pytest.raises(lora.LoraError) as ei:
        t.resume(tmp_path / "no-such-checkpoint")
    assert ei.value.status in (lora.LORA_IO_ERROR, lora.LORA_INVALID_FILE)
    other = lora.Trainer(tok_model, lora.Adapter.create(tok_model, r=2), **SMALL)
    with pytest.raises(lora.LoraError) as ei:
        other.resume(path)
    assert ei.value.status == lora.LORA_INVALID_FILE
    different = lora.Trainer(tok_model, lora.Adapter.create(tok_model, r=4), learning_rate=0.5, **SMALL)
    with pytest.raises(lora.LoraError) as ei:
        different.resume(path)
    assert ei.value.status == lora.LORA_INVALID_FILE


def test_trained_adapter_saves_and_reloads(tok_model, text_file, tmp_path):
    a = lora.Adapter.create(tok_model, r=4)
    t = lora.Trainer(tok_model, a, learning_rate=1e-2, max_steps=5, **SMALL)
    t.train(text_file)
    ids = tok_model.tokenize("The quick brown fox")
    tuned = tok_model.logits(ids)
    a.save(tmp_path / "tuned")
    with lora.Model.load(fixture("gpt2-tok")) as fresh:
        b = lora.Adapter.load(fresh, tmp_path / "tuned")
        fresh.attach(b)
        assert max_abs_diff(fresh.logits(ids), tuned) == 0.0


def test_trainer_attaches_its_adapter(tok_model):
    a = lora.Adapter.create(tok_model)
    lora.Trainer(tok_model, a, **SMALL)
    assert a in tok_model.adapters and a.attached
    tok_model.attach(a)   # already attached: sets the scale (1), no error
