"""The compiled training step (compile=glimpse or step): the same steps as eager within rounding, one graph
for every glimpse, exact resume, checkpoints of the plain module, eager training where compiling fails, and
auto's choice."""
import copy

import pytest
import torch

import compiling
import train
import training
from distributed import Objective
from draw_model import DRAWModel
from test_reliability import assert_same_training, load, train_in

P = {**train.params, 'T': 2, 'A': 12, 'B': 12, 'z_size': 4, 'read_N': 2, 'write_N': 3, 'enc_size': 16,
     'dec_size': 16, 'kl_warmup': 3, 'free_bits': 0.25}


@pytest.fixture(autouse=True)
def shared_inductor_cache(tmp_path_factory, monkeypatch):
    """One inductor cache for the whole suite: a graph is compiled cold once, then loaded."""
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path_factory.getbasetemp() / 'inductor'))


def batches(n=4):
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(8, 1, 12, 12, generator=g) > 0.6).float() for _ in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize('region, precision, rtol', [('glimpse', 'fp32', 1e-4), ('glimpse', 'bf16', 2e-2),
                                                     ('step', 'fp32', 1e-4)])
def test_compiled_steps_follow_eager_steps_within_rounding(region, precision, rtol):
    """Four steps (KL warm-up, free bits, fused Adam, clipping) through the compiled objective and
    through the eager one, from the same weights and noise: the same losses and weights within the
    precision's rounding, and the reported loss is the ELBO. The glimpse compiles to one graph that
    serves every glimpse, the first one too."""
    p = {**P, 'precision': precision}
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters['stats']['unique_graphs']
    torch.manual_seed(0)
    model = DRAWModel(p)
    twin = copy.deepcopy(model)
    runs = []
    for m, compiled in ((model, True), (twin, False)):
        optimizer = torch.optim.Adam(m.parameters(), lr=1e-2, betas=(0.5, 0.999), fused=True)
        objective = Objective(m)
        if compiled:
            objective = compiling.compile_objective(objective, batches(1)[0], None, p['free_bits'], precision, print,
                                                    region)
            assert isinstance(objective, compiling.Switch)
            assert torch._dynamo.utils.counters['stats']['unique_graphs'] == graphs + 1  # T = 2 glimpses, one graph
        losses = []
        for step, x in enumerate(batches()):
            torch.manual_seed(step)
            losses.append(training.train_step(objective, optimizer, x, None, p, step)[0].item())
        runs.append(losses)
    assert runs[0] == pytest.approx(runs[1], rel=rtol)
    for (name, w), w_eager in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(w, w_eager, rtol=rtol, atol=rtol * 1e-1, msg=name)
    torch.manual_seed(9)
    with torch.no_grad():
        assert model.loss(batches(1)[0])[0].item() == pytest.approx(runs[0][-1], rel=0.2)  # the ELBO's scale


@pytest.mark.slow
def test_a_compiled_run_resumed_compiled_ends_where_the_uninterrupted_run_ends(tmp_path):
    """Checkpoints hold the plain module's keys (no _orig_mod.), and resume is exact, compiled."""
    from conftest import write_tiny_csv
    work = write_tiny_csv(tmp_path)
    straight = train_in(work, 'epoch_num=2', 'save_epoch=1', 'compile=true', out='straight')
    resumed = train_in(work, 'epoch_num=2', 'compile=true', f'resume={straight / "model_epoch_1"}', out='resumed')
    final = load(straight / 'model_final')
    assert not [k for k in final['model'] if '_orig_mod' in k] and final['params']['compile'] == 'true'
    assert_same_training(final, load(resumed / 'model_final'))


@pytest.mark.slow
def test_a_failing_compiler_leaves_one_line_and_eager_training(monkeypatch, tmp_path, capsys):
    def broken(objective, **options):
        def fail(*args):
            raise RuntimeError('C++ compile error: inductor exploded\nmore detail')
        return fail
    monkeypatch.setattr(torch, 'compile', broken)
    from conftest import write_tiny_csv
    work = write_tiny_csv(tmp_path)
    straight = train_in(work, 'epoch_num=1', 'compile=true', out='broken')
    out = capsys.readouterr().out
    assert 'compile: failed (RuntimeError: C++ compile error: inductor exploded); training eager.' in out
    assert load(straight / 'model_final')['epoch'] == 1


@pytest.mark.slow
def test_without_a_cpp_compiler_training_says_so_and_runs_eager(monkeypatch):
    monkeypatch.setattr(compiling, 'unavailable', lambda device: 'no C++ compiler found (...)')
    cpu = torch.device('cpu')
    for setting in ('auto', 'true', 'glimpse', 'step'):
        chosen, why = compiling.decide(setting, cpu, 10 ** 6, 1.0, 25, {})
        assert chosen is None and why == f'compile={setting}, but no C++ compiler found (...)'


def test_auto_compiles_what_ends_the_steps_left_soonest(monkeypatch):
    """Eager for a few steps, the glimpse (a cheap compile) for a run of minutes, the whole step (dearer to
    compile, a faster step) for hours; a compile recorded here instead of the cold estimate."""
    monkeypatch.setattr(compiling, 'unavailable', lambda device: None)
    cpu, share = torch.device('cpu'), compiling.SAVED_SHARE['cpu']
    cold = {r: compiling.COLD_SECONDS[r] + compiling.COLD_SECONDS_PER_GLIMPSE[r] * 25 for r in compiling.REGIONS}
    pays = int(cold['glimpse'] / (0.3 * share['glimpse']))  # eager steps of 0.3 s that save the glimpse's compile
    assert compiling.decide('auto', cpu, pays - 10, 0.3, 25, {})[0] is None
    chosen, why = compiling.decide('auto', cpu, pays + 10, 0.3, 25, {})
    assert chosen == 'glimpse' and f'{pays + 10:,} steps of 0.30 s: eager about' in why and 'a first compile' in why
    hours = int((cold['step'] - cold['glimpse']) / (0.3 * (share['step'] - share['glimpse'])))  # where step catches up
    assert compiling.decide('auto', cpu, hours - 10, 0.3, 25, {})[0] == 'glimpse'
    assert compiling.decide('auto', cpu, hours + 10, 0.3, 25, {})[0] == 'step'
    chosen, why = compiling.decide('auto', cpu, hours - 10, 0.3, 25, {'step': 5.0})  # the whole step's graph cached
    assert chosen == 'step' and '(5 s to compile, as recorded here)' in why
    assert compiling.decide('false', cpu, 10 ** 6, 1.0, 25, {}) == (None, 'compile=false')
    assert compiling.decide('true', cpu, 1, 1.0, 25, {}) == ('glimpse', 'compile=true')
    assert compiling.decide('step', cpu, 1, 1.0, 25, {}) == ('step', 'compile=step')


def test_the_record_expects_a_warm_start_after_a_cold_one_and_survives_a_damaged_file_or_emptied_caches(
        tmp_path, monkeypatch):
    inductor = tmp_path / 'inductor'
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(inductor))
    (inductor / 'graphs').mkdir(parents=True)
    (tmp_path / 'compile_seconds.json').write_text('{not json')
    record = compiling.Record(tmp_path)
    assert record.get('k') is None
    record.put('k', 200.0, False, print)  # a cold compile: the next start finds the graph in the caches
    assert compiling.Record(tmp_path).get('k') == 200.0 * compiling.WARM_SHARE
    record.put('k', 6.04, True, print)  # a warm one: what it took
    assert compiling.Record(tmp_path).get('k') == 6.0
    (inductor / 'graphs').rmdir()  # emptied (inductor makes the folder again, empty, before it compiles)
    assert compiling.Record(tmp_path).get('k') is None
    inductor.rmdir()
    assert compiling.Record(tmp_path).get('k') is None


def test_the_record_keys_the_class_count_only_for_a_conditional_model_and_t_only_for_the_whole_step():
    cpu = torch.device('cpu')
    for region in compiling.REGIONS:
        assert compiling.cache_key(P, 46, cpu, region) == compiling.cache_key(P, 10, cpu, region)  # other data
        conditional = {**P, 'conditional': True}
        assert compiling.cache_key(conditional, 46, cpu, region) != compiling.cache_key(conditional, 10, cpu, region)
    assert compiling.cache_key(P, 0, cpu, 'glimpse') == compiling.cache_key({**P, 'T': 64}, 0, cpu, 'glimpse')
    assert compiling.cache_key(P, 0, cpu, 'step') != compiling.cache_key({**P, 'T': 64}, 0, cpu, 'step')
    assert compiling.cache_key(P, 0, cpu, 'step') != compiling.cache_key(P, 0, cpu, 'glimpse')
