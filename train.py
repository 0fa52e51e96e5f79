"""Train DRAW. Hyperparameters are the params dict below; override any of them from the command
line for scripted runs:  python train.py epoch_num=1 batch_size=32 dataset=csv
"""
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import utils
from dataloader import load_data, to_input
from draw_model import DRAWModel

params = {
    # data
    'dataset': 'auto',  # auto | csv | uci | binarized_mnist | mnist | folder | builtin (dataloader.py); auto: first found
    'data_path': 'data',  # folder searched for the dataset, or a .csv / .csv.gz file
    'classes': 'all',  # 'all', 'digits', or comma-separated class names, e.g. character_01_ka,kha
    'test_split': 0.15,  # held-out fraction where the source has no official test split (CSV, plain folders)
    'binarize': 'none',  # none: grey levels as Bernoulli targets | threshold: at 0.5 | sample: x ~ Bernoulli, fresh each time
    'cache_dir': 'data/.cache',  # decoded datasets (uint8), so the next start skips decoding
    # model (the paper's names)
    'T': 25,  # glimpses: steps of the recurrence, canvas updates
    'A': 32,  # image width in pixels (images of another size are resized)
    'B': 32,  # image height in pixels
    'channel': 1,  # 1: grayscale; 3: RGB (the grey images repeated, as the 2019 implementation read them)
    'z_size': 100,  # dimension of the latent z_t drawn at each glimpse
    'read_N': 6,  # read glimpse is read_N x read_N Gaussian filters (eqs. 19-27)
    'write_N': 6,  # write patch is write_N x write_N (eqs. 28-29)
    'enc_size': 400,  # encoder LSTM units
    'dec_size': 400,  # decoder LSTM units
    'read_attn': True,  # False: read the whole image and error image (Eq. 17)
    'write_attn': True,  # False: write the whole canvas from a linear layer (Eq. 18)
    'original_layout': False,  # True: the 2019 code's shared attention layer and 0-based grid (for its checkpoints)
    # optimisation
    'batch_size': 128,  # images per step
    'epoch_num': 50,  # passes over the training split
    'learning_rate': 1e-3,  # Adam step size
    'beta1': 0.5,  # Adam beta1 (beta2 = 0.999)
    'clip': 5.0,  # gradient-norm clipping threshold
    'seed': 0,  # seeds the split, initialisation, noise and data order
    'device': 'auto',  # auto (CUDA when available) | cpu | cuda | cuda:1 ...
    # output
    'save_epoch': 10,  # every this many epochs: a checkpoint and a generation GIF
    'checkpoint_dir': 'checkpoint',  # model_epoch_{N}, model_final
    'image_dir': 'images',  # Training_Data.png, Loss_Curve.png, draw_epoch_{N}.gif
}


def train_epoch(model, optimizer, train_x, p, bar):
    """One pass over train_x (uint8, on the model's device) in random order; the loss of every step."""
    losses = []
    order = torch.randperm(len(train_x), device=train_x.device)
    for i in range(0, len(train_x), p['batch_size']):
        x = to_input(train_x[order[i:i + p['batch_size']]], p['binarize'], p['channel'])
        loss, _, _ = model.loss(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), p['clip'])
        optimizer.step()
        losses.append(loss.detach())
        bar.update(len(x))
        if len(losses) % 20 == 0:  # reading the loss waits for the device: only now and then
            bar.set_postfix(loss=f'{loss.item():.1f}')
    return torch.stack(losses).cpu().tolist()


@torch.no_grad()
def test_bound(model, test_x, batch_size):
    """The negative ELBO on the test split, in nats per image (one posterior sample per image)."""
    total = torch.zeros((), device=test_x.device)
    for i in range(0, len(test_x), batch_size):
        x = test_x[i:i + batch_size]
        total += model.loss(x)[0] * len(x)
    return total.item() / len(test_x)


def prepare_data(p, device):
    """The dataset on the device: train as uint8, test as model inputs (binarized once, seeded)."""
    data = load_data(p)
    if len(data.train_x) == 0 or len(data.test_x) == 0:
        raise utils.InputError(f"{data.name}: {len(data.train_x)} train and {len(data.test_x)} test images "
                               f"after the class filter; both splits need at least one.")
    fixed = torch.Generator().manual_seed(p['seed'])
    test_x = to_input(data.test_x, p['binarize'], p['channel'], fixed).to(device)
    sample = data.train_x[torch.randperm(len(data.train_x), generator=fixed)[:64]]
    utils.save_grid(to_input(sample, p['binarize'], p['channel'], fixed), Path(p['image_dir']) / 'Training_Data.png')
    return data, data.train_x.to(device), test_x


def main(argv=None):
    p = utils.apply_overrides(params, sys.argv[1:] if argv is None else argv)
    utils.check_params(p)
    device = utils.pick_device(p['device'])
    utils.seed_everything(p['seed'])
    data, train_x, test_x = prepare_data(p, device)
    model = DRAWModel(p).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=p['learning_rate'], betas=(p['beta1'], 0.999))
    ckpt_dir, image_dir = Path(p['checkpoint_dir']), Path(p['image_dir'])
    losses, bounds = [], []

    def save(name, epoch):
        utils.save_checkpoint(ckpt_dir / name, model, optimizer, p, epoch=epoch, losses=losses,
                              test_bounds=bounds, classes=data.classes)

    print(f"Training on {device}: {sum(w.numel() for w in model.parameters()):,} parameters, "
          f"{p['epoch_num']} epochs of {len(train_x)} images, batch {p['batch_size']}.")
    steps = -(-len(train_x) // p['batch_size'])
    for epoch in range(1, p['epoch_num'] + 1):
        start = time.perf_counter()
        with tqdm(total=len(train_x), desc=f"epoch {epoch}/{p['epoch_num']}", unit='img', leave=False,
                  disable=None) as bar:
            model.train()
            losses += train_epoch(model, optimizer, train_x, p, bar)
        model.eval()
        bounds.append(test_bound(model, test_x, p['batch_size']))
        seconds = time.perf_counter() - start
        print(f"epoch {epoch}/{p['epoch_num']}  train loss {sum(losses[-steps:]) / steps:.2f}  "
              f"test bound {bounds[-1]:.2f} nats  {seconds:.1f} s ({len(train_x) / seconds:.0f} img/s)")
        utils.plot_losses(image_dir / 'Loss_Curve.png', losses, steps, bounds)
        if epoch % p['save_epoch'] == 0:
            save(f'model_epoch_{epoch}', epoch)
        if epoch % p['save_epoch'] == 0 or epoch == p['epoch_num']:
            noise = torch.Generator(device).manual_seed(p['seed'])  # the same z each time: comparable GIFs
            utils.save_gif(model.generate(64, generator=noise), image_dir / f'draw_epoch_{epoch}.gif')
    save('model_final', p['epoch_num'])
    print(f"Saved {ckpt_dir / 'model_final'}. Draw with: "
          f"python generate.py -load_path {ckpt_dir / 'model_final'} -num_output 64")


if __name__ == '__main__':
    utils.run(main)
