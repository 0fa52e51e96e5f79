"""DRAW: a recurrent variational auto-encoder that writes an image glimpse by glimpse.

Gregor, Danihelka, Graves, Rezende, Wierstra (2015), "DRAW: A Recurrent Neural Network For Image
Generation", arXiv:1502.04623. Equation numbers in the comments are the paper's.

Images are (n, C, B, A) tensors: n images, C channels, height B, width A (the paper's names).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class DRAWModel(nn.Module):
    def __init__(self, params, num_classes=0):
        """params: the model keys of train.py's params. With params['conditional'], the one-hot class
        label y (num_classes of them) joins the encoder's and decoder's input at every glimpse, so the
        model learns p(x | y); the paper's unconditional model otherwise."""
        super().__init__()
        self.T = params['T']
        self.A, self.B, self.C = params['A'], params['B'], params['channel']
        self.z_size = params['z_size']
        self.read_N, self.write_N = params['read_N'], params['write_N']
        self.read_attn, self.write_attn = params['read_attn'], params['write_attn']
        # The 2019 implementation's layout (to load its checkpoints): one attention layer shared by
        # read and write, and a filter grid indexed from 0 (shifted one stride toward the top-left).
        self.original_layout = params['original_layout']
        self.num_classes = num_classes if params.get('conditional') else 0
        if params.get('conditional') and num_classes < 1:
            raise ValueError('a conditional model needs num_classes >= 1')
        enc_size, dec_size = params['enc_size'], params['dec_size']
        read_size = self.C * (self.read_N ** 2 if self.read_attn else self.A * self.B)
        write_size = self.C * (self.write_N ** 2 if self.write_attn else self.A * self.B)
        self.write_size = write_size  # w_t's length: the first outputs of the decoder's heads

        self.encoder = nn.LSTMCell(2 * read_size + dec_size + self.num_classes, enc_size)  # Eq. 5 (+ y)
        self.fc_mu = nn.Linear(enc_size, self.z_size)  # Eq. 1
        self.fc_sigma = nn.Linear(enc_size, self.z_size)  # Eq. 2 (gives log sigma)
        self.decoder = nn.LSTMCell(self.z_size + self.num_classes, dec_size)  # Eq. 7 (+ y)
        self.fc_write = nn.Linear(dec_size, write_size)  # Eq. 28 (Eq. 18 without attention)
        if self.original_layout:
            self.fc_attention = nn.Linear(dec_size, 5)
        else:  # Eq. 21, one linear map for read and one for write
            self.fc_read_attention = self.attention_layer(dec_size, self.read_N) if self.read_attn else None
            self.fc_write_attention = self.attention_layer(dec_size, self.write_N) if self.write_attn else None

        # Constant grids (not saved: the state dict stays the original's). Paper: filter i = 1..N,
        # pixel a = 1..A, so g~ = 0 is the image centre; the original indexes both from 0.
        first = 0 if self.original_layout else 1
        for name, N in (('read', self.read_N), ('write', self.write_N)):
            self.register_buffer(f'{name}_offsets', torch.arange(first, first + N) - N / 2 - 0.5, persistent=False)
        self.register_buffer('pixels_a', torch.arange(first, first + self.A, dtype=torch.float), persistent=False)
        self.register_buffer('pixels_b', torch.arange(first, first + self.B, dtype=torch.float), persistent=False)
        # c_0, the canvas before the first glimpse: a learned per-pixel bias (set from the data by
        # init_canvas), or the constant 0 of the 2019 code (and layout), grey sigmoid(0) = 0.5 everywhere.
        learned = params.get('canvas_bias') and not self.original_layout
        self.canvas_bias = nn.Parameter(torch.zeros(self.C, self.B, self.A)) if learned else None

    # -- attention --------------------------------------------------------------------------------
    def attention_layer(self, dec_size, N):
        """Eq. 21's linear map, initialised so the filters start as a smooth grid over the whole image
        (sigma = delta / 2, neighbours overlapping) rather than N isolated 1-pixel-wide samples, which
        miss thin strokes. The paper leaves initialisation open."""
        fc = nn.Linear(dec_size, 5)
        delta = (max(self.A, self.B) - 1) / (N - 1)  # Eq. 24 at log delta~ = 0: the grid spans the image
        with torch.no_grad():
            fc.bias[2] += 2 * math.log(delta / 2)  # log sigma^2
        return fc

    def filterbank(self, gx, gy, sigma2, delta, offsets):
        """Fx: (n, N, A) and Fy: (n, N, B), each row a Gaussian normalised to sum to 1."""
        mu_x = gx + offsets * delta  # Eq. 19: mu_x^i = g_x + (i - N/2 - 0.5) delta, (n, N)
        mu_y = gy + offsets * delta  # Eq. 20
        var = 2 * sigma2.unsqueeze(2)  # (n, 1, 1)
        Fx = self.normalise(-(self.pixels_a - mu_x.unsqueeze(2)) ** 2 / var)  # Eq. 25, (n, N, A)
        Fy = self.normalise(-(self.pixels_b - mu_y.unsqueeze(2)) ** 2 / var)  # Eq. 26, (n, N, B)
        return Fx, Fy

    def normalise(self, log_f):
        """exp(log_f) / Z along the pixels. A softmax: rows sum to 1 even where every exp underflows
        (a filter far off the image); the 2019 code divides by (sum + 1e-8), zero rows there."""
        if self.original_layout:
            f = torch.exp(log_f)
            return f / (f.sum(2, keepdim=True) + 1e-8)
        return torch.softmax(log_f, dim=2)

    def window_params(self, window, N):
        """Centre (gx, gy), variance, stride and intensity, (n, 1) each, from a window's five outputs
        of Eq. 21 (n, 5), in fp32 whatever the product's precision."""
        gx_, gy_, log_sigma2, log_delta_, log_gamma = window.float().split(1, dim=1)
        gx = (self.A + 1) / 2 * (gx_ + 1)  # Eq. 22
        gy = (self.B + 1) / 2 * (gy_ + 1)  # Eq. 23
        delta = (max(self.A, self.B) - 1) / (N - 1) * torch.exp(log_delta_)  # Eq. 24
        return gx, gy, torch.exp(log_sigma2), delta, torch.exp(log_gamma)

    def filters(self, window, offsets):
        """Filterbanks and intensity gamma of a window's five outputs of Eq. 21."""
        gx, gy, sigma2, delta, gamma = self.window_params(window, offsets.numel())
        Fx, Fy = self.filterbank(gx, gy, sigma2, delta, offsets)
        return Fx, Fy, gamma

    def window(self, heads, name):
        """The five outputs of Eq. 21 of the 'read' or 'write' window within the decoder's outputs
        heads (see head_layers), or None where that window has no attention. The read window of a
        glimpse is in the previous glimpse's heads (it reads h_dec_{t-1}); the 2019 layout's one
        attention layer gives the same five to both."""
        if not (self.read_attn if name == 'read' else self.write_attn):
            return None
        start = self.write_size if self.original_layout or name == 'write' else heads.shape[1] - 5
        return heads[:, start:start + 5]

    def box(self, heads, name):
        """Where the 'read' or 'write' window of the decoder's outputs heads lies, for drawing it: (n, 3)
        rows of centre x, centre y (0-based pixel coordinates) and side N * delta (each of the N filters
        covers one stride); None where that window has no attention."""
        window = self.window(heads, name)
        if window is None:
            return None
        offsets = getattr(self, f'{name}_offsets')
        gx, gy, _, delta, _ = self.window_params(window, offsets.numel())
        shift = offsets.mean() * delta - self.pixels_a[0]  # the filters' mean (Eqs. 19-20); pixel 1 -> 0
        return torch.cat((gx + shift, gy + shift, offsets.numel() * delta), dim=1)

    # -- one glimpse's weights, merged ------------------------------------------------------------
    def head_layers(self):
        """The linear maps of the decoder state, in the order of their outputs in heads: the write w_t
        (Eq. 28; Eq. 18 without attention), then Eq. 21's write window and read window (the read
        window of the next glimpse, which reads this h_dec); the 2019 layout's one shared layer."""
        if self.original_layout:
            return [self.fc_write, self.fc_attention]
        return [fc for fc in (self.fc_write, self.fc_write_attention, self.fc_read_attention) if fc is not None]

    def weights(self):
        """(weight, bias) of the four matrix products of a glimpse: each LSTM's input and recurrent
        weights side by side (one product for both), Eqs. 1-2's two heads, and the decoder's outputs
        (head_layers). Under autocast they are cast once here, for all T glimpses, not at every use."""
        def lstm(cell):
            return torch.cat((cell.weight_ih, cell.weight_hh), dim=1), cell.bias_ih + cell.bias_hh

        heads = self.head_layers()
        merged = {'encoder': lstm(self.encoder), 'decoder': lstm(self.decoder),
                  'latent': (torch.cat((self.fc_mu.weight, self.fc_sigma.weight)),
                             torch.cat((self.fc_mu.bias, self.fc_sigma.bias))),
                  'heads': (torch.cat([fc.weight for fc in heads]), torch.cat([fc.bias for fc in heads]))}
        device = self.pixels_a.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            merged = {k: (w.to(dtype), b.to(dtype)) for k, (w, b) in merged.items()}
        return merged

    @torch.no_grad()
    def init_canvas(self, mean, eps=1e-3):
        """c_0 := the logit of the data's per-pixel mean (C, B, A), so that the first glimpse starts
        from the average image: on black-background handwriting a grey c_0 costs hundreds of nats that the
        writes must first cancel with large patches, which makes the loss stiff in the attention
        parameters (docs/recipe.md)."""
        mean = mean.clamp(eps, 1 - eps)
        self.canvas_bias.copy_(torch.log(mean) - torch.log1p(-mean))

    # -- read and write ---------------------------------------------------------------------------
    def read(self, x, x_hat, window):
        """r_t, (n, 2*C*N*N): the glimpses of x and of the error image x_hat through the read window's
        five outputs of Eq. 21 (n, 5); the whole images without read attention (window None)."""
        images = torch.cat((x, x_hat), dim=1)  # (n, 2C, B, A)
        if not self.read_attn:
            return images.flatten(1)  # Eq. 17: [x, x_hat]
        Fx, Fy, gamma = self.filters(window, self.read_offsets)
        glimpse = Fy.unsqueeze(1) @ images @ Fx.transpose(1, 2).unsqueeze(1)  # Eq. 27, (n, 2C, N, N)
        return gamma * glimpse.flatten(1)  # Eq. 27: gamma [Fy x Fx^T, Fy x_hat Fx^T]

    def write(self, heads):
        """The canvas update, (n, C, B, A), from the decoder's outputs heads (see head_layers)."""
        w = heads[:, :self.write_size]  # Eq. 28 (Eq. 18 without attention)
        if not self.write_attn:
            return w.reshape(-1, self.C, self.B, self.A)
        w = w.reshape(-1, self.C, self.write_N, self.write_N)  # (n, C, N, N)
        Fx, Fy, gamma = self.filters(self.window(heads, 'write'), self.write_offsets)
        patch = Fy.transpose(1, 2).unsqueeze(1) @ w @ Fx.unsqueeze(1)  # Eq. 29, (n, C, B, A)
        return patch / gamma.view(-1, 1, 1, 1)  # Eq. 29: 1/gamma Fy^T w Fx

    # -- the recurrence ---------------------------------------------------------------------------
    def initial_state(self, n, device):
        """The canvas c_0 (the learned bias, or zeros) and the encoder's and decoder's (h, cell)
        states (zeros): each its own contiguous tensor, as every later glimpse's are, so that a
        compiled glimpse (compiling.py) takes the first glimpse's inputs with the same graph."""
        canvas = torch.zeros(n, self.C, self.B, self.A, device=device) if self.canvas_bias is None \
            else self.canvas_bias.expand(n, -1, -1, -1).contiguous()
        enc, dec = self.encoder.hidden_size, self.decoder.hidden_size
        zeros = [torch.zeros(n, size, device=device) for size in (enc, enc, dec, dec)]
        return canvas, tuple(zeros[:2]), tuple(zeros[2:])

    def start(self, n, y, device):
        """What the first glimpse of n images (of classes y) starts from: the merged weights (weights),
        the one-hot labels, c_0, the encoder's and decoder's states and the decoder's outputs heads of
        h_dec_0 = 0 (the first read window)."""
        w, label = self.weights(), self.one_hot(y)
        c, enc_state, dec_state = self.initial_state(n, device)
        return w, label, c, enc_state, dec_state, F.linear(dec_state[0], *w['heads'])

    def one_hot(self, y):
        """The one-hot labels (n, num_classes) that join the LSTMs' inputs; None when unconditional."""
        if not self.num_classes:
            return None
        if y is None:
            raise ValueError('a conditional model needs the class labels y')
        return F.one_hot(y, self.num_classes).float()

    def decode(self, w, z, label, c, dec_state):
        """The decoder's half of a glimpse on weights w (self.weights()): the decoder state, its
        outputs heads (see head_layers) and the canvas after the write, from z and the canvas before."""
        dec_state = lstm(with_label(z, label), dec_state, w['decoder'])  # Eq. 7 (Eq. 14)
        heads = F.linear(dec_state[0], *w['heads'])  # Eqs. 28 and 21
        return c + self.write(heads), dec_state, heads  # Eq. 8 (Eq. 15)

    def glimpse(self, w, x, label, c, enc_state, dec_state, heads, noise):
        """One glimpse of the encoder-decoder pass on weights w (self.weights()), from the canvas, the
        states and the decoder's outputs heads of the glimpse before (its read window); noise (n, z_size)
        ~ N(0, 1). Returns the new (c, enc_state, dec_state, heads) and the posterior's mu, log sigma, z."""
        x_hat = x - torch.sigmoid(c)  # Eq. 3
        r = self.read(x, x_hat, self.window(heads, 'read'))  # Eq. 4
        enc_state = lstm(with_label(torch.cat((r, dec_state[0]), dim=1), label), enc_state, w['encoder'])  # Eq. 5
        mu, log_sigma = F.linear(enc_state[0], *w['latent']).float().chunk(2, dim=1)  # Eqs. 1-2
        z = mu + torch.exp(log_sigma) * noise  # Eq. 6: z_t ~ Q(Z_t | h_enc_t)
        c, dec_state, heads = self.decode(w, z, label, c, dec_state)  # Eqs. 7-8
        return c, enc_state, dec_state, heads, mu, log_sigma, z

    def training_glimpse(self, w, x, label, c, enc_state, dec_state, heads, noise):
        """glimpse, returning the posterior's KL per image (n,) (Eq. 11) instead of mu, log sigma and z:
        what objective steps through T times, and what compile=auto compiles once for all of them (the
        region compiling.py compiles)."""
        c, enc_state, dec_state, heads, mu, log_sigma, _ = self.glimpse(w, x, label, c, enc_state, dec_state,
                                                                        heads, noise)
        return c, enc_state, dec_state, heads, kl_divergence(mu, log_sigma)

    def forward(self, x, y=None, T=None, windows=None, noise=None):
        """Encode and redraw x (n, C, B, A) in [0, 1] (of classes y (n,) when conditional).

        Returns the canvas logits after every glimpse (T, n, C, B, A), and the posterior means, log
        standard deviations and samples z of every glimpse, (T, n, z_size) each. A list passed as
        windows receives each glimpse's (read, write) boxes, for drawing them; noise (T, n, z_size),
        Eq. 6's N(0, 1) draws, is fresh when None.
        """
        T = T or self.T
        w, label, c, enc_state, dec_state, heads = self.start(x.size(0), y, x.device)
        noise = self.noise(x, T) if noise is None else noise
        canvases, mus, log_sigmas, zs = [], [], [], []
        for t in range(T):
            previous = heads
            c, enc_state, dec_state, heads, mu, log_sigma, z = self.glimpse(w, x, label, c, enc_state, dec_state,
                                                                            heads, noise[t])
            if windows is not None:
                windows.append((self.box(previous, 'read'), self.box(heads, 'write')))
            canvases.append(c)
            mus.append(mu)
            log_sigmas.append(log_sigma)
            zs.append(z)
        return torch.stack(canvases), torch.stack(mus), torch.stack(log_sigmas), torch.stack(zs)

    def elbo_terms(self, x, y=None, noise=None):
        """Per image, nats: the reconstruction -log D(x | c_T) of each channel, a Bernoulli with logits
        c_T summed over pixels (Eq. 9), (n, C); the KL(N(mu, sigma) || N(0, 1)) of every glimpse
        (Eqs. 10-11), (T, n); and the posterior's (mu, log_sigma, z), (T, n, z_size) each. noise: as
        forward's."""
        canvases, mu, log_sigma, z = self(x, y, noise=noise)
        return reconstruction(canvases[-1], x), kl_divergence(mu, log_sigma), (mu, log_sigma, z)

    def noise(self, x, T):
        """Eq. 6's N(0, 1) draws of every glimpse, (T, n, z_size), for the images x."""
        return torch.randn(T, x.size(0), self.z_size, device=x.device)

    def loss(self, x, y=None):
        """Negative ELBO in nats per image (averaged over the batch), with its two terms (Eq. 12)."""
        recon, kl, _ = self.elbo_terms(x, y)
        recon, kl = recon.sum(1).mean(), kl.sum(0).mean()
        return recon + kl, recon, kl  # Eq. 12

    def objective(self, x, y=None, kl_weight=1.0, free_bits=0.0, glimpse=None):
        """(what training minimises, the negative ELBO of Eq. 12), nats per image averaged over the
        batch. The first weighs the KL by kl_weight (KL warm-up: Bowman et al. 2016, Sønderby et al.
        2016) and counts each glimpse's batch-mean KL as at least free_bits nats (free bits: Kingma
        et al. 2016, IAF); both shape the gradient only, and at (1, 0) the two values are equal.
        glimpse: training_glimpse, or the same compiled (compiling.py); the canvases of the glimpses
        before the last are not kept."""
        w, label, c, enc_state, dec_state, heads = self.start(x.size(0), y, x.device)
        if glimpse and torch.is_grad_enabled():  # the first glimpse's inputs as every later one's: one graph
            c, *states = [t if t.requires_grad else t.requires_grad_() for t in (c, *enc_state, *dec_state)]
            enc_state, dec_state = tuple(states[:2]), tuple(states[2:])
        glimpse = glimpse or self.training_glimpse
        kls = []
        for noise in self.noise(x, self.T):
            c, enc_state, dec_state, heads, kl = glimpse(w, x, label, c, enc_state, dec_state, heads, noise)
            kls.append(kl)
        recon, kl = reconstruction(c, x).sum(1).mean(), torch.stack(kls).mean(1)  # (T,): each glimpse's KL
        return recon + kl_weight * kl.clamp(min=free_bits).sum(), recon + kl.sum()

    @torch.no_grad()
    def generate(self, n, y=None, T=None, generator=None, windows=None, zs=None):
        """Draw n images from the prior (of classes y (n,) when conditional): every glimpse's canvas,
        (T, n, C, B, A) in [0, 1]. A list passed as windows receives each glimpse's write box. zs
        (T, n, z_size), when given, are the z_t decoded instead of the prior's draws: e.g. the
        posterior's of real images (forward), redrawn with other labels y."""
        device = self.pixels_a.device
        w, label, c, _, dec_state, _ = self.start(n, y, device)
        canvases = []
        for t in range(T or self.T):
            z = torch.randn(n, self.z_size, device=device, generator=generator) if zs is None else zs[t]  # Eq. 13
            c, dec_state, heads = self.decode(w, z, label, c, dec_state)  # Eqs. 14-15
            if windows is not None:
                windows.append(self.box(heads, 'write'))
            canvases.append(torch.sigmoid(c))  # Eq. 16: the mean of D(X | c_t)
        return torch.stack(canvases)


def reconstruction(logits, x):
    """-log D(x | c_T) per image and channel, (n, C): a Bernoulli with logits c_T summed over the pixels (Eq. 9)."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction='none').sum((2, 3))


def kl_divergence(mu, log_sigma):
    """KL(N(mu, sigma) || N(0, 1)) summed over z's dimensions (the last), nats (Eq. 11)."""
    return 0.5 * (mu ** 2 + torch.exp(2 * log_sigma) - 2 * log_sigma - 1).sum(-1)


def with_label(inputs, label):
    """inputs (n, k) with the one-hot labels (n, num_classes) appended; inputs alone when label is None."""
    return inputs if label is None else torch.cat((inputs, label.to(inputs.dtype)), dim=1)


def lstm(inputs, state, weights):
    """PyTorch's LSTMCell (gates i, f, g, o) on (h, cell) = state, with weights (W, b) whose W holds
    the input and recurrent weights side by side: one product for both. The gates and the cell are
    fp32 whatever the product's precision."""
    h, cell = state
    i, f, g, o = F.linear(torch.cat((inputs, h), dim=1), *weights).float().chunk(4, dim=1)
    cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cell), cell
