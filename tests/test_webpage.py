"""The web page (webpage.py, web/): its JavaScript against PyTorch in headless Chromium (tools/webcheck.py),
on the weights the page holds and the same injected noise; the drawing pad driven by a scripted stroke;
class names that are HTML or script shown as text; and generate.py's -html and -reconstruct -as and
tools/webcheck.py as a user runs them."""
import json
import re

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import checkpoints
import generate
import utils
import webpage
from conftest import TINY, original_checkpoint, run, tool
from draw_model import DRAWModel
from train import params as DEFAULTS

TINY_PARAMS = {**DEFAULTS, **{k: int(v) for k, v in (a.split('=') for a in TINY)}}
webcheck = tool('webcheck')

# class names as a CSV's character column or a folder could hold them: HTML that runs script, the
# template's placeholders, text that would end or comment out the page's script elements, JavaScript's
# line ends; then Devanagari, as a name and (the last class) as a glyph
HOSTILE = ['<img src=x onerror="window.injected = true">', '{{PAGE_JS}}', '<!--<script>',
           '</script><script>window.injected = true</script>', 'line\u2028end\u2029', 'क', 'character_01_ka']
HOSTILE_GLYPHS = [''] * 6 + ['क']


@pytest.fixture
def browser():
    try:
        return webcheck.find_browser()
    except utils.InputError as e:
        pytest.skip(f'{e} (.ci/run installs Debian\'s chromium)')


def random_model(classes=('character_01_ka', 'character_02_kha', 'digit_7'), glyphs=('क', 'ख', '७'), **changes):
    """A tiny model with weights far enough from their initialisation that every term matters; classes
    and their glyphs for a conditional one."""
    torch.manual_seed(0)
    p = {**TINY_PARAMS, 'T': 5, **changes}
    classes, glyphs = (list(classes), list(glyphs)) if p['conditional'] else ([], [])
    model = DRAWModel(p, len(classes)).eval()
    with torch.no_grad():
        for v in model.parameters():
            v.add_(0.3 * torch.randn_like(v))
    return model, {'params': p, 'classes': classes, 'glyphs': glyphs}


def checkpoint(case, request, tmp_path):
    """(model, checkpoint dict) of a case: a trained tiny run's file, a random model, a 2019 file."""
    if case in ('trained', 'trained_conditional'):
        work = request.getfixturevalue(case)
        work = work[0] if isinstance(work, tuple) else work
        model, _, ckpt = checkpoints.load_model(work / 'checkpoint' / 'model_final', torch.device('cpu'))
        return model, ckpt
    if case == '2019':
        original_checkpoint(tmp_path / 'model_epoch_50')
        model, _, ckpt = checkpoints.load_model(tmp_path / 'model_epoch_50', torch.device('cpu'))
        return model, ckpt
    return random_model(**case)


@pytest.mark.slow
@pytest.mark.parametrize('case, dtype', [('trained', 'fp16'), ('trained_conditional', 'fp16'),
                                         ({'read_attn': False, 'write_attn': False}, 'fp16'),
                                         ({'conditional': True, 'channel': 3}, 'fp32'), ('2019', 'fp16')],
                         ids=['trained', 'conditional', 'no-attention', 'rgb-conditional-fp32', '2019-file'])
def test_the_page_draws_what_pytorch_draws(browser, request, tmp_path, case, dtype):
    """A sample, a redrawing and the redrawing's z decoded as another class: every glimpse's canvas
    within 1e-3 of PyTorch's (they agree to ~1e-6: the page computes in float64 on the same weights)."""
    model, ckpt = checkpoint(case, request, tmp_path)
    found = webcheck.check(model, ckpt, webpage.page_html(model, ckpt, 'test', dtype), dtype, repeats=1)
    assert max(found['sample'], found['redraw'], found['transfer']) < 1e-3, found
    assert found['elbo'][0] == pytest.approx(found['elbo'][1], rel=1e-5, abs=1e-3)


def test_fp16_weights_are_the_ones_pytorch_is_checked_with():
    """The page's fp16 weights are the model's rounded to fp16: what as_page_computes loads."""
    model, _ = random_model()
    rounded = webpage.as_page_computes(model, 'fp16')
    for name, v in model.state_dict().items():
        assert torch.equal(rounded.state_dict()[name], v.half().float()), name
    assert not torch.equal(rounded.fc_write.weight, model.fc_write.weight)


@pytest.mark.slow
def test_every_fp16_value_decodes_as_numpy_decodes_it(browser):
    model, ckpt = random_model()
    page = webcheck.in_browser(webpage.page_html(model, ckpt, 'test'),
                               "return Array.from({length: 65536}, (_, h) => String(DRAW.halfToFloat(h)));")
    expected = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float64)
    np.testing.assert_array_equal(np.array([float(v) for v in page]), expected)


def line(a, b, n=12):
    """A stroke from a to b, points in [0, 1] of the pad."""
    return [[a[0] + (b[0] - a[0]) * k / n, a[1] + (b[1] - a[1]) * k / n] for k in range(n + 1)]


@pytest.mark.slow
def test_the_drawing_pad_is_read_and_redrawn_as_pytorch_does(browser):
    """Scripted strokes on the pad (pointer events, as a mouse or a finger sends them): the image the
    page reads has the stroke; its redrawing, -ELBO and guessed class (the lowest -ELBO) are PyTorch's
    for that image and noise; every other class's redrawing is shown."""
    model, ckpt = random_model(conditional=True)
    noise = torch.randn(model.T, 1, model.z_size, generator=torch.Generator().manual_seed(1))
    page = webcheck.in_browser(webpage.page_html(model, ckpt, 'test'), f"""
      drawPage.noise = {json.dumps(noise[:, 0].tolist())};
      {json.dumps([line([0.15, 0.25], [0.85, 0.25]), line([0.55, 0.25], [0.55, 0.85])])}.forEach(drawPage.stroke);
      const last = drawPage.last;
      return {{x: last.x, label: last.label, elbo: last.elbo, canvases: last.canvases.map((c) => Array.from(c)),
               others: document.querySelectorAll('#others canvas').length,
               status: document.getElementById('pad-status').textContent}};""")
    x = torch.tensor(page['x'], dtype=torch.float32).view(1, model.C, model.B, model.A)
    assert x[0, 0, 8, 6:26].min() > 0.5 and x[0, 0, 10:26, 17].min() > 0.5  # the bar and the stem
    assert x[0, 0, 30:].max() == 0 and x[0, 0, :, :3].max() == 0  # nothing below them or left of them
    ref = webpage.as_page_computes(model, 'fp16')
    with torch.no_grad():
        elbos = [sum(t.sum() for t in ref.elbo_terms(x, torch.tensor([k]), noise=noise)[:2]).item() for k in range(3)]
        canvases = torch.sigmoid(ref(x, torch.tensor([page['label']]), noise=noise)[0][:, 0])
    assert page['label'] == int(np.argmin(elbos)) and page['elbo'] == pytest.approx(min(elbos), rel=1e-5)
    assert webcheck.max_difference(page['canvases'], canvases) < 1e-3
    assert page['others'] == 2 and f"{page['elbo']:.1f} nats" in page['status']


def test_decoding_the_posterior_z_with_its_own_label_redraws_the_image():
    """What -as and the page's other characters build on: generate(zs=z of forward) is forward's decoder."""
    model, _ = random_model(conditional=True)
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        logits, _, _, zs = model(x, y)
        assert torch.allclose(model.generate(4, y, zs=zs), torch.sigmoid(logits), atol=1e-6)
        assert not torch.allclose(model.generate(4, (y + 1) % 3, zs=zs)[-1], torch.sigmoid(logits[-1]), atol=1e-3)


def test_class_names_are_in_the_page_only_as_escaped_json():
    """Each placeholder of the template is filled once, with no class name read as one; the names are in
    the model's JSON alone, with no '<', '>', '&', U+2028 or U+2029 as such; the title (the file's name)
    is escaped as HTML."""
    model, ckpt = random_model(classes=HOSTILE, glyphs=HOSTILE_GLYPHS, conditional=True)
    html = webpage.page_html(model, ckpt, 'runs/<b>&')
    draw_js, page_js = ((webpage.WEB / name).read_text(encoding='utf-8') for name in ('draw.js', 'page.js'))
    assert html.count(page_js) == 1 and html.count(draw_js) == 1
    opening = '<script type="application/json" id="model">'
    head, rest = html.split(opening)
    data, tail = rest.split('</script>', 1)
    template = (webpage.WEB / 'page.html').read_text(encoding='utf-8')
    assert f'{head}{opening}{{{{MODEL}}}}</script>{tail}' == (
        template.replace('{{TITLE}}', '&lt;b&gt;&amp;').replace('{{DRAW_JS}}', draw_js).replace('{{PAGE_JS}}', page_js))
    assert not set('<>&\u2028\u2029') & set(data)
    about = json.loads(data)['about']
    assert about['classes'] == HOSTILE and about['title'] == '<b>&'


def test_a_placeholder_without_a_value_is_an_error():
    with pytest.raises(ValueError, match=re.escape("the page's template holds {{LOGO}}, but only TITLE are filled")):
        webpage.filled('<title>{{TITLE}}</title>{{LOGO}}', {'TITLE': 'DRAW'})


@pytest.mark.slow
def test_class_names_are_shown_as_text_and_never_run(browser):
    """A page whose class names are HTML, script and placeholders, driven by a stroke read as the class
    named by an img tag: no script of theirs runs (the img's onerror would set window.injected), every
    name is shown as written, and the only images are the glyphs' data: URLs."""
    model, ckpt = random_model(classes=HOSTILE, glyphs=HOSTILE_GLYPHS, conditional=True)
    page = webcheck.in_browser(webpage.page_html(model, ckpt, 'test'), f"""
      document.getElementById('wrote').value = '0';
      drawPage.stroke({json.dumps(line([0.2, 0.3], [0.8, 0.7]))});
      const texts = (found) => Array.from(found, (e) => e.textContent);
      return new Promise((resolve) => setTimeout(() => resolve({{injected: window.injected === true,
        buttons: texts(document.querySelectorAll('#sample-classes button')),
        options: texts(document.getElementById('wrote').options).slice(1),
        others: texts(document.querySelectorAll('#others figure')),
        status: document.getElementById('pad-status').textContent,
        images: Array.from(document.images, (img) => [img.src.slice(0, 22), img.alt])}}), 1000));""",
                               '--virtual-time-budget=5000')
    assert not page['injected']
    names = HOSTILE[:-1] + ['ka']  # as the page names them: the glyph's class by its last part
    assert page['buttons'] == HOSTILE[:-1] + [''] and page['options'] == names and page['others'] == page['buttons'][1:]
    assert f'as {HOSTILE[0]} · ' in page['status']
    assert page['images'] == 2 * [['data:image/png;base64,', 'character_01_ka']]  # a button's, a redrawing's


@pytest.mark.slow
def test_generate_html_writes_a_page_that_needs_no_network(browser, trained, tmp_path):
    work, _ = trained
    path = tmp_path / 'pages' / 'draw.html'
    out = run('generate.py', '-load_path', 'checkpoint/model_final', '-html', str(path), cwd=work)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f'Wrote {path} (') and 'the weights in fp16' in out.stdout
    html = path.read_text()
    assert '://' not in html and not re.search(r'(src|href)=["\']//', html)  # no URL: images are data: URLs
    status = webcheck.in_browser(html, "return document.getElementById('sample-status').textContent;")
    assert status.startswith('glimpse 1 of 3')


@pytest.mark.slow
def test_bad_html_requests_get_one_line(trained, tmp_path, capsys):
    """A checkpoint that cannot be exported and a path that cannot be written: one line each, nothing
    written; the first as a user sees it, the rest from generate.main."""
    work, _ = trained
    ckpt = str(work / 'checkpoint' / 'model_final')
    bad = torch.load(ckpt, weights_only=True)
    bad['model']['fc_write.weight'][0, 0] = float('nan')
    torch.save(bad, tmp_path / 'nan')
    out = run('generate.py', '-load_path', str(tmp_path / 'nan'), '-html', str(tmp_path / 'p.html'), cwd=work)
    assert out.returncode == 2 and out.stderr == (f"error: {tmp_path / 'nan'}: fc_write.weight holds non-finite "
                                                  f"weights (NaN or inf); a page cannot draw with them. Export an "
                                                  f"earlier checkpoint.\n")
    bad['model']['fc_write.weight'][0, 0] = 1e6
    torch.save(bad, tmp_path / 'huge')
    (tmp_path / 'a_file').write_text('')
    huge = f"{tmp_path / 'huge'}: fc_write.weight holds weights beyond fp16's range (|w| up to 1e+06); write the page "
    for flags, message in [(['-load_path', str(tmp_path / 'huge')], huge + "with -html_dtype fp32."),
                           (['-load_path', ckpt, '-html', str(tmp_path)], f'-html {tmp_path} is a folder; give the '
                                                                         f"page's file name"),
                           (['-load_path', ckpt, '-html', str(tmp_path / 'a_file' / 'p.html')],
                            f"-html {tmp_path / 'a_file'}: cannot write there")]:
        with pytest.raises(utils.InputError, match=re.escape(message)):
            generate.main(['-html', str(tmp_path / 'p.html'), *flags])
    assert not (tmp_path / 'p.html').exists()
    generate.main(['-load_path', str(tmp_path / 'huge'), '-html', str(tmp_path / 'p.html'), '-html_dtype', 'fp32'])
    assert 'the weights in fp32' in capsys.readouterr().out and (tmp_path / 'p.html').is_file()


@pytest.mark.slow
def test_reconstruct_as_redraws_each_image_as_each_class(trained_conditional, trained, tmp_path, capsys):
    out = run('generate.py', '-load_path', 'checkpoint/model_final', '-reconstruct', '-as', 'ka,digit_0',
              '-num_output', '5', '-out_dir', str(tmp_path), cwd=trained_conditional)
    assert out.returncode == 0, out.stderr
    assert 'each row a real image, then it redrawn as character_01_ka, digit_0.' in out.stdout
    assert re.search(r'Of the 5 redrawn as another class than their own, \d+\.\d% are recognised as the class asked',
                     out.stdout)  # of 5 images of 2 classes, each redrawn as both classes
    png = iio.imread(tmp_path / 'Transfer.png')
    assert png.shape[0] == 2 * (5 * 34 + 2) and png.shape[1] > 2 * (3 * 34 + 2)  # 5 rows: image, as 2 classes
    for work, flags, message in [(trained_conditional, ['-as', 'zha'], "-as: unknown class 'zha'"),
                                 (trained[0], ['-as', 'ka'], 'is an unconditional model (trained without '
                                                             'conditional=True); only a class-conditional model')]:
        with pytest.raises(utils.InputError, match=re.escape(message)):
            generate.main(['-load_path', str(work / 'checkpoint' / 'model_final'), '-reconstruct', *flags,
                           '-out_dir', str(tmp_path)])
    with pytest.raises(SystemExit):
        generate.parse_args(['-load_path', 'x', '-as', 'ka'])
    assert '-as redraws real images as other classes: use it with -reconstruct' in capsys.readouterr().err


@pytest.mark.slow
def test_webcheck_checks_a_checkpoint_and_writes_a_screenshot(browser, trained, tmp_path):
    work, _ = trained
    png = tmp_path / 'shots' / 'page.png'
    png.parent.mkdir()
    out = run('tools/webcheck.py', '-load_path', 'checkpoint/model_final', '-repeats', '2', '-screenshot', str(png),
              cwd=work)
    assert out.returncode == 0, out.stderr
    assert re.search(r'the largest difference of any pixel of any glimpse\'s canvas\n  sample \d\.\de-\d\d', out.stdout)
    assert out.stdout.endswith(f'Wrote {png}: the page after writing क on its pad.\n')
    assert iio.imread(png).shape[:2] == (1250, 1000)
