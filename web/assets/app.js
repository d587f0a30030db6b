// kitt serve's pages: the one script. Every page works without it; it adds the live run view
// (the run's server-sent events), a compare button that waits for two ticks, plot hover, and a
// log/linear toggle of the plots' y axes.
// Hand-written, no dependencies; loaded from this server only (CSP: default-src 'self').
(function () {
  'use strict';

  function byId(id) { return document.getElementById(id); }
  function setText(el, value) { if (el) { el.textContent = String(value); } }
  function utc(ns) { return new Date(ns / 1e6).toISOString().slice(0, 19).replace('T', ' ') + ' UTC'; }
  function took(ns) { return ns >= 1e9 ? (ns / 1e9).toFixed(2) + ' s' : Math.round(ns / 1e6) + ' ms'; }

  const STATES = {
    'step.started': 'running', 'step.finished': 'done', 'step.failed': 'failed', 'step.skipped': 'skipped',
  };

  // The live run view: step states and timings, the running cell's counters, unit states and
  // the event log follow the run's stream (/api/v1/events?run=ID) until it finishes.
  function followRun(section) {
    const run = section.dataset.run;
    const status = byId('run-status');
    const events = byId('events');
    const liveBox = byId('live');
    let updates = 0;
    let unitsTimer = null;

    function bump() { updates += 1; setText(byId('live-updates'), updates); }
    function logLine(line) {
      const li = document.createElement('li');
      li.textContent = line;
      events.appendChild(li);
      while (events.children.length > 300) { events.removeChild(events.firstChild); }
      events.scrollTop = events.scrollHeight;
    }
    function setStatus(word, cls) {
      setText(status, word);
      status.className = 'state ' + cls;
      section.dataset.status = cls;
    }
    function refreshUnits() {
      if (unitsTimer !== null) { return; }
      unitsTimer = window.setTimeout(function () {
        unitsTimer = null;
        fetch('/api/v1/runs/' + encodeURIComponent(run), { headers: { Accept: 'application/json' } })
          .then(function (r) { return r.ok ? r.json() : null; })
          .then(function (shown) {
            if (!shown) { return; }
            (shown.units || []).forEach(function (u) {
              const row = section.querySelector('tr[data-unit="' + CSS.escape(u.id) + '"]');
              if (!row) { return; }
              const cells = row.children;
              cells[2].textContent = u.state;
              cells[2].className = 'state ' + u.state;
              setText(cells[3], u.attempts);
              setText(cells[4], u.cells_done + '/' + u.cells);
              setText(cells[5], u.host || '-');
              setText(cells[6], u.pid || '-');
            });
          })
          .catch(function () { /* the page still shows the last state; the next event retries */ });
      }, 300);
    }
    function onStep(name, data) {
      const r = data.record;
      const state = STATES[name];
      const row = section.querySelector('tr[data-step="' + CSS.escape(r.key) + '"]');
      if (row) {
        const cell = row.querySelector('td.state');
        cell.textContent = state;
        cell.className = 'state ' + state;
        if (r.error) {
          const small = document.createElement('small');
          small.className = 'detail';
          small.textContent = ' ' + r.error;
          cell.appendChild(small);
        }
        if (name === 'step.started') {
          row.dataset.started = String(r.unix_ns);
          setText(row.querySelector('td.started'), utc(r.unix_ns));
          setText(row.querySelector('td.took'), '-');
        } else if (Number(row.dataset.started) > 0) {
          setText(row.querySelector('td.took'), took(r.unix_ns - Number(row.dataset.started)));
        }
      }
      logLine(utc(r.unix_ns) + '  ' + (r.kind || '') + ' ' + state + '  ' + (r.label || r.key.slice(0, 12)) +
        (r.error ? '  ' + r.error : ''));
      refreshUnits();
    }

    const stream = new EventSource('/api/v1/events?run=' + encodeURIComponent(run));
    byId('live-link').hidden = false;
    Object.keys(STATES).forEach(function (name) {
      stream.addEventListener(name, function (e) { bump(); onStep(name, JSON.parse(e.data)); });
    });
    stream.addEventListener('step.progress', function (e) {
      bump();
      const p = JSON.parse(e.data);
      liveBox.classList.remove('idle');
      setText(byId('live-label'), p.label);
      setText(byId('live-requests'), p.requests);
      setText(byId('live-total'), p.requests_total > 0 ? p.requests_total : 'open-ended');
      setText(byId('live-rps'), p.requests_per_s.toFixed(1));
      setText(byId('live-errors'), p.errors);
      setText(byId('live-elapsed'), p.elapsed_s.toFixed(1) + ' s');
      if (section.dataset.status !== 'running') { setStatus('running', 'running'); }
    });
    stream.addEventListener('run.started', function (e) {
      bump();
      const d = JSON.parse(e.data);
      if (d.shard === 'journal') { setStatus('running', 'running'); logLine(utc(d.record.unix_ns) + '  run started'); }
    });
    stream.addEventListener('run.finished', function (e) {
      bump();
      const d = JSON.parse(e.data);
      if (d.shard !== 'journal') { return; }
      const ok = d.record.ok;
      setStatus('finished: ' + (ok ? 'succeeded' : 'failed'), ok ? 'succeeded' : 'failed');
      liveBox.classList.add('idle');
      setText(byId('live-label'), 'none running');
      logLine(utc(d.record.unix_ns) + '  run finished' + (ok ? '' : ': ' + d.record.failed_cells + ' cell(s) failed'));
      refreshUnits();
      stream.close();
      byId('live-link').hidden = true;
    });
    ['run.interrupted', 'run.stopped'].forEach(function (name) {
      stream.addEventListener(name, function (e) {
        bump();
        const d = JSON.parse(e.data);
        if (d.shard !== 'journal') { return; }
        setStatus('unfinished', 'unfinished');
        logLine(utc(d.record.unix_ns) + '  ' + name.replace('.', ' '));
        refreshUnits();
      });
    });
    stream.addEventListener('server.closing', function () { stream.close(); byId('live-link').hidden = true; });
  }

  // Results: "Compare selected" waits for two ticks.
  function compareButton(form) {
    const button = byId('compare-button');
    function update() { button.disabled = form.querySelectorAll('input[name="ids"]:checked').length < 2; }
    form.addEventListener('change', update);
    update();
  }

  // Plots: hovering a line dims the others.
  function plotHover(root) {
    root.querySelectorAll('svg.plot').forEach(function (svg) {
      const series = svg.querySelectorAll('g.series');
      series.forEach(function (g) {
        g.addEventListener('mouseenter', function () {
          series.forEach(function (o) { if (o !== g) { o.classList.add('dim'); } });
        });
        g.addEventListener('mouseleave', function () {
          series.forEach(function (o) { o.classList.remove('dim'); });
        });
      });
    });
  }

  // Plots: the y axis of every line chart on the page, linear (as drawn) or log. The values
  // come from each point's hover text, the plot area from its axes; nothing is fetched.
  const SVG_NS = 'http://www.w3.org/2000/svg';
  function logScale(svg) {
    const circles = Array.from(svg.querySelectorAll('g.series circle'));
    const values = circles.map(function (c) {
      const m = /: (-?[0-9.]+(?:e[-+]?[0-9]+)?) at /.exec(c.querySelector('title').textContent);
      return m ? Number(m[1]) : NaN;
    });
    const axis = Array.from(svg.querySelectorAll('path[stroke="#888888"][fill="none"]'))
      .find(function (p) { return (p.getAttribute('d').match(/L/g) || []).length === 2; });
    const positive = values.filter(function (v) { return v > 0; });
    if (!axis || positive.length < 2) { return null; }
    const n = axis.getAttribute('d').match(/-?[0-9.]+/g).map(Number);
    const left = n[0], top = n[1], bottom = n[3], right = n[4];
    const lo = Math.pow(10, Math.floor(Math.log10(Math.min.apply(null, positive))));
    let hi = Math.pow(10, Math.ceil(Math.log10(Math.max.apply(null, positive))));
    if (hi <= lo) { hi = lo * 10; }
    const at = function (v) {
      return bottom - (Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo)) * (bottom - top);
    };
    const linearTicks = Array.from(svg.querySelectorAll('path[stroke="#e5e5e5"], text[text-anchor="end"][fill="#444444"]'));
    const linearCy = circles.map(function (c) { return c.getAttribute('cy'); });
    const paths = Array.from(svg.querySelectorAll('g.series > path'));
    const linearD = paths.map(function (p) { return p.getAttribute('d'); });
    const logTicks = [];
    for (let v = lo; v <= hi * 1.0001; v *= 10) {
      const y = at(v).toFixed(1);
      const grid = document.createElementNS(SVG_NS, 'path');
      grid.setAttribute('d', 'M' + left + ',' + y + ' L' + right + ',' + y);
      grid.setAttribute('stroke', '#e5e5e5');
      grid.setAttribute('class', 'log-tick');
      const label = document.createElementNS(SVG_NS, 'text');
      label.setAttribute('x', String(left - 6));
      label.setAttribute('y', String(Number(y) + 4));
      label.setAttribute('text-anchor', 'end');
      label.setAttribute('fill', '#444444');
      label.setAttribute('class', 'log-tick');
      label.textContent = v >= 1 ? String(Math.round(v)) : String(Number(v.toPrecision(1)));
      logTicks.push(grid, label);
    }
    return function (log) {
      linearTicks.forEach(function (t) { t.style.display = log ? 'none' : ''; });
      logTicks.forEach(function (t) { if (log) { axis.before(t); } else { t.remove(); } });
      circles.forEach(function (c, i) {
        const v = values[i];
        c.style.display = log && !(v > 0) ? 'none' : '';
        c.setAttribute('cy', log && v > 0 ? at(v).toFixed(1) : linearCy[i]);
      });
      paths.forEach(function (p, i) {
        if (!log) { p.setAttribute('d', linearD[i]); return; }
        const points = Array.from(p.parentNode.querySelectorAll('circle'))
          .filter(function (c) { return c.style.display !== 'none'; })
          .map(function (c, k) { return (k ? 'L' : 'M') + c.getAttribute('cx') + ',' + c.getAttribute('cy'); });
        p.setAttribute('d', points.join(' '));
      });
      svg.dataset.scale = log ? 'log' : 'linear';
    };
  }

  function scaleToggle(button) {
    const plots = Array.from(document.querySelectorAll('svg.plot')).map(logScale).filter(Boolean);
    if (plots.length === 0) { return; }
    let log = false;
    button.hidden = false;
    button.addEventListener('click', function () {
      log = !log;
      plots.forEach(function (set) { set(log); });
      button.textContent = log ? 'y axis: log (show linear)' : 'y axis: linear (show log)';
      button.setAttribute('aria-pressed', String(log));
    });
  }

  document.addEventListener('DOMContentLoaded', function () {
    const toggle = byId('scale-toggle');
    if (toggle) { scaleToggle(toggle); }
    const run = byId('run');
    if (run && run.dataset.run) {
      const s = run.dataset.status;
      // An ended run has nothing more to say; an unfinished one may be resumed from elsewhere.
      if (s === 'running' || s === 'unfinished') { followRun(run); }
    }
    const form = byId('compare-form');
    if (form) { compareButton(form); }
    plotHover(document);
  });
}());
