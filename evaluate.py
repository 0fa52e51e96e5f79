"""Measure what a DRAW checkpoint learned, on the test split of its own data (found in data/, or given
with -data: a file whose fingerprint is the checkpoint's), or on every image of a held-out file or
folder (-data, any format the loader reads):
    python evaluate.py -load_path checkpoint/model_final [-data PATH] [-k 50] [-num_samples 1000]
                       [-weights trained] [-json eval.json]
prints the negative ELBO in nats per image (reconstruction + KL, and the KL of every glimpse), the
importance-weighted bound with K samples (Burda et al. 2015, closer to -log p(x)), bits per
dimension, for a model of several channels (one grey image repeated) both bounds of each channel
alone, and sample-quality scores from a small CNN (classifier.py) trained on the checkpoint's own
training split, with the scored images as the real-image ceiling; writes kl_per_glimpse.png and, with
-json, every number printed as one JSON object (shares as fractions; tools/compare.py reads it). A
checkpoint that records no data (the 2019 code's) is scored by the classifier of the -data file's
own classes, against its test split; without -data it gets no sample scores.
"""
import argparse
import json
import math
from pathlib import Path

import torch

import checkpoints
import classifier
import config
import figures
import train
import utils
from dataloader import (checked_record, every_image, listing, load_at, load_source, load_trained, model_inputs,
                        of_classes)
from utils import plural


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(*config.flag('load_path'), required=True, help='checkpoint file, e.g. checkpoint/model_final')
    parser.add_argument(*config.flag('data'),
                        help="a held-out dataset to score, every image in it (file or folder, any format "
                             "the loader reads; default: the checkpoint's own test split, its data looked for "
                             f"in {train.params['data_path']}/)")
    parser.add_argument(*config.flag('k'), type=int, default=50,
                        help='importance samples per image for the IWAE bound (default 50)')
    parser.add_argument(*config.flag('num_samples'), type=int, default=classifier.SCORED_SAMPLES,
                        help=f'generated samples scored by the classifier (default {classifier.SCORED_SAMPLES}; 0 skips the scores)')
    parser.add_argument(*config.flag('out_dir'), default='images',
                        help='folder for kl_per_glimpse.png (default images/)')
    parser.add_argument(*config.flag('json'), metavar='PATH',
                        help='also write every number printed to PATH, as one JSON object')
    parser.add_argument(*config.flag('seed'), type=int, default=0,
                        help='seed of the posterior and prior samples (default 0)')
    parser.add_argument(*config.flag('weights'), choices=('average', 'trained'), default='average',
                        help="average: the checkpoint's model, the weights' moving average where training kept "
                             "one (ema > 0); trained: the last weights Adam trained (default average)")
    parser.add_argument(*config.flag('device'), default='auto', help='auto (CUDA when available), cpu or cuda')
    args = parser.parse_args(argv)
    if args.k <= 0:
        parser.error(f'-k must be a positive number of samples, not {args.k}')
    if args.num_samples < 0:
        parser.error(f'-num_samples must be 0 or more, not {args.num_samples}')
    if not 0 <= args.seed < 2 ** 63:
        parser.error(f'-seed must be an integer from 0 to 2**63 - 1, not {args.seed}')
    if args.json is not None and Path(args.json).is_dir():
        parser.error(f'-json {args.json} is a folder; give the file to write, e.g. {Path(args.json) / "eval.json"}')
    return args


@torch.no_grad()
def log_weights(model, x, y):
    """One posterior sample z ~ q(z | x) per image: log p(x | z) + log p(z) - log q(z | x), of the
    whole image and of each of its C channels alone (the model's marginal of that channel), (n, 1 + C);
    with the ELBO's terms, the same reconstructions (n, 1 + C) and the KL of each glimpse (T, n)."""
    recon, kl, (mu, log_sigma, z) = model.elbo_terms(x, y)
    recon, kl = torch.cat((recon.sum(1, keepdim=True), recon), dim=1).double(), kl.double()
    eps = (z - mu) / torch.exp(log_sigma)
    log_q_over_p = (-log_sigma - eps ** 2 / 2 + z ** 2 / 2).sum((0, 2)).double()  # log N(z; mu, sigma) - log N(z; 0, 1)
    return -recon - log_q_over_p.unsqueeze(1), recon, kl


def bounds(model, x, y, k, batch_size=2048):
    """On images x (labels y): the ELBO's terms averaged over k posterior samples per image, and the
    k-sample importance-weighted bound -log (1/k sum_i w_i), all in nats per image; and both bounds
    of each channel alone, (ELBO, IWAE) per channel."""
    per_batch = max(1, batch_size // k)
    iwae, recon, kl = 0.0, 0.0, 0.0
    for i in range(0, len(x), per_batch):
        xb = x[i:i + per_batch].repeat_interleave(k, dim=0)
        yb = None if y is None else y[i:i + per_batch].repeat_interleave(k, dim=0)
        log_w, r, kl_t = log_weights(model, xb, yb)
        iwae = iwae - (torch.logsumexp(log_w.view(-1, k, log_w.shape[1]), dim=1) - math.log(k)).sum(0)
        recon = recon + r.sum(0) / k
        kl = kl + kl_t.sum(1) / k
    iwae, recon, kl = iwae / len(x), recon / len(x), kl / len(x)
    elbo = recon + kl.sum()
    return {'iwae': iwae[0].item(), 'recon': recon[0].item(), 'kl': kl.sum().item(), 'kl_t': kl.tolist(),
            'elbo': elbo[0].item(), 'channels': list(zip(elbo[1:].tolist(), iwae[1:].tolist()))}


def bits_per_dim(nats, x):
    """nats per image of images x (n, C, B, A) as bits per dimension."""
    return nats / x[0].numel() / math.log(2)


def bound_lines(found, k, title, x):
    """The bounds found on images x (n, C, B, A) as printed, under title; with C > 1 channels (one
    grey image repeated), each channel's bounds too, which compare with a one-channel model's."""
    dims, channels = x[0].numel(), x.shape[1]
    lines = [f"{title}: {len(x)} images, {dims} dimensions each"
             + (f" ({channels} channels of one grey image)" if channels > 1 else ''),
             f"  negative ELBO      {found['elbo']:8.2f} nats per image (reconstruction {found['recon']:.2f} "
             f"+ KL {found['kl']:.2f}), averaged over {k} posterior samples",
             f"  IWAE bound, k={k:<4}{found['iwae']:8.2f} nats per image (an upper bound on -log p(x), "
             + ("tighter than the ELBO)" if k > 1 else "with k=1 the ELBO itself; k > 1 tightens it)"),
             f"  bits per dimension {bits_per_dim(found['elbo'], x):8.4f} (ELBO), "
             f"{bits_per_dim(found['iwae'], x):.4f} (IWAE)",
             "  KL per glimpse     " + ' '.join(f'{v:.1f}' for v in found['kl_t'])]
    if channels > 1:
        elbo, iwae = (' '.join(f'{v:.2f}' for v in values) for values in zip(*found['channels']))
        lines.insert(3, f"  per channel        ELBO {elbo}, IWAE {iwae} nats per image (each channel alone: these "
                        f"compare with a one-channel model's)")
    return lines


def scored_images(own, source, classes, path):
    """(uint8 images, labels matched to the checkpoint's classes, -1 where none, a description): the
    test split of own, the checkpoint's own data, or every image of source, the -data file (for a
    conditional model, already narrowed to its classes)."""
    if source is None:
        return own.test_x, own.test_y, f"the test split of {own.name}"
    x, y, unmatched = every_image(source, classes)
    if unmatched and classes:  # 2019 checkpoints name no classes
        print(f"{path}: {plural(len(unmatched), 'class')} not the model's ({listing(unmatched)}): scored, but not "
              f"by class.")
    return x, y, f"every image of {source.name}"


def classifier_data(params, record, own, source, load_path):
    """(the data whose classifier scores the samples, lines that say whose it is where that needs
    saying): the checkpoint's own data (own, or loaded here from its record); for a checkpoint that
    records none (the 2019 code's), source, the -data file. An InputError says why there is none."""
    if record:
        try:
            return own if own is not None else load_trained(params, record, load_path, log=lambda _: None), []
        except utils.InputError as e:
            raise utils.InputError(f"the checkpoint's training data is needed for its classifier ({e})") from None
    if source is None:
        raise utils.InputError(f"{load_path} records no training data (the 2019 code's files do not), so no "
                               f"classifier of its classes is known; give a labelled file of them with -data PATH.")
    return source, [f"{load_path} records no training data: its samples are scored by the classifier of the -data "
                    f"file's own {plural(len(source.classes), 'class')}."]


def sample_quality(model, params, record, own, source, file, args, device):
    """The classifier's lines for samples and, as the ceiling, real images, and their numbers (none where
    skipped): with the classifier of the checkpoint's own data, the -data file's images (file: model
    inputs, labels) where given, else its test split; with the classifier of the -data file (a
    checkpoint that records no data), the file's test split, which the classifier did not learn."""
    held_out = bool(record) and source is not None  # the file's images: none of them trained the classifier
    try:
        data, lines = classifier_data(params, record, own, source, args.load_path)
        clf, accuracy, test = classifier.of_splits(data, params, device, log=lines.append)
        x, y = file if held_out else test
        if len(x) < 4:  # half of them are scored beside as many samples, half are the Frechet distance's reference
            raise utils.InputError(f"only {plural(len(x), 'real image')} to score the samples against; the scores "
                                   f"need 4 or more.")
    except utils.InputError as e:
        return [f"Sample quality: skipped, {e}"], {}
    generator = torch.Generator(device).manual_seed(args.seed)
    found = classifier.sample_scores(model, clf, x, args.num_samples, generator)
    trained_on = f'the training split of {data.name}'
    lines += classifier.score_lines(found, data.classes, accuracy, 'real (file)' if held_out else 'real test',
                                    trained_on)
    scores = {'classifier': {'trained_on': trained_on, 'accuracy': accuracy, 'classes': list(data.classes)},
              'real_images': 'the -data file' if held_out else 'the test split',
              **{key: {k: v for k, v in found[key].items() if k != 'predicted'} for key in ('samples', 'real')}}
    if 'per_class' in found:
        scores['per_class'] = dict(zip(data.classes, found['per_class']))
    if held_out and (y >= 0).any():
        right = (classifier.apply(clf, x[y >= 0]).argmax(1) == y[y >= 0]).double().mean().item()
        lines.append(f"  the classifier is {100 * right:.1f}% right on the file's {int((y >= 0).sum())} images "
                     f"of its classes")
        scores['file_right'] = right
    return lines, scores


def summary(found, args, x, where, scores):
    """What evaluate.py printed, as one JSON object: the bounds in nats per image (each channel's
    where there are several) and bits per dimension, and the sample scores where computed (shares as
    fractions)."""
    dims = x[0].numel()
    numbers = {'checkpoint': args.load_path, 'weights': args.weights, 'images': where, 'count': len(x),
               'dimensions': dims, 'k': args.k, 'negative_elbo': found['elbo'], 'reconstruction': found['recon'],
               'kl': found['kl'], 'iwae': found['iwae'], 'bits_per_dim': bits_per_dim(found['elbo'], x),
               'iwae_bits_per_dim': bits_per_dim(found['iwae'], x), 'kl_per_glimpse': found['kl_t']}
    if x.shape[1] > 1:
        numbers['per_channel'] = [{'negative_elbo': elbo, 'iwae': iwae} for elbo, iwae in found['channels']]
    return {**numbers, **scores}


def main(argv=None):
    args = parse_args(argv)
    device = utils.pick_device(args.device, '-device {}')
    model, params, ckpt = checkpoints.load_model(args.load_path, device,
                                           'training_model' if args.weights == 'trained' else 'model')
    out = utils.writable_dir(args.out_dir, '-out_dir')  # before any work
    json_path = args.json and utils.writable_dir(Path(args.json).parent, '-json') / Path(args.json).name
    params = checkpoints.with_user_paths(params, train.params)  # 2019 files name no data settings: the defaults
    classes = ckpt.get('classes') or []
    record = checked_record(ckpt.get('data'), args.load_path)
    own = load_at(params, record, args.data) if args.data else None  # -data may be the data it learned
    if own:
        print(f"{args.data} is the data {args.load_path} learned (its fingerprint {own.fingerprint}): scored on "
              f"its test split.")
    source = None if args.data is None or own else load_source(params, args.data)
    if source is not None and model.num_classes:
        source = of_classes(source, classes, args.data)
    # the checkpoint's own data; with a held-out -data it is needed only for the classifier, loaded there
    own = own or (load_trained(params, record, args.load_path) if source is None else None)
    x, y, where = scored_images(own, source, classes, args.data)
    if len(x) == 0:
        raise utils.InputError(f"{where}: no images; nothing to evaluate.")
    x, y = model_inputs(x, params).to(device), y.to(device)
    torch.manual_seed(args.seed)
    found = bounds(model, x, y if model.num_classes else None, args.k)
    print('\n'.join(bound_lines(found, args.k, f"{args.load_path} on {where}", x)))
    path = out / 'kl_per_glimpse.png'
    figures.plot_kl(path, found['kl_t'], f"{Path(args.load_path).name}: KL per glimpse, {found['kl']:.1f} nats in all")
    print(f"  wrote {path}")
    scores = {}
    if args.num_samples:
        lines, scores = sample_quality(model, params, record, own, source, (x, y), args, device)
        print('\n'.join(lines))
    if json_path:
        utils.write_atomic(json_path, (json.dumps(summary(found, args, x, where, scores), indent=1) + '\n').encode())
        print(f"wrote {json_path}")


if __name__ == '__main__':
    utils.run(main)
