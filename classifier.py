"""Sample quality where no likelihood comparison exists: a small CNN trained to recognise a
dataset's classes, and the scores it gives a set of images (generated samples, or real test images
for the ceiling). Beside the data's classes it learns one more, "no character": averages of several
images, heavy blurs, noise and flat fields, which is what a collapsed or unfinished model draws; a
classifier without it is confidently wrong on such images. The CNN is trained once per dataset and
cached beside the decoded data."""
import hashlib
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from dataloader import load_checked, model_inputs, save_checked
from utils import InputError

CONFIDENT = 0.9  # a sample counts as recognisable when the classifier gives one class this probability
SCORED_SAMPLES = 1000  # samples drawn and scored for the sample-quality lines (train.py, evaluate.py's default)
VERSION = 3  # of the training recipe, in the cache key: 2 added "no character", 3 softened images


class Classifier(nn.Module):
    """Three conv blocks and a 128-unit feature layer (the Fréchet distance's features); about
    5 MFLOP per 32x32 image, so it trains in a minute or two on a CPU. Its last output is the
    "no character" class."""

    def __init__(self, num_classes, size):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(64 * (size[0] // 8) * (size[1] // 8), 128)
        self.out = nn.Linear(128, num_classes + 1)
        self.dropout = nn.Dropout(0.3)

    def features(self, x):
        """(n, C, B, A) in [0, 1] (channels averaged) -> (n, 128)."""
        return F.relu(self.fc(self.conv(x.mean(1, keepdim=True)).flatten(1)))

    def forward(self, x):
        return self.out(self.dropout(self.features(x)))


@torch.no_grad()
def apply(fn, x, batch_size=500):
    """fn over x in batches, the results concatenated."""
    return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def blur(x, sigma):
    return gaussian_blur(x, 2 * math.ceil(3 * sigma) + 1, sigma)


def no_character(x, n):
    """n images (n, C, B, A) that show no character, made from real images x in [0, 1]: the mean
    of 3-32 of them (the average glyph a collapsed model draws, or strokes of several characters
    on top of each other), blurs with sigma 3-5 pixels, noise (uniform, sparse dots, blurred dots)
    and flat grey, a quarter each."""
    q, shape = -(-n // 4), (-(-n // 4),) + x.shape[1:]
    k = torch.randint(3, 33, (q, 1))
    weights = ((torch.arange(32) < k).float() / k).to(x.device)  # (q, 32): the first k of 32 drawn images
    means = torch.einsum('qk,qkcba->qcba', weights, x[torch.randint(len(x), (q, 32), device=x.device)])
    blurs = blur(x[torch.randint(len(x), (q,), device=x.device)], 3 + 2 * torch.rand(()).item())
    kind = torch.randint(3, (q, 1, 1, 1))
    dots = torch.bernoulli(torch.rand(q, 1, 1, 1) * 0.3 * torch.ones(shape))
    noise = torch.where(kind == 0, torch.rand(shape), torch.where(kind == 1, dots, (4 * blur(dots, 1.0)).clamp(max=1)))
    flat = (torch.rand(q, 1, 1, 1) * 0.6).expand(shape)
    return torch.cat((means, blurs, noise.to(x.device), flat.to(x.device)))[:n].clamp(0, 1)


def softened(x):
    """x with half of its images blurred a little (sigma 0.5-1.5 pixels) and dimmed (x 0.7-1): a
    model's images are Bernoulli means, softer than pen strokes, and still the character they show."""
    half = len(x) // 2
    dim = 0.7 + 0.3 * torch.rand(half, 1, 1, 1, device=x.device)
    return torch.cat((blur(x[:half], 0.5 + torch.rand(()).item()) * dim, x[half:]))


def train_classifier(train, test, num_classes, epochs=10, seed=0, log=print):
    """A Classifier fitted to train (images in [0, 1], labels; half of each batch softened) and, as
    class num_classes, to no_character images (a quarter as many), with its accuracy on test."""
    (x, y), device = train, train[0].device
    torch.manual_seed(seed)
    model = Classifier(num_classes, x.shape[-2:]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = epochs * math.ceil(len(x) / 128)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        for batch in torch.randperm(len(x), device=device).split(128):
            shift = torch.randint(-2, 3, (2,)).tolist()  # small translations: samples are rarely centred alike
            junk = no_character(x, len(batch) // 4)
            images = torch.cat((softened(x[batch]), junk)).roll(shift, dims=(2, 3))
            labels = torch.cat((y[batch], torch.full((len(junk),), num_classes, device=device)))
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    accuracy = (apply(model, test[0]).argmax(1) == test[1]).float().mean().item()
    log(f"Classifier: trained {epochs} epochs on {len(x)} images, {100 * accuracy:.1f}% right on {len(test[0])} "
        f"test images.")
    return model, accuracy


def of_data(data, train, test, p, log=print):
    """The classifier of this dataset (its name, classes and splits, train as uint8 images and labels,
    test as model inputs), trained on first use and cached in p['cache_dir']."""
    if len(data.classes) < 2:
        raise InputError(f"{data.name} has no class labels for a classifier to learn; sample scores need them.")
    train = model_inputs(train[0], p), train[1]
    model = Classifier(len(data.classes), train[0].shape[-2:]).to(train[0].device)
    key = hashlib.sha256(repr((VERSION, data.fingerprint or data.name, data.classes, tuple(train[0].shape),
                               tuple(test[0].shape), model, train[1].sum().item(),
                               float(train[0].sum()))).encode()).hexdigest()[:16]
    path = Path(p['cache_dir']) / f'classifier-{key}.pt'
    def restore(saved):
        model.load_state_dict(saved['model'])
        return model.eval(), float(saved['accuracy'])
    cached = load_checked(path, restore, 'training the classifier again', log)
    if cached:
        return cached
    model, accuracy = train_classifier(train, test, len(data.classes), log=log)
    save_checked({'model': model.state_dict(), 'accuracy': accuracy}, path, log)
    return model, accuracy


def of_splits(data, p, device, log=print):
    """of_data on data's own splits, on device: (classifier, its accuracy, the test split as model
    inputs and labels)."""
    test = model_inputs(data.test_x, p).to(device), data.test_y.to(device)
    return (*of_data(data, (data.train_x.to(device), data.train_y.to(device)), test, p, log), test)


def frechet_distance(f1, f2):
    """||m1 - m2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between Gaussians fitted to two feature sets
    (n, d). Tr (S1 S2)^(1/2) = sum of sqrt of the eigenvalues of S1^(1/2) S2 S1^(1/2), symmetric."""
    f1, f2 = f1.double(), f2.double()
    m1, m2 = f1.mean(0), f2.mean(0)
    s1, s2 = torch.cov(f1.T), torch.cov(f2.T)
    values, vectors = torch.linalg.eigh(s1)
    root1 = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root1 @ s2 @ root1).clamp(min=0).sqrt().sum()
    return ((m1 - m2) ** 2).sum().item() + (s1.trace() + s2.trace() - 2 * cross).item()


@torch.no_grad()
def scores(model, images, reference):
    """What the classifier makes of images (n, C, B, A) in [0, 1]: the share it is confident shows
    one of the data's classes, the share it takes for no character, how many classes appear among
    the rest and the entropy of their class histogram, and the Fréchet distance of their features
    to reference, the features (model.features) of real images."""
    features = apply(model.features, images)
    probs = model.out(features).softmax(1)  # model(images) in eval mode, from the features
    predicted, k = probs.argmax(1), probs.shape[1] - 1  # class k: no character
    counts = torch.bincount(predicted[predicted < k], minlength=k).double()
    share = counts[counts > 0] / counts.sum()
    return {'recognisable': (probs[:, :k].max(1).values >= CONFIDENT).double().mean().item(),
            'no_character': (predicted == k).double().mean().item(),
            'classes': int((counts > 0).sum()),
            'entropy': max(0.0, -(share * share.log()).sum().item()),
            'frechet': frechet_distance(features, reference),
            'predicted': predicted}


@torch.no_grad()
def sample_scores(model, clf, real_x, n, generator):
    """The classifier's scores of n samples and of n real images (the ceiling), both against the
    rest of real_x; and, for a conditional model, the share of samples recognised as the class
    asked for, per class."""
    n = min(n, len(real_x) // 2)
    shuffled = real_x[torch.randperm(len(real_x), generator=torch.Generator().manual_seed(0)).to(real_x.device)]
    real, reference = shuffled[:n], apply(clf.features, shuffled[n:])  # test splits may be sorted by class
    labels = torch.arange(n, device=real_x.device) % model.num_classes if model.num_classes else None
    samples = model.generate(n, labels, generator=generator)[-1]
    found = {'samples': scores(clf, samples, reference), 'real': scores(clf, real, reference)}
    if labels is not None:
        right = (found['samples']['predicted'] == labels).double()
        found['per_class'] = [right[labels == c].mean().item() for c in range(model.num_classes)]
    return found


def score_lines(found, classes, accuracy, real='real test', trained_on='the training split'):
    """The scores as a short table; accuracy: the classifier's on the test split of the data it was
    trained on (trained_on names it)."""
    s, r = found['samples'], found['real']
    lines = [f"Sample quality, by a CNN trained on {trained_on} ({100 * accuracy:.1f}% right on the test split):",
             f"  {'':30}{'samples':>10}{real:>12}",
             f"  {'recognisable (p >= 0.9)':30}{100 * s['recognisable']:>9.1f}%{100 * r['recognisable']:>11.1f}%",
             f"  {'no character':30}{100 * s['no_character']:>9.1f}%{100 * r['no_character']:>11.1f}%",
             f"  {'classes present':30}{s['classes']:>7}/{len(classes):<2}{r['classes']:>9}/{len(classes):<2}",
             f"  {'class entropy (nats)':30}{s['entropy']:>10.3f}{r['entropy']:>12.3f}   (uniform: "
             f"{math.log(len(classes)):.3f})",
             f"  {'Frechet distance':30}{s['frechet']:>10.2f}{r['frechet']:>12.2f}   (to other real images)"]
    if 'per_class' in found:
        mean = sum(found['per_class']) / len(classes)
        lines.append(f"  conditional samples recognised as the class asked for: {100 * mean:.1f}% on average; "
                     f"per class: " + ', '.join(f"{c} {100 * a:.0f}%" for c, a in zip(classes, found['per_class'])))
    return lines
