// kitt serve's pages: the one script. Every page works without it; it adds the live run view
// (the run's server-sent events), a compare button that waits for two ticks, and plot hover.
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

  document.addEventListener('DOMContentLoaded', function () {
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
