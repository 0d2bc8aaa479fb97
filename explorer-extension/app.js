/* orthanc-nas: the NAS panel of Orthanc Explorer.
 *
 * Plain JavaScript, no library and no build step. It calls only the plugin's /nas/ routes, by URLs
 * relative to this page (/nas/app/index.html), so it also works behind a reverse proxy that adds a
 * prefix, and loads nothing from outside Orthanc. Errors of the routes ({"error", "kind", "hint"})
 * are shown with a heading in plain words, the route's message and its hint.
 */
(function () {
  'use strict';

  var POLL_RUNNING_MS = 500;
  var POLL_IDLE_MS = 5000;
  var MAX_FILES_SHOWN = 2000;
  var EXPIRY_CHOICES = [1, 8, 24, 72, 168, 336, 720];

  var TITLES = {
    network: 'The NAS cannot be reached',
    auth: 'The NAS refused the user name or password',
    permission: 'The NAS refused access',
    not_found: 'Not found',
    config: 'Please check the settings',
    busy: 'Please wait',
    bad_request: 'The request was refused',
    internal: 'Something went wrong in the NAS plugin'
  };

  var PHASES = {
    idle: 'No indexing has run yet.',
    enumerating: 'Listing the files of the NAS…',
    indexing: 'Reading the DICOM headers…',
    done: 'Indexing finished.',
    cancelled: 'Indexing was stopped. The index keeps what was read; “Index now” goes on from there.',
    failed: 'Indexing failed.',
    interrupted: 'Indexing was interrupted (Orthanc stopped while it ran). “Index now” resumes where it stopped.'
  };

  var state = {
    settings: null,        // GET /nas/config
    status: null,          // GET /nas/status
    search: null,          // the parameters of the search shown
    rows: [],              // the series of the page shown
    total: 0,
    selected: {},          // series_key -> series, across pages
    shareRows: [],         // the series of the share dialog
    seriesShown: null,     // the series of the series dialog
    pollTimer: null
  };

  // -- small helpers ------------------------------------------------------------------------------------
  function $(id) { return document.getElementById(id); }

  function el(tag, attrs) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      if (name === 'text') { node.textContent = attrs[name]; }
      else if (name === 'className') { node.className = attrs[name]; }
      else if (name.slice(0, 2) === 'on') { node.addEventListener(name.slice(2), attrs[name]); }
      else { node.setAttribute(name, attrs[name]); }
    });
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined) { continue; }
      node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
    }
    return node;
  }

  function clear(node) { while (node.firstChild) { node.removeChild(node.firstChild); } return node; }
  function number(n) { return (n || 0).toLocaleString(); }
  function plural(n, word) { return number(n) + ' ' + word + (n === 1 ? '' : 's'); }

  function dicomDate(d) {
    return /^\d{8}$/.test(d || '') ? d.slice(0, 4) + '-' + d.slice(4, 6) + '-' + d.slice(6) : (d || '');
  }

  function personName(pn) {
    // DICOM person name: groups separated by "=", components by "^" (family^given^middle^prefix^suffix)
    var group = (pn || '').split('=').filter(function (g) { return g.replace(/\^/g, '').trim(); })[0] || '';
    var parts = group.split('^').map(function (p) { return p.trim(); });
    var given = [parts[3], parts[1], parts[2]].filter(Boolean).join(' ');
    var name = parts[0] && given ? parts[0] + ', ' + given : (parts[0] || given);
    return parts[4] ? name + ' ' + parts[4] : name;
  }

  /** Names each body cell of `table` after its column's header (`data-label`): a narrow window draws the
   *  rows as cards and shows that name before each value (app.css). A cell spanning columns gets none. */
  function labelCells(table) {
    var names = Array.prototype.map.call(table.tHead.rows[0].cells, function (th) { return th.textContent.trim(); });
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      Array.prototype.forEach.call(row.cells, function (cell, i) {
        if (names[i] && cell.colSpan === 1) { cell.setAttribute('data-label', names[i]); }
      });
    });
  }

  function localTime(iso) {
    if (!iso) { return ''; }
    return new Date(iso).toLocaleString([], { year: 'numeric', month: '2-digit', day: '2-digit',
                                              hour: '2-digit', minute: '2-digit' });
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) { return '–'; }
    seconds = Math.round(seconds);
    if (seconds < 60) { return seconds + ' s'; }
    if (seconds < 3600) { return Math.floor(seconds / 60) + ' min ' + (seconds % 60) + ' s'; }
    return Math.floor(seconds / 3600) + ' h ' + String(Math.floor(seconds % 3600 / 60)).padStart(2, '0') + ' min';
  }

  function ago(iso) {
    var seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
    if (seconds < 60) { return 'just now'; }
    if (seconds < 3600) { return Math.floor(seconds / 60) + ' min ago'; }
    if (seconds < 86400) { return Math.floor(seconds / 3600) + ' h ' + Math.floor(seconds % 3600 / 60) + ' min ago'; }
    return plural(Math.floor(seconds / 86400), 'day') + ' ago';
  }

  function bytes(n) {
    if (n < 1024) { return n + ' B'; }
    if (n < 1048576) { return (n / 1024).toFixed(1) + ' KB'; }
    return (n / 1048576).toFixed(1) + ' MB';
  }

  function hours(h) {
    if (h < 24 || h % 24) { return plural(h, 'hour'); }
    return h === 24 ? '24 hours (1 day)' : plural(h / 24, 'day');
  }

  // -- talking to the plugin ------------------------------------------------------------------------------
  // Orthanc Explorer can pass authorization tokens in its address (?token=...): they go along as headers.
  var authHeaders = {};
  new URLSearchParams(location.search).forEach(function (value, name) {
    if (['token', 'auth-token', 'authorization'].indexOf(name) >= 0) { authHeaders[name] = value; }
  });

  function ApiError(status, body) {
    this.status = status;
    this.error = body.error || ('Orthanc answered with HTTP status ' + status + '.');
    this.kind = body.kind || 'internal';
    this.hint = body.hint || '';
    this.field = body.field || null;
    this.result = body;
  }

  /** Call a /nas/ route (path relative to /nas/); resolves to {data, headers}, rejects with an ApiError. */
  function api(method, path, body) {
    var options = { method: method, headers: Object.assign({ Accept: 'application/json' }, authHeaders),
                    credentials: 'same-origin', cache: 'no-store' };
    if (body !== undefined) {
      options.headers['Content-Type'] = 'application/json';
      options.body = JSON.stringify(body);
    }
    return fetch('../' + path, options).then(function (response) {
      return response.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (response.ok) { return { data: data, headers: response.headers }; }
        if (response.status === 401 || response.status === 403) {
          throw new ApiError(response.status, { kind: 'auth_orthanc',
            error: 'Orthanc did not accept your login for this page.',
            hint: 'Reload the page and log in to Orthanc again.' });
        }
        throw new ApiError(response.status, data && typeof data === 'object' ? data : {});
      });
    }, function () {
      throw new ApiError(0, { kind: 'offline', error: 'Orthanc does not answer.',
        hint: 'Check that Orthanc is running and that this computer reaches it, then try again.' });
    });
  }

  // -- messages ------------------------------------------------------------------------------------------
  function showMessage(box, type, title, text, hint) {
    clear(box);
    box.className = 'message ' + type;
    if (title) { box.appendChild(el('span', { className: 'title', text: title })); }
    if (text) { box.appendChild(el('span', { className: 'text', text: text })); }
    if (hint) { box.appendChild(el('span', { className: 'hint', text: hint })); }
    box.hidden = false;
    return box;
  }

  function errorTitle(err) {
    if (err.kind === 'offline') { return 'No connection to Orthanc'; }
    if (err.kind === 'auth_orthanc') { return 'Not logged in'; }
    return TITLES[err.kind] || TITLES.internal;
  }

  function sentence(text) { return text ? text.charAt(0).toUpperCase() + text.slice(1) : text; }

  function showError(box, err) {
    if (!(err instanceof ApiError)) {  // a bug of this page: say so rather than fail silently
      window.console.error(err);
      err = new ApiError(0, { error: String(err), hint: 'Reload the page; if it happens again, tell your administrator.' });
    }
    return showMessage(box, 'error', errorTitle(err), sentence(err.error), err.hint);
  }

  function hide(box) { box.hidden = true; clear(box); }

  // -- tabs ----------------------------------------------------------------------------------------------
  var TABS = ['search', 'shares', 'jobs', 'indexing', 'connection'];

  function showTab(name) {
    if (TABS.indexOf(name) < 0) { name = 'search'; }
    TABS.forEach(function (tab) {
      $('tab-' + tab).hidden = tab !== name;
      document.querySelector('.tabs a[data-tab="' + tab + '"]').classList.toggle('active', tab === name);
    });
    if (name === 'shares') { loadShares(); }
    if (name === 'jobs' && window.nasRetrieve) { window.nasRetrieve.loadJobs(); }
    if (name === 'search') { $('q').focus(); }
  }

  /** `#patient=<PatientID>` (the NAS series of one patient, e.g. from "Priors on the NAS") or `#q=<words>`. */
  function linkedSearch(hash) {
    var m = /^(patient|q)=(.*)$/.exec(hash);
    if (!m) { return false; }
    var value = decodeURIComponent(m[2]);
    showTab('search');
    state.selected = {};  // a new search, as from the search form
    if (m[1] === 'q') {
      $('q').value = value;
      runSearch(searchParams(0));
      return true;
    }
    api('GET', 'patients/' + encodeURIComponent(value) + '/series').then(function (answer) {
      state.search = { q: '', offset: 0, patient: value };
      state.rows = answer.data;
      state.total = answer.data.length;
      renderResults();
      setText('result-count', plural(state.total, 'series') + ' of patient ' + value + ' on the NAS.');
    }, function (err) { showError($('search-message'), err); });
    return true;
  }

  window.addEventListener('hashchange', function () {
    var hash = location.hash.slice(1);
    if (!linkedSearch(hash)) { showTab(hash); }
  });

  // -- connection ----------------------------------------------------------------------------------------
  var form = $('connection-form');

  function connectionType() { return form.querySelector('input[name="Type"]:checked').value; }

  function setConnectionType(type) {
    form.querySelector('input[name="Type"][value="' + type + '"]').checked = true;
    form.setAttribute('data-type', type);
  }

  form.querySelectorAll('input[name="Type"]').forEach(function (radio) {
    radio.addEventListener('change', function () { setConnectionType(connectionType()); });
  });

  function fillConnection(settings) {
    var c = settings.Connection;
    setConnectionType(c.Type === 'smb' ? 'smb' : 'local');
    $('f-Path-local').value = c.Type === 'local' ? c.Path : '';
    $('f-Path-smb').value = c.Type === 'smb' ? c.Path : '';
    ['Host', 'Share', 'Username', 'Domain'].forEach(function (key) { $('f-' + key).value = c[key] || ''; });
    $('f-Port').value = c.Port || 445;
    $('f-Password').value = '';
    $('f-Password').placeholder = c.PasswordSet ? 'saved (leave empty to keep it)' : '';
    $('f-Workers').value = settings.Workers;
  }

  /** The form as a Connection object; an empty password is left out, so the saved one is kept. */
  function readConnection() {
    var type = connectionType();
    if (type === 'local') { return { Type: 'local', Path: $('f-Path-local').value.trim() }; }
    var c = { Type: 'smb', Host: $('f-Host').value.trim(), Share: $('f-Share').value.trim(),
              Path: $('f-Path-smb').value.trim(), Username: $('f-Username').value.trim(),
              Domain: $('f-Domain').value.trim() };
    var port = $('f-Port').value.trim();
    if (port) { c.Port = /^\d+$/.test(port) ? parseInt(port, 10) : port; }
    if ($('f-Password').value) { c.Password = $('f-Password').value; }
    return c;
  }

  /** Mark the input of a refused field, and name it in the error as the form does ("setting
   *  Connection.Host is required" becomes "NAS host is required"). */
  function markField(err) {
    form.querySelectorAll('.invalid').forEach(function (input) { input.classList.remove('invalid'); });
    if (!err.field) { return err; }
    var name = err.field.split('.').pop();
    var input = Array.prototype.filter.call(form.querySelectorAll('[data-field="' + name + '"]'),
                                            function (node) { return node.offsetParent !== null; })[0];
    if (!input) { return err; }
    input.classList.add('invalid');
    input.focus();
    var label = form.querySelector('label[for="' + input.id + '"]');
    if (label) { err.error = err.error.replace('setting ' + err.field, '“' + label.textContent + '”'); }
    return err;
  }

  function showListing(result, intro) {
    var list = clear($('listing'));
    result.entries.forEach(function (name) { list.appendChild(el('li', { text: name })); });
    $('listing-caption').textContent = result.entries.length
      ? intro + ' The top folder holds' + (result.entries.length >= 100 ? ' (first 100):' : ':')
      : intro + ' The top folder is empty: check that this is the folder with the DICOM files.';
    $('connection-listing').hidden = false;
  }

  function setConnectionBusy(text) {
    $('connection-busy').textContent = text || '';
    $('test-connection').disabled = $('save-connection').disabled = !!text;
  }

  function connectionDone(result, savedText) {
    var box = $('connection-message');
    if (result.ok) {
      showMessage(box, 'success', savedText || 'Connection works.',
                  'The NAS answered in ' + number(result.elapsed_ms) + ' ms.');
      if (savedText) {
        box.appendChild(el('a', { className: 'next', href: '#indexing', text: 'Next: index the NAS ›' }));
      }
      showListing(result, '');
      return;
    }
    $('connection-listing').hidden = true;
    if (savedText) {
      showMessage(box, 'warning', savedText + ' But the connection test failed: ' + errorTitle(result).toLowerCase() + '.',
                  result.error, result.hint);
    } else {
      showError(box, new ApiError(502, result));
    }
  }

  $('test-connection').addEventListener('click', function () {
    markField({});
    hide($('connection-message'));
    $('connection-listing').hidden = true;
    setConnectionBusy('Testing… (this can take up to 30 seconds if the NAS does not answer)');
    api('POST', 'config/test', { Connection: readConnection() }).then(function (answer) {
      connectionDone(answer.data);
    }, function (err) {
      if (err.status === 502 && err.result && err.result.ok === false) { connectionDone(err.result); return; }
      showError($('connection-message'), markField(err));
    }).then(function () { setConnectionBusy(''); });
  });

  form.addEventListener('submit', function (event) {
    event.preventDefault();
    markField({});
    hide($('connection-message'));
    $('connection-listing').hidden = true;
    var body = { Connection: readConnection() };
    var workers = $('f-Workers').value.trim();
    if (workers) { body.Workers = /^\d+$/.test(workers) ? parseInt(workers, 10) : workers; }
    setConnectionBusy('Saving and testing…');
    api('PUT', 'config', body).then(function (answer) {
      var test = answer.data.test;
      delete answer.data.test;
      state.settings = answer.data;
      fillConnection(state.settings);
      connectionDone(test, 'Saved.');
    }, function (err) {
      showError($('connection-message'), markField(err));
    }).then(function () { setConnectionBusy(''); });
  });

  function configured(settings) {
    var c = settings.Connection;
    return c.Type === 'local' ? !!c.Path : !!(c.Host && c.Share);
  }

  // -- indexing ------------------------------------------------------------------------------------------
  function setText(id, text) { $(id).textContent = text; }

  function renderStatus(s) {
    var running = s.running;
    var percent = s.enumerated_files ? Math.min(100, 100 * s.files_processed / s.enumerated_files) : 0;
    if (s.phase === 'done') { percent = 100; }
    var phase = PHASES[s.phase] || s.phase;
    if (s.phase === 'done' && s.finished_at) { phase = 'Indexing finished at ' + localTime(s.finished_at) + '.'; }
    if (running && s.started_at) { phase += ' Started at ' + localTime(s.started_at) + '.'; }
    setText('phase', phase);
    $('go-search').hidden = s.phase !== 'done';

    var progress = $('progress');
    progress.classList.toggle('failed', s.phase === 'failed');
    progress.classList.toggle('unknown', running && !s.enumerated_files);
    progress.querySelector('.bar').style.width = percent.toFixed(1) + '%';
    progress.setAttribute('aria-valuenow', Math.round(percent));
    var label;
    if (running && !s.enumerated_files) { label = 'Looking for files…'; }
    else if (s.phase === 'idle' || !s.enumerated_files) { label = ''; }
    else {
      label = number(s.files_processed) + ' of ' + (s.enumeration_done || !running ? '' : 'at least ') +
              plural(s.enumerated_files, 'file') + ' · ' + Math.floor(percent) + ' %';
    }
    setText('progress-label', label);

    setText('st-processed', number(s.files_processed));
    setText('st-enumerated', number(s.enumerated_files) + (running && !s.enumeration_done ? '+' : ''));
    setText('st-skipped', number(s.files_skipped));
    setText('st-series', number(s.series_count));
    setText('st-errors', number(s.errors));
    setText('st-speed', s.files_per_second ? number(Math.round(s.files_per_second)) + ' files/s' : '–');
    setText('st-eta', running ? (s.enumeration_done ? duration(s.eta_seconds) : 'still counting') : '–');
    setText('st-workers', s.workers ? number(s.workers) : '–');

    var samples = s.error_samples || [];
    $('error-details').hidden = !samples.length;
    $('error-details').querySelector('summary').textContent =
      'Show the files that could not be read (' + (s.errors > samples.length ? samples.length + ' of ' : '') +
      number(s.errors) + ')';
    var tbody = clear($('error-samples'));
    samples.forEach(function (sample) {
      tbody.appendChild(el('tr', null, el('td', { className: 'path', text: sample.path }),
                           el('td', { text: sample.error })));
    });

    var warnings = clear($('warnings'));
    (s.warnings || []).forEach(function (sentence) {
      warnings.appendChild(showMessage(el('div'), 'warning', null, sentence));
    });

    var box = $('index-message');
    if (s.phase === 'failed' && s.failure) { showError(box, new ApiError(0, s.failure)); }
    else if (box.dataset.from === 'status') { hide(box); }
    box.dataset.from = s.phase === 'failed' ? 'status' : '';

    $('index-start').disabled = running;
    $('index-stop').disabled = !running;
    setText('tab-progress', running ? ' ' + Math.floor(percent) + ' %' : '');
    renderSchedule(s);
  }

  // "last indexed … ago, next at …" (Schedule), and whether Throttle holds the pace now
  function renderSchedule(s) {
    var parts = [];
    if (s.finished_at && !s.running) {  // a run that failed indexed nothing: it is not "last indexed"
      parts.push((s.phase === 'failed' ? 'Last run failed ' : 'Last indexed ') + ago(s.finished_at));
    }
    if (s.next_run_at) { parts.push((parts.length ? 'next at ' : 'Next indexing at ') + localTime(s.next_run_at)); }
    var line = parts.length ? parts.join(', ') + '.' : '';
    if (s.throttled) { line += (line ? ' ' : '') + 'Reading at the working hours\' pace (Throttle).'; }
    setText('schedule-line', line);
  }

  var RUN_TRIGGERS = { api: 'asked', schedule: 'scheduled', start: 'at start' };
  var RUN_OUTCOMES = { done: 'done', cancelled: 'stopped', failed: 'failed', interrupted: 'interrupted' };

  function loadRuns() {
    return api('GET', 'runs').then(function (answer) {
      var runs = answer.data;
      $('runs-card').hidden = !runs.length;
      var tbody = clear($('runs-body'));
      runs.forEach(function (run) {
        tbody.appendChild(el('tr', null,
          el('td', { text: localTime(run.started_at) }), el('td', { text: RUN_TRIGGERS[run.trigger] || run.trigger }),
          el('td', { className: 'path', text: run.path || 'all' }),
          el('td', { text: run.finished_at ? (RUN_OUTCOMES[run.outcome] || run.outcome || '') : 'running' }),
          el('td', { text: number(run.files_read) }), el('td', { text: number(run.files_skipped) }),
          el('td', { text: number(run.files_removed) }), el('td', { text: number(run.errors) }),
          el('td', { text: number(run.series_added) }), el('td', { text: number(run.series_changed) }),
          el('td', { text: number(run.series_removed) })));
      });
    }, function () { /* the runs are extra: the status shows what matters */ });
  }

  function pollStatus() {
    window.clearTimeout(state.pollTimer);
    return api('GET', 'status').then(function (answer) {
      var before = state.status;
      state.status = answer.data;
      renderStatus(state.status);
      if (!before || before.running !== state.status.running || before.started_at !== state.status.started_at) {
        loadRuns();
      }
      if ($('notice').dataset.from === 'poll') { hide($('notice')); }
    }, function (err) {
      showError($('notice'), err).dataset.from = 'poll';
    }).then(function () {
      var running = state.status && state.status.running;
      state.pollTimer = window.setTimeout(pollStatus, running ? POLL_RUNNING_MS : POLL_IDLE_MS);
    });
  }

  $('index-start').addEventListener('click', function () {
    hide($('index-message'));
    $('index-start').disabled = true;
    api('POST', 'index', { full: $('index-full').checked }).then(pollStatus, function (err) {
      $('index-start').disabled = false;
      showError($('index-message'), err);
    });
  });

  $('index-stop').addEventListener('click', function () {
    $('index-stop').disabled = true;
    api('DELETE', 'index').then(pollStatus, function (err) { showError($('index-message'), err); });
  });

  // -- search --------------------------------------------------------------------------------------------
  function searchParams(offset) {
    return {
      q: $('q').value.trim(),
      modality: $('modality').value,
      date_from: $('date-from').value.replace(/-/g, ''),
      date_to: $('date-to').value.replace(/-/g, ''),
      limit: parseInt($('page-size').value, 10),
      offset: offset || 0
    };
  }

  function runSearch(params) {
    var query = new URLSearchParams();
    Object.keys(params).forEach(function (key) { if (params[key] !== '') { query.set(key, params[key]); } });
    hide($('search-message'));
    $('search-button').disabled = true;
    return api('GET', 'search?' + query.toString()).then(function (answer) {
      state.search = params;
      state.rows = answer.data;
      state.total = parseInt(answer.headers.get('X-Total-Count') || answer.data.length, 10);
      renderResults();
    }, function (err) {
      showError($('search-message'), err);
    }).then(function () { $('search-button').disabled = false; });
  }

  function renderResults() {
    var tbody = clear(document.querySelector('#results tbody'));
    var params = state.search;
    if (!state.rows.length) {
      tbody.appendChild(el('tr', null, el('td', { colspan: 9, className: 'empty',
        text: params.q ? 'No series matches “' + params.q + '”. Check the spelling, or search with fewer words.'
                       : 'No series matches these filters.' })));
    }
    state.rows.forEach(function (series) {
      var key = series.series_key;
      var box = el('input', { type: 'checkbox', title: 'Select this series to share it with others' });
      box.checked = !!state.selected[key];
      var row = el('tr', { 'data-key': key },
        el('td', { className: 'check' }, box),
        el('td', { className: 'patient', title: series.PatientName || '', text: personName(series.PatientName) }),
        el('td', { text: series.PatientID || '' }),
        el('td', { text: dicomDate(series.StudyDate) }),
        el('td', { className: 'wrap', title: series.StudyDescription || '', text: series.StudyDescription || '' }),
        el('td', { className: 'wrap', title: series.SeriesDescription || '',
                   text: (series.SeriesNumber !== null && series.SeriesNumber !== undefined ? series.SeriesNumber + ' · ' : '') +
                         (series.SeriesDescription || '') }),
        el('td', { text: series.Modality || '' }),
        el('td', { className: 'num', text: number(series.file_count) }),
        el('td', { className: 'actions' },
          el('button', { type: 'button', className: 'btn btn-small', text: 'Files',
                         onclick: function () { openSeries(series); } }),
          el('button', { type: 'button', className: 'btn btn-small btn-yellow', text: 'Open',
                         title: 'Copy this series into Orthanc and show it in a viewer',
                         onclick: function () { window.nasRetrieve.open([series]); } }),
          el('button', { type: 'button', className: 'btn btn-small', text: 'Send to…',
                         title: 'Send this series to a DICOM modality (a workstation)',
                         onclick: function () { window.nasRetrieve.send([series]); } }),
          el('button', { type: 'button', className: 'btn btn-small btn-blue', text: 'Share',
                         onclick: function () { openShare([series]); } })));
      row.classList.toggle('selected', box.checked);
      box.addEventListener('change', function () {
        if (box.checked) { state.selected[key] = series; } else { delete state.selected[key]; }
        row.classList.toggle('selected', box.checked);
        renderSelection();
      });
      row.addEventListener('click', function (event) {
        if (event.target.closest('button, input')) { return; }
        openSeries(series);
      });
      tbody.appendChild(row);
    });
    labelCells($('results'));

    var first = state.total ? params.offset + 1 : 0;
    var last = params.offset + state.rows.length;
    setText('result-count', state.total === 1 ? '1 series found.' : number(state.total) + ' series found.');
    setText('page-info', state.total ? number(first) + '–' + number(last) + ' of ' + number(state.total) : '');
    $('prev-page').disabled = params.offset === 0;
    $('next-page').disabled = last >= state.total;
    renderSelection();
  }

  function renderSelection() {
    var count = Object.keys(state.selected).length;
    $('share-selected').disabled = !count;
    $('open-selected').disabled = !count;
    $('send-selected').disabled = !count;
    $('share-selected').textContent = count ? 'Share ' + number(count) + ' selected series' : 'Share selected';
    $('clear-selection').hidden = !count;
    var onPage = state.rows.filter(function (s) { return state.selected[s.series_key]; }).length;
    $('select-page').checked = state.rows.length > 0 && onPage === state.rows.length;
    $('select-page').indeterminate = onPage > 0 && onPage < state.rows.length;
  }

  $('search-form').addEventListener('submit', function (event) {
    event.preventDefault();
    state.selected = {};  // a selection belongs to its search: series of another one would be shared unseen
    runSearch(searchParams(0));
  });
  $('page-size').addEventListener('change', function () { if (state.search) { runSearch(searchParams(0)); } });
  $('prev-page').addEventListener('click', function () {
    var p = state.search;
    runSearch(Object.assign({}, p, { offset: Math.max(0, p.offset - p.limit) }));
  });
  $('next-page').addEventListener('click', function () {
    var p = state.search;
    runSearch(Object.assign({}, p, { offset: p.offset + p.limit }));
  });
  $('select-page').addEventListener('change', function () {
    var on = $('select-page').checked;
    state.rows.forEach(function (s) { if (on) { state.selected[s.series_key] = s; } else { delete state.selected[s.series_key]; } });
    renderResults();
  });
  $('clear-selection').addEventListener('click', function () { state.selected = {}; renderResults(); });
  function selectedRows() { return Object.keys(state.selected).map(function (key) { return state.selected[key]; }); }
  $('open-selected').addEventListener('click', function () { window.nasRetrieve.open(selectedRows()); });
  $('send-selected').addEventListener('click', function () { window.nasRetrieve.send(selectedRows()); });
  $('share-selected').addEventListener('click', function () {
    openShare(Object.keys(state.selected).map(function (key) { return state.selected[key]; }));
  });

  // -- one series ------------------------------------------------------------------------------------------
  function fact(list, name, value) {
    list.appendChild(el('dt', { text: name }));
    list.appendChild(el('dd', { text: value || '–' }));
  }

  function openSeries(series) {
    state.seriesShown = series;
    setText('series-title', personName(series.PatientName) + ' · ' + (series.SeriesDescription || 'series ' + (series.SeriesNumber || '')));
    var facts = clear($('series-facts'));
    fact(facts, 'Patient', personName(series.PatientName));
    fact(facts, 'Patient ID', series.PatientID);
    fact(facts, 'Birth date', dicomDate(series.PatientBirthDate));
    fact(facts, 'Sex', series.PatientSex);
    fact(facts, 'Study date', dicomDate(series.StudyDate));
    fact(facts, 'Study', series.StudyDescription);
    fact(facts, 'Accession', series.AccessionNumber);
    fact(facts, 'Modality', series.Modality);
    fact(facts, 'Series', (series.SeriesNumber !== null && series.SeriesNumber !== undefined ? series.SeriesNumber + ' · ' : '') + (series.SeriesDescription || ''));
    fact(facts, 'Files', number(series.file_count));
    var tbody = clear(document.querySelector('#series-files tbody'));
    tbody.appendChild(el('tr', null, el('td', { colspan: 4, className: 'empty', text: 'Loading the files…' })));
    hide($('series-message'));
    $('series-dialog').showModal();
    api('GET', 'series/' + encodeURIComponent(series.series_key)).then(function (answer) {
      clear(tbody);
      var files = answer.data.files;
      files.slice(0, MAX_FILES_SHOWN).forEach(function (file) {
        tbody.appendChild(el('tr', null,
          el('td', { className: 'num', text: file.InstanceNumber === null ? '' : String(file.InstanceNumber) }),
          el('td', { className: 'path', text: file.path }),
          el('td', { className: 'num', text: bytes(file.size) }),
          el('td', { className: 'path', text: file.SOPInstanceUID || '' })));
      });
      if (files.length > MAX_FILES_SHOWN) {
        tbody.appendChild(el('tr', null, el('td', { colspan: 4, className: 'empty',
          text: '… and ' + number(files.length - MAX_FILES_SHOWN) + ' more files.' })));
      }
    }, function (err) {
      clear(tbody);
      showError($('series-message'), err);
    });
  }

  $('series-share').addEventListener('click', function () {
    $('series-dialog').close();
    openShare([state.seriesShown]);
  });

  document.querySelectorAll('dialog [data-close]').forEach(function (button) {
    button.addEventListener('click', function () { button.closest('dialog').close(); });
  });

  // -- sharing ---------------------------------------------------------------------------------------------
  function seriesLine(s) {
    return [personName(s.PatientName), dicomDate(s.StudyDate), s.StudyDescription, s.SeriesDescription]
      .filter(Boolean).join(' · ') + ' (' + plural(s.file_count, 'file') + ')';
  }

  function suggestedLabel(rows) {
    var patients = {};
    rows.forEach(function (s) { patients[personName(s.PatientName) || s.PatientID || '?'] = true; });
    var names = Object.keys(patients);
    var label = names[0] + (names.length > 1 ? ' and ' + plural(names.length - 1, 'other patient') : '');
    if (rows.length === 1) {
      label += ' · ' + [dicomDate(rows[0].StudyDate), rows[0].SeriesDescription].filter(Boolean).join(' · ');
    } else {
      label += ' · ' + rows.length + ' series';
    }
    return label.slice(0, 200);
  }

  function fillExpiry() {
    var settings = state.settings || { DefaultShareHours: 24, MaxShareHours: 720 };
    var choices = EXPIRY_CHOICES.filter(function (h) { return h <= settings.MaxShareHours; });
    if (choices.indexOf(settings.DefaultShareHours) < 0) { choices.push(settings.DefaultShareHours); }
    choices.sort(function (a, b) { return a - b; });
    var select = clear($('share-expiry'));
    choices.forEach(function (h) {
      var option = el('option', { value: String(h), text: hours(h) });
      option.selected = h === settings.DefaultShareHours;
      select.appendChild(option);
    });
  }

  function openShare(rows) {
    state.shareRows = rows;
    setText('share-title', rows.length === 1 ? 'Share one series' : 'Share ' + rows.length + ' series');
    var list = clear($('share-series'));
    rows.forEach(function (s) { list.appendChild(el('li', { text: seriesLine(s) })); });
    fillExpiry();
    $('share-label').value = suggestedLabel(rows);
    $('share-passphrase').value = '';
    $('share-max').value = '';
    $('share-layout').value = 'dicomdir';
    $('share-form').hidden = false;
    $('share-result').hidden = true;
    $('share-url').value = '';
    $('share-create').disabled = false;
    hide($('share-message'));
    $('share-dialog').showModal();
  }

  $('share-form').addEventListener('submit', function (event) {
    event.preventDefault();
    $('share-create').disabled = true;
    hide($('share-message'));
    var body = { series: state.shareRows.map(function (s) { return s.series_key; }),
                 expires_in_hours: parseFloat($('share-expiry').value) };
    var label = $('share-label').value.trim();
    if (label) { body.label = label; }
    var passphrase = $('share-passphrase').value;
    if (passphrase) { body.passphrase = passphrase; }
    if ($('share-max').value) { body.max_downloads = parseInt($('share-max').value, 10); }
    body.layout = $('share-layout').value;
    api('POST', 'shares', body).then(function (answer) {
      var share = answer.data;
      $('share-form').hidden = true;
      $('share-url').value = share.url;
      setText('share-expires', localTime(share.expires_at));
      setText('share-limits', (share.max_downloads ? ', ' + plural(share.max_downloads, 'time') : '') +
              (share.passphrase ? ', with the passphrase you chose' : ''));
      $('share-passphrase').value = '';
      setText('share-copied', '');
      if (share.warning) { showMessage($('share-warning'), 'warning', null, share.warning); } else { hide($('share-warning')); }
      $('share-result').hidden = false;
      $('share-url').select();
      if (state.shareRows.length > 1) { state.selected = {}; if (state.search) { renderResults(); } }
    }, function (err) {
      $('share-create').disabled = false;
      showError($('share-message'), err);
    });
  });

  $('share-copy').addEventListener('click', function () {
    var url = $('share-url').value;
    function fallback() {
      $('share-url').select();
      var copied = false;
      try { copied = document.execCommand('copy'); } catch (e) { copied = false; }
      setText('share-copied', copied ? 'Copied to the clipboard.' : 'Select the link above and copy it (Ctrl+C).');
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(url).then(function () { setText('share-copied', 'Copied to the clipboard.'); }, fallback);
    } else {
      fallback();
    }
  });

  // -- the list of shares ---------------------------------------------------------------------------------
  function shareState(share) {
    if (share.revoked) { return 'revoked'; }
    if (share.max_downloads && share.downloads >= share.max_downloads) { return 'used up'; }
    return Date.parse(share.expires_at) <= Date.now() ? 'expired' : 'active';
  }

  function loadShares() {
    return api('GET', 'shares').then(function (answer) {
      hide($('shares-message'));
      renderShares(answer.data);
    }, function (err) { showError($('shares-message'), err); });
  }

  /** What a link holds, so that links without a label can be told apart: its first series still in the
   *  index (patient, study date, series), and how many more. */
  function shareAbout(share) {
    var first = (share.about || [])[0];
    var count = share.series.length;
    if (!first) { return number(count) + ' series, no longer in the NAS index'; }
    var text = [personName(first.PatientName) || first.PatientID, dicomDate(first.StudyDate),
                first.SeriesDescription || first.StudyDescription].filter(Boolean).join(' · ');
    return count > 1 ? text + ' and ' + number(count - 1) + ' more series' : text;
  }

  function renderShares(shares) {
    var tbody = clear(document.querySelector('#shares tbody'));
    if (!shares.length) {
      tbody.appendChild(el('tr', null, el('td', { colspan: 9, className: 'empty',
        text: 'No share links yet. Search for a series and press “Share”.' })));
    }
    shares.forEach(function (share) {
      var status = shareState(share);
      var about = shareAbout(share);
      var action = status === 'active'
        ? el('button', { type: 'button', className: 'btn btn-small btn-danger', text: 'Revoke',
                         onclick: function () { revoke(share); } })
        : null;
      tbody.appendChild(el('tr', { 'data-id': share.id, className: status === 'active' ? '' : 'inactive' },
        el('td', { className: 'label', title: [share.label, about].filter(Boolean).join('\n') },
          el('div', { text: share.label || '(no label)' }), el('div', { className: 'about', text: about })),
        el('td', { className: 'num', text: number(share.series.length) }),
        el('td', { text: localTime(share.created_at) }),
        el('td', { text: localTime(share.expires_at) }),
        el('td', { className: 'num', text: number(share.downloads) +
                   (share.max_downloads ? ' of ' + number(share.max_downloads) : '') }),
        el('td', { text: share.passphrase ? 'yes' : 'no' }),
        el('td', { text: share.last_download_at ? localTime(share.last_download_at) : 'never' }),
        el('td', null, el('span', { className: 'state state-' + status.replace(' ', '-'), text: status })),
        el('td', { className: 'actions' }, action)));
    });
    labelCells($('shares'));
  }

  function revoke(share) {
    var what = share.label ? '“' + share.label + '”' : 'this link';
    if (!window.confirm('Revoke ' + what + '? Whoever has the link will no longer be able to download.')) { return; }
    api('DELETE', 'shares/' + encodeURIComponent(share.id)).then(loadShares, function (err) {
      showError($('shares-message'), err);
    });
  }

  $('refresh-shares').addEventListener('click', loadShares);

  // what retrieve.js (Open, Send to…, the jobs) uses of this file
  window.nasPanel = { api: api, ApiError: ApiError, el: el, clear: clear, showError: showError, hide: hide, number: number,
                      plural: plural, labelCells: labelCells, bytes: bytes, localTime: localTime, seriesLine: seriesLine,
                      showTab: showTab };

  // -- start -----------------------------------------------------------------------------------------------
  var back = $('back');
  if (Object.keys(authHeaders).length) { back.href += '?' + new URLSearchParams(authHeaders).toString(); }

  Promise.all([api('GET', 'config'), api('GET', 'status')]).then(function (answers) {
    state.settings = answers[0].data;
    state.status = answers[1].data;
    fillConnection(state.settings);
    renderStatus(state.status);
    loadRuns();
    var start = location.hash.slice(1);
    if (linkedSearch(start)) { return; }
    // ?q=... in the address (a custom button of Orthanc Explorer 2, a bookmark): search it at once
    var wanted = new URLSearchParams(location.search).get('q');
    if (wanted !== null && configured(state.settings)) { start = 'search'; }
    if (TABS.indexOf(start) < 0) {
      start = !configured(state.settings) ? 'connection' : (state.status.series_count ? 'search' : 'indexing');
    }
    showTab(start);
    if (start !== location.hash.slice(1)) { history.replaceState(null, '', '#' + start); }
    if (start === 'search' && wanted !== null) {
      $('q').value = wanted;
      runSearch(searchParams(0));
    }
  }, function (err) {
    showError($('notice'), err);
    showTab(location.hash.slice(1) || 'connection');
  }).then(function () {
    state.pollTimer = window.setTimeout(pollStatus, state.status && state.status.running ? POLL_RUNNING_MS : POLL_IDLE_MS);
  });
}());
