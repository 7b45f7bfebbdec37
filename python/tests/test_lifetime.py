"""Ownership: close(), with blocks, closed objects, references that keep C objects alive."""
import gc
import weakref

import pytest

import lora
from conftest import fixture
from helpers import max_abs_diff

SMALL = dict(batch_size=2, block_size=16)


def test_close_is_idempotent():
    m = lora.Model.load(fixture("gpt2-a"))
    a = lora.Adapter.create(m)
    t = lora.Trainer(m, a, **SMALL)
    for obj in (t, a, m):
        assert not obj.closed
        obj.close()
        obj.close()
        assert obj.closed


def test_with_blocks():
    with lora.Model.load(fixture("gpt2-a")) as m:
        with lora.Adapter.create(m) as a:
            with lora.Trainer(m, a, **SMALL) as t:
                t.step([[1, 2, 3]])
            assert t.closed and not a.closed
        assert a.closed and not m.closed
    assert m.closed


def test_with_on_a_closed_object_raises():
    m = lora.Model.load(fixture("gpt2-a"))
    m.close()
    with pytest.raises(lora.ClosedError):
        with m:
            pass


def test_closed_model_raises_a_python_error():
    m = lora.Model.load(fixture("gpt2-tok"))
    m.close()
    calls = [
        lambda: m.info, lambda: m.tokenize("x"), lambda: m.detokenize([1]), lambda: m.logits([1]),
        lambda: m.logits_batch([[1]]), lambda: m.generate("x"), lambda: m.generate_tokens([1]),
        lambda: m.save("/tmp/never"), lambda: lora.Adapter.create(m), lambda: lora.Adapter.load(m, "x"),
        lambda: lora.Trainer(m, None, **SMALL),
    ]
    for call in calls:
        with pytest.raises(lora.ClosedError):
            call()
    assert issubclass(lora.ClosedError, ValueError)


def test_closed_adapter_and_trainer_raise_python_errors(tmp_path):
    with lora.Model.load(fixture("gpt2-a")) as m:
        a = lora.Adapter.create(m)
        t = lora.Trainer(m, a, **SMALL)
        t.close()
        for call in (lambda: t.step([[1, 2]]), lambda: t.step_count, lambda: t.evaluate("x"),
                     lambda: t.train("x"), lambda: t.save_checkpoint(tmp_path), lambda: t.resume(tmp_path)):
            with pytest.raises(lora.ClosedError):
                call()
        a.close()
        for call in (lambda: a.n_params, lambda: a.save(tmp_path), lambda: m.attach(a), lambda: m.detach(a),
                     lambda: m.merge(a), lambda: lora.Trainer(m, a, **SMALL)):
            with pytest.raises(lora.ClosedError):
                call()
        assert "closed" in repr(a) and "closed" in repr(t)


def test_closing_a_model_closes_its_adapters_and_trainers():
    m = lora.Model.load(fixture("gpt2-a"))
    a = lora.Adapter.create(m)
    b = lora.Adapter.create(m)
    m.attach(b)
    t = lora.Trainer(m, a, **SMALL)
    m.close()
    assert a.closed and b.closed and t.closed
    with pytest.raises(lora.ClosedError):
        t.step([[1, 2]])


def test_closing_an_adapter_closes_its_trainer_and_detaches_it():
    with lora.Model.load(fixture("gpt2-a")) as m:
        ids = list(range(8))
        base = m.logits(ids)
        a = lora.Adapter.create(m, init="random")
        t = lora.Trainer(m, a, **SMALL)
        assert max_abs_diff(m.logits(ids), base) > 0
        a.close()
        assert t.closed
        assert m.adapters == ()
        assert max_abs_diff(m.logits(ids), base) == 0.0


def test_adapter_keeps_its_model_alive():
    m = lora.Model.load(fixture("gpt2-a"))
    model_ref = weakref.ref(m)
    a = lora.Adapter.create(m, init="random")
    del m
    gc.collect()
    assert model_ref() is not None and a.model is model_ref()
    a.model.attach(a)
    assert a.n_params > 0 and a.model.logits([1, 2, 3]) is not None
    a.model.close()


def test_trainer_keeps_model_and_adapter_alive():
    def make():
        m = lora.Model.load(fixture("gpt2-a"))
        return lora.Trainer(m, lora.Adapter.create(m), **SMALL)

    t = make()
    gc.collect()
    assert not t.model.closed and not t.adapter.closed
    t.step([[1, 2, 3, 4]])
    assert t.step_count == 1
    t.model.close()


def test_attached_adapter_is_kept_by_its_model():
    with lora.Model.load(fixture("gpt2-a")) as m:
        ids = list(range(8))
        base = m.logits(ids)
        m.attach(lora.Adapter.create(m, init="random", seed=3))
        gc.collect()
        assert len(m.adapters) == 1
        assert max_abs_diff(m.logits(ids), base) > 0   # still applied


def test_unreferenced_objects_are_freed_without_crashing():
    refs = []
    for _ in range(3):
        m = lora.Model.load(fixture("gpt2-a"))
        a = lora.Adapter.create(m, init="random")
        b = lora.Adapter.create(m)
        m.attach(a)          # a <-> m reference cycle
        t = lora.Trainer(m, b, **SMALL)
        t.step([[1, 2, 3]])
        refs += [weakref.ref(x) for x in (m, a, b, t)]
        del m, a, b, t
    gc.collect()
    assert all(r() is None for r in refs)


def test_objects_cannot_be_built_directly():
    with pytest.raises(TypeError):
        lora.Model(None, "path")
    with pytest.raises(TypeError):
        lora.Model(0, "path")


def test_objects_left_open_at_exit_are_freed_quietly():
    import os
    import subprocess
    import sys
    code = (
        "import lora\n"
        f"m = lora.Model.load({fixture('gpt2-tok')!r})\n"
        "a = lora.Adapter.create(m, init='random')\n"
        "m.attach(a)\n"
        "b = lora.Adapter.create(m)\n"
        "t = lora.Trainer(m, b, batch_size=2, block_size=16)\n"
        "t.step([[1, 2, 3]])\n"
        "print(m.generate('Hi', max_new_tokens=3, seed=1))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    env["LORA_LIBRARY"] = lora.library_path
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Exception" not in r.stderr and "Traceback" not in r.stderr, r.stderr
