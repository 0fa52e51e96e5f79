"""The web page (webpage.py, web/) checked against PyTorch, and timed, in headless Chromium; a tool for
developers, run from the repository root:
    python tools/webcheck.py -load_path checkpoint/model_final [-screenshot images/webpage.png]
writes the checkpoint's page as generate.py -html does, runs its JavaScript on the weights it holds with
injected noise, and prints the largest difference from PyTorch's canvases and the page's time per
sample; -screenshot PNG also saves the page after a character is written on its pad.
"""
import argparse
import base64
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: webpage, utils, ...
import checkpoints  # noqa: E402
import config  # noqa: E402
import utils  # noqa: E402
import webpage  # noqa: E402

BROWSERS = ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable')


# क, roughly, as strokes on the pad ([x, y] in [0, 1]): its headline, its stem, the loop on the left and
# the curl on the right; what -screenshot writes
KA = [[[0.14, 0.24], [0.86, 0.24]], [[0.56, 0.24], [0.56, 0.86]],
      [[0.56, 0.5]] + [[0.42 + 0.13 * math.cos(a / 8 * math.pi), 0.52 - 0.12 * math.sin(a / 8 * math.pi)]
                       for a in range(1, 17)] + [[0.56, 0.54]],
      [[0.66 + 0.1 * math.cos(a / 8 * math.pi), 0.55 - 0.1 * math.sin(a / 8 * math.pi)] for a in range(8, -6, -1)]]


# -- headless Chromium: the page's own JavaScript run on the page's own weights --------------------
def find_browser():
    """The path of a Chromium-family browser, or an InputError saying how to install one."""
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    raise utils.InputError(f"no headless browser found ({', '.join(BROWSERS)}); install Chromium, e.g. "
                           f"apt-get install chromium, to run the page's checks.")


def browse(html, addition, *flags, timeout=300):
    """Headless Chromium on the page with addition (HTML) at the end of its body, with flags: the
    finished process."""
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / 'page.html'
        page.write_text(html.replace('</body>', addition + '</body>'), encoding='utf-8')
        return subprocess.run([find_browser(), '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
                               '--hide-scrollbars', f'--user-data-dir={folder}/profile', *flags, page.as_uri()],
                              capture_output=True, text=True, timeout=timeout)


def in_browser(html, script, *flags):
    """The value of script (JavaScript, the body of a function; the page's API in drawPage) run in the
    page, after the page's own scripts, in headless Chromium with flags; JSON round trip, as Python
    values. A Promise's value where script returns one that settles before the page is read (give
    '--virtual-time-budget=MS' for one that waits on timers)."""
    runner = ("<script>(async () => { let out; try { out = {value: await (async () => {" + script + "})()}; }"
              " catch (e) { out = {error: String(e.stack || e)}; }"
              " const pre = document.createElement('pre'); pre.id = 'test-result';"
              " const ascii = JSON.stringify(out).replace(/[\\u007f-\\uffff]/g,"
              " (ch) => '\\\\u' + ch.charCodeAt(0).toString(16).padStart(4, '0'));"
              " pre.textContent = btoa(ascii); document.body.appendChild(pre); })();</script>")
    done = browse(html, runner, '--dump-dom', *flags)
    found = done.stdout.split('<pre id="test-result">')
    if len(found) < 2:
        raise RuntimeError(f"the browser returned no result (exit status {done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")
    out = json.loads(base64.b64decode(found[1].split('</pre>')[0]))
    if 'error' in out:
        raise RuntimeError(f"the page's script failed: {out['error']}")
    return out['value']


def screenshot(html, strokes, path, size=(1000, 1250)):
    """A PNG of the page after strokes (lists of [x, y] in [0, 1]) on its pad, its first sample and the
    redrawing animated to their last glimpse (in the browser's virtual time, at the default pace)."""
    done = browse(html, f"<script>{json.dumps(strokes)}.forEach(drawPage.stroke);</script>",
                  f'--window-size={size[0]},{size[1]}', '--virtual-time-budget=3500',
                  f'--screenshot={Path(path).resolve()}')
    if not Path(path).is_file():
        raise RuntimeError(f"the browser wrote no screenshot (exit status {done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")


# -- the page against PyTorch ----------------------------------------------------------------------
def max_difference(page, torch_canvases):
    """The largest |page - PyTorch| over every pixel of every glimpse's canvas (T, C*B*A)."""
    return float((torch.tensor(page, dtype=torch.float64) - torch_canvases.double().flatten(1)).abs().max())


def check(model, ckpt, html, dtype='fp16', seed=0, repeats=20):
    """The sample, redrawing and transfer of html (the page_html of model, ckpt and dtype) against
    PyTorch's for the weights the page holds and the same injected noise (the largest difference of any
    pixel of any glimpse's canvas, and both -ELBOs of the redrawing); the page's time per sample
    (median of repeats) and to decode its weights."""
    ref = webpage.as_page_computes(model, dtype)
    g = torch.Generator().manual_seed(seed)
    noise, eps = torch.randn(2, ref.T, 1, ref.z_size, generator=g)
    label = torch.tensor([0]) if ref.num_classes else None
    other = torch.tensor([ref.num_classes - 1]) if ref.num_classes else None
    with torch.no_grad():
        sample = ref.generate(1, label, zs=noise)[:, 0]  # (T, C, B, A)
        x = sample[-1:]  # the sample's last canvas: an image the model can read
        redraw, _, _, zs = ref(x, label, noise=eps)
        recon, kl, _ = ref.elbo_terms(x, label, noise=eps)
        transfer = ref.generate(1, other, zs=zs)[:, 0]
    js = {'noise': noise[:, 0].tolist(), 'eps': eps[:, 0].tolist(), 'label': None if label is None else int(label),
          'other': None if other is None else int(other)}
    page = in_browser(html, f"""
      const m = drawPage.model, j = {json.dumps(js)}, list = (canvases) => canvases.map((c) => Array.from(c));
      const sample = m.generate(j.label, j.noise);
      const redraw = m.encode(sample.canvases[m.T - 1], j.label, j.eps);
      const transfer = m.generate(j.other, redraw.zs);
      const ms = [];
      for (let k = 0; k <= {repeats}; k++) {{
        const t0 = performance.now();
        m.generate(j.label);
        ms.push(performance.now() - t0);
      }}
      return {{sample: list(sample.canvases), redraw: list(redraw.canvases), transfer: list(transfer.canvases),
               elbo: redraw.elbo, ms: ms.slice(1), loadMs: drawPage.loadMs, browser: navigator.userAgent}};""")
    return {'sample': max_difference(page['sample'], sample),
            'redraw': max_difference(page['redraw'], torch.sigmoid(redraw[:, 0])),
            'transfer': max_difference(page['transfer'], transfer),
            'elbo': (page['elbo'], (recon.sum() + kl.sum()).item()),
            'ms': statistics.median(page['ms']), 'load_ms': page['loadMs'], 'browser': page['browser']}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(*config.flag('load_path'), required=True, help='checkpoint file, e.g. checkpoint/model_final')
    parser.add_argument(*config.flag('html_dtype'), choices=tuple(webpage.DTYPES), default='fp16',
                        help="the weights' precision in the page (default fp16)")
    parser.add_argument(*config.flag('repeats'), type=int, default=20, help='samples timed in the page (default 20)')
    parser.add_argument(*config.flag('seed'), type=int, default=0, help='seed of the injected noise (default 0)')
    parser.add_argument(*config.flag('screenshot'), metavar='PNG',
                        help='also save a screenshot of the page with a character written on its pad')
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f'-repeats must be a positive number, not {args.repeats}')
    return args


def main(argv=None):
    args = parse_args(argv)
    model, _, ckpt = checkpoints.load_model(args.load_path, torch.device('cpu'))
    if args.screenshot:
        utils.writable_dir(Path(args.screenshot).parent, '-screenshot')  # before any work
    html = webpage.page_html(model, ckpt, args.load_path, args.html_dtype)
    found = check(model, ckpt, html, args.html_dtype, args.seed, args.repeats)
    weights = sum(v.numel() for v in model.state_dict().values())
    print(f"{args.load_path}: the page is {len(html.encode()) / 1e6:.2f} MB ({weights:,} weights in "
          f"{args.html_dtype}).\n"
          f"The page against PyTorch on the weights the page holds, with the same noise: the largest difference of "
          f"any pixel of any glimpse's canvas\n"
          f"  sample {found['sample']:.1e}, redrawing {found['redraw']:.1e}, redrawn as another class "
          f"{found['transfer']:.1e}; -ELBO of the redrawn image {found['elbo'][0]:.4f} (page) and "
          f"{found['elbo'][1]:.4f} (PyTorch) nats.\n"
          f"A {model.T}-glimpse sample in the page: {found['ms']:.1f} ms (median of {args.repeats}); the weights "
          f"decoded in {found['load_ms']:.0f} ms; in {found['browser']} on {cpu_name()}.")
    if args.screenshot:
        screenshot(html, KA, args.screenshot)
        print(f"Wrote {args.screenshot}: the page after writing क on its pad.")


def cpu_name(cpuinfo='/proc/cpuinfo'):
    """The CPU's model name, for the record of a timing."""
    try:
        return next(line.split(':', 1)[1].strip() for line in open(cpuinfo) if line.startswith('model name'))
    except (OSError, StopIteration):
        return 'an unnamed CPU'


if __name__ == '__main__':
    utils.run(main)
