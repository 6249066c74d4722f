/* Corvale policy library: cookie consent and mobile menu. */
(function () {
  'use strict';
  var KEY = 'corvale-consent';

  function hideBanner() {
    var banner = document.getElementById('cookie-banner');
    if (banner) { banner.hidden = true; }
  }

  function loadAnalytics() {
    if (window.corvaleAnalyticsLoaded) { return; }
    window.corvaleAnalyticsLoaded = true;
    var s = document.createElement('script');
    s.async = true;
    s.src = 'https://stats.corvale.example/collect.js';
    document.head.appendChild(s);
  }

  document.addEventListener('DOMContentLoaded', function () {
    var saved = null;
    try { saved = localStorage.getItem(KEY); } catch (e) { /* storage disabled */ }
    if (saved) {
      hideBanner();
      if (saved === 'all') { loadAnalytics(); }
    }
    var buttons = document.querySelectorAll('#cookie-banner button[data-consent]');
    Array.prototype.forEach.call(buttons, function (btn) {
      btn.addEventListener('click', function () {
        var choice = btn.getAttribute('data-consent');
        try { localStorage.setItem(KEY, choice); } catch (e) { /* ignore */ }
        hideBanner();
        if (choice === 'all') { loadAnalytics(); }
      });
    });

    var toggle = document.querySelector('.nav-toggle');
    var menu = document.getElementById('menu');
    if (toggle && menu) {
      toggle.addEventListener('click', function () {
        var open = toggle.getAttribute('aria-expanded') === 'true';
        toggle.setAttribute('aria-expanded', String(!open));
        menu.classList.toggle('open', !open);
      });
    }
  });
})();
