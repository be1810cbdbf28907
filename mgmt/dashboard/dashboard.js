// Ferry management dashboard: polls GET /api/v1/volumes with the bearer token and draws, per
// volume, live charts of IOPS, cache hit ratio per tier, WAN throughput and savings, write-back
// lag and migration (background streaming) progress. Plain JS and <canvas>, no libraries.
// Each canvas carries data-points (samples drawn), data-last (newest value of its first series)
// and data-max (largest value drawn) so tests can check what was drawn (tests/integration/dashboard_test.sh).
'use strict';

const params = new URLSearchParams(location.search);
const pollMs = Math.max(200, Number(params.get('interval')) || 1000);
const keep = 120;            // samples kept per volume (two minutes at the default interval)
const samplesByVolume = new Map();  // volume name -> samples, newest last
const colors = ['#2b6cb0', '#c05621', '#2f855a', '#6b46c1'];
let token = sessionStorage.getItem('ferry-token') || '';

function takeTokenFromFragment() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!m) return;
  token = decodeURIComponent(m[1]);
  sessionStorage.setItem('ferry-token', token);
  // Keep the token out of the address bar (and of bookmarks) once it is stored for the tab.
  window.history.replaceState(null, '', location.pathname + location.search);
}

function setStatus(state, text) {
  const s = document.getElementById('status');
  s.dataset.state = state;
  s.textContent = text;
}

function fmtBytes(n) {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(n < 10 ? 2 : 1)) + ' ' + units[i];
}
const fmt = {
  iops: (v) => (v >= 1000 ? (v / 1000).toFixed(1) + ' K' : v.toFixed(0)),
  pct: (v) => v.toFixed(1) + ' %',
  rate: (v) => fmtBytes(v) + '/s',
  sec: (v) => (v < 1 ? (v * 1000).toFixed(0) + ' ms' : v.toFixed(1) + ' s'),
};

// One volume answer of the API -> the plain numbers the charts need.
function sampleOf(v, t) {
  const s = {t, reads: v.io.reads, writes: v.io.writes, tiers: {}};
  for (const tier of v.cache || []) s.tiers[tier.tier] = {hits: tier.hits, misses: tier.misses};
  if (v.wan) {
    s.wanRawIn = v.wan.raw_bytes_in; s.wanSentIn = v.wan.sent_bytes_in;
    s.wanRawOut = v.wan.raw_bytes_out;
  }
  if (v.journal) s.lagS = v.journal.write_back_lag_ms / 1000;
  if (v.stream) s.streamPct = v.stream.percent;
  return s;
}

// Derived series over a volume's samples: rates and interval ratios from deltas.
function series(samples) {
  const out = {readIops: [], writeIops: [], hit: {}, wanRaw: [], wanSent: [], wanOut: [],
               savings: [], lag: [], stream: []};
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i], dt = (b.t - a.t) / 1000;
    if (dt <= 0) continue;
    out.readIops.push((b.reads - a.reads) / dt);
    out.writeIops.push((b.writes - a.writes) / dt);
    for (const name of Object.keys(b.tiers)) {
      const x = a.tiers[name], y = b.tiers[name];
      if (!x) continue;
      const dh = y.hits - x.hits, dl = dh + (y.misses - x.misses);
      const total = y.hits + y.misses;
      // An interval without lookups shows the ratio since start rather than a gap.
      const r = dl > 0 ? dh / dl : (total > 0 ? y.hits / total : 0);
      (out.hit[name] = out.hit[name] || []).push(100 * r);
    }
    if (b.wanRawIn !== undefined) {
      out.wanRaw.push((b.wanRawIn - a.wanRawIn) / dt);
      out.wanSent.push((b.wanSentIn - a.wanSentIn) / dt);
      out.wanOut.push((b.wanRawOut - a.wanRawOut) / dt);
      out.savings.push(b.wanRawIn > 0 ? 100 * (1 - b.wanSentIn / b.wanRawIn) : 0);
    }
    if (b.lagS !== undefined) out.lag.push(b.lagS);
    if (b.streamPct !== undefined) out.stream.push(b.streamPct);
  }
  return out;
}

function drawChart(canvas, lines, opts) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 300, h = canvas.clientHeight || 140;
  canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  const g = canvas.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const all = lines.flatMap((l) => l.values);
  let max = opts.max !== undefined ? opts.max : Math.max(1e-9, ...all) * 1.15;
  const min = 0, padL = 58, padB = 16, padT = 6, plotW = w - padL - 6, plotH = h - padB - padT;
  g.strokeStyle = '#e3e6eb'; g.fillStyle = '#4a5466'; g.font = '11px system-ui, sans-serif';
  for (let k = 0; k <= 2; k++) {
    const y = padT + plotH * (1 - k / 2);
    g.beginPath(); g.moveTo(padL, y); g.lineTo(padL + plotW, y); g.stroke();
    g.fillText(opts.fmt(min + (max - min) * k / 2), 2, y + 4);
  }
  lines.forEach((l, idx) => {
    if (!l.values.length) return;
    g.strokeStyle = colors[idx % colors.length]; g.lineWidth = 1.8; g.beginPath();
    l.values.forEach((v, i) => {
      const x = padL + (l.values.length === 1 ? plotW : plotW * i / (keep - 2));
      const y = padT + plotH * (1 - (Math.min(v, max) - min) / (max - min));
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
    g.fillStyle = colors[idx % colors.length];
    g.fillText(l.name, padL + 4 + idx * 90, h - 3);
  });
  const first = lines.find((l) => l.values.length);
  canvas.dataset.points = String(Math.max(0, ...lines.map((l) => l.values.length)));
  canvas.dataset.last = first ? String(first.values[first.values.length - 1]) : '';
  canvas.dataset.max = all.length ? String(Math.max(...all)) : '';
  return first ? opts.fmt(first.values[first.values.length - 1]) : '–';
}

// The chart figure for one metric of one volume, created on first use.
function figure(section, id, title) {
  let c = document.getElementById(id);
  if (c) return c;
  const f = document.createElement('figure');
  const cap = document.createElement('figcaption');
  const name = document.createElement('span'); name.textContent = title;
  const now = document.createElement('span'); now.className = 'now'; now.id = id + '-now';
  cap.append(name, now);
  c = document.createElement('canvas'); c.id = id; c.dataset.points = '0';
  f.append(cap, c);
  section.querySelector('.grid').append(f);
  return c;
}

function volumeSection(name, stack) {
  const id = 'vol-' + name;
  let s = document.getElementById(id);
  if (s) return s;
  s = document.createElement('section'); s.className = 'volume'; s.id = id;
  const h = document.createElement('h2'); h.textContent = name + ' — ' + stack;
  const grid = document.createElement('div'); grid.className = 'grid';
  s.append(h, grid);
  document.getElementById('charts').append(s);
  return s;
}

function cell(row, key, text) {
  let td = row.querySelector('[data-key="' + key + '"]');
  if (!td) { td = document.createElement('td'); td.dataset.key = key; row.append(td); }
  td.textContent = text;
}

function render(volumes) {
  const tbody = document.querySelector('#volumes tbody');
  for (const v of volumes) {
    const d = series(samplesByVolume.get(v.name));
    const sec = volumeSection(v.name, v.stack);
    const chart = (metric, title, lines, opts) => {
      const id = 'chart-' + v.name + '-' + metric;
      const now = drawChart(figure(sec, id, title), lines, opts);
      document.getElementById(id + '-now').textContent = now;
      return now;
    };
    const iopsR = chart('iops', 'IOPS', [{name: 'read', values: d.readIops},
                                         {name: 'write', values: d.writeIops}], {fmt: fmt.iops});
    const iopsW = d.writeIops.length ? fmt.iops(d.writeIops[d.writeIops.length - 1]) : '–';
    const tiers = Object.keys(d.hit);
    const hit = tiers.length
      ? chart('hit', 'Cache hit ratio', tiers.map((t) => ({name: t, values: d.hit[t]})),
              {fmt: fmt.pct, max: 100})
      : '–';
    let wanIn = '–', savings = '–', lag = '–', mig = '–';
    if (v.wan) {
      wanIn = chart('wan', 'WAN throughput', [{name: 'in raw', values: d.wanRaw},
                                              {name: 'in sent', values: d.wanSent},
                                              {name: 'out raw', values: d.wanOut}], {fmt: fmt.rate});
      savings = chart('savings', 'WAN savings (in, since start)', [{name: 'saved', values: d.savings}],
                      {fmt: fmt.pct, max: 100});
    }
    if (v.journal) lag = chart('lag', 'Write-back lag', [{name: 'lag', values: d.lag}], {fmt: fmt.sec});
    if (v.stream) mig = chart('stream', 'Migration (background streaming)',
                              [{name: 'done', values: d.stream}], {fmt: fmt.pct, max: 100});
    let row = document.getElementById('row-' + v.name);
    if (!row) { row = document.createElement('tr'); row.id = 'row-' + v.name; tbody.append(row); }
    cell(row, 'name', v.name);
    cell(row, 'stack', v.stack);
    cell(row, 'size', fmtBytes(v.size_bytes));
    cell(row, 'read-iops', iopsR);
    cell(row, 'write-iops', iopsW);
    cell(row, 'hit', hit);
    cell(row, 'wan-in', wanIn);
    cell(row, 'savings', savings);
    cell(row, 'lag', lag);
    cell(row, 'migration', mig);
  }
}

async function poll() {
  if (!token) { document.getElementById('login').hidden = false; setStatus('login', 'no token'); return; }
  try {
    const r = await fetch('/api/v1/volumes', {headers: {Authorization: 'Bearer ' + token},
                                              cache: 'no-store'});
    if (r.status === 401) {
      sessionStorage.removeItem('ferry-token'); token = '';
      document.getElementById('login').hidden = false;
      setStatus('error', 'token refused (401)');
      return;
    }
    if (!r.ok) throw new Error('HTTP ' + r.status);
    const body = await r.json();
    const t = body.time_ms;  // the daemon's clock: rates stay true however late a poll runs
    document.getElementById('daemon').textContent = body.daemon;
    for (const v of body.volumes) {
      const h = samplesByVolume.get(v.name) || [];
      h.push(sampleOf(v, t));
      if (h.length > keep) h.shift();
      samplesByVolume.set(v.name, h);
    }
    render(body.volumes);
    const n = (samplesByVolume.get(body.volumes[0] && body.volumes[0].name) || []).length;
    setStatus('live', body.volumes.length + ' volume(s), ' + n + ' samples, updated ' +
              new Date(t).toLocaleTimeString());
  } catch (e) {
    setStatus('error', 'poll failed: ' + e.message);
  }
  setTimeout(poll, pollMs);
}

document.getElementById('login').addEventListener('submit', (e) => {
  e.preventDefault();
  token = document.getElementById('token').value.trim();
  sessionStorage.setItem('ferry-token', token);
  document.getElementById('login').hidden = true;
  poll();
});
takeTokenFromFragment();
poll();
