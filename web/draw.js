// DRAW in plain JavaScript: the same equations as draw_model.py, one image at a time, on the
// weights that webpage.py embeds. Gregor et al. (2015), arXiv:1502.04623; equation numbers are the
// paper's. Images are Float64Arrays of C*B*A values in [0, 1], channel-major like PyTorch's (C, B, A).
'use strict';

const DRAW = (() => {
  // -- weights: little-endian fp16 or fp32, base64 --------------------------------------------------
  function halfToFloat(h) {
    const sign = h & 0x8000 ? -1 : 1, exponent = (h >> 10) & 0x1f, fraction = h & 0x3ff;
    if (exponent === 0) return sign * fraction * 2 ** -24;  // subnormal
    if (exponent === 31) return fraction ? NaN : sign * Infinity;
    return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
  }

  function decodeWeights(base64, dtype, manifest) {
    // manifest: [name, shape, offset in values]; returns {name: Float32Array}
    const text = atob(base64), bytes = new Uint8Array(text.length);
    for (let k = 0; k < text.length; k++) bytes[k] = text.charCodeAt(k);
    const all = new Float32Array(bytes.length / (dtype === 'fp16' ? 2 : 4));
    if (dtype === 'fp16') {
      const half = new Uint16Array(bytes.buffer), table = new Float32Array(65536);
      for (let h = 0; h < 65536; h++) table[h] = halfToFloat(h);  // every fp16 value, once
      for (let k = 0; k < half.length; k++) all[k] = table[half[k]];
    } else {
      all.set(new Float32Array(bytes.buffer));
    }
    const weights = {};
    for (const [name, shape, offset] of manifest) {
      weights[name] = all.subarray(offset, offset + shape.reduce((a, b) => a * b, 1));
    }
    return weights;
  }

  // -- small linear algebra on flat arrays ----------------------------------------------------------
  function addProduct(out, W, x, rows, stride = x.length) {
    // out (rows) += W x: W's rows are stride long, their first x.length columns used; four sums, for speed
    const cols = x.length;
    for (let j = 0; j < rows; j++) {
      const o = j * stride;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0, i = 0;
      for (; i + 3 < cols; i += 4) {
        s0 += W[o + i] * x[i]; s1 += W[o + i + 1] * x[i + 1];
        s2 += W[o + i + 2] * x[i + 2]; s3 += W[o + i + 3] * x[i + 3];
      }
      for (; i < cols; i++) s0 += W[o + i] * x[i];
      out[j] += s0 + s1 + s2 + s3;
    }
  }

  const sigmoid = (v) => 1 / (1 + Math.exp(-v));

  function gaussian(n) {
    // n draws of N(0, 1) (Box-Muller)
    const z = new Float64Array(n);
    for (let k = 0; k < n; k++) {
      z[k] = Math.sqrt(-2 * Math.log(1 - Math.random())) * Math.cos(2 * Math.PI * Math.random());
    }
    return z;
  }

  class Model {
    constructor(config, weights) {
      Object.assign(this, config);  // T, A, B, C, z_size, read_N, write_N, enc_size, dec_size, ...
      const w = weights, first = this.original_layout ? 0 : 1;
      this.readSize = this.C * (this.read_attn ? this.read_N ** 2 : this.A * this.B);
      this.writeSize = this.C * (this.write_attn ? this.write_N ** 2 : this.A * this.B);
      this.encoder = this.lstmWeights(w, 'encoder', 2 * this.readSize + this.dec_size + this.num_classes);
      this.decoder = this.lstmWeights(w, 'decoder', this.z_size + this.num_classes);
      this.fcMu = [w['fc_mu.weight'], w['fc_mu.bias'], this.z_size];  // Eq. 1
      this.fcSigma = [w['fc_sigma.weight'], w['fc_sigma.bias'], this.z_size];  // Eq. 2 (log sigma)
      // The decoder's outputs ("heads", as in draw_model.head_layers): the write w_t, then Eq. 21's
      // write window and read window (the 2019 layout: one window layer shared by both).
      const layers = this.original_layout ? ['fc_write', 'fc_attention']
        : ['fc_write', this.write_attn && 'fc_write_attention', this.read_attn && 'fc_read_attention'].filter(Boolean);
      this.heads = layers.map((name) => [w[name + '.weight'], w[name + '.bias'], w[name + '.bias'].length]);
      this.headsSize = this.heads.reduce((n, layer) => n + layer[2], 0);
      this.readStart = this.original_layout ? this.writeSize : this.headsSize - 5;
      this.writeStart = this.writeSize;
      this.offsets = (N) => Array.from({length: N}, (_, i) => i + first - N / 2 - 0.5);  // Eqs. 19-20's i - N/2 - 0.5
      this.pixelsA = Array.from({length: this.A}, (_, a) => a + first);
      this.pixelsB = Array.from({length: this.B}, (_, b) => b + first);
      this.canvasBias = w.canvas_bias || null;  // c_0: a learned bias, or 0 (the 2019 code)
    }

    lstmWeights(w, name, inputs) {
      const bias = new Float64Array(w[name + '.bias_ih'].length);
      for (let k = 0; k < bias.length; k++) bias[k] = w[name + '.bias_ih'][k] + w[name + '.bias_hh'][k];
      return {ih: w[name + '.weight_ih'], hh: w[name + '.weight_hh'], bias, inputs, size: bias.length / 4};
    }

    lstm(cell, input, label, state) {
      // PyTorch's LSTMCell, gates (i, f, g, o); the one-hot label adds its column of the input weights
      const n = cell.size, gates = Float64Array.from(cell.bias);
      addProduct(gates, cell.ih, input, 4 * n, cell.inputs);
      addProduct(gates, cell.hh, state.h, 4 * n);
      if (label !== null && label !== undefined) {
        const column = cell.inputs - this.num_classes + label;
        for (let j = 0; j < 4 * n; j++) gates[j] += cell.ih[j * cell.inputs + column];
      }
      const h = new Float64Array(n), c = new Float64Array(n);
      for (let k = 0; k < n; k++) {
        c[k] = sigmoid(gates[n + k]) * state.c[k] + sigmoid(gates[k]) * Math.tanh(gates[2 * n + k]);
        h[k] = sigmoid(gates[3 * n + k]) * Math.tanh(c[k]);
      }
      return {h, c};
    }

    linear([W, b, rows], x) {
      const out = Float64Array.from(b);
      addProduct(out, W, x, rows);
      return out;
    }

    decoderHeads(h) {
      const out = new Float64Array(this.headsSize);
      let start = 0;
      for (const layer of this.heads) {
        out.set(this.linear(layer, h), start);
        start += layer[2];
      }
      return out;
    }

    // -- attention ------------------------------------------------------------------------------
    windowParams(heads, start, N) {
      const [gx_, gy_, logSigma2, logDelta_, logGamma] = heads.subarray(start, start + 5);
      return {gx: (this.A + 1) / 2 * (gx_ + 1),  // Eq. 22
              gy: (this.B + 1) / 2 * (gy_ + 1),  // Eq. 23
              sigma2: Math.exp(logSigma2),
              delta: (Math.max(this.A, this.B) - 1) / (N - 1) * Math.exp(logDelta_),  // Eq. 24
              gamma: Math.exp(logGamma)};
    }

    filterbank(centre, sigma2, delta, offsets, pixels) {
      // (N, pixels) rows of Gaussians, each summing to 1 (Eqs. 19-20, 25-26)
      const N = offsets.length, P = pixels.length, F = new Float64Array(N * P);
      for (let i = 0; i < N; i++) {
        const mu = centre + offsets[i] * delta;
        let peak = -Infinity;
        for (let a = 0; a < P; a++) {
          F[i * P + a] = -((pixels[a] - mu) ** 2) / (2 * sigma2);
          peak = Math.max(peak, F[i * P + a]);
        }
        // the paper's layout: a softmax; the 2019 layout: exp / (sum + 1e-8)
        const shift = this.original_layout ? 0 : peak;
        let sum = 0;
        for (let a = 0; a < P; a++) sum += (F[i * P + a] = Math.exp(F[i * P + a] - shift));
        const Z = this.original_layout ? sum + 1e-8 : sum;
        for (let a = 0; a < P; a++) F[i * P + a] /= Z;
      }
      return F;
    }

    filters(heads, start, N) {
      const p = this.windowParams(heads, start, N), offsets = this.offsets(N);
      return {Fx: this.filterbank(p.gx, p.sigma2, p.delta, offsets, this.pixelsA),
              Fy: this.filterbank(p.gy, p.sigma2, p.delta, offsets, this.pixelsB), gamma: p.gamma};
    }

    box(heads, name) {
      // [centre x, centre y, side] in 0-based pixels, as draw_model.box; null without attention there
      if (!(name === 'read' ? this.read_attn : this.write_attn)) return null;
      const N = name === 'read' ? this.read_N : this.write_N;
      const p = this.windowParams(heads, name === 'read' ? this.readStart : this.writeStart, N);
      const mean = this.offsets(N).reduce((a, b) => a + b, 0) / N;
      const shift = mean * p.delta - this.pixelsA[0];
      return [p.gx + shift, p.gy + shift, N * p.delta];
    }

    // -- read and write -------------------------------------------------------------------------
    read(x, xHat, heads) {
      // r_t: gamma [Fy x Fx^T, Fy x_hat Fx^T] (Eq. 27); [x, x_hat] without attention (Eq. 17)
      const plane = this.A * this.B, r = new Float64Array(2 * this.readSize);
      if (!this.read_attn) {
        r.set(x);
        r.set(xHat, x.length);
        return r;
      }
      const N = this.read_N, {Fx, Fy, gamma} = this.filters(heads, this.readStart, N);
      const tmp = new Float64Array(this.B * N);
      [x, xHat].forEach((image, half) => {
        for (let ch = 0; ch < this.C; ch++) {
          const at = ch * plane, out = (half * this.C + ch) * N * N;
          for (let b = 0; b < this.B; b++) {  // tmp = image Fx^T, (B, N)
            for (let j = 0; j < N; j++) {
              let s = 0;
              for (let a = 0; a < this.A; a++) s += image[at + b * this.A + a] * Fx[j * this.A + a];
              tmp[b * N + j] = s;
            }
          }
          for (let i = 0; i < N; i++) {  // Fy tmp, (N, N)
            for (let j = 0; j < N; j++) {
              let s = 0;
              for (let b = 0; b < this.B; b++) s += Fy[i * this.B + b] * tmp[b * N + j];
              r[out + i * N + j] = gamma * s;
            }
          }
        }
      });
      return r;
    }

    write(heads) {
      // 1/gamma Fy^T w_t Fx (Eq. 29); w_t itself without attention (Eq. 18)
      if (!this.write_attn) return Float64Array.from(heads.subarray(0, this.writeSize));
      const plane = this.A * this.B, patch = new Float64Array(this.C * plane);
      const N = this.write_N, {Fx, Fy, gamma} = this.filters(heads, this.writeStart, N);
      const tmp = new Float64Array(N * this.A);
      for (let ch = 0; ch < this.C; ch++) {
        for (let i = 0; i < N; i++) {  // tmp = w Fx, (N, A)
          for (let a = 0; a < this.A; a++) {
            let s = 0;
            for (let j = 0; j < N; j++) s += heads[ch * N * N + i * N + j] * Fx[j * this.A + a];
            tmp[i * this.A + a] = s;
          }
        }
        for (let b = 0; b < this.B; b++) {  // Fy^T tmp, (B, A)
          for (let a = 0; a < this.A; a++) {
            let s = 0;
            for (let i = 0; i < N; i++) s += Fy[i * this.B + b] * tmp[i * this.A + a];
            patch[ch * plane + b * this.A + a] = s / gamma;
          }
        }
      }
      return patch;
    }

    // -- the recurrence -------------------------------------------------------------------------
    start() {
      const c = new Float64Array(this.C * this.A * this.B);
      if (this.canvasBias) c.set(this.canvasBias);
      const zeros = (n) => ({h: new Float64Array(n), c: new Float64Array(n)});
      return {c, enc: zeros(this.enc_size), dec: zeros(this.dec_size)};
    }

    decode(z, label, s) {
      // the decoder's half of a glimpse: h_dec (Eq. 7), w_t and the windows (Eqs. 28, 21), c_t (Eq. 8)
      s.dec = this.lstm(this.decoder, z, label, s.dec);
      const heads = this.decoderHeads(s.dec.h), patch = this.write(heads);
      for (let k = 0; k < s.c.length; k++) s.c[k] += patch[k];
      return heads;
    }

    generate(label = null, noise = null) {
      // a sample from the prior (Eqs. 13-16): every glimpse's canvas in [0, 1] and write box.
      // noise: T arrays of z_size N(0, 1) draws (fresh ones when null)
      const s = this.start(), canvases = [], boxes = [];
      for (let t = 0; t < this.T; t++) {
        const heads = this.decode(noise ? noise[t] : gaussian(this.z_size), label, s);  // Eq. 13: z ~ N(0, I)
        canvases.push(s.c.map(sigmoid));  // Eq. 16
        boxes.push(this.box(heads, 'write'));
      }
      return {canvases, boxes};
    }

    encode(x, label = null, noise = null) {
      // x redrawn by the encoder-decoder pass (Eqs. 3-8): every glimpse's canvas, read and write box
      // and z; the reconstruction and KL terms of -ELBO in nats (Eqs. 9-12)
      const s = this.start(), canvases = [], reads = [], writes = [], zs = [], kl = [];
      let heads = this.decoderHeads(s.dec.h);  // the first read window, from h_dec_0 = 0
      for (let t = 0; t < this.T; t++) {
        const xHat = x.map((v, k) => v - sigmoid(s.c[k]));  // Eq. 3
        reads.push(this.box(heads, 'read'));
        const r = this.read(x, xHat, heads);  // Eq. 4
        const input = new Float64Array(r.length + this.dec_size);
        input.set(r);
        input.set(s.dec.h, r.length);
        s.enc = this.lstm(this.encoder, input, label, s.enc);  // Eq. 5
        const mu = this.linear(this.fcMu, s.enc.h);  // Eq. 1
        const logSigma = this.linear(this.fcSigma, s.enc.h);  // Eq. 2
        const eps = noise ? noise[t] : gaussian(this.z_size);
        const z = mu.map((m, k) => m + Math.exp(logSigma[k]) * eps[k]);  // Eq. 6
        let divergence = 0;  // Eq. 11
        for (let k = 0; k < this.z_size; k++) {
          divergence += 0.5 * (mu[k] ** 2 + Math.exp(2 * logSigma[k]) - 2 * logSigma[k] - 1);
        }
        heads = this.decode(z, label, s);  // Eqs. 7-8
        canvases.push(s.c.map(sigmoid));
        writes.push(this.box(heads, 'write'));
        zs.push(z);
        kl.push(divergence);
      }
      let recon = 0;  // Eq. 9: -log D(x | c_T), a Bernoulli with logits c_T
      s.c.forEach((logit, k) => { recon += Math.max(logit, 0) - logit * x[k] + Math.log1p(Math.exp(-Math.abs(logit))); });
      const klSum = kl.reduce((a, b) => a + b, 0);
      return {canvases, reads, writes, zs, kl, recon, elbo: recon + klSum};  // Eq. 12 (as -ELBO)
    }
  }

  function load(data) {
    // the model the page embeds: {config, dtype, manifest, weights (base64)}
    return new Model(data.config, decodeWeights(data.weights, data.dtype, data.manifest));
  }

  return {Model, load, gaussian, halfToFloat};
})();
