// mailsync console: keeps the admin token in sessionStorage, fetches server-rendered views
// with it as a bearer header, and posts actions to the JSON API. No cookies, no framework.
(function () {
  "use strict";
  var KEY = "mailsync.token";
  var main = document.getElementById("main");
  var login = document.getElementById("login");
  var nav = document.getElementById("nav");
  var flash = document.getElementById("flash");

  function token() { return sessionStorage.getItem(KEY); }
  function route() { return location.hash.slice(1) || "/mailboxes"; }

  function say(text, bad) {
    flash.textContent = text;
    flash.className = bad ? "bad" : "good";
  }

  function showLogin(message) {
    nav.hidden = true;
    main.innerHTML = "";
    login.hidden = false;
    document.getElementById("login-error").textContent = message || "";
    document.getElementById("token").focus();
  }

  function call(method, path, body) {
    var init = { method: method, headers: { "Authorization": "Bearer " + token() } };
    if (body) {
      init.headers["Content-Type"] = "application/json";
      init.body = body;
    }
    return fetch(path, init).then(function (resp) {
      if (resp.status === 401 || resp.status === 403) {
        sessionStorage.removeItem(KEY);
        return resp.json().catch(function () { return {}; }).then(function (j) {
          showLogin(j.error || "the token was refused");
          throw new Error("unauthorized");
        });
      }
      return resp;
    });
  }

  function load() {
    if (!token()) { showLogin(); return; }
    login.hidden = true;
    nav.hidden = false;
    main.setAttribute("aria-busy", "true");
    call("GET", "/console/view" + route()).then(function (resp) {
      return resp.text().then(function (body) { return { resp: resp, body: body }; });
    }).then(function (r) {
      main.removeAttribute("aria-busy");
      var type = r.resp.headers.get("Content-Type") || "";
      if (r.resp.ok && type.indexOf("text/html") === 0) {
        // A view: a fragment the server rendered with every value escaped.
        main.innerHTML = r.body;
        return;
      }
      // Anything else (a JSON error of the API, a proxy's page) is shown as text, never
      // parsed as HTML: it may carry what a request put in (a query, a path).
      var message = r.body;
      try { message = JSON.parse(r.body).error || r.body; } catch (ignored) { /* not JSON */ }
      var p = document.createElement("p");
      p.className = "problem";
      p.textContent = message + " (HTTP " + r.resp.status + ")";
      main.replaceChildren(p);
    }).catch(function (e) {
      main.removeAttribute("aria-busy");
      if (e.message !== "unauthorized") { say("cannot reach the service: " + e.message, true); }
    });
  }

  login.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var t = document.getElementById("token").value.trim();
    if (!t) { return; }
    sessionStorage.setItem(KEY, t);
    document.getElementById("token").value = "";
    say("");
    load();
  });

  document.getElementById("logout").addEventListener("click", function () {
    sessionStorage.removeItem(KEY);
    say("logged out");
    showLogin();
  });

  // Filter forms: their fields become the view's query, in the address bar (bookmarkable).
  main.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!form.dataset.view) { return; }
    ev.preventDefault();
    var query = [];
    new FormData(form).forEach(function (value, name) {
      if (value !== "") { query.push(encodeURIComponent(name) + "=" + encodeURIComponent(value)); }
    });
    var hash = "#" + form.dataset.view + (query.length ? "?" + query.join("&") : "");
    if (location.hash === hash) { load(); } else { location.hash = hash; }
  });

  // Actions: POST to the API, say what happened, show the view again.
  main.addEventListener("click", function (ev) {
    var button = ev.target.closest("button[data-post]");
    if (!button) { return; }
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) { return; }
    button.disabled = true;
    call("POST", button.dataset.post, button.dataset.body).then(function (resp) {
      return resp.json().then(function (j) { return { ok: resp.ok, body: j }; });
    }).then(function (r) {
      if (r.ok) {
        var what = r.body.action || r.body.decision || (r.body.step ? "retry: " + r.body.step : "done");
        say((r.body.mailbox ? r.body.mailbox + ": " : "") + what + " ok");
      } else {
        say(r.body.error || "refused", true);
      }
      load();
    }).catch(function (e) {
      if (e.message !== "unauthorized") { say("cannot reach the service: " + e.message, true); }
      button.disabled = false;
    });
  });

  window.addEventListener("hashchange", load);
  load();
})();
