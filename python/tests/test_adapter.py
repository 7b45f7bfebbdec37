"""Adapters: PEFT fixtures, save/load, create params, attach/detach/scale/merge."""
import filecmp
import json
import math

import pytest

import lora
from conftest import fixture
from helpers import LOGITS_TOLERANCE, MERGE_TOLERANCE, max_abs_diff


def ids_of(expected):
    return expected[1]["ids"].values()


@pytest.mark.parametrize("name", ["all", "pattern", "layers"])
def test_peft_adapter_logits(model_a, lora_expected, name):
    ids = ids_of(lora_expected)
    with lora.Adapter.load(model_a, fixture("lora", name)) as adapter:
        model_a.attach(adapter)
        got = model_a.logits(ids)
    assert max_abs_diff(got, lora_expected[1][f"logits.{name}"].values()) < LOGITS_TOLERANCE


def test_two_adapters_sum_like_peft(model_a, lora_expected):
    ids = ids_of(lora_expected)
    a = lora.Adapter.load(model_a, fixture("lora", "all"))
    b = lora.Adapter.load(model_a, fixture("lora", "pattern"))
    model_a.attach(a)
    model_a.attach(b)
    assert set(model_a.adapters) == {a, b}
    assert max_abs_diff(model_a.logits(ids), lora_expected[1]["logits.both"].values()) < LOGITS_TOLERANCE


def test_dora_adapter_as_peft(model_a, tmp_path):
    """PEFT's use_dora adapter: PEFT's logits, merged too; saved back byte for byte."""
    from helpers import read_safetensors
    expected = read_safetensors(fixture("dora", "expected.safetensors"))[1]
    ids = expected["ids"].values()
    src = fixture("dora", "all")
    with lora.Adapter.load(model_a, src) as a:
        model_a.attach(a)
        assert max_abs_diff(model_a.logits(ids), expected["logits.all"].values()) < LOGITS_TOLERANCE
        model_a.merge(a)
        assert max_abs_diff(model_a.logits(ids), expected["logits.merged"].values()) < LOGITS_TOLERANCE
        model_a.unmerge(a)
        a.save(tmp_path / "out")
        model_a.detach(a)
    assert filecmp.cmp(f"{src}/adapter_model.safetensors", tmp_path / "out" / "adapter_model.safetensors",
                       shallow=False)
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["use_dora"] is True
    base = model_a.logits(ids)
    with lora.Adapter.create(model_a, r=4, target_modules=["c_attn"], use_dora=True, seed=1) as fresh:
        assert fresh.n_params == 2 * (4 * (48 + 144) + 144)
        model_a.attach(fresh)
        assert max_abs_diff(model_a.logits(ids), base) < 1e-5
    with pytest.raises(lora.LoraError) as ei:
        lora.Adapter.create(model_a, use_dora=True, init="olora")
    assert ei.value.status == lora.LORA_UNSUPPORTED


def test_lora_bias_as_peft(model_a, tmp_path):
    """PEFT's lora_bias adapter: PEFT's logits, merged too; saved back byte for byte; a fresh one is the base."""
    from helpers import read_safetensors
    expected = read_safetensors(fixture("lora_bias", "expected.safetensors"))[1]
    ids = expected["ids"].values()
    src = fixture("lora_bias", "all")
    with lora.Adapter.load(model_a, src) as a:
        model_a.attach(a)
        assert max_abs_diff(model_a.logits(ids), expected["logits.all"].values()) < LOGITS_TOLERANCE
        model_a.merge(a)
        assert max_abs_diff(model_a.logits(ids), expected["logits.merged"].values()) < LOGITS_TOLERANCE
        model_a.unmerge(a)
        a.save(tmp_path / "out")
        model_a.detach(a)
    assert filecmp.cmp(f"{src}/adapter_model.safetensors", tmp_path / "out" / "adapter_model.safetensors",
                       shallow=False)
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["lora_bias"] is True
    base = model_a.logits(ids)  # after the merge and unmerge, which moved the weights by float rounding
    with lora.Adapter.create(model_a, r=4, target_modules=["c_attn"], lora_bias=True, seed=1) as fresh:
        assert fresh.n_params == 2 * (4 * (48 + 144) + 144)
        model_a.attach(fresh)
        assert max_abs_diff(model_a.logits(ids), base) == 0
    with pytest.raises(lora.LoraError) as ei:
        lora.Adapter.create(model_a, lora_bias=True, use_dora=True)
    assert ei.value.status == lora.LORA_UNSUPPORTED


def test_modules_to_save_as_peft(model_a, tmp_path):
    """PEFT's modules_to_save adapter: its logits; created ones save PEFT's keys."""
    from helpers import read_safetensors
    expected = read_safetensors(fixture("modules_to_save", "expected.safetensors"))[1]
    ids = expected["ids"].values()
    base = model_a.logits(ids)
    with lora.Adapter.load(model_a, fixture("modules_to_save", "ln")) as a:
        model_a.attach(a)
        assert max_abs_diff(model_a.logits(ids), expected["logits.ln"].values()) < LOGITS_TOLERANCE
        model_a.detach(a)
    with lora.Adapter.create(model_a, r=2, modules_to_save=["ln_f", "h.0.ln_2"], seed=1) as a:
        assert a.n_params == 2 * 2 * (48 + 144) + 2 * 2 * 48
        model_a.attach(a)
        assert max_abs_diff(model_a.logits(ids), base) == 0.0
        a.save(tmp_path / "saved")
    names = read_safetensors(str(tmp_path / "saved" / "adapter_model.safetensors"))[1].keys()
    assert "base_model.model.transformer.ln_f.weight" in names and "base_model.model.transformer.h.0.ln_2.bias" in names
    with pytest.raises(lora.LoraError) as ei:
        lora.Adapter.create(model_a, modules_to_save=["wte"])
    assert ei.value.status == lora.LORA_UNSUPPORTED


def test_n_params(model_a):
    with lora.Adapter.load(model_a, fixture("lora", "all")) as a:
        # r=4 on c_attn (48→144), attn.c_proj (48→48), mlp.c_fc (48→192), mlp.c_proj (192→48), 2 layers
        per_layer = 4 * (48 + 144) + 4 * (48 + 48) + 4 * (48 + 192) + 4 * (192 + 48)
        assert a.n_params == 2 * per_layer
    with lora.Adapter.create(model_a, r=8) as a:
        assert a.n_params == 2 * 8 * (48 + 144)


def test_save_is_byte_identical_to_peft(model_a, tmp_path):
    src = fixture("lora", "all")
    with lora.Adapter.load(model_a, src) as a:
        a.save(tmp_path / "out")
    assert filecmp.cmp(f"{src}/adapter_model.safetensors", tmp_path / "out" / "adapter_model.safetensors",
                       shallow=False)
    cfg = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["peft_type"] == "LORA"


def test_saved_adapter_reloads_to_the_same_logits(model_a, tmp_path):
    ids = list(range(10))
    a = lora.Adapter.create(model_a, r=4, alpha=16, target_modules=["c_attn", "mlp.c_fc"], init="random", seed=3)
    a.save(tmp_path / "mine")
    model_a.attach(a)
    want = model_a.logits(ids)
    model_a.detach(a)
    b = lora.Adapter.load(model_a, tmp_path / "mine")
    assert b.n_params == a.n_params
    model_a.attach(b)
    assert max_abs_diff(model_a.logits(ids), want) == 0.0


def test_default_init_is_a_no_op_random_is_not(model_a):
    ids = list(range(12))
    base = model_a.logits(ids)
    a = lora.Adapter.create(model_a, r=4, target_modules=["c_attn", "c_proj", "c_fc"])
    model_a.attach(a)
    assert max_abs_diff(model_a.logits(ids), base) == 0.0
    model_a.detach(a)
    g = lora.Adapter.create(model_a, r=4, init="gaussian", seed=1)
    model_a.attach(g)
    assert max_abs_diff(model_a.logits(ids), base) == 0.0
    model_a.detach(g)
    r = lora.Adapter.create(model_a, r=4, init="random", seed=1)
    model_a.attach(r)
    assert max_abs_diff(model_a.logits(ids), base) > 1e-3


def test_same_seed_same_adapter(model_a, tmp_path):
    for k in (1, 2):
        lora.Adapter.create(model_a, init="random", seed=5).save(tmp_path / f"a{k}")
    lora.Adapter.create(model_a, init="random", seed=6).save(tmp_path / "b")
    f = "adapter_model.safetensors"
    assert filecmp.cmp(tmp_path / "a1" / f, tmp_path / "a2" / f, shallow=False)
    assert not filecmp.cmp(tmp_path / "a1" / f, tmp_path / "b" / f, shallow=False)


def test_create_options(model_a):
    ids = list(range(8))
    base = model_a.logits(ids)
    # A regular expression (PEFT's meaning of a string) and layers_to_transform.
    rx = lora.Adapter.create(model_a, r=2, target_modules=r".*\.h\.1\.mlp\.c_fc", init="random")
    assert rx.n_params == 2 * (48 + 192)
    layer = lora.Adapter.create(model_a, r=2, target_modules=["c_fc"], layers_to_transform=[1])
    assert layer.n_params == rx.n_params
    assert lora.Adapter.create(model_a, r=2, target_modules=["c_fc"], layers_to_transform=1).n_params == rx.n_params
    rs = lora.Adapter.create(model_a, r=4, alpha=8, use_rslora=True, dropout=0.1, init="random", seed=2)
    plain = lora.Adapter.create(model_a, r=4, alpha=8, use_rslora=False, dropout=0.1, init="random", seed=2)
    model_a.attach(rs)
    with_rs = model_a.logits(ids)
    model_a.detach(rs)
    model_a.attach(plain)
    without = model_a.logits(ids)
    # rsLoRA scales by alpha/sqrt(r) (= 4) instead of alpha/r (= 2); dropout is off at inference.
    assert max_abs_diff(with_rs, base) > max_abs_diff(without, base) > 0


@pytest.mark.parametrize("kw", [
    dict(r=0), dict(r=-3), dict(alpha=math.nan), dict(alpha=math.inf), dict(dropout=1.0), dict(dropout=-0.1),
    dict(target_modules=["nope"]), dict(target_modules=[]), dict(target_modules="(unclosed"),
    dict(layers_to_transform=[7]), dict(init=9),
])
def test_bad_adapter_params(model_a, kw):
    with pytest.raises(lora.LoraError) as ei:
        lora.Adapter.create(model_a, **kw)
    assert ei.value.status == lora.LORA_INVALID_ARGUMENT, ei.value


def test_untargetable_module_is_unsupported(model_a):
    for target in ("lm_head", "wpe"):
        with pytest.raises(lora.LoraError) as ei:
            lora.Adapter.create(model_a, target_modules=[target])
        assert ei.value.status == lora.LORA_UNSUPPORTED


def test_lora_on_wte_as_peft(model_a):
    """LoRA on the token embedding (PEFT's lora_embedding_A/B): PEFT's logits; merging into the tied head is refused."""
    from helpers import read_safetensors
    expected = read_safetensors(fixture("embedding", "expected.safetensors"))[1]
    ids = expected["ids"].values()
    with lora.Adapter.load(model_a, fixture("embedding", "wte")) as a:
        model_a.attach(a)
        assert max_abs_diff(model_a.logits(ids), expected["logits.wte"].values()) < LOGITS_TOLERANCE
        with pytest.raises(lora.LoraError) as ei:
            model_a.merge(a)
        assert ei.value.status == lora.LORA_UNSUPPORTED
    with lora.Adapter.create(model_a, r=2, target_modules=["wte"], seed=1) as a:
        assert a.n_params == 2 * 101 + 48 * 2


def test_python_side_adapter_argument_errors(model_a):
    with pytest.raises(ValueError):
        lora.Adapter.create(model_a, init="weird")
    with pytest.raises(ValueError):
        lora.Adapter.create(model_a, target_modules=["c_attn,c_fc"])
    with pytest.raises(OverflowError):
        lora.Adapter.create(model_a, r=2 ** 33)
    with pytest.raises(TypeError):
        lora.Adapter.create("not a model")
    with pytest.raises(TypeError):
        lora.Adapter(None, model_a)


def test_load_errors(model_a, tok_model, tmp_path):
    with pytest.raises(lora.LoraError) as ei:
        lora.Adapter.load(model_a, tmp_path / "missing")
    assert ei.value.status == lora.LORA_IO_ERROR
    # lora/all is for gpt2-a's shape (n_embd 48), not gpt2-tok's (32).
    with pytest.raises(lora.LoraError) as ei:
        lora.Adapter.load(tok_model, fixture("lora", "all"))
    assert ei.value.status == lora.LORA_INVALID_FILE
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{}")
    (bad / "adapter_model.safetensors").write_bytes(b"junk")
    with pytest.raises(lora.LoraError) as ei:
        lora.Adapter.load(model_a, bad)
    assert ei.value.status in (lora.LORA_INVALID_FILE, lora.LORA_UNSUPPORTED)
    dora = tmp_path / "dora"
    dora.mkdir()
    cfg = json.loads(open(fixture("lora", "all", "adapter_config.json")).read())
    cfg["use_dora"] = True
    (dora / "adapter_config.json").write_text(json.dumps(cfg))
    (dora / "adapter_model.safetensors").write_bytes(open(fixture("lora", "all", "adapter_model.safetensors"), "rb").read())
    with pytest.raises(lora.LoraError) as ei:
        lora.Adapter.load(model_a, dora)
    assert ei.value.status == lora.LORA_INVALID_FILE  # use_dora without lora_magnitude_vector tensors
    assert "lora_magnitude_vector" in str(ei.value)


def test_attach_detach_scale(model_a):
    ids = list(range(10))
    base = model_a.logits(ids)
    a = lora.Adapter.create(model_a, init="random", seed=4)
    model_a.attach(a, scale=1.0)
    full = model_a.logits(ids)
    model_a.set_adapter_scale(a, 0.0)
    assert max_abs_diff(model_a.logits(ids), base) == 0.0
    model_a.set_adapter_scale(a, 2.0)
    double = model_a.logits(ids)
    assert max_abs_diff(double, full) > 0
    model_a.detach(a)
    assert max_abs_diff(model_a.logits(ids), base) == 0.0
    model_a.attach(a, scale=2.0)
    assert max_abs_diff(model_a.logits(ids), double) < LOGITS_TOLERANCE


def test_wrong_state_errors(model_a):
    a = lora.Adapter.create(model_a)
    with pytest.raises(lora.LoraError) as ei:
        model_a.detach(a)
    assert ei.value.status == lora.LORA_WRONG_STATE and ei.value.status_name == "LORA_WRONG_STATE"
    with pytest.raises(lora.WrongStateError):
        model_a.unmerge(a)
    model_a.attach(a)
    # The C call refuses a second attach; the binding's attach then sets the scale (the README's
    # snippet attaches the adapter a Trainer already attached).
    from lora import _capi as C
    with pytest.raises(lora.LoraError) as ei:
        C.lora_model_attach(model_a._require(), a._require(), 1.0)
    assert ei.value.status == lora.LORA_WRONG_STATE
    model_a.attach(a, 0.5)
    model_a.merge(a)
    with pytest.raises(lora.LoraError) as ei:
        model_a.merge(a)
    assert ei.value.status == lora.LORA_WRONG_STATE


def test_scale_must_be_finite(model_a):
    a = lora.Adapter.create(model_a)
    with pytest.raises(lora.LoraError) as ei:
        model_a.attach(a, scale=math.nan)
    assert ei.value.status == lora.LORA_INVALID_ARGUMENT
    model_a.attach(a)
    with pytest.raises(lora.LoraError) as ei:
        model_a.set_adapter_scale(a, math.inf)
    assert ei.value.status == lora.LORA_INVALID_ARGUMENT


def test_adapter_of_another_model_is_rejected(model_a):
    with lora.Model.load(fixture("gpt2-a")) as other:
        a = lora.Adapter.create(other)
        with pytest.raises(lora.LoraError) as ei:
            model_a.attach(a)
        assert ei.value.status == lora.LORA_INVALID_ARGUMENT
    with pytest.raises(TypeError):
        model_a.attach("adapter")


def test_merge_unmerge_and_save(model_a, tmp_path):
    ids = list(range(15))
    base = model_a.logits(ids)
    a = lora.Adapter.load(model_a, fixture("lora", "all"))
    model_a.attach(a)
    on_the_fly = model_a.logits(ids)
    model_a.merge(a)
    assert a in model_a.adapters
    assert max_abs_diff(model_a.logits(ids), on_the_fly) < MERGE_TOLERANCE
    model_a.save(tmp_path / "merged")
    model_a.unmerge(a)
    assert max_abs_diff(model_a.logits(ids), on_the_fly) < MERGE_TOLERANCE
    model_a.detach(a)
    assert max_abs_diff(model_a.logits(ids), base) < MERGE_TOLERANCE
    with lora.Model.load(tmp_path / "merged") as merged:
        assert max_abs_diff(merged.logits(ids), on_the_fly) < MERGE_TOLERANCE


def test_merge_attaches_an_unattached_adapter(model_a):
    ids = list(range(6))
    a = lora.Adapter.create(model_a, init="random", seed=9)
    model_a.merge(a)
    merged = model_a.logits(ids)
    model_a.unmerge(a)
    assert max_abs_diff(model_a.logits(ids), merged) < MERGE_TOLERANCE
    model_a.detach(a)  # it was attached by merge


def test_pissa_and_olora_keep_the_output_at_step_0():
    for init, niter in (("pissa", 0), ("pissa", 4), ("olora", 0)):
        with lora.Model.load(fixture("gpt2-tok")) as model:
            ids = model.tokenize("the quick brown fox")
            before = model.logits(ids)
            a = lora.Adapter.create(model, r=4, alpha=8, target_modules=["c_attn", "mlp.c_fc"], init=init, pissa_niter=niter)
            model.attach(a)
            after = model.logits(ids)
            assert max_abs_diff(before, after) < 1e-4, (init, niter)


def test_adapter_algebra_through_the_c_abi(tmp_path):
    with lora.Model.load(fixture("gpt2-a")) as model:
        a = lora.Adapter.load(model, fixture("lora", "all"))
        b = lora.Adapter.load(model, fixture("combine", "all2"))
        small, err = a.compress(rank=2)
        assert small.n_params == a.n_params // 2 and 0 < err < 1
        same, err0 = a.compress(rank=4)
        assert err0 < 1e-5
        kept, _ = a.compress(energy=0.99)
        kept.save(tmp_path / "kept")
        with pytest.raises(lora.LoraError):
            a.compress(rank=5)
        with pytest.raises(ValueError):
            a.compress()
        cat = lora.Adapter.combine([a, b], [0.6, 0.5], method="cat")
        assert cat.n_params == a.n_params + b.n_params
        svd = lora.Adapter.combine([a, b], [0.6, 0.5], method="svd", svd_rank=3)
        lin = lora.Adapter.combine([a, b], [0.6, 0.5], method="linear")
        assert svd.n_params < cat.n_params and lin.n_params == a.n_params
        ids = [1, 5, 9, 33]
        model.attach(a)
        want = model.logits(ids)
        model.detach(a)
        model.attach(same)
        assert max_abs_diff(model.logits(ids), want) < 1e-4
        model.detach(same)
        with lora.Model.load(fixture("gpt2-a")) as tuned:
            t = lora.Adapter.load(tuned, fixture("lora", "all"))
            tuned.merge(t)
            ex, err = lora.Adapter.extract(model, tuned, ["c_attn", "c_proj", "c_fc"], rank=4)
            assert err < 1e-3
            model.attach(ex)
            assert max_abs_diff(model.logits(ids), want) < 1e-3
            model.detach(ex)
        # A fine-tune that changed biases too: extracted with lora_bias, the change is kept.
        with lora.Model.load(fixture("gpt2-a")) as tuned:
            t = lora.Adapter.load(tuned, fixture("lora_bias", "all"))
            tuned.merge(t)
            target = tuned.logits(ids)
            ex, err = lora.Adapter.extract(model, tuned, ["c_attn", "c_proj", "c_fc"], rank=4, lora_bias=True)
            assert err < 1e-3
            model.attach(ex)
            with_bias = max_abs_diff(model.logits(ids), target)
            model.detach(ex)
            plain, _ = lora.Adapter.extract(model, tuned, ["c_attn", "c_proj", "c_fc"], rank=4)
            model.attach(plain)
            assert with_bias < 1e-3 and max_abs_diff(model.logits(ids), target) > 100 * with_bias
            model.detach(plain)
        with pytest.raises(lora.LoraError):
            a.convert_for_original_base()
    with lora.Model.load(fixture("gpt2-a")) as model:
        p = lora.Adapter.create(model, r=4, alpha=8, target_modules=["c_attn"], init="pissa")
        conv = p.convert_for_original_base()
        assert conv.n_params == 2 * p.n_params


def test_task_merges_through_the_c_abi():
    """TIES as PEFT (logits of PEFT's merged adapter); DARE seeded; bad density refused."""
    with lora.Model.load(fixture("gpt2-a")) as model:
        a = lora.Adapter.load(model, fixture("lora", "all"))
        b = lora.Adapter.load(model, fixture("combine", "all2"))
        p = lora.Adapter.load(model, fixture("lora", "pattern"))
        ties = lora.Adapter.combine([a, b], [0.6, 0.5], method="ties", density=0.5)
        peft = lora.Adapter.load(model, fixture("task_merge", "ties"))
        ids = [1, 5, 9, 33, 2, 7]
        model.attach(peft)
        want = model.logits(ids)
        model.detach(peft)
        model.attach(ties)
        assert max_abs_diff(model.logits(ids), want) < 1e-4
        model.detach(ties)
        d1 = lora.Adapter.combine([a, b], [0.6, 0.5], method="dare_ties", density=0.5, seed=4,
                                  majority_sign_method="frequency")
        d2 = lora.Adapter.combine([a, b], [0.6, 0.5], method="dare_ties", density=0.5, seed=4,
                                  majority_sign_method="frequency")
        model.attach(d1)
        x = model.logits(ids)
        model.detach(d1)
        model.attach(d2)
        assert max_abs_diff(model.logits(ids), x) == 0
        model.detach(d2)
        svd = lora.Adapter.combine([a, p], [1.0, 0.5], method="magnitude_prune_svd", density=0.4, svd_rank=2)
        assert svd.n_params > 0
        with pytest.raises(ValueError):
            lora.Adapter.combine([a, b], [0.6, 0.5], method="ties")  # no density
        with pytest.raises(ValueError):
            lora.Adapter.combine([a, b], [0.6, 0.5], method="ties", density=0.5, majority_sign_method="most")
        with pytest.raises(lora.LoraError):
            lora.Adapter.combine([a, b], [0.6, 0.5], method="ties", density=1.5)
        with pytest.raises(lora.LoraError):
            lora.Adapter.combine([a, p], [0.6, 0.5], method="ties", density=0.5)  # unequal ranks
