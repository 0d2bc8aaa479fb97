/* orthanc-nas: a "NAS" button on the home page (#lookup) of Orthanc Explorer, opening the NAS panel, and
 * "Priors on the NAS" on the study and patient pages, opening the panel on that patient's NAS series.
 * Injected by the plugin with orthanc.ExtendOrthancExplorer. Orthanc Explorer is jQuery Mobile 1.1:
 * markup added at "pagebeforecreate" is enhanced with the rest of the page. The panel opens in the
 * same tab (the browser's Back button returns here); Orthanc Explorer's authorization tokens from
 * the address (?token=...) go along. */
function nasPanelAddress(hash) {
  var href = '../nas/app/index.html';
  if (typeof authorizationTokens === 'object' && !$.isEmptyObject(authorizationTokens)) {
    href += '?' + $.param(authorizationTokens);
  }
  return href + (hash || '');
}

$('#lookup').live('pagebeforecreate', function () {
  if ($('#nas-open-panel').length) {
    return;
  }
  $('<a>')
    .attr({
      id: 'nas-open-panel',
      href: nasPanelAddress(),
      'data-role': 'button',
      'data-icon': 'grid',
      'data-ajax': 'false',
      title: 'Search and share the DICOM files of the NAS'
    })
    .text('NAS')
    .prependTo($(this).find('[data-role="header"] .ui-btn-right'));
});

/* level: "study" or "patient"; the link gets its address once the page knows its PatientID. */
function nasPriorsButton(level, resource, patientId) {
  var id = 'nas-' + level + '-priors';
  $('#' + level).live('pagebeforecreate', function () {
    if ($('#' + id).length) {
      return;
    }
    var item = $('<li data-icon="search">').append(
      $('<a>').attr({ id: id, href: '#', 'data-ajax': 'false', title: 'The series of this patient on the NAS' })
        .text('Priors on the NAS'));
    $(this).find('#' + level + '-delete').closest('ul').append(item);
  });
  $('#' + level).live('pagebeforeshow', function () {
    var uuid = $.mobile.pageData && $.mobile.pageData.uuid;
    if (!uuid) {
      return;
    }
    $.ajax({ url: '../' + resource + '/' + uuid, dataType: 'json', cache: false, success: function (found) {
      var pid = patientId(found);
      $('#' + id).attr('href', nasPanelAddress('#patient=' + encodeURIComponent(pid || '')));
    }});
  });
}

nasPriorsButton('study', 'studies', function (s) { return (s.PatientMainDicomTags || {}).PatientID; });
nasPriorsButton('patient', 'patients', function (p) { return (p.MainDicomTags || {}).PatientID; });
