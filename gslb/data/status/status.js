(() => {
  'use strict';
  const CFG = __CONFIG__;
  const svg = document.getElementById('map');
  const NS = svg.namespaceURI;  // the SVG namespace, without spelling out a URL
  const byId = (id) => document.getElementById(id);
  const COLORS = {
    routable: '#22c55e', panic: '#f59e0b', draining: '#3b82f6', unroutable: '#ef4444',
  };
  const STATE_TEXT = {
    routable: 'routable', panic: 'panic', draining: 'draining', unroutable: 'not routable',
  };
  const ENDPOINT_STATES = ['up', 'down', 'fleet_down', 'ejected', 'cordoned', 'draining'];
  const DROP_REASONS = ['oversized', 'malformed', 'stale', 'expired'];
  const DECISIONS = ['local', 'spill', 'failover', 'local-queued', 'standby', 'no-region'];
  let lastOk = null;
  let refreshes = 0;

  function h(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function s(tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function num(v) { return typeof v === 'number' && Number.isFinite(v) ? v : null; }
  function str(v) { return v === undefined || v === null ? '' : String(v); }
  function list(v) { return Array.isArray(v) ? v : []; }
  function fixed(v, digits) { const n = num(v); return n === null ? '—' : n.toFixed(digits); }
  function project(lat, lon) {
    return [(lon + 180) / 360 * CFG.width, (90 - lat) / 180 * CFG.height];
  }
  function regionState(r) {
    if (r.draining === true) return 'draining';
    if (r.routable !== true) return 'unroutable';
    if (r.panic === true) return 'panic';
    return 'routable';
  }
  function endpointClass(state) {
    return ENDPOINT_STATES.includes(state) ? 's-' + state : 's-other';
  }
  function radius(r) {
    return Math.min(CFG.maxRadius, 5 + 1.2 * Math.sqrt(Math.max(0, num(r.inflight) || 0)));
  }
  function duration(sec) {
    const t = Math.max(0, Math.floor(num(sec) || 0));
    const d = Math.floor(t / 86400), hh = Math.floor(t % 86400 / 3600);
    const m = Math.floor(t % 3600 / 60), ss = t % 60;
    if (d) return d + 'd ' + hh + 'h';
    if (hh) return hh + 'h ' + m + 'm';
    if (m) return m + 'm ' + ss + 's';
    return ss + 's';
  }
  function clock(d) { return d.toTimeString().slice(0, 8); }
  function record(v) { return v && typeof v === 'object' && !Array.isArray(v) ? v : null; }

  function drawMap(regions, spills) {
    const layerS = byId('spills'), layerR = byId('regions'), layerL = byId('labels');
    const placed = new Map();
    const items = [];
    for (const r of regions) {
      const loc = list(r.location);
      const lat = num(loc[0]), lon = num(loc[1]);
      if (lat === null || lon === null) continue;
      const [x, y] = project(lat, lon);
      const item = { r, x, y, rad: radius(r), state: regionState(r), name: str(r.name) };
      items.push(item);
      placed.set(item.name, item);
    }
    // Spill arrows: a quadratic curve from the source's rim to the target's rim.
    const arrows = [];
    let maxCount = 1;
    for (const sp of list(spills)) maxCount = Math.max(maxCount, num(sp && sp.count) || 0);
    for (const sp of list(spills)) {
      if (!sp || typeof sp !== 'object') continue;
      const a = placed.get(str(sp.from)), b = placed.get(str(sp.to));
      const count = Math.max(0, num(sp.count) || 0);
      if (!a || !b || a === b || count <= 0) continue;
      const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy);
      if (len < 1) continue;
      // Bend the curve sideways; neighbours get a taller hop so the arrow clears both circles.
      const off = Math.max(len * 0.22, a.rad + b.rad + 24 - len * 0.5);
      const cx = (a.x + b.x) / 2 + dy / len * off, cy = (a.y + b.y) / 2 - dx / len * off;
      const from = towards(a, cx, cy, a.rad + 2), to = towards(b, cx, cy, b.rad + 6);
      const width = 1.5 + 3.5 * Math.sqrt(count / maxCount);
      const path = s('path', {
        class: 'spill',
        d: 'M' + pt(from[0], from[1]) + 'Q' + pt(cx, cy) + ' ' + pt(to[0], to[1]),
        'stroke-width': f(width), 'marker-end': 'url(#spill-arrow)',
        'data-from': a.name, 'data-to': b.name, 'data-count': count,
      });
      path.appendChild(s('title', {}, a.name + ' → ' + b.name + ': ' + count + ' spilled'));
      let mx = 0.25 * from[0] + 0.5 * cx + 0.25 * to[0];
      let my = 0.25 * from[1] + 0.5 * cy + 0.25 * to[1];
      const text = String(count);
      const g = s('g', { class: 'spill-tag' });
      const w = 7 + text.length * 5.6;
      // Short arrows: push the count tag outwards until it clears both circles.
      const px = cx - (a.x + b.x) / 2, py = cy - (a.y + b.y) / 2, plen = Math.hypot(px, py) || 1;
      for (let k = 0; k < 8 && (hits(mx, my, w, a) || hits(mx, my, w, b)); k++) {
        mx += px / plen * 4;
        my += py / plen * 4;
      }
      g.appendChild(s('rect', {
        class: 'spill-count-bg', x: f(mx - w / 2), y: f(my - 6.5), width: f(w), height: 13, rx: 6.5,
      }));
      g.appendChild(s('text', { class: 'spill-count', x: f(mx), y: f(my + 3.2) }, text));
      arrows.push(path, g);
    }
    // Bigger circles first, so small ones stay clickable and visible on top.
    items.sort((p, q) => q.rad - p.rad);
    const circles = [];
    for (const it of items) {
      const color = COLORS[it.state];
      const role = str(it.r.role) === 'standby' ? 'standby' : 'active';
      const c = s('circle', {
        class: 'region state-' + it.state + ' role-' + role, cx: f(it.x), cy: f(it.y), r: f(it.rad),
        fill: color, stroke: color, 'data-region': it.name, 'data-state': it.state,
        'data-role': role, 'data-inflight': num(it.r.inflight) || 0,
      });
      const tip = it.name + ' — ' + STATE_TEXT[it.state] + ', ' + (num(it.r.inflight) || 0) +
        ' in flight' + (role === 'standby' ? ', standby' : '');
      c.appendChild(s('title', {}, tip));
      const core = s('circle', { class: 'core', cx: f(it.x), cy: f(it.y), r: 2.2, fill: color });
      circles.push(c, core);
    }
    const labels = placeLabels(items);
    layerS.replaceChildren(...arrows);
    layerR.replaceChildren(...circles);
    layerL.replaceChildren(...labels);
  }
  function hits(x, y, w, c) {
    const nx = Math.max(x - w / 2, Math.min(c.x, x + w / 2));
    const ny = Math.max(y - 6.5, Math.min(c.y, y + 6.5));
    return Math.hypot(nx - c.x, ny - c.y) < c.rad + 1;
  }
  function pt(x, y) { return f(x) + ',' + f(y); }
  function f(v) { return (Math.round(v * 10) / 10).toString(); }
  function towards(p, x, y, d) {
    const dx = x - p.x, dy = y - p.y, len = Math.hypot(dx, dy) || 1;
    return [p.x + dx / len * d, p.y + dy / len * d];
  }
  // Greedy label placement: try a few spots around each circle, keep the least crowded one.
  function placeLabels(items) {
    const boxes = [];
    const out = [];
    const ordered = items.slice().sort((p, q) => p.x - q.x);
    for (const it of ordered) {
      const w = it.name.length * 6.1 + 2, hgt = 11, gap = 3;
      const spots = [
        [it.x + it.rad + gap, it.y - hgt / 2, 'start'],
        [it.x - it.rad - gap - w, it.y - hgt / 2, 'end'],
        [it.x - w / 2, it.y - it.rad - gap - hgt, 'middle'],
        [it.x - w / 2, it.y + it.rad + gap, 'middle'],
        [it.x + it.rad * 0.7 + gap, it.y - it.rad * 0.7 - hgt, 'start'],
        [it.x + it.rad * 0.7 + gap, it.y + it.rad * 0.7, 'start'],
        [it.x - it.rad * 0.7 - gap - w, it.y - it.rad * 0.7 - hgt, 'end'],
        [it.x - it.rad * 0.7 - gap - w, it.y + it.rad * 0.7, 'end'],
      ];
      let best = null, bestScore = Infinity;
      for (const [x, y, anchor] of spots) {
        const box = { x, y, w, h: hgt };
        let score = 0;
        for (const b of boxes) score += overlap(box, b);
        for (const o of items) if (o !== it) score += overlapCircle(box, o) * 0.8;
        const outside = box.x < 0 || box.x + w > CFG.width || box.y < CFG.top ||
          box.y + hgt > CFG.top + CFG.viewHeight;
        if (outside) score += 1000;
        if (score < bestScore - 0.01) { best = { box, anchor }; bestScore = score; }
      }
      boxes.push(best.box);
      const tx = best.anchor === 'start' ? best.box.x
        : best.anchor === 'end' ? best.box.x + w : best.box.x + w / 2;
      out.push(s('text', {
        class: 'label state-' + it.state, x: f(tx), y: f(best.box.y + hgt - 2),
        'text-anchor': best.anchor, 'data-region': it.name,
      }, it.name));
    }
    return out;
  }
  function overlap(a, b) {
    const x = Math.max(0, Math.min(a.x + a.w, b.x + b.w) - Math.max(a.x, b.x));
    const y = Math.max(0, Math.min(a.y + a.h, b.y + b.h) - Math.max(a.y, b.y));
    return x * y;
  }
  function overlapCircle(a, c) {
    const box = { x: c.x - c.rad, y: c.y - c.rad, w: 2 * c.rad, h: 2 * c.rad };
    return overlap(a, box);
  }

  function cell(text, cls) { return h('td', cls || '', text); }
  function badge(text, cls) {
    const td = h('td');
    td.appendChild(h('span', 'badge ' + cls, text));
    return td;
  }
  function utilCell(u) {
    const td = h('td', 'num');
    const v = num(u);
    if (v === null) { td.textContent = '—'; return td; }
    const wrap = h('span', 'util');
    const track = h('span', 'track');
    const fill = h('span', 'fill' + (v >= 1 ? ' over' : v >= CFG.hotUtil ? ' hot' : ''));
    fill.style.width = Math.min(100, Math.max(0, v * 100)).toFixed(1) + '%';
    fill.style.display = 'block';
    track.appendChild(fill);
    wrap.append(track, h('span', '', (v * 100).toFixed(0) + '%'));
    td.appendChild(wrap);
    return td;
  }
  function msCell(v) {
    const n = num(v);
    if (n === null) return cell('—', 'num muted');
    return cell(n.toFixed(n < 10 ? 1 : 0) + ' ms', 'num');
  }
  function emptyRow(text, span) {
    const tr = h('tr');
    const td = h('td', 'empty', text);
    td.colSpan = span;
    tr.appendChild(td);
    return tr;
  }

  function drawTables(regions) {
    const rb = [], eb = [];
    for (const r of regions) {
      const state = regionState(r);
      const role = str(r.role) || 'active';
      const tr = h('tr', 'region-row state-' + state);
      tr.dataset.region = str(r.name);
      tr.dataset.state = state;
      const name = h('td', 'name');
      const dot = h('span', 'dot');
      dot.style.background = COLORS[state];
      name.append(dot, document.createTextNode(str(r.name)));
      tr.append(
        name, cell(str(r.provider)), cell(str(r.tier), 'muted'), cell(str(r.jurisdiction)),
        cell(role, role === 'standby' ? 'role-standby-text' : ''),
        badge(STATE_TEXT[state], 's-' + state),
        cell(num(r.inflight) ?? '—', 'num'), cell(num(r.capacity) ?? '—', 'num muted'),
        utilCell(r.util),
        msCell(r.ewma_ttfb_ms), msCell(r.ewma_probe_rtt_ms),
      );
      rb.push(tr);
      for (const ep of list(r.endpoints)) {
        const st = str(ep.state) || 'unknown';
        const row = h('tr', 'endpoint-row');
        row.dataset.region = str(r.name);
        row.dataset.state = st;
        const fails = num(ep.consecutive_failures) || 0;
        const load = num(ep.reported_load);
        row.append(
          cell(str(r.name), 'muted'), cell(str(ep.url), 'mono'), cell(str(ep.node), 'mono'),
          cell(str(ep.capacity_type), 'muted'), badge(st, endpointClass(st)),
          cell(num(ep.inflight) ?? '—', 'num'),
          load === null ? cell('—', 'num muted') : cell(load.toFixed(2), 'num'),
          cell(fails, 'num' + (fails ? ' warn' : ' muted')),
          cell(str(ep.cordon_reason) || '—', ep.cordon_reason ? 'reason warn' : 'reason muted'),
        );
        eb.push(row);
      }
    }
    if (!rb.length) rb.push(emptyRow('No regions configured.', 11));
    if (!eb.length) eb.push(emptyRow('No endpoints.', 9));
    byId('regions-body').replaceChildren(...rb);
    byId('endpoints-body').replaceChildren(...eb);
  }

  function drawSide(data, regions) {
    let routable = 0, inflight = 0, capacity = 0, epUp = 0, epAll = 0;
    for (const r of regions) {
      const st = regionState(r);
      if (st === 'routable' || st === 'panic') routable++;
      inflight += num(r.inflight) || 0;
      capacity += num(r.capacity) || 0;
      for (const ep of list(r.endpoints)) { epAll++; if (str(ep.state) === 'up') epUp++; }
    }
    byId('s-routable').textContent = routable + ' / ' + regions.length;
    byId('s-endpoints').textContent = epUp + ' / ' + epAll;
    byId('s-inflight').textContent = String(inflight);
    byId('s-util').textContent = capacity ? (inflight / capacity * 100).toFixed(0) + '%' : '—';
    const dec = data.decisions && typeof data.decisions === 'object' ? data.decisions : {};
    const keys = DECISIONS.concat(Object.keys(dec).filter((k) => !DECISIONS.includes(k)));
    let total = 0;
    for (const k of keys) total += Math.max(0, num(dec[k]) || 0);
    const rows = [];
    for (const k of keys) {
      const n = Math.max(0, num(dec[k]) || 0);
      const row = h('div', 'bar-row');
      row.dataset.decision = k;
      const track = h('div', 'track');
      const fill = h('div', 'fill d-' + (DECISIONS.includes(k) ? k : 'other'));
      fill.style.width = (total ? n / total * 100 : 0).toFixed(1) + '%';
      track.appendChild(fill);
      row.append(h('span', 'k', k), track, h('span', 'n', n.toLocaleString('en-US')));
      rows.push(row);
    }
    const spilled = (Math.max(0, num(dec.spill) || 0) + Math.max(0, num(dec.failover) || 0));
    const foot = h('div', 'bars-foot', total.toLocaleString('en-US') + ' decisions' +
      (total ? ' · ' + (spilled / total * 100).toFixed(1) + '% spilled or failed over' : ''));
    rows.push(foot);
    byId('decisions').replaceChildren(...rows);
  }

  function drawHeader(data) {
    byId('f-generation').textContent = str(num(data.generation) ?? '–');
    byId('f-uptime').textContent = duration(data.uptime_s);
    byId('f-backend').textContent = str(data.backend) || '–';
    byId('f-workers').textContent = str(num(data.workers) ?? '–');
    byId('f-ready').textContent = data.ready === true ? 'yes' : 'no';
    byId('f-ready-box').className = 'fact ' + (data.ready === true ? 'good' : 'bad');
  }

  // Fleet mode: this edge, the edges it hears, and whether they agree on each region. Edge
  // and site names come from peers: like everything else here, they only ever become text.
  function drawFleet(fleet) {
    const section = byId('fleet-section');
    section.hidden = fleet === null;
    if (fleet === null) return;
    const connected = fleet.connected === true;
    const facts = [
      ['edge', 'edge', str(fleet.edge) || '–'],
      ['site', 'site', str(fleet.site) || '–'],
      ['revision', 'revision', str(num(fleet.revision) ?? 'none')],
      ['connected', 'NATS', connected ? 'connected' : 'not connected', connected ? 'good' : 'bad'],
      ['peers', 'edges heard', str(num(fleet.peers) ?? '–')],
      ['quorum', 'quorum', str(fleet.quorum) || '–'],
    ];
    byId('fleet-facts').replaceChildren(...facts.map(([key, label, value, cls]) => {
      const box = h('div', 'fact' + (cls ? ' ' + cls : ''));
      box.dataset.fact = key;
      box.append(h('span', 'k', label), h('span', 'v', value));
      return box;
    }));
    const revision = num(fleet.revision);
    const edges = [];
    for (const e of list(fleet.edges)) {
      if (!record(e)) continue;
      const mine = e.self === true;
      const row = h('tr', 'fleet-edge-row');
      row.dataset.edge = str(e.edge);
      const name = h('td', 'name', str(e.edge));
      if (mine) name.appendChild(h('span', 'self-tag', 'this edge'));
      const rev = num(e.revision);
      row.append(
        name, cell(str(e.site), 'muted'),
        // Another revision than this edge's: that edge is ahead, or behind.
        cell(rev ?? '—', 'num' + (rev !== null && rev !== revision ? ' warn' : '')),
        cell(mine ? '—' : fixed(e.age_s, 1) + ' s ago', 'num' + (mine ? ' muted' : '')),
      );
      edges.push(row);
    }
    if (!edges.length) edges.push(emptyRow('No edge heard yet.', 4));
    byId('fleet-edges-body').replaceChildren(...edges);
    const rows = [];
    for (const [region, v] of Object.entries(record(fleet.regions) || {})) {
      if (!record(v)) continue;
      const agree = v.agree === true;
      const down = num(v.fleet_down_endpoints) || 0;
      const row = h('tr', 'fleet-region-row');
      row.dataset.region = region;
      row.dataset.agree = agree ? 'yes' : 'no';
      row.append(
        cell(region, 'name'), cell(num(v.reporters) ?? '—', 'num'),
        cell(num(v.see_up) ?? '—', 'num'),
        badge(agree ? 'yes' : 'no', agree ? 's-up' : 's-cordoned'),
        cell(down, 'num' + (down ? ' warn' : ' muted')), cell(num(v.peer_inflight) ?? '—', 'num'),
      );
      rows.push(row);
    }
    if (!rows.length) rows.push(emptyRow('No word from the fleet yet.', 6));
    byId('fleet-regions-body').replaceChildren(...rows);
    const dropped = record(fleet.dropped_total) || {};
    const counts = [['received', fleet.received_total], ['published', fleet.published_total]];
    for (const reason of DROP_REASONS) counts.push(['dropped ' + reason, dropped[reason]]);
    byId('fleet-drops').replaceChildren(...counts.map(([label, v]) => {
      const n = num(v) || 0;
      const item = h('span', 'count');
      item.dataset.counter = label;
      const warn = n > 0 && label.startsWith('dropped');
      item.append(document.createTextNode(label), h('span', 'n' + (warn ? ' warn' : ''), n));
      return item;
    }));
  }

  function render(data) {
    const regions = list(data.regions).filter((r) => r && typeof r === 'object');
    drawHeader(data);
    drawMap(regions, data.spills);
    drawTables(regions);
    drawSide(data, regions);
    drawFleet(record(data.fleet));
  }

  function setStatus(ok, message) {
    const banner = byId('banner');
    const box = byId('f-refresh-box');
    document.documentElement.dataset.status = ok ? 'ok' : 'error';
    if (ok) {
      banner.className = '';
      banner.textContent = '';
      box.className = 'fact';
    } else {
      banner.className = 'shown';
      banner.textContent = 'Cannot load /status: ' + message +
        (lastOk ? ' — showing data from ' + clock(lastOk) + '.' : '.');
      box.className = 'fact stale';
    }
  }

  async function refresh() {
    try {
      const resp = await fetch(CFG.statusPath, {
        cache: 'no-store', headers: { Accept: 'application/json' },
      });
      if (!resp.ok) {
        throw new Error('HTTP ' + resp.status + (resp.statusText ? ' ' + resp.statusText : ''));
      }
      const data = await resp.json();
      if (!data || typeof data !== 'object') throw new Error('not a JSON object');
      render(data);
      lastOk = new Date();
      byId('f-refresh').textContent = clock(lastOk);
      setStatus(true, '');
    } catch (err) {
      setStatus(false, err && err.message ? err.message : String(err));
    } finally {
      refreshes++;
      document.documentElement.dataset.refreshes = String(refreshes);
      setTimeout(refresh, CFG.refreshMs);
    }
  }
  refresh();
})();
