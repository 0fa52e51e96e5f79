// The page's three parts on the model in draw.js: Write (samples drawn glimpse by glimpse), Your
// handwriting (a pad the encoder reads and the decoder redraws) and, for class-conditional models, As
// another character (the redrawing's z_t decoded with other labels). drawPage is the page's API, for
// its tests: drawPage.noise, when set to T arrays of z_size N(0, 1) draws, is used for the pad's
// redrawing instead of fresh noise; drawPage.stroke(points) draws on the pad; drawPage.last holds the
// pad's last redrawing.
'use strict';

// The largest model the page draws with, checked before anything is allocated: config.py's MODEL_CAPS
// (tests/test_hostile_checkpoints.py holds the two equal)
const MODEL_CAPS = {T: 128, A: 128, B: 128, read_N: 64, write_N: 64, z_size: 512, enc_size: 1024, dec_size: 1024,
  num_classes: 10000, name_chars: 200};

function checkCaps(config, classes) {
  // throws one line naming the first size of the embedded model, or of its class names, beyond MODEL_CAPS
  const sizes = {...config, num_classes: Math.max(config.num_classes, classes.length),
    name_chars: classes.reduce((longest, name) => Math.max(longest, [...String(name)].length), 0)};
  for (const [key, cap] of Object.entries(MODEL_CAPS)) {
    if (!(Number.isInteger(sizes[key]) && sizes[key] >= 0 && sizes[key] <= cap)) {
      throw new Error(`This page's model has ${key} = ${sizes[key]}, not a whole number up to ${cap} (config.py's `
        + 'MODEL_CAPS): the page is damaged; write it again with generate.py -html.');
    }
  }
}

const drawPage = (() => {
  const opened = performance.now();
  const data = JSON.parse(document.getElementById('model').textContent);
  try {
    checkCaps(data.config, data.about.classes);
  } catch (error) {
    document.body.textContent = error.message;
    throw error;
  }
  const model = DRAW.load(data), about = data.about;
  const {T, A, B, C} = model;
  const READ = '#3c3', WRITE = '#e33';
  const $ = (id) => document.getElementById(id);
  const page = {model, about, noise: null, last: null, loadMs: performance.now() - opened};  // loadMs: weights decoded
  const conditional = model.num_classes > 0;

  // Class names come from data files and checkpoints: they reach the page as text nodes and
  // attributes, never as HTML
  const className = (k) => about.classes[k].replace(/^character_\d+_/, '');
  function picture(k) {
    // the class's glyph as a picture (the page carries them: a reader may have no Devanagari font)
    const img = document.createElement('img');
    img.src = about.glyphs[k];  // a data: URL of a PNG, written by webpage.py
    img.alt = img.title = about.classes[k];
    return img;
  }
  const glyph = (k) => (about.glyphs[k] ? picture(k) : document.createTextNode(className(k)));

  // -- pictures -----------------------------------------------------------------------------------
  function show(canvas, image, boxes = []) {
    // image: C*B*A values in [0, 1], grey (or RGB for 3 channels), scaled up; boxes: [box, colour] pairs
    const plane = A * B, small = new ImageData(A, B);
    for (let k = 0; k < plane; k++) {
      for (let ch = 0; ch < 3; ch++) {
        small.data[4 * k + ch] = 255 * Math.min(1, Math.max(0, image[(C === 3 ? ch : 0) * plane + k]));
      }
      small.data[4 * k + 3] = 255;
    }
    const offscreen = document.createElement('canvas');
    offscreen.width = A;
    offscreen.height = B;
    offscreen.getContext('2d').putImageData(small, 0, 0);
    const ctx = canvas.getContext('2d'), sx = canvas.width / A, sy = canvas.height / B;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(offscreen, 0, 0, canvas.width, canvas.height);
    for (const [box, colour] of boxes) {
      if (!box) continue;
      const [x, y, side] = [(box[0] + 0.5) * sx, (box[1] + 0.5) * sy, box[2] * sx];  // pixel k spans [k, k+1)
      ctx.strokeStyle = ctx.fillStyle = colour;
      ctx.lineWidth = 2;
      ctx.strokeRect(x - side / 2, y - side / 2, side, side);
      ctx.fillRect(x - 2, y - 2, 4, 4);
    }
  }

  function animate(frames, draw, done) {
    // draw(t) for t = 0..frames-1 at the pace chosen; returns a stop function
    let t = 0, timer = null;
    const next = () => {
      draw(t);
      timer = ++t < frames ? setTimeout(next, pace()) : (done ? setTimeout(done, 1500) : null);
    };
    next();
    return () => clearTimeout(timer);
  }

  const pace = () => Number($('pace').value);

  // -- Write: a sample, glimpse by glimpse ----------------------------------------------------------
  let sampleLabel = conditional ? 0 : null, sample = null, shown = 0, stopSample = () => {};
  function drawSample(t) {
    shown = t;
    show($('sample'), sample.canvases[t], $('show-write').checked ? [[sample.boxes[t], WRITE]] : []);
    $('sample-status').textContent = `glimpse ${t + 1} of ${T}` + (conditional ? ` · ${className(sampleLabel)}` : '')
      + ` · sampled in ${sample.ms.toFixed(0)} ms`;
  }
  function newSample() {
    stopSample();
    const t0 = performance.now();
    sample = model.generate(sampleLabel);
    sample.ms = performance.now() - t0;
    if ($('play').textContent === 'Pause') stopSample = animate(T, drawSample, newSample);
    else drawSample(0);
  }
  $('another').onclick = newSample;
  $('play').onclick = () => {
    const playing = $('play').textContent === 'Pause';
    $('play').textContent = playing ? 'Play' : 'Pause';
    stopSample();
    if (!playing) stopSample = animate(T - shown, (t) => drawSample(shown + (t ? 1 : 0)), newSample);
  };
  $('step').onclick = () => {
    stopSample();
    $('play').textContent = 'Play';
    if (shown + 1 < T) drawSample(shown + 1);
    else newSample();
  };
  $('pace').oninput = () => { $('pace-ms').textContent = `${pace()} ms per glimpse`; };
  $('show-write').onchange = () => drawSample(shown);
  if (conditional) {
    about.classes.forEach((name, k) => {
      const button = document.createElement('button');
      button.appendChild(glyph(k));
      button.title = name;
      button.onclick = () => {
        sampleLabel = k;
        document.querySelectorAll('#sample-classes button').forEach((b, j) => b.classList.toggle('chosen', j === k));
        newSample();
      };
      $('sample-classes').appendChild(button);
    });
    $('sample-classes').firstChild.classList.add('chosen');
  }

  // -- Your handwriting: a pad at the model's size --------------------------------------------------
  const pad = $('pad'), scale = Math.max(1, Math.floor(256 / Math.max(A, B)));
  pad.width = A * scale;
  pad.height = B * scale;
  const ink = pad.getContext('2d', {willReadFrequently: true});
  let pen = null, stopRedraw = () => {};
  function clearPad() {
    ink.fillStyle = '#000';
    ink.fillRect(0, 0, pad.width, pad.height);
  }
  function at(e) {
    const r = pad.getBoundingClientRect();
    return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
  }
  function line(from, to) {
    ink.strokeStyle = '#fff';
    ink.lineWidth = 2.4 * scale;  // about the width of the data's strokes, in the model's pixels
    ink.lineCap = ink.lineJoin = 'round';
    ink.beginPath();
    ink.moveTo(...from);
    ink.lineTo(...to);
    ink.stroke();
  }
  pad.addEventListener('pointerdown', (e) => {
    if (pad.setPointerCapture && e.isTrusted) pad.setPointerCapture(e.pointerId);
    pen = at(e);
    line(pen, pen);
    e.preventDefault();
  });
  pad.addEventListener('pointermove', (e) => {
    if (!pen) return;
    const to = at(e);
    line(pen, to);
    pen = to;
  });
  const lift = () => { if (pen) { pen = null; readPad(); } };
  pad.addEventListener('pointerup', lift);
  pad.addEventListener('pointercancel', lift);

  function padImage() {
    // the pad averaged over blocks of scale x scale pixels: the model's B x A grey image (C copies)
    const pixels = ink.getImageData(0, 0, pad.width, pad.height).data, x = new Float64Array(C * A * B);
    for (let b = 0; b < B; b++) {
      for (let a = 0; a < A; a++) {
        let sum = 0;
        for (let v = 0; v < scale; v++) {
          for (let u = 0; u < scale; u++) sum += pixels[4 * ((b * scale + v) * pad.width + a * scale + u)];
        }
        const grey = sum / (255 * scale * scale), value = about.threshold ? Number(grey >= 0.5) : grey;
        for (let ch = 0; ch < C; ch++) x[ch * A * B + b * A + a] = value;
      }
    }
    return x;
  }

  function readPad() {
    const x = padImage();
    if (!x.some((v) => v > 0)) {
      $('pad-status').textContent = 'Write something.';
      return;
    }
    const t0 = performance.now();
    const noise = page.noise || Array.from({length: T}, () => DRAW.gaussian(model.z_size));
    let label = null, guessed = false;
    if (conditional) {  // the character asked, or the one whose label gives the lowest -ELBO
      label = $('wrote').value === 'auto' ? null : Number($('wrote').value);
      if (label === null) {
        const elbos = about.classes.map((_, k) => model.encode(x, k, noise).elbo);
        label = elbos.indexOf(Math.min(...elbos));
        guessed = true;
      }
    }
    const result = model.encode(x, label, noise), ms = performance.now() - t0;
    page.last = {x: Array.from(x), label, noise: noise.map((z) => Array.from(z)), ...result};
    const kl = result.kl.reduce((a, b) => a + b, 0);
    const elbo = document.createElement('b'), read = [];
    elbo.textContent = `${result.elbo.toFixed(1)} nats`;
    if (conditional) {
      const inline = about.glyphs[label] ? [Object.assign(picture(label), {className: 'inline', alt: ''}), ' '] : [];
      read.push(document.createElement('br'), `${guessed ? 'read as' : 'as'} `, ...inline, className(label));
    }
    $('pad-status').replaceChildren('−ELBO of your drawing: ', elbo, ` (reconstruction ${result.recon.toFixed(1)}`
      + ` + KL ${kl.toFixed(1)}; one posterior sample)`, ...read, ` · ${ms.toFixed(0)} ms`);
    stopRedraw();
    stopRedraw = animate(T, (t) => {
      show($('seen'), x, [[result.reads[t], READ]]);
      show($('redraw'), result.canvases[t], [[result.writes[t], WRITE]]);
    });
    if (conditional) showOthers(result.zs, label);
  }

  function showOthers(zs, own) {
    $('transfer').classList.remove('hidden');
    $('others').replaceChildren();
    about.classes.forEach((_, k) => {
      if (k === own) return;
      const figure = document.createElement('figure'), canvas = document.createElement('canvas');
      canvas.className = 'view';
      canvas.width = canvas.height = 4 * Math.max(A, B);
      show(canvas, model.generate(k, zs).canvases[T - 1]);
      figure.append(canvas, glyph(k));
      $('others').appendChild(figure);
    });
  }

  page.stroke = (points) => {
    // a stroke through points ([x, y] in [0, 1] of the pad), sent as the pointer events a mouse sends
    const r = pad.getBoundingClientRect(), send = (type, [x, y]) => pad.dispatchEvent(new PointerEvent(type,
      {clientX: r.left + x * r.width, clientY: r.top + y * r.height, pointerId: 1, bubbles: true}));
    send('pointerdown', points[0]);
    points.slice(1).forEach((p) => send('pointermove', p));
    send('pointerup', points[points.length - 1]);
  };

  $('clear').onclick = () => {
    stopRedraw();
    clearPad();
    [$('seen'), $('redraw')].forEach((c) => c.getContext('2d').clearRect(0, 0, c.width, c.height));
    $('transfer').classList.add('hidden');
    $('pad-status').textContent = 'Write something.';
  };
  $('again').onclick = readPad;
  if (conditional) {
    $('wrote-row').classList.remove('hidden');
    $('wrote').add(new Option('(let DRAW guess: the lowest −ELBO)', 'auto'));
    about.classes.forEach((_, k) => $('wrote').add(new Option(className(k), String(k))));
    $('wrote').onchange = readPad;
  }

  // -- what this page holds -----------------------------------------------------------------------
  const trained = about.data ? `trained on ${about.data}` + (about.epoch ? ` for ${about.epoch} epochs` : '') : '';
  const attention = model.read_attn || model.write_attn
    ? `read ${model.read_attn ? `${model.read_N}×${model.read_N}` : 'whole image'}, write `
      + `${model.write_attn ? `${model.write_N}×${model.write_N}` : 'whole canvas'}` : 'no attention';
  $('about').textContent = `${about.title}: ${T} glimpses on a ${A}×${B} canvas (${attention}), z of ${model.z_size}`
    + ` per glimpse${conditional ? `, ${model.num_classes} characters` : ''}${trained ? `; ${trained}` : ''}.`;
  $('size').textContent = `${A}×${B}`;
  $('footer').textContent = `DRAW (Gregor et al. 2015, arXiv:1502.04623), its equations in plain JavaScript in `
    + `this one file: ${about.weights.toLocaleString('en')} weights stored in ${about.dtype}, nothing loaded from the `
    + `network. Written by generate.py -html.`;
  $('pace').oninput();
  clearPad();
  newSample();
  return page;
})();
