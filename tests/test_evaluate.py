"""evaluate.py: its bounds against a likelihood computed by quadrature, the Fréchet distance against
its closed form, and the script end to end."""
import contextlib
import io
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import classifier
import formats
import evaluate
import train
from conftest import TINY, csv_lines, heads, original_checkpoint, run, shared, write_tiny_csv
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


def test_evaluate_prints_every_number_and_the_kl_plot_and_compare_plots_it(trained):
    work, train_out = trained
    out = run('evaluate.py', '-load_path', 'checkpoint/model_final', '-k', '4', '-num_samples', '6', cwd=work)
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
    minutes, seconds = map(int, re.search(r'Saved \S+, (\d+):(\d\d) after the start', train_out).groups())
    (work / 'run').mkdir(exist_ok=True)
    (work / 'run' / 'train.log').write_text(train_out)
    (work / 'run' / 'eval.log').write_text(out.stdout)
    plotted = run('compare.py', '-scores', 'tiny=run,run', '-out', 'scores.png', cwd=work)
    assert plotted.returncode == 0 and (work / 'scores.png').is_file(), plotted.stderr
    assert f"tiny: {share:.1f}% at {minutes + seconds / 60:.1f} min, {share:.1f}%" in plotted.stdout
    plotted = run('compare.py', 'tiny=run/train.log', '-out', 'bounds.png', cwd=work)
    assert plotted.returncode == 0 and 'tiny: ' in plotted.stdout and '(2 epochs)' in plotted.stdout
    missing = run('compare.py', '-scores', 'tiny=run,checkpoint', cwd=work)
    assert missing.returncode != 0 and 'checkpoint/train.log: cannot read it' in missing.stderr


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


def test_evaluate_refuses_bad_flags(trained, tmp_path):
    work, _ = trained
    for flags, message in ((['-k', '0'], '-k must be a positive'), (['-data', str(tmp_path / 'none.csv')], 'none.csv')):
        out = run('evaluate.py', '-load_path', 'checkpoint/model_final', *flags, cwd=work)
        assert out.returncode == 2 and message in out.stderr and 'Traceback' not in out.stderr


def test_without_data_the_checkpoint_is_scored_on_the_data_it_learned(trained, tmp_path):
    """The checkpoint records its data (source, absolute path, fingerprint): evaluate.py finds it from
    any folder, and refuses, naming both, when what is there now is other data."""
    work, _ = trained
    record = torch.load(work / 'checkpoint' / 'model_final', weights_only=True)['data']
    assert record['dataset'] == 'csv' and record['data_path'] == str(work / 'data') and record['fingerprint']
    elsewhere = run('evaluate.py', '--load_path', str(work / 'checkpoint' / 'model_final'), '--k', '1',
                    '--num_samples', '0', '--out_dir', str(tmp_path), cwd=tmp_path)  # no data/ here
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert f"on the test split of csv {work / 'data' / 'data.csv'}: 6 images" in elsewhere.stdout
    assert 'with k=1 the ELBO itself' in elsewhere.stdout
    ckpt = torch.load(work / 'checkpoint' / 'model_final', weights_only=True)
    for change, message in (({'fingerprint': '0123456789abcdef'}, 'but what is found there now differs'),
                            ({'data_path': str(tmp_path / 'moved')}, 'which cannot be read now')):
        torch.save({**ckpt, 'data': {**record, **change}}, tmp_path / 'other')
        for script in ('evaluate.py', 'generate.py'):
            flags = ['-reconstruct'] if script == 'generate.py' else ['-k', '1']
            out = run(script, '-load_path', str(tmp_path / 'other'), *flags, '-out_dir', str(tmp_path), cwd=work)
            assert out.returncode == 2 and message in out.stderr and 'Traceback' not in out.stderr
            assert f"{tmp_path / 'other'} learned csv" in out.stderr
            assert out.stderr.strip().endswith('Give the data to use with -data PATH.')


def test_a_builtin_model_is_not_scored_on_a_csv_put_in_data_later(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, 'BUILTIN_PER_CLASS', (2, 1))
    monkeypatch.chdir(tmp_path)
    train.main([*TINY, 'epoch_num=1', 'cache_dir=cache'])  # data/ absent: the built-in set
    write_tiny_csv(tmp_path)  # the user adds data.csv afterwards
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        evaluate.main(['-load_path', 'checkpoint/model_final', '-k', '1', '-num_samples', '0'])
    assert 'on the test split of built-in rendered Devanagari: 46 images' in out.getvalue()


def per_channel(out):
    """The per-channel ELBOs evaluate.py printed, with its negative ELBO and KL."""
    elbo, kl = map(float, re.search(r'negative ELBO\s+(\S+) nats .* \+ KL (\S+)\)', out).groups())
    return [float(v) for v in re.search(r'per channel\s+ELBO ([\d. ]+),', out).group(1).split()], elbo, kl


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
