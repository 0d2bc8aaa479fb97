/* orthanc-nas panel: "Open" (copy series from the NAS into Orthanc, then show them in a viewer in a new
 * tab), "Send to…" (a DICOM modality, after an optional echo check) and the Jobs tab. Uses only the
 * /nas/ routes (POST /nas/retrieve, /nas/jobs, /nas/destinations) and the helpers app.js shares. */
(function () {
  'use strict';

  var POLL_MS = 500;
  var panel = window.nasPanel;
  var api = panel.api, el = panel.el, clear = panel.clear, number = panel.number;
  var LIVE = { pending: true, running: true };
  var STATES = { pending: 'waiting', running: 'running', done: 'done', failed: 'failed', cancelled: 'cancelled' };
  var current = { job: null, rows: [], viewerTab: null, timer: null };
  var jobsTimer = null;

  function $(id) { return document.getElementById(id); }

  /** A viewer's link (a path from Orthanc's root) as an address: the panel lives at <root>/nas/app/. */
  function viewerAddress(url) { return new URL('../..' + url, location.href).href; }

  /** The viewer to open for a job: a viewer plugin if Orthanc has one, else Orthanc Explorer. */
  function bestViewer(viewers) {
    var others = viewers.filter(function (v) { return v.name !== 'Orthanc Explorer'; });
    return (others.length ? others : viewers)[0];
  }

  function dialog(title, rows) {
    current.rows = rows;
    $('job-title').textContent = title;
    var list = clear($('job-series'));
    rows.forEach(function (s) { list.appendChild(el('li', { text: panel.seriesLine(s) })); });
    $('job-progress-box').hidden = true;
    $('send-form').hidden = true;
    clear($('job-viewers'));
    panel.hide($('job-message'));
    var box = $('job-dialog');
    if (!box.open) { box.showModal(); }
  }

  function start(to, rows) {
    return api('POST', 'retrieve', { series: rows.map(function (s) { return s.series_key; }), to: to })
      .then(function (answer) {
        current.job = answer.data.job;
        $('job-progress-box').hidden = false;
        $('job-cancel').hidden = false;
        poll();
      });
  }

  function poll() {
    window.clearTimeout(current.timer);
    var id = current.job;
    api('GET', 'jobs/' + encodeURIComponent(id)).then(function (answer) {
      if (current.job !== id) { return; }
      var job = answer.data;
      renderJob(job);
      if (LIVE[job.state]) { current.timer = window.setTimeout(poll, POLL_MS); } else { finished(job); }
    }, function (err) { panel.showError($('job-message'), err); });
  }

  function renderJob(job) {
    var done = job.files_done + job.files_failed;
    var percent = job.files_total ? Math.min(100, 100 * done / job.files_total) : (LIVE[job.state] ? 0 : 100);
    var bar = $('job-progress');
    bar.classList.toggle('failed', job.state === 'failed');
    $('job-progress-fill').style.width = percent.toFixed(1) + '%';
    bar.setAttribute('aria-valuenow', Math.round(percent));
    $('job-progress-label').textContent = number(job.files_done) + ' of ' + number(job.files_total) + ' files' +
      (job.files_failed ? ', ' + number(job.files_failed) + ' failed' : '') +
      (job.files_per_second ? ' · ' + job.files_per_second + ' files/s' : '');
    var what = job.to === 'orthanc' ? 'Copying into Orthanc' : 'Sending to ' + job.to;
    $('job-phase').textContent = job.state === 'pending' ? 'Waiting for other jobs to finish…' :
      job.state === 'running' ? what + '…' : what + ': ' + STATES[job.state] + '.';
    $('job-cancel').hidden = !LIVE[job.state];
  }

  function finished(job) {
    if (current.viewerTab && current.viewerTab.closed) { current.viewerTab = null; }
    if (job.state === 'failed' && job.failure) {
      panel.showError($('job-message'), new panel.ApiError(0, job.failure));
    } else if (job.files_failed) {
      var sample = job.error_samples[0] || {};
      panel.showError($('job-message'), new panel.ApiError(0, { kind: 'network',
        error: panel.plural(job.files_failed, 'file') + ' could not be copied',
        hint: (sample.path ? sample.path + ': ' : '') + (sample.error || '') }));
    }
    var list = clear($('job-viewers'));
    (job.viewers || []).forEach(function (v) {
      list.appendChild(el('li', null, el('a', { href: viewerAddress(v.url), target: '_blank', rel: 'noopener',
                                                text: v.name })));
    });
    if (job.to === 'orthanc' && job.state === 'done' && job.viewers && job.viewers.length) {
      var address = viewerAddress(bestViewer(job.viewers).url);
      if (current.viewerTab) { current.viewerTab.location.href = address; }
      else { window.open(address, '_blank'); }
    } else if (current.viewerTab) {
      current.viewerTab.close();
    }
    current.viewerTab = null;
  }

  /** Open: import into Orthanc, then the viewer in a new tab (opened now, while the click counts as the
   * user's, so no pop-up blocker stops it; it shows a word of waiting until the viewer's address is known). */
  function open(rows) {
    if (!rows.length) { return; }
    dialog('Open in Orthanc', rows);
    var tab = window.open('', '_blank');
    if (tab) {
      tab.document.title = 'Opening from the NAS…';
      tab.document.body.textContent = 'Copying the series from the NAS into Orthanc…';
    }
    current.viewerTab = tab;
    start('orthanc', rows).catch(function (err) {
      if (tab) { tab.close(); }
      current.viewerTab = null;
      panel.showError($('job-message'), err);
    });
  }

  function send(rows) {
    if (!rows.length) { return; }
    dialog('Send to a DICOM modality', rows);
    var select = clear($('send-destination'));
    $('send-echo-result').textContent = '';
    $('send-form').hidden = false;
    api('GET', 'destinations').then(function (answer) {
      var modalities = answer.data.filter(function (d) { return d.id !== 'orthanc'; });
      modalities.forEach(function (d) {
        select.appendChild(el('option', { value: d.id, text: d.id + ' (' + d.AET + ' at ' + d.Host + ':' + d.Port + ')' }));
      });
      $('send-start').disabled = $('send-echo').disabled = !modalities.length;
      if (!modalities.length) {
        panel.showError($('job-message'), new panel.ApiError(0, { kind: 'config',
          error: 'Orthanc knows no DICOM modality',
          hint: 'Add the workstation to DicomModalities in orthanc.json (or through Orthanc’s REST API).' }));
      }
    }, function (err) { panel.showError($('job-message'), err); });
  }

  $('send-echo').addEventListener('click', function () {
    var id = $('send-destination').value;
    var result = $('send-echo-result');
    result.textContent = 'Checking…';
    api('POST', 'destinations/' + encodeURIComponent(id) + '/echo', {}).then(function (answer) {
      result.textContent = id + ' answers (' + answer.data.elapsed_ms + ' ms).';
    }, function (err) {
      result.textContent = '';
      panel.showError($('job-message'), err);
    });
  });

  $('send-form').addEventListener('submit', function (event) {
    event.preventDefault();
    panel.hide($('job-message'));
    $('send-form').hidden = true;
    start($('send-destination').value, current.rows).catch(function (err) {
      $('send-form').hidden = false;
      panel.showError($('job-message'), err);
    });
  });

  function cancel(id) {
    return api('DELETE', 'jobs/' + encodeURIComponent(id));
  }

  $('job-cancel').addEventListener('click', function () {
    if (current.job) { cancel(current.job).then(poll, function (err) { panel.showError($('job-message'), err); }); }
  });

  $('job-dialog').addEventListener('close', function () {
    window.clearTimeout(current.timer);
    current.job = null;
  });

  // -- the Jobs tab ---------------------------------------------------------------------------------------
  function loadJobs() {
    window.clearTimeout(jobsTimer);
    return api('GET', 'jobs').then(function (answer) {
      renderJobs(answer.data);
      var live = answer.data.some(function (j) { return LIVE[j.state]; });
      if (live && !$('tab-jobs').hidden) { jobsTimer = window.setTimeout(loadJobs, 1000); }
    }, function (err) { panel.showError($('jobs-message'), err); });
  }

  function renderJobs(jobs) {
    var tbody = clear(document.querySelector('#jobs tbody'));
    if (!jobs.length) {
      tbody.appendChild(el('tr', null, el('td', { colspan: 8, className: 'empty',
        text: 'Nothing opened or sent yet: use Open or Send to… on a series of the search.' })));
    }
    jobs.forEach(function (job) {
      var actions = el('td', { className: 'actions' });
      if (LIVE[job.state]) {
        actions.appendChild(el('button', { type: 'button', className: 'btn btn-small', text: 'Cancel',
          onclick: function () { cancel(job.id).then(loadJobs, function (err) { panel.showError($('jobs-message'), err); }); } }));
      }
      var seen = {};
      (job.viewers || []).forEach(function (v) {
        if (seen[v.name]) { return; }
        seen[v.name] = true;
        actions.appendChild(el('a', { className: 'btn btn-small', href: viewerAddress(v.url), target: '_blank',
                                      rel: 'noopener', text: v.name }));
      });
      tbody.appendChild(el('tr', { 'data-job': job.id },
        el('td', { text: panel.localTime(job.created_at) }),
        el('td', { text: job.to === 'orthanc' ? 'Orthanc' : job.to }),
        el('td', { className: 'num', text: number(job.series.length) }),
        el('td', null, el('span', { className: 'state state-' + job.state, text: STATES[job.state] || job.state })),
        el('td', { className: 'num', text: number(job.files_done) + ' of ' + number(job.files_total) }),
        el('td', { className: 'num', text: number(job.files_failed),
                   title: (job.error_samples || []).map(function (e) { return e.path + ': ' + e.error; }).join('\n') }),
        el('td', { text: job.files_per_second ? job.files_per_second + ' files/s' : '–' }),
        actions));
    });
    panel.labelCells($('jobs'));
  }

  $('refresh-jobs').addEventListener('click', loadJobs);

  window.nasRetrieve = { open: open, send: send, loadJobs: loadJobs };
}());
