"""The model's math against slow or library references."""
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from conftest import heads
from draw_model import DRAWModel
from train import params as DEFAULTS


def make_params(**kw):
    return {**DEFAULTS, 'T': 3, 'A': 12, 'B': 10, 'z_size': 5, 'read_N': 3, 'write_N': 4, 'enc_size': 16,
            'dec_size': 16, **kw}


def make(**kw):
    torch.manual_seed(0)
    return DRAWModel(make_params(**kw))


def window(model, fc, gx_=0.0, gy_=0.0, log_sigma2=0.0, log_delta_=0.0, log_gamma=0.0):
    """Point an attention layer at fixed parameters, whatever the decoder state."""
    with torch.no_grad():
        fc.weight.zero_()
        fc.bias.copy_(torch.tensor([gx_, gy_, log_sigma2, log_delta_, log_gamma]))


def read(model, x, x_hat, h):
    return model.read(x, x_hat, model.window(heads(model, h), 'read'))


def filters(model, h, name):
    return model.filters(model.window(heads(model, h), name), getattr(model, f'{name}_offsets'))


def test_filterbank_matches_the_paper_written_out():
    model = make()
    gx, gy, sigma2, delta = 6.3, 4.1, 1.7, 1.9
    N = model.read_N
    Fx, Fy = model.filterbank(torch.tensor([[gx]]), torch.tensor([[gy]]), torch.tensor([[sigma2]]),
                              torch.tensor([[delta]]), model.read_offsets)
    for F_, g, size in ((Fx, gx, model.A), (Fy, gy, model.B)):
        for i in range(1, N + 1):  # Eqs. 19-20: filters i = 1..N, pixels a = 1..A
            mu = g + (i - N / 2 - 0.5) * delta
            row = [math.exp(-(a - mu) ** 2 / (2 * sigma2)) for a in range(1, size + 1)]
            expected = torch.tensor(row) / sum(row)  # Eqs. 25-26
            torch.testing.assert_close(F_[0, i - 1], expected, atol=1e-6, rtol=1e-5)


def test_filter_rows_sum_to_one():
    model = make()
    Fx, Fy, _ = filters(model, torch.randn(7, 16) * 3, 'read')
    torch.testing.assert_close(Fx.sum(2), torch.ones(7, model.read_N))
    torch.testing.assert_close(Fy.sum(2), torch.ones(7, model.read_N))


@pytest.mark.parametrize('N', [3, 4])
def test_grid_is_centred(N):
    """g~ = 0 puts the grid's centre on the image's centre: a mirrored image gives a mirrored glimpse."""
    model = make(A=11, B=11, read_N=N)
    window(model, model.fc_read_attention, log_delta_=-0.3)
    x = torch.rand(1, 1, 11, 11)
    x_mirror = x.flip(2, 3)
    h = torch.zeros(1, 16)
    glimpse = read(model, x, x, h)[:, :N * N].view(N, N)
    glimpse_mirror = read(model, x_mirror, x_mirror, h)[:, :N * N].view(N, N)
    torch.testing.assert_close(glimpse_mirror, glimpse.flip(0, 1))


def test_fresh_filters_cover_the_whole_image():
    """Initialised as a smooth grid (sigma = delta / 2): no pixel between two filters goes unseen,
    so thin strokes reach the encoder from the first step."""
    model = make(A=32, B=32, read_N=6, write_N=6)
    for name in ('read', 'write'):
        Fx, Fy, _ = filters(model, torch.zeros(1, 16), name)
        coverage = Fx[0].sum(0)  # weight each pixel column gets from the N filters
        assert coverage[4:-4].min() > 0.1, coverage  # old init: ~0.01 midway between filters


def test_original_layout_grid_is_shifted_one_stride():
    """The 2019 code's 0-based grid (kept only to load its checkpoints) sits one stride up-left."""
    paper, original = make(), make(original_layout=True)
    torch.testing.assert_close(original.read_offsets, paper.read_offsets - 1)


def test_read_then_write_with_N_equal_A_and_tiny_sigma_returns_the_image():
    model = make(A=8, B=8, read_N=8, write_N=8)
    x = torch.rand(1, 1, 8, 8)
    for fc in (model.fc_read_attention, model.fc_write_attention):  # delta = 1, g = centre, gamma = 1
        window(model, fc, log_sigma2=math.log(0.01))
    h = torch.zeros(1, 16)
    glimpse = read(model, x, torch.zeros_like(x), h)[:, :64]
    torch.testing.assert_close(glimpse, x.flatten(1), atol=1e-5, rtol=0)
    with torch.no_grad():
        model.fc_write.weight.zero_()
        model.fc_write.bias.copy_(glimpse[0])
    torch.testing.assert_close(model.write(heads(model, h)), x, atol=1e-5, rtol=0)


def test_gamma_scales_read_and_divides_write():
    model = make()
    x, h = torch.rand(2, 1, 10, 12), torch.randn(2, 16)
    for fc, log_gamma in ((model.fc_read_attention, 0.0), (model.fc_write_attention, 0.0)):
        window(model, fc, log_gamma=log_gamma)
    r1, w1 = read(model, x, x, h), model.write(heads(model, h))
    for fc in (model.fc_read_attention, model.fc_write_attention):
        window(model, fc, log_gamma=math.log(2.0))
    torch.testing.assert_close(read(model, x, x, h), 2 * r1)
    torch.testing.assert_close(model.write(heads(model, h)), w1 / 2)


def test_loss_is_bernoulli_likelihood_plus_exact_kl():
    model = make()
    x = torch.rand(4, 1, 10, 12)
    torch.manual_seed(1)
    canvases, mu, log_sigma, _ = model(x)
    torch.manual_seed(1)
    loss, recon, kl = model.loss(x)
    p = torch.sigmoid(canvases[-1])
    log_lik = (x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum() / 4  # written out
    expected_kl = kl_divergence(Normal(mu, log_sigma.exp()), Normal(0.0, 1.0)).sum() / 4
    torch.testing.assert_close(recon, -log_lik, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(kl, expected_kl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, recon + kl)


@pytest.mark.parametrize('kw', [{}, {'read_attn': False, 'write_attn': False}, {'channel': 3},
                                {'read_attn': False}, {'original_layout': True, 'channel': 3}])
def test_shapes_and_every_parameter_gets_a_gradient(kw):
    model = make(**kw)
    C = model.C
    x = torch.rand(5, C, 10, 12)
    canvases, mu, log_sigma, _ = model(x)
    assert canvases.shape == (3, 5, C, 10, 12) and mu.shape == log_sigma.shape == (3, 5, 5)
    model.loss(x)[0].backward()
    for name, w in model.named_parameters():
        assert w.grad is not None and w.grad.abs().sum() > 0 and torch.isfinite(w.grad).all(), name
    images = model.generate(6)
    assert images.shape == (3, 6, C, 10, 12) and 0 <= images.min() and images.max() <= 1
    assert model.generate(6, T=5).shape[0] == 5


def test_nothing_per_batch_is_stored_on_the_module():
    model = make()
    before = set(vars(model))
    model.loss(torch.rand(2, 1, 10, 12))
    model.generate(3)
    assert set(vars(model)) == before


def original_generate(weights, p, noise):
    """The 2019 implementation's generation, written from its documented equations: one shared
    attention layer, filters and pixels indexed from 0, channels sharing the filters."""
    A, B, N, C = p['A'], p['B'], p['write_N'], p['channel']
    cell = torch.nn.LSTMCell(p['z_size'], p['dec_size'])
    cell.load_state_dict({k[8:]: v for k, v in weights.items() if k.startswith('decoder.')})
    h = cell_state = torch.zeros(noise.shape[1], p['dec_size'])
    c = torch.zeros(noise.shape[1], C * B * A)
    out = []
    for z in noise:
        h, cell_state = cell(z, (h, cell_state))
        gx_, gy_, log_s2, log_d, log_g = (h @ weights['fc_attention.weight'].T + weights['fc_attention.bias']).T
        gx, gy = (A + 1) / 2 * (gx_ + 1), (B + 1) / 2 * (gy_ + 1)
        delta = (max(A, B) - 1) / (N - 1) * log_d.exp()
        i = torch.arange(N)
        mu_x = gx[:, None] + (i - N / 2 - 0.5) * delta[:, None]
        mu_y = gy[:, None] + (i - N / 2 - 0.5) * delta[:, None]
        s2 = log_s2.exp()[:, None, None]
        Fx = torch.exp(-(torch.arange(A) - mu_x[..., None]) ** 2 / (2 * s2))
        Fy = torch.exp(-(torch.arange(B) - mu_y[..., None]) ** 2 / (2 * s2))
        Fx, Fy = Fx / (Fx.sum(2, keepdim=True) + 1e-8), Fy / (Fy.sum(2, keepdim=True) + 1e-8)
        w = (h @ weights['fc_write.weight'].T + weights['fc_write.bias']).view(-1, C, N, N)
        patch = torch.einsum('nja,ncji,nib->ncab', Fy, w, Fx)  # Fy^T w Fx per channel
        c = c + (patch / log_g.exp()[:, None, None, None]).reshape(len(z), -1)
        out.append(torch.sigmoid(c).view(-1, C, B, A))
    return torch.stack(out)


def test_original_layout_draws_what_the_original_code_draws():
    p = {**DEFAULTS, 'T': 4, 'channel': 3, 'write_N': 6, 'original_layout': True,
         'enc_size': 400, 'dec_size': 400}  # the 2019 code's sizes
    model = DRAWModel(p)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes['encoder.weight_ih'] == (1600, 616) and shapes['fc_write.weight'] == (108, 400)
    assert shapes['fc_attention.weight'] == (5, 400) and len(shapes) == 16
    with torch.no_grad():
        for w in model.parameters():
            w.normal_(0, 0.05)
    drawn = model.generate(5, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the original draws randn(n, z_size) at every glimpse
    noise = torch.stack([torch.randn(5, 100, generator=g) for _ in range(4)])
    torch.testing.assert_close(drawn, original_generate(model.state_dict(), p, noise), atol=1e-5, rtol=1e-4)



@pytest.mark.parametrize('kw', [{}, {'original_layout': True}])
def test_boxes_sit_on_the_filters_they_describe(kw):
    """A window's box is centred on its filters' centre of mass (0-based pixels) and N * delta wide."""
    model = make(A=24, B=24, read_N=3, write_N=4, **kw)
    fc = model.fc_attention if model.original_layout else model.fc_write_attention
    window(model, fc, gx_=0.2, gy_=-0.3, log_sigma2=0.0, log_delta_=math.log(0.2))
    h = torch.zeros(1, 16)
    Fx, Fy, _ = filters(model, h, 'write')
    x, y, side = model.box(heads(model, h), 'write')[0].tolist()
    centres = lambda F_: (F_[0] * torch.arange(F_.shape[2])).sum(1)  # each filter's mean pixel, 0-based
    assert x == pytest.approx(centres(Fx).mean().item(), abs=1e-3)
    assert y == pytest.approx(centres(Fy).mean().item(), abs=1e-3)
    stride = (centres(Fx)[1:] - centres(Fx)[:-1]).mean().item()
    assert side == pytest.approx(4 * stride, abs=1e-3)
    assert make(read_attn=False).box(heads(make(read_attn=False), h), 'read') is None


def test_windows_are_recorded_per_glimpse_without_changing_the_draw():
    model = make()
    x = torch.rand(2, 1, 10, 12)
    windows = []
    torch.manual_seed(0)
    plain = model(x)[0]
    torch.manual_seed(0)
    recorded = model(x, windows=windows)[0]
    torch.testing.assert_close(plain, recorded)
    assert len(windows) == 3 and all(r.shape == w.shape == (2, 3) for r, w in windows)
    drawn = []
    model.generate(4, windows=drawn)
    assert len(drawn) == 3 and drawn[0].shape == (4, 3)


def test_conditional_model_learns_p_x_given_y():
    """The one-hot label joins the encoder's and the decoder's input at every glimpse."""
    torch.manual_seed(0)
    model, plain = DRAWModel({**make_params(), 'conditional': True}, num_classes=3), make()
    assert model.encoder.weight_ih.shape[1] == plain.encoder.weight_ih.shape[1] + 3
    assert model.decoder.weight_ih.shape[1] == plain.decoder.weight_ih.shape[1] + 3
    with torch.no_grad():
        model.decoder.weight_ih[:, -3:].normal_(0, 1)
    draws = [model.generate(2, torch.tensor([c, c]), generator=torch.Generator().manual_seed(0)) for c in range(3)]
    assert not torch.allclose(draws[0], draws[1]) and not torch.allclose(draws[1], draws[2])
    x, y = torch.rand(4, 1, 10, 12), torch.tensor([0, 1, 2, 0])
    loss, recon, kl = model.loss(x, y)
    loss.backward()
    assert model.encoder.weight_ih.grad[:, -3:].abs().sum() > 0 and model.decoder.weight_ih.grad[:, -3:].abs().sum() > 0
    with pytest.raises(ValueError, match='labels'):
        model.loss(x)
    with pytest.raises(ValueError, match='num_classes'):
        DRAWModel({**DEFAULTS, 'conditional': True})


def test_canvas_bias_starts_the_canvas_at_the_data_mean_and_learns():
    model = make()
    mean = torch.rand(1, 10, 12) * 0.98 + 0.01
    model.init_canvas(mean)
    torch.testing.assert_close(torch.sigmoid(model.canvas_bias), mean)
    c0, _, _ = model.initial_state(2, 'cpu')
    assert c0.shape == (2, 1, 10, 12) and torch.equal(c0[1], model.canvas_bias)
    x = torch.rand(2, 1, 10, 12)
    model.loss(x)[0].backward()
    assert model.canvas_bias.grad.abs().sum() > 0
    with torch.no_grad():
        model.fc_write.weight.zero_()
        model.fc_write.bias.zero_()  # writes of 0: the canvas stays c_0
    torch.testing.assert_close(model.generate(3)[-1], mean.expand(3, -1, -1, -1))
    assert make(canvas_bias=False).canvas_bias is None and 'canvas_bias' not in make(canvas_bias=False).state_dict()


@pytest.mark.slow
def test_objective_is_the_bound_at_the_defaults_and_shaped_otherwise():
    model, x = make(), torch.rand(4, 1, 10, 12)
    torch.manual_seed(1)
    loss, recon, kl = model.loss(x)
    torch.manual_seed(1)
    trained, bound = model.objective(x)
    assert torch.allclose(trained, loss) and torch.allclose(bound, loss)
    torch.manual_seed(1)
    _, kl_t, _ = model.elbo_terms(x)
    torch.manual_seed(1)
    trained, bound = model.objective(x, kl_weight=0.3, free_bits=0.7)
    assert torch.allclose(bound, loss)
    assert torch.allclose(trained, recon + 0.3 * kl_t.mean(1).clamp(min=0.7).sum())
