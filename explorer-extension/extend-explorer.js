/* orthanc-nas: a "NAS" button on the home page (#lookup) of Orthanc Explorer, opening the NAS panel.
 * Injected by the plugin with orthanc.ExtendOrthancExplorer. Orthanc Explorer is jQuery Mobile 1.1:
 * markup added at "pagebeforecreate" is enhanced with the rest of the page. The panel opens in the
 * same tab (the browser's Back button returns here); Orthanc Explorer's authorization tokens from
 * the address (?token=...) go along. */
$('#lookup').live('pagebeforecreate', function () {
  if ($('#nas-open-panel').length) {
    return;
  }
  var href = '../nas/app/index.html';
  if (typeof authorizationTokens === 'object' && !$.isEmptyObject(authorizationTokens)) {
    href += '?' + $.param(authorizationTokens);
  }
  $('<a>')
    .attr({
      id: 'nas-open-panel',
      href: href,
      'data-role': 'button',
      'data-icon': 'grid',
      'data-ajax': 'false',
      title: 'Search and share the DICOM files of the NAS'
    })
    .text('NAS')
    .prependTo($(this).find('[data-role="header"] .ui-btn-right'));
});
