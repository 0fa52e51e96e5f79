"""Measure what a DRAW checkpoint learned, on the test split of its own data, or on every image of
a held-out file or folder (-data, any format the loader reads):
    python evaluate.py -load_path checkpoint/model_final [-data PATH] [-k 50] [-num_samples 1000] [-weights trained]
prints the negative ELBO in nats per image (reconstruction + KL, and the KL of every glimpse), the
importance-weighted bound with K samples (Burda et al. 2015, closer to -log p(x)), bits per
dimension, and sample-quality scores from a small CNN trained on the checkpoint's own training split
(classifier.py), with the scored images as the real-image ceiling; writes kl_per_glimpse.png.
"""
import argparse
import math
from pathlib import Path

import torch

import classifier
import train
import utils
from dataloader import listing, load_file, load_trained, model_inputs, plural


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(*utils.flag('load_path'), required=True, help='checkpoint file, e.g. checkpoint/model_final')
    parser.add_argument(*utils.flag('data'),
                        help="a held-out dataset to score, every image in it (file or folder, any format "
                             "the loader reads; default: the checkpoint's own test split)")
    parser.add_argument(*utils.flag('k'), type=int, default=50,
                        help='importance samples per image for the IWAE bound (default 50)')
    parser.add_argument(*utils.flag('num_samples'), type=int, default=1000,
                        help='generated samples scored by the classifier (default 1000; 0 skips the scores)')
    parser.add_argument(*utils.flag('out_dir'), default='images',
                        help='folder for kl_per_glimpse.png (default images/)')
    parser.add_argument(*utils.flag('seed'), type=int, default=0,
                        help='seed of the posterior and prior samples (default 0)')
    parser.add_argument(*utils.flag('weights'), choices=('average', 'trained'), default='average',
                        help="average: the checkpoint's model, the weights' moving average where training kept "
                             "one (ema > 0); trained: the last weights Adam trained (default average)")
    parser.add_argument(*utils.flag('device'), default='auto', help='auto (CUDA when available), cpu or cuda')
    args = parser.parse_args(argv)
    if args.k <= 0:
        parser.error(f'-k must be a positive number of samples, not {args.k}')
    if args.num_samples < 0:
        parser.error(f'-num_samples must be 0 or more, not {args.num_samples}')
    if not 0 <= args.seed < 2 ** 63:
        parser.error(f'-seed must be an integer from 0 to 2**63 - 1, not {args.seed}')
    return args


@torch.no_grad()
def log_weights(model, x, y):
    """One posterior sample z ~ q(z | x) per image: log p(x | z) + log p(z) - log q(z | x), (n,), with
    the ELBO's terms, the reconstruction (n,) and the KL of each glimpse (T, n)."""
    recon, kl, (mu, log_sigma, z) = model.elbo_terms(x, y)
    eps = (z - mu) / torch.exp(log_sigma)
    log_q_over_p = (-log_sigma - eps ** 2 / 2 + z ** 2 / 2).sum((0, 2))  # log N(z; mu, sigma) - log N(z; 0, 1)
    return -recon - log_q_over_p, recon, kl


def bounds(model, x, y, k, batch_size=2048):
    """On images x (labels y): the ELBO's terms averaged over k posterior samples per image, and the
    k-sample importance-weighted bound -log (1/k sum_i w_i), all in nats per image."""
    per_batch = max(1, batch_size // k)
    iwae, recon, kl = 0.0, 0.0, 0.0
    for i in range(0, len(x), per_batch):
        xb = x[i:i + per_batch].repeat_interleave(k, dim=0)
        yb = None if y is None else y[i:i + per_batch].repeat_interleave(k, dim=0)
        log_w, r, kl_t = log_weights(model, xb, yb)
        iwae -= (torch.logsumexp(log_w.view(-1, k), dim=1) - math.log(k)).sum().item()
        recon += r.sum().item() / k
        kl = kl + kl_t.sum(1) / k
    kl = kl / len(x)
    return {'iwae': iwae / len(x), 'recon': recon / len(x), 'kl': kl.sum().item(), 'kl_t': kl.tolist(),
            'elbo': recon / len(x) + kl.sum().item()}


def scored_images(own, params, classes, conditional, path):
    """(uint8 images, labels matched to the checkpoint's classes, -1 where none, a description): the
    test split of own, the checkpoint's own data, or every image at path. A conditional model needs
    its classes: images of others are left out, and said so."""
    if path is None:
        return own.test_x, own.test_y, f"the test split of {own.name}"
    x, y, name, unmatched = load_file(params, classes, path)
    if unmatched and classes:  # 2019 checkpoints name no classes
        left = f"{(y < 0).sum()} images left out" if conditional else "scored, but not by class"
        print(f"{path}: {plural(len(unmatched), 'class')} not the model's ({listing(unmatched)}): {left}.")
    if conditional:
        if (y < 0).all():
            raise utils.InputError(f"{path}: none of its classes is one the conditional model was trained on "
                                   f"({', '.join(classes[:6])}...).")
        x, y = x[y >= 0], y[y >= 0]
    return x, y, f"every image of {name}"


def sample_quality(model, own, params, record, x, y, args, device):
    """The classifier's lines for samples and for the real images x (model inputs, labels y), with
    the classifier of own, the checkpoint's own data (loaded here from its record when None)."""
    try:
        own = own if own is not None else load_trained(params, record, args.load_path, log=lambda _: None)
    except utils.InputError as e:
        return [f"Sample quality: skipped, the checkpoint's training data is needed for its classifier ({e})"]
    if len(own.classes) < 2:
        return [f"Sample quality: skipped, {own.name} has no class labels for a classifier to learn."]
    clf, accuracy = classifier.of_data(own, (own.train_x.to(device), own.train_y.to(device)),
                                       (model_inputs(own.test_x, params).to(device), own.test_y.to(device)), params)
    generator = torch.Generator(device).manual_seed(args.seed)
    lines = classifier.score_lines(classifier.sample_scores(model, clf, x, args.num_samples, generator), own.classes,
                                   accuracy, 'real test' if args.data is None else 'real (file)')
    if args.data is not None and (y >= 0).any():
        right = (classifier.apply(clf, x[y >= 0]).argmax(1) == y[y >= 0]).double().mean().item()
        lines.append(f"  the classifier is {100 * right:.1f}% right on the file's {int((y >= 0).sum())} images "
                     f"of its classes")
    return lines


def main(argv=None):
    args = parse_args(argv)
    device = utils.pick_device(args.device, '-device {}')
    model, params, ckpt = utils.load_model(args.load_path, device,
                                           'training_model' if args.weights == 'trained' else 'model')
    out = utils.writable_dir(args.out_dir, '-out_dir')  # before any work
    params = {**train.params, **params}  # 2019 checkpoints name no data settings: the defaults
    # the checkpoint's own data; with -data it is needed only for the classifier, loaded there
    own = load_trained(params, ckpt.get('data'), args.load_path) if args.data is None else None
    x, y, where = scored_images(own, params, ckpt.get('classes') or [], bool(model.num_classes), args.data)
    if len(x) == 0:
        raise utils.InputError(f"{where}: no images; nothing to evaluate.")
    x, y = model_inputs(x, params).to(device), y.to(device)
    torch.manual_seed(args.seed)
    found = bounds(model, x, y if model.num_classes else None, args.k)
    dims = x[0].numel()
    print(f"{args.load_path} on {where}: {len(x)} images, {dims} dimensions each")
    print(f"  negative ELBO      {found['elbo']:8.2f} nats per image (reconstruction {found['recon']:.2f} "
          f"+ KL {found['kl']:.2f}), averaged over {args.k} posterior samples")
    print(f"  IWAE bound, k={args.k:<4}{found['iwae']:8.2f} nats per image (an upper bound on -log p(x), "
          + ("tighter than the ELBO)" if args.k > 1 else "with k=1 the ELBO itself; k > 1 tightens it)"))
    print(f"  bits per dimension {found['elbo'] / dims / math.log(2):8.4f} (ELBO), "
          f"{found['iwae'] / dims / math.log(2):.4f} (IWAE)")
    print("  KL per glimpse     " + ' '.join(f'{v:.1f}' for v in found['kl_t']))
    path = out / 'kl_per_glimpse.png'
    utils.plot_kl(path, found['kl_t'], f"{Path(args.load_path).name}: KL per glimpse, {found['kl']:.1f} nats in all")
    print(f"  wrote {path}")
    if args.num_samples:
        print('\n'.join(sample_quality(model, own, params, ckpt.get('data'), x, y, args, device)))


if __name__ == '__main__':
    utils.run(main)
