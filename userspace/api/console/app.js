/* SK web console: polls every node's /api/v1/status (node list from the local
 * status's "cluster_nodes", or ?nodes=url1,url2), renders nodes, modules and a
 * transition timeline, and posts admin actions to this node with a bearer token.
 * All data goes into the page through textContent, never as HTML. */
'use strict';

const POLL_MS = 2000;
const FETCH_TIMEOUT_MS = 3000;
/* Longer than skd's own wait for an action (HttpServerOptions::actionTimeout, 60 s), so
 * a slow answer arrives (or skd's 503 "may still complete") instead of a false error. */
const ACTION_TIMEOUT_MS = 65000;
const TOKEN_KEY = 'sk.token';
const MIRROR_ACTIONS = ['start', 'stop', 'swap', 'prim', 'second', 'restart'];
const FARM_ACTIONS = ['start', 'stop', 'restart'];
const ACTION_HELP = {
  start: 'Start the module on this node.',
  stop: 'Stop the module on this node: the application stops here and the VIP is released.',
  swap: 'Move the application to the other node (a planned switchover).',
  prim: 'Start this node as the primary.',
  second: 'Start this node as the secondary.',
  restart: 'Stop then start the module on this node.',
};

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/* Operator colours: green PRIM/SECOND/UP, orange SECOND resyncing, magenta ALONE/WAIT, red STOP. */
function stateClass(state, phase) {
  switch (state) {
    case 'PRIM': case 'UP': return 'green';
    case 'SECOND': return phase === 'resyncing' ? 'orange' : 'green';
    case 'ALONE': case 'WAIT': return 'magenta';
    case 'STOP': return 'red';
    default: return 'grey';
  }
}

function splitLabel(label) {
  const [state, phase] = String(label || '').split('/');
  return { state, phase };
}

function moduleState(m) {
  const fromLabel = splitLabel(m.label);
  const state = m.state || fromLabel.state || '?';
  const phase = m.phase || fromLabel.phase || '';
  return { state, phase, text: m.label || state, cls: stateClass(state, phase) };
}

function badge(text, cls) {
  return h('span', { class: 'state s-' + cls, 'data-state-class': cls }, text);
}

function fmtTime(ms) {
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function fmtUptime(s) {
  if (typeof s !== 'number') return '';
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), mm = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${hh}h` : hh ? `${hh}h ${mm}m` : `${mm}m ${s % 60}s`;
}

function trimUrl(u) {
  return String(u || '').replace(/\/+$/, '');
}

async function fetchJson(url, options, timeoutMs) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), timeoutMs || FETCH_TIMEOUT_MS);
  try {
    const r = await fetch(url, Object.assign({ signal: ctl.signal, cache: 'no-store' }, options || {}));
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    return { ok: r.ok, status: r.status, body };
  } finally {
    clearTimeout(timer);
  }
}

const state = {
  origin: trimUrl(location.origin),
  extraUrls: (new URLSearchParams(location.search).get('nodes') || '')
    .split(',').map(trimUrl).filter((u) => u),
  nodes: [],
  lastRefresh: null,
};

/* The nodes to show: this one, then cluster_nodes from its status, then ?nodes=. */
function nodeList(local) {
  const nodes = [{ name: local.status ? local.status.node.name : 'this node', url: state.origin, local: true,
                   status: local.status, error: local.error }];
  const seen = new Set([state.origin]);
  const localName = local.status ? local.status.node.name : null;
  const listed = (local.status && Array.isArray(local.status.cluster_nodes)) ? local.status.cluster_nodes : [];
  for (const n of listed) {
    if (n.name === localName) continue;
    const url = trimUrl(n.http_url);
    if (!url || seen.has(url)) continue;
    seen.add(url);
    nodes.push({ name: n.name, id: n.id, url, local: false });
  }
  for (const url of state.extraUrls) {
    if (seen.has(url)) continue;
    seen.add(url);
    nodes.push({ name: url.replace(/^https?:\/\//, ''), url, local: false });
  }
  return nodes;
}

async function refresh() {
  let local;
  try {
    const r = await fetchJson('/api/v1/status');
    local = r.ok ? { status: r.body } : { error: `HTTP ${r.status}` };
  } catch (e) {
    local = { error: e.name === 'AbortError' ? 'timed out' : 'unreachable' };
  }
  const nodes = nodeList(local);
  await Promise.all(nodes.filter((n) => !n.local).map(async (n) => {
    try {
      const r = await fetchJson(n.url + '/api/v1/status');
      if (r.ok && r.body && r.body.node) {
        n.status = r.body;
        n.name = r.body.node.name;
      } else {
        n.error = `HTTP ${r.status}`;
      }
    } catch (e) {
      n.error = e.name === 'AbortError' ? 'timed out' : 'unreachable';
    }
  }));
  state.nodes = nodes;
  state.lastRefresh = new Date();
  render();
}

function render() {
  const local = state.nodes.find((n) => n.local);
  const cluster = state.nodes.map((n) => n.status && n.status.cluster).find((c) => c);
  document.getElementById('cluster').textContent = cluster ? `cluster ${cluster}` : 'cluster ?';
  document.title = cluster ? `SK console - ${cluster}` : 'SK console';
  const down = state.nodes.filter((n) => !n.status).length;
  const ref = document.getElementById('refreshed');
  ref.textContent = `updated ${fmtTime(state.lastRefresh.getTime()).slice(11)}` +
    (down ? ` - ${down} node${down > 1 ? 's' : ''} unreachable` : '');
  ref.classList.toggle('stale', down > 0 || !local || !local.status);
  renderNodes();
  renderModules();
  renderTimeline();
}

function renderNodes() {
  const box = document.getElementById('nodes');
  box.replaceChildren(...state.nodes.map((n) => {
    const s = n.status;
    const nets = s && s.heartbeat && Array.isArray(s.heartbeat.networks) ? s.heartbeat.networks : [];
    return h('div', { class: 'node' + (s ? '' : ' unreachable'), 'data-node': n.name },
      h('div', { class: 'name' }, h('span', { class: 'dot ' + (s ? 'ok' : 'bad') }), n.name,
        n.local ? h('span', { class: 'local-tag' }, 'THIS NODE') : null),
      h('div', { class: 'meta' }, s ? `id ${s.node.id} - skd ${s.version} - up ${fmtUptime(s.uptime_s)}` : n.url),
      s ? h('div', { class: 'meta' }, n.url) : null,
      nets.length ? h('div', { class: 'nets' }, nets.map((x) =>
        h('span', { class: 'net ' + (x.up ? 'up' : 'down') }, `${x.name} ${x.up ? 'up' : 'down'}`))) : null,
      n.error ? h('div', { class: 'err' }, `status: ${n.error}`) : null);
  }));
}

function moduleDetail(m, st) {
  const parts = [];
  if (m.peer && m.peer.name) {
    let p = `peer ${m.peer.name}: ${m.peer.up ? (m.peer.label || 'up') : 'not heard'}`;
    if (typeof m.peer.rtt_us === 'number' && m.peer.up) p += `, rtt ${(m.peer.rtt_us / 1000).toFixed(2)} ms`;
    parts.push(p);
  }
  if (m.type === 'farm' && typeof m.buckets_installed_here === 'number') {
    parts.push(`${m.buckets_installed_here}/${m.buckets} buckets here`);
    if (m.buckets_draining > 0) parts.push(`${m.buckets_draining} draining`);
    if (typeof m.connections_to_drain === 'number') {
      parts.push(`handed over, waiting for ${m.connections_to_drain} connection(s) to close`);
    }
  }
  if (m.note) parts.push(m.note);
  if (m.script_running) parts.push(`running ${m.script_running}`);
  const el = h('div', { class: 'detail' }, parts.join(' - '));
  if (st.cls === 'orange') {
    const pct = Math.max(0, Math.min(100, Number(m.resync_percent) || 0));
    const bar = h('div', {});
    bar.style.width = pct + '%';
    el.append(h('div', { class: 'progress', role: 'progressbar', 'aria-valuenow': pct, 'aria-valuemin': 0,
                         'aria-valuemax': 100, title: `resync ${pct}%` }, bar),
              h('div', {}, `resync ${pct}%`));
  }
  if (m.last_error) el.append(h('div', { class: 'err' }, m.last_error));
  return el;
}

function renderModules() {
  const byName = new Map();
  for (const n of state.nodes) {
    if (!n.status || !Array.isArray(n.status.modules)) continue;
    for (const m of n.status.modules) {
      if (!byName.has(m.name)) byName.set(m.name, { type: m.type, vips: m.vips || [], rows: [] });
      byName.get(m.name).rows.push({ node: n, m });
    }
  }
  const box = document.getElementById('modules');
  if (!byName.size) {
    box.replaceChildren(h('div', { class: 'empty' }, 'No module status yet.'));
    return;
  }
  box.replaceChildren(...[...byName.entries()].map(([name, mod]) =>
    h('div', { class: 'module', 'data-module': name },
      h('div', { class: 'module-head' },
        h('span', { class: 'mname' }, name),
        h('span', { class: 'mtype' }, mod.type || '?'),
        h('span', { class: 'vips' }, mod.vips.join('  '))),
      mod.rows.map(({ node, m }) => {
        const st = moduleState(m);
        const actions = (m.type === 'farm' ? FARM_ACTIONS : MIRROR_ACTIONS);
        return h('div', { class: 'mrow', 'data-node': node.name, 'data-module': name, 'data-state': st.state },
          h('div', { class: 'nname' }, node.name),
          h('div', {}, badge(st.text, st.cls)),
          moduleDetail(m, st),
          node.local
            ? h('div', { class: 'actions' }, actions.map((a) =>
                h('button', { class: 'btn' + (a === 'stop' ? ' danger' : ''), type: 'button', 'data-action': a,
                              title: ACTION_HELP[a], onclick: () => confirmAction(node, name, a, st.text) }, a)))
            : h('div', { class: 'actions' },
                h('a', { class: 'remote-link', href: node.url + '/', target: '_blank', rel: 'noopener' },
                  `actions on ${node.name}'s console`)));
      }))));
}

function renderTimeline() {
  const rows = [];
  for (const n of state.nodes) {
    if (!n.status || !Array.isArray(n.status.modules)) continue;
    for (const m of n.status.modules)
      for (const t of (Array.isArray(m.transitions) ? m.transitions : []))
        rows.push({ at: t.at_ms, node: n.name, module: m.name, from: t.from, to: t.to, cause: t.cause });
  }
  rows.sort((a, b) => b.at - a.at);
  const body = document.getElementById('timeline');
  if (!rows.length) {
    body.replaceChildren(h('tr', {}, h('td', { colspan: 5, class: 'empty' }, 'No transitions recorded.')));
    return;
  }
  const lb = (label) => { const s = splitLabel(label); return badge(label, stateClass(s.state, s.phase)); };
  body.replaceChildren(...rows.slice(0, 50).map((r) =>
    h('tr', {},
      h('td', { class: 'time' }, fmtTime(r.at)),
      h('td', {}, r.node),
      h('td', {}, r.module),
      h('td', {}, lb(r.from), h('span', { class: 'arrow' }, '\u2192'), lb(r.to)),
      h('td', {}, r.cause || ''))));
}

function toast(text, isError) {
  const t = h('div', { class: 'toast' + (isError ? ' error' : ''), role: 'status' }, text);
  document.getElementById('toasts').append(t);
  setTimeout(() => t.remove(), isError ? 9000 : 5000);
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

function confirmAction(node, module, action, current) {
  const dlg = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = `${action} ${module}`;
  document.getElementById('confirm-text').textContent =
    `${ACTION_HELP[action]} Module ${module} on ${node.name} is ${current}. Run "${action}" now?`;
  const noToken = !token();
  document.getElementById('confirm-warn').textContent = noToken ? 'Enter the admin token (top right) first.' : '';
  document.getElementById('confirm-ok').disabled = noToken;
  dlg.returnValue = '';
  dlg.onclose = () => {
    if (dlg.returnValue === 'ok') runAction(node, module, action);
  };
  dlg.showModal();
}

async function runAction(node, module, action) {
  const url = `${node.url}/api/v1/modules/${encodeURIComponent(module)}/${encodeURIComponent(action)}`;
  try {
    const r = await fetchJson(url, { method: 'POST', headers: { Authorization: 'Bearer ' + token() } },
                              ACTION_TIMEOUT_MS);
    if (r.ok) {
      const res = r.body && r.body.result;
      const one = Array.isArray(res) ? res[0] : res;
      toast(one && one.before ? `${action} ${module}: ${one.before} \u2192 ${one.after}` : `${action} ${module}: done`);
    } else {
      toast(`${action} ${module} failed (HTTP ${r.status}): ${(r.body && r.body.error) || 'no reason given'}`, true);
    }
  } catch (e) {
    toast(`${action} ${module}: ${e.name === 'AbortError' ? 'no answer in time' : 'node unreachable'}`, true);
  }
  refresh();
}

function setupToken() {
  const input = document.getElementById('token');
  const mark = document.getElementById('token-state');
  input.value = token();
  mark.textContent = token() ? 'saved' : '';
  document.getElementById('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = input.value.trim();
    if (v) sessionStorage.setItem(TOKEN_KEY, v); else sessionStorage.removeItem(TOKEN_KEY);
    mark.textContent = v ? 'saved' : '';
  });
}

async function loop() {
  try { await refresh(); } catch (e) { console.error(e); }
  setTimeout(loop, POLL_MS);
}

document.addEventListener('DOMContentLoaded', () => {
  setupToken();
  loop();
});
