"""evaluate.py: its bounds against a likelihood computed by quadrature, the Fréchet distance against
its closed form, and the script end to end."""
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import classifier
import evaluate
import utils
from conftest import csv_lines, heads, original_checkpoint, run, shared, tool, write_tiny_csv
from dataloader import load_data, model_inputs
from draw_model import DRAWModel
from train import params as DEFAULTS


def one_glimpse_model(channel=1):
    """T = 1 and a 1-D latent: -log p(x) = -log of an integral over z, which quadrature computes.
    Weights scaled up so that the image depends sharply on z and the untrained encoder's q is far
    from the true posterior: the ELBO is loose."""
    torch.manual_seed(0)
    model = DRAWModel({**DEFAULTS, 'T': 1, 'A': 4, 'B': 4, 'z_size': 1, 'read_N': 2, 'enc_size': 8, 'dec_size': 8,
                       'write_attn': False, 'channel': channel})
    with torch.no_grad():
        model.decoder.weight_ih.mul_(3)
        model.fc_write.weight.mul_(10)
    return model.eval()


def exact_nll(model, x, channels=slice(None)):
    """-log p(x) = -log integral N(z; 0, 1) p(x | z) dz on a fine grid (the decoder, Eqs. 13-16), of
    the image x's channels (all by default)."""
    z = torch.linspace(-9, 9, 20001).unsqueeze(1)
    _, _, state = model.initial_state(len(z), 'cpu')
    with torch.no_grad():
        h = model.decoder(z, state)[0]
        logits = model.write(heads(model, h))[:, channels]
    x = x[:, channels]
    log_px_z = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction='none').flatten(1).sum(1)
    log_prior = -z[:, 0] ** 2 / 2 - 0.5 * math.log(2 * math.pi)
    return -(torch.logsumexp(log_px_z + log_prior, 0) + math.log(z[1, 0] - z[0, 0])).item()


def test_iwae_bound_closes_on_the_exact_likelihood():
    model = one_glimpse_model()
    x = (torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    exact = sum(exact_nll(model, xi.unsqueeze(0)) for xi in x) / 3
    torch.manual_seed(0)
    many = evaluate.bounds(model, x, None, k=4000)
    few = evaluate.bounds(model, x.repeat(200, 1, 1, 1), None, k=10)  # an average of 600 estimates
    assert many['elbo'] > exact + 0.3  # the ELBO's gap
    assert exact < few['iwae'] < many['elbo']  # Burda et al.: the bound tightens with k...
    assert many['iwae'] == pytest.approx(exact, abs=0.02)  # ...onto -log p(x)
    assert len(many['kl_t']) == 1 and many['kl'] == pytest.approx(sum(many['kl_t']))


def test_each_channels_bounds_close_on_the_likelihood_of_that_channel_alone():
    """A model of one grey image in three channels (the 2019 code's) is, channel by channel, a model
    of the grey image: -log p(x_c) of its marginal, which a one-channel model's bound compares with."""
    model = one_glimpse_model(channel=3)
    x = (torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1)) > 0.5).float().expand(-1, 3, -1, -1)
    torch.manual_seed(0)
    found = evaluate.bounds(model, x, None, k=4000)
    for c, (elbo, iwae) in enumerate(found['channels']):
        exact = sum(exact_nll(model, xi.unsqueeze(0), slice(c, c + 1)) for xi in x) / 2
        assert elbo > exact and iwae == pytest.approx(exact, abs=0.02)
    assert sum(elbo for elbo, _ in found['channels']) == pytest.approx(found['elbo'] + 2 * found['kl'])  # KL in each
    assert found['iwae'] == pytest.approx(sum(exact_nll(model, xi.unsqueeze(0)) for xi in x) / 2, abs=0.02)


def test_frechet_distance_matches_the_closed_form():
    """For 2x2 covariances Tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det(S1 S2)))."""
    rng = np.random.default_rng(0)
    f1 = torch.from_numpy(rng.normal(size=(500, 2)) @ np.array([[2.0, 0.3], [0.0, 0.5]]))
    f2 = torch.from_numpy(rng.normal(size=(400, 2)) @ np.array([[1.0, -0.4], [0.2, 1.5]]) + [0.5, -1.0])
    s1, s2 = np.cov(f1.numpy().T), np.cov(f2.numpy().T)
    product = s1 @ s2
    cross = math.sqrt(np.trace(product) + 2 * math.sqrt(np.linalg.det(product)))
    expected = ((f1.mean(0) - f2.mean(0)) ** 2).sum().item() + np.trace(s1) + np.trace(s2) - 2 * cross
    assert classifier.frechet_distance(f1, f2) == pytest.approx(expected, rel=1e-9)
    assert classifier.frechet_distance(f1, f1) == pytest.approx(0, abs=1e-9)


def test_scores_count_confidence_classes_and_entropy():
    model = classifier.Classifier(3, (8, 8)).eval()
    images = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.copy_(torch.tensor([0.0, 5.0, 0.0, 0.0]))  # every image: class 1, p = 0.980
    found = classifier.scores(model, images, model.features(torch.rand(5, 1, 8, 8)))
    assert found['recognisable'] == 1 and found['classes'] == 1 and found['entropy'] == 0
    assert found['predicted'].tolist() == [1] * 6 and found['frechet'] > 0 and found['no_character'] == 0
    with torch.no_grad():
        model.out.bias.copy_(torch.tensor([0.0, 2.0, 0.0, 3.0]))  # "no character" first, class 1 second
    found = classifier.scores(model, images, model.features(torch.rand(5, 1, 8, 8)))
    assert found['recognisable'] == 0 and found['no_character'] == 1 and found['classes'] == 0


def test_no_character_images_are_what_they_say():
    x = torch.zeros(50, 1, 16, 16)
    x[:, :, 4:12, 7:9] = 1  # one sharp vertical stroke
    junk = classifier.no_character(x, 40)
    assert junk.shape == (40, 1, 16, 16) and 0 <= junk.min() and junk.max() <= 1
    means, blurs, noise, flat = junk.split(10)
    assert torch.allclose(means, x[:10]) and (blurs.amax((1, 2, 3)) < 0.5).all()  # a stroke's mean is itself
    assert (flat.flatten(1).std(1) == 0).all() and (noise.flatten(1).std(1) > 0).all()
    soft = classifier.softened(x[:10])
    assert (soft[:5].amax((1, 2, 3)) < 1).all() and (soft[:5].sum((1, 2, 3)) > 0.5 * x[:5].sum((1, 2, 3))).all()
    assert torch.equal(soft[5:], x[5:10])


@pytest.fixture(scope='module')
def handwriting(tmp_path_factory):
    """The shared handwritten CSV as model inputs: (train x, y), (test x, y)."""
    path = shared('devanagari-handwritten-10/train.csv.gz')
    data = load_data({**DEFAULTS, 'data_path': str(path), 'cache_dir': str(tmp_path_factory.mktemp('cache'))},
                     log=lambda _: None)
    return ((model_inputs(data.train_x, DEFAULTS), data.train_y), (model_inputs(data.test_x, DEFAULTS), data.test_y))


@pytest.mark.slow
def test_blobs_blurs_and_noise_are_not_recognisable_but_real_characters_are(handwriting):
    """The failure it guards against: after one epoch the samples were 64 grey blobs, and 7.5% of
    them scored recognisable. Grey rounded blobs are not among the classifier's "no character"
    training images; the average glyph, blurs and noise resemble kinds that are."""
    (train_x, train_y), (test_x, test_y) = handwriting
    clf, accuracy = classifier.train_classifier((train_x[:8000], train_y[:8000]), (test_x, test_y), 10, epochs=6,
                                                log=lambda _: None)
    real = classifier.scores(clf, test_x[:1000], classifier.apply(clf.features, test_x[1000:]))
    assert accuracy > 0.85 and real['recognisable'] > 0.5 and real['classes'] == 10  # a short training: less sure
    g = torch.Generator().manual_seed(5)
    n = 200
    average = test_x.mean(0).expand(n, -1, -1, -1).roll(1, dims=3)  # the average glyph, shifted a pixel
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing='ij')
    radius = 6 + 4 * torch.rand(n, 1, 1, 1, generator=g)
    blob = 0.6 * torch.sigmoid(radius - ((yy - 16) ** 2 + (xx - 16) ** 2).sqrt())  # grey rounded blobs
    blurred = classifier.blur(test_x[:n], 3.0)
    noise = torch.rand(n, 1, 32, 32, generator=g)
    for name, images in (('average glyph', average), ('grey blobs', blob), ('blurs', blurred), ('noise', noise)):
        share = classifier.scores(clf, images, classifier.apply(clf.features, test_x[1000:]))['recognisable']
        assert share < 0.05, f'{name}: {100 * share:.1f}% recognisable'


@pytest.mark.slow
def test_evaluate_prints_every_number_and_the_kl_plot_and_compare_plots_it(trained):
    work, _ = trained
    out = run('evaluate.py', '-load_path', 'checkpoint/model_final', '-k', '4', '-num_samples', '6',
              '-json', 'checkpoint/eval.json', cwd=work)
    assert out.returncode == 0, out.stderr
    elbo, recon, kl = map(float, re.search(r'negative ELBO\s+(\S+) nats per image \(reconstruction (\S+) \+ KL (\S+)\)',
                                           out.stdout).groups())
    iwae = float(re.search(r'IWAE bound, k=4\s+(\S+)', out.stdout).group(1))
    assert elbo == pytest.approx(recon + kl, abs=0.02) and iwae <= elbo + 0.5
    bits = float(re.search(r'bits per dimension\s+(\S+)', out.stdout).group(1))
    assert bits == pytest.approx(elbo / 1024 / math.log(2), abs=1e-3)
    assert len(re.search(r'KL per glimpse\s+(.*)', out.stdout).group(1).split()) == 3
    assert (work / 'images' / 'kl_per_glimpse.png').is_file()
    assert 'Classifier: trained' in out.stdout and 'recognisable' in out.stdout and 'Frechet' in out.stdout
    share = float(re.search(r'recognisable \(p >= 0.9\)\s+(\S+)%', out.stdout).group(1))
    final = json.loads((work / 'checkpoint' / 'metrics.jsonl').read_text().splitlines()[-1])
    plotted = run('tools/compare.py', '-scores', 'tiny=checkpoint,checkpoint', '-out', 'scores.png', cwd=work)
    assert plotted.returncode == 0 and (work / 'scores.png').is_file(), plotted.stderr
    assert f"tiny: {share:.1f}% at {final['elapsed'] / 60:.1f} min, {share:.1f}%" in plotted.stdout
    plotted = run('tools/compare.py', 'tiny=checkpoint/metrics.jsonl', '-out', 'bounds.png', cwd=work)
    assert plotted.returncode == 0 and 'tiny: ' in plotted.stdout and '(2 epochs)' in plotted.stdout
    missing = run('tools/compare.py', '-scores', 'tiny=checkpoint,data', cwd=work)
    assert missing.returncode == 2 and 'data/metrics.jsonl: cannot read it' in missing.stderr


@pytest.mark.slow
def test_evaluate_json_holds_every_number_it_printed(trained, tmp_path, monkeypatch, capsys):
    """-json PATH: the numbers printed, at full precision (shares as fractions), in a folder made for
    it; a -json folder that cannot be written is refused before any work."""
    work, _ = trained
    monkeypatch.chdir(work)
    path = tmp_path / 'scores' / 'eval.json'
    evaluate.main(['-load_path', 'checkpoint/model_final', '-k', '2', '-num_samples', '4', '-out_dir', str(tmp_path),
                   '-json', str(path)])
    out, found = capsys.readouterr().out, json.loads(path.read_text())
    s, r, n = found['samples'], found['real'], len(found['classifier']['classes'])
    percent = '{:.1f}'.format
    printed = {r'negative ELBO\s+(\S+) nats per image \(reconstruction (\S+) \+ KL (\S+)\)':
               [f"{found[key]:.2f}" for key in ('negative_elbo', 'reconstruction', 'kl')],
               r'IWAE bound, k=2\s+(\S+)': [f"{found['iwae']:.2f}"],
               r'bits per dimension\s+(\S+) \(ELBO\), (\S+) \(IWAE\)':
               [f"{found['bits_per_dim']:.4f}", f"{found['iwae_bits_per_dim']:.4f}"],
               r'KL per glimpse +(.*)': [' '.join(f'{v:.1f}' for v in found['kl_per_glimpse'])],
               r'\((\S+)% right on the test split\)': [percent(100 * found['classifier']['accuracy'])],
               r'recognisable \(p >= 0\.9\)\s+(\S+)%\s+(\S+)%': [percent(100 * s['recognisable']),
                                                                percent(100 * r['recognisable'])],
               r'no character\s+(\S+)%\s+(\S+)%': [percent(100 * s['no_character']), percent(100 * r['no_character'])],
               r'classes present\s+(\d+)/(\d+)\s+(\d+)/(\d+)': [str(s['classes']), str(n), str(r['classes']), str(n)],
               r'class entropy \(nats\)\s+(\S+)\s+(\S+)': [f"{s['entropy']:.3f}", f"{r['entropy']:.3f}"],
               r'Frechet distance\s+(\S+)\s+(\S+)': [f"{s['frechet']:.2f}", f"{r['frechet']:.2f}"]}
    for pattern, numbers in printed.items():
        assert list(re.search(pattern, out).groups()) == numbers, pattern
    assert (found['count'], found['dimensions'], found['k'], len(found['kl_per_glimpse'])) == (6, 1024, 2, 3)
    assert out.strip().endswith(f'wrote {path}') and 'per_channel' not in found
    (tmp_path / 'file').write_text('')
    with pytest.raises(utils.InputError, match=f'-json {tmp_path / "file"}: cannot write there'):
        evaluate.main(['-load_path', 'checkpoint/model_final', '-json', str(tmp_path / 'file' / 'eval.json')])



def epoch(n, bound, seconds, elapsed):
    """An epoch record of train.py's metrics.jsonl."""
    return {'event': 'epoch', 'epoch': n, 'epochs': 3, 'step': 10 * n, 'train_loss': bound + 5, 'test_bound': bound,
            'reconstruction': bound - 20, 'kl': 20.0, 'seconds': seconds, 'images_per_second': 1000.0,
            'elapsed': elapsed, 'left': None, 'skipped': 0}


def write_run(folder, share, elapsed):
    """A run folder as train.py (checkpoint_dir=folder) and evaluate.py -json leave it: a run interrupted
    after epoch 3 and resumed from epoch 1's checkpoint, then scored."""
    folder.mkdir(parents=True)
    records = [{'event': 'length', 'epoch': 0, 'total_steps': 30, 'epochs': 3.0, 'step_seconds': 0.1,
                'epoch_seconds': 1.0, 'save_seconds': 0.2, 'elapsed': 5.0},
               epoch(1, 300.0, 60, 70), epoch(2, 250.0, 60, 131), epoch(3, 240.0, 60, 192),
               epoch(2, 260.0, 90, 100), epoch(3, 245.0, 90, 191),
               {'event': 'final', 'path': f'{folder}/model_final', 'epoch': 3, 'step': 30, 'elapsed': elapsed}]
    (folder / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
    scored = {'negative_elbo': 245.0, 'samples': {'recognisable': share}}
    (folder / 'eval.json').write_text(json.dumps(scored, indent=1))
    return folder


def test_compare_plots_the_metrics_and_eval_files_and_names_a_damaged_one(tmp_path, capsys):
    """Bounds against the epochs' minutes summed (a resumed run's redone epochs replacing the first
    tries), shares against the final record's elapsed time; each damaged or missing file one InputError
    naming it, and the line where it is one line of JSON."""
    compare = tool('compare')
    short, long = write_run(tmp_path / 'short', 0.25, 600.0), write_run(tmp_path / 'long', 0.5, 1500.0)
    compare.main([f'resumed={short / "metrics.jsonl"}', '-out', str(tmp_path / 'bounds.png')])
    compare.main(['-scores', f'runs={short},{long}', '-out', str(tmp_path / 'scores.png')])
    out = capsys.readouterr().out.splitlines()
    assert [line.strip() for line in out] == ['resumed: 245.00 nats after 4.0 min (3 epochs), best 245.00',
                                              f'wrote {tmp_path / "bounds.png"}',
                                              'runs: 25.0% at 10.0 min, 50.0% at 25.0 min',
                                              f'wrote {tmp_path / "scores.png"}']
    assert (tmp_path / 'bounds.png').is_file() and (tmp_path / 'scores.png').is_file()
    damaged, lines = tmp_path / 'damaged', (short / 'metrics.jsonl').read_text().splitlines()
    scores, bounds = ['-scores', f'runs={short},{damaged}'], [str(damaged / 'metrics.jsonl')]
    for name, text, args, message in [
            ('metrics.jsonl', '\n'.join(lines[:2] + ['{"event": "epoch", "epo']), bounds,
             'metrics.jsonl, line 3: not valid JSON (Unterminated string starting at); the file is damaged.'),
            ('metrics.jsonl', '\n'.join(lines[:2] + ['[1, 2]']), bounds,
             'metrics.jsonl, line 3: a JSON list, not an object; the file is damaged.'),
            ('metrics.jsonl', '\n'.join(lines).replace('"test_bound"', '"bound"', 1), bounds,
             "metrics.jsonl, line 2: an epoch record without a number 'test_bound'."),
            ('metrics.jsonl', '\n'.join(lines[:-1]), scores,
             "metrics.jsonl: no 'final' record in it; train.py writes one when it writes model_final."),
            ('eval.json', '{\n "negative_elbo": 245.0,\n', scores,
             'eval.json, line 3: not valid JSON (Expecting property name enclosed in double quotes); the file is '
             'damaged.'),
            ('eval.json', '{"negative_elbo": 245.0}', scores, 'eval.json: no sample scores in it ("samples": '
                                                              '{"recognisable": ...}); run evaluate.py with '
                                                              '-num_samples above 0.'),
            ('eval.json', None, scores, 'eval.json: cannot read it (No such file or directory).')]:
        shutil.copytree(short, damaged, dirs_exist_ok=True)
        if text is None:
            (damaged / name).unlink()
        else:
            (damaged / name).write_text(text)
        with pytest.raises(utils.InputError) as e:
            compare.main([*args, '-out', str(tmp_path / 'none.png')])
        assert str(e.value) == f'{damaged}/{message}'


@pytest.mark.slow
def test_compare_on_the_command_line_a_damaged_line_is_one_line_and_exit_status_2(tmp_path):
    folder = write_run(tmp_path / 'run', 0.5, 600.0)
    plotted = run('tools/compare.py', f'{folder / "metrics.jsonl"}', '-out', 'bounds.png', cwd=tmp_path)
    assert plotted.returncode == 0 and (tmp_path / 'bounds.png').is_file(), plotted.stderr
    with open(folder / 'metrics.jsonl', 'a') as f:
        f.write('{"event": "epoch", "epoch": 4, "test_bo\n')
    damaged = run('tools/compare.py', f'{folder / "metrics.jsonl"}', '-out', 'bounds.png', cwd=tmp_path)
    assert damaged.returncode == 2 and damaged.stdout == ''
    assert damaged.stderr.splitlines() == [f'error: {folder / "metrics.jsonl"}, line 8: not valid JSON (Unterminated '
                                           f'string starting at); the file is damaged.']

@pytest.mark.slow
def test_evaluate_scores_every_image_of_a_held_out_file_with_the_models_own_classifier(trained, tmp_path):
    """A held-out file is scored whole; its classes are matched to the model's by name (others are
    listed), and the classifier is the one of the checkpoint's own training data."""
    work, _ = trained
    images = np.random.default_rng(3).integers(0, 256, (14, 32, 32), dtype=np.uint8)
    held_out = tmp_path / 'held_out.csv'
    held_out.write_text('\n'.join(csv_lines(images, ['character_1_ka', 'digit_0', 'character_02_kha', 'character_1_ka',
                                                     'digit_0', 'character_1_ka', 'digit_0'] * 2)))
    out = run('evaluate.py', '-load_path', 'checkpoint/model_final', '-k', '2', '-num_samples', '4',
              '-data', str(held_out), cwd=work)
    assert out.returncode == 0, out.stderr
    assert 'on every image of csv' in out.stdout and ': 14 images, 1024 dimensions' in out.stdout
    assert "1 class not the model's (character_02_kha)" in out.stdout
    assert "right on the file's 12 images of its classes" in out.stdout and 'real (file)' in out.stdout
    own = run('evaluate.py', '-load_path', 'checkpoint/model_final', '-k', '2', '-num_samples', '4', cwd=work)
    trained_on = re.search(r'(\d+\.\d)% right on the test split', own.stdout).group(1)
    assert f'({trained_on}% right on the test split)' in out.stdout  # the same, cached classifier
    assert f"by a CNN trained on the training split of csv {work / 'data' / 'data.csv'} (" in out.stdout


@pytest.mark.slow
def test_evaluate_scores_the_average_or_with_weights_trained_the_trained_weights(trained, tmp_path):
    """The same posterior noise (-seed) on both: -weights trained scores the training_model, as the
    checkpoint rewritten with it as its model scores (its write bias moved, so the two differ)."""
    work, _ = trained
    ckpt = torch.load(work / 'checkpoint' / 'model_final', weights_only=True)
    trained_weights = {**ckpt['training_model'], 'fc_write.bias': ckpt['training_model']['fc_write.bias'] + 1}
    torch.save({**ckpt, 'training_model': trained_weights}, tmp_path / 'both')
    del ckpt['training_model']
    torch.save({**ckpt, 'model': trained_weights, 'params': {**ckpt['params'], 'ema': 0.0}}, tmp_path / 'last')

    def elbo(name, *flags):
        out = run('evaluate.py', '-load_path', str(tmp_path / name), '-k', '2', '-num_samples', '0', '-out_dir',
                  str(tmp_path), *flags, cwd=work)
        assert out.returncode == 0, out.stderr
        return re.search(r'negative ELBO\s+(\S+ nats per image \(.*\))', out.stdout).group(1)
    assert elbo('both') != elbo('last') == elbo('both', '-weights', 'trained')
    out = run('evaluate.py', '-load_path', str(tmp_path / 'last'), '-weights', 'trained', cwd=work)
    assert out.returncode == 2 and 'Traceback' not in out.stderr
    assert out.stderr.strip().endswith('holds no training_model (it was trained with ema=0, or before ema): its '
                                       'model is the trained weights; score it without -weights trained.')


@pytest.mark.slow
def test_evaluate_refuses_bad_flags(trained, tmp_path):
    work, _ = trained
    for flags, message in ((['-k', '0'], '-k must be a positive'), (['-data', str(tmp_path / 'none.csv')], 'none.csv')):
        out = run('evaluate.py', '-load_path', 'checkpoint/model_final', *flags, cwd=work)
        assert out.returncode == 2 and message in out.stderr and 'Traceback' not in out.stderr


def per_channel(out):
    """The per-channel ELBOs evaluate.py printed, with its negative ELBO and KL."""
    elbo, kl = map(float, re.search(r'negative ELBO\s+(\S+) nats .* \+ KL (\S+)\)', out).groups())
    return [float(v) for v in re.search(r'per channel\s+ELBO ([\d. ]+),', out).group(1).split()], elbo, kl


@pytest.mark.slow
def test_a_2019_checkpoint_is_scored_by_the_classifier_of_the_files_own_classes(tmp_path, monkeypatch, capsys):
    """A 2019 file records no data: with -data, its samples are scored by the classifier of that file's
    classes (trained on its training split on first use, then cached), against its test split, not by
    the built-in set's. Its three grey channels get bounds of their own."""
    monkeypatch.chdir(tmp_path)
    original_checkpoint(tmp_path / 'model_epoch_50')
    images = np.random.default_rng(4).integers(0, 256, (40, 32, 32), dtype=np.uint8)
    names = ['character_01_ka', 'digit_0', 'ga', 'ka'] * 10  # 4 classes: the 2019 model is unconditional, any fit
    (tmp_path / 'held_out.csv').write_text('\n'.join(csv_lines(images, names)))
    evaluate.main(['-load_path', 'model_epoch_50', '-data', 'held_out.csv', '-k', '1', '-num_samples', '4'])
    out = capsys.readouterr().out
    assert 'Classifier: trained 10 epochs on 34 images, ' in out and 'built-in' not in out
    assert ("model_epoch_50 records no training data: its samples are scored by the classifier of the -data file's "
            "own 4 classes.") in out
    assert re.search(r'Sample quality, by a CNN trained on the training split of csv held_out.csv \(\d+\.\d% '
                     r'right on the test split\):\n.* real test\n', out)
    assert re.search(r'classes present\s+\d/4\s+\d/4', out) and list(Path('data/.cache').glob('classifier-*.pt'))
    assert ': 40 images, 3072 dimensions each (3 channels of one grey image)' in out
    channels, elbo, kl = per_channel(out)
    assert len(channels) == 3 and sum(channels) == pytest.approx(elbo + 2 * kl, abs=0.05)  # each has the whole KL


@pytest.mark.slow
@pytest.mark.parametrize('data, skipped', [
    ([], "model_epoch_50 records no training data (the 2019 code's files do not), so no classifier of its classes "
         "is known; give a labelled file of them with -data PATH."),
    (['-data', 'one_class.csv'], 'csv one_class.csv has no class labels for a classifier to learn; sample scores '
                                 'need them.')], ids=['without -data', 'one-class file'])
def test_a_2019_checkpoint_gets_no_sample_scores_without_labelled_data(tmp_path, monkeypatch, capsys, data, skipped):
    """Without -data, a file that records no data is scored on data/ as it stands (the 2019 code's
    default), but no classifier of other data scores its samples; nor is there one for a file with one class."""
    monkeypatch.chdir(write_tiny_csv(tmp_path))
    original_checkpoint(tmp_path / 'model_epoch_50')
    images = np.random.default_rng(5).integers(0, 256, (12, 32, 32), dtype=np.uint8)
    (tmp_path / 'one_class.csv').write_text('\n'.join(csv_lines(images, ['character_01_ka'] * 12)))
    evaluate.main(['-load_path', 'model_epoch_50', *data, '-k', '1', '-num_samples', '4'])
    out = capsys.readouterr().out
    assert out.strip().endswith(f'\nSample quality: skipped, {skipped}')
    assert 'Classifier' not in out and 'recognisable' not in out and len(per_channel(out)[0]) == 3
