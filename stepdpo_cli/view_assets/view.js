// stepdpo view: renders the embedded records a page at a time (search, filter, paging; state in the URL hash).
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("data").textContent);
  var records = DATA.records, kind = DATA.kind, pageSize = DATA.pageSize || 50;
  var state = { q: "", f: DATA.filter.options.length ? DATA.filter.options[0][0] : "", p: 1 };
  var haystack = null, matches = null;
  var $ = function (id) { return document.getElementById(id); };

  function esc(value) {
    return String(value == null ? "" : value).replace(/&/g, "&amp;").replace(/</g, "&lt;")
      .replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }
  function tag(text, cls) { return '<span class="tag' + (cls ? " " + cls : "") + '">' + esc(text) + "</span>"; }
  function fmt(v) { return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(4)) : esc(v); }

  // ---- word-level diff: common prefix/suffix trimmed, LCS over word and space tokens (bounded size)
  function tokens(text) { return String(text || "").match(/\s+|[^\s]+/g) || []; }
  function spans(list, keep, start, end, cls, el) {
    var out = "", run = "";
    for (var i = start; i < end; i++) {
      if (keep[i - start]) { if (run) { out += "<" + el + ' class="' + cls + '">' + esc(run) + "</" + el + ">"; run = ""; } out += esc(list[i]); }
      else run += list[i];
    }
    if (run) out += "<" + el + ' class="' + cls + '">' + esc(run) + "</" + el + ">";
    return out;
  }
  function diff(rejected, chosen) {
    var a = tokens(rejected), b = tokens(chosen), pre = 0, suf = 0;
    while (pre < a.length && pre < b.length && a[pre] === b[pre]) pre++;
    while (suf < a.length - pre && suf < b.length - pre && a[a.length - 1 - suf] === b[b.length - 1 - suf]) suf++;
    var n = a.length - pre - suf, m = b.length - pre - suf;
    var keepA = new Uint8Array(n), keepB = new Uint8Array(m);
    if (n && m && n * m <= 2000000) {
      var w = m + 1, L = new Int32Array((n + 1) * w), i, j;
      for (i = n - 1; i >= 0; i--) for (j = m - 1; j >= 0; j--)
        L[i * w + j] = a[pre + i] === b[pre + j] ? L[(i + 1) * w + j + 1] + 1 : Math.max(L[(i + 1) * w + j], L[i * w + j + 1]);
      i = 0; j = 0;
      while (i < n && j < m) {
        if (a[pre + i] === b[pre + j]) { keepA[i++] = 1; keepB[j++] = 1; }
        else if (L[(i + 1) * w + j] >= L[i * w + j + 1]) i++; else j++;
      }
    }
    var head = function (list) { return esc(list.slice(0, pre).join("")); };
    var tail = function (list) { return esc(list.slice(list.length - suf).join("")); };
    return [head(a) + spans(a, keepA, pre, pre + n, "del", "del") + tail(a),
            head(b) + spans(b, keepB, pre, pre + m, "add", "ins") + tail(b)];
  }

  // ---- one card per record kind
  function scoreList(name, values) {
    if (!Array.isArray(values) || !values.length) return "";
    return "<div><b>" + esc(name) + ":</b> " + values.map(function (v, i) {
      return "step " + (i + 1) + " = " + (v == null ? "-" : fmt(v)); }).join(", ") + "</div>";
  }
  function evidence(r) {
    var out = "";
    if (r._evidence) r = Object.assign({}, r._evidence, r, { localizer: r.localizer || r._evidence.localizer,
      judge_raw: r._evidence.judge_raw, step_verdicts: r._evidence.step_verdicts, step_scores: r._evidence.step_scores });
    var loc = r.localizer || {};
    if (loc.method) out += "<div><b>localizer:</b> " + esc(loc.method) + (loc.judge ? " (" + esc(loc.judge) + ")" : "")
      + (loc.model ? " (" + esc(loc.model) + ")" : "") + (loc.verifier ? " (" + esc(loc.verifier) + ")" : "") + "</div>";
    out += scoreList("rollout success rate after each step", r.step_scores);
    out += scoreList("verdicts", r.step_verdicts);
    out += scoreList("chosen step scores", r.chosen_step_scores);
    out += scoreList("rejected step scores", r.rejected_step_scores);
    if (r.judge_raw) out += '<details class="judge"><summary>judge\'s verdict text</summary><pre>' + esc(r.judge_raw) + "</pre></details>";
    return out ? '<div class="evidence">' + out + "</div>" : "";
  }
  function head(r, tags) { return '<div class="head"><span class="id">' + esc(r.id) + "</span>" + tags + "</div>"; }
  function pairCard(r) {
    var d = diff(r.rejected, r.chosen), k = r.first_error_step;
    var tags = (r.dataset ? tag(r.dataset) : "") + (k != null ? tag("error at step " + k, "bad") : "")
      + (r.format ? tag(r.format) : "") + (r._source ? tag(r._source) : "");
    var shared = r.initial_reason_steps ? '<details class="shared"><summary>shared steps</summary><pre>'
      + esc(r.initial_reason_steps) + "</pre></details>" : "";
    var side = function (cls, title, body) {
      return '<div class="side ' + cls + '"><h4>' + title + '</h4><div class="text">' + (body || '<i class="empty">(empty)</i>') + "</div></div>";
    };
    var full = (r.full_chosen && r.full_chosen !== r.chosen) || (r.full_rejected && r.full_rejected !== r.rejected)
      ? '<details class="full"><summary>whole continuations</summary><div class="cols">'
        + side("chosen", "chosen, to the end", esc(r.full_chosen)) + side("rejected", "rejected, to the end", esc(r.full_rejected))
        + "</div></details>" : "";
    return '<article class="card pair">' + head(r, tags) + '<div class="problem">' + esc(r.prompt || r.problem) + "</div>"
      + shared + '<div class="cols">' + side("chosen", "chosen", d[1]) + side("rejected", "rejected", d[0]) + "</div>"
      + full + evidence(r) + "</article>";
  }
  function stepsList(r) {
    var k = r.first_error_step, verdicts = r.step_verdicts || [], scores = r.step_scores || [];
    return '<ol class="steps">' + (r.steps || []).map(function (s, i) {
      var cls = k == null ? "" : (i + 1 === k ? "wrong" : (i + 1 > k ? "after" : ""));
      return '<li class="' + cls + '">' + esc(s)
        + (verdicts[i] != null ? '<span class="verdict">' + esc(verdicts[i]) + "</span>" : "")
        + (scores[i] != null ? '<span class="score">p=' + fmt(scores[i]) + "</span>" : "") + "</li>";
    }).join("") + "</ol>";
  }
  function localizedCard(r) {
    var status = r.localize_status || "undecided";
    var tags = tag(status, status === "error_found" ? "bad" : (status === "no_error" ? "ok" : ""))
      + (r.first_error_step != null ? tag("first error: step " + r.first_error_step, "bad") : "");
    var r2 = Object.assign({}, r, { step_scores: null, step_verdicts: null });
    return '<article class="card localized">' + head(r, tags) + '<div class="problem">' + esc(r.problem) + "</div>"
      + stepsList(r) + answers(r) + evidence(r2) + "</article>";
  }
  function answers(r) {
    var pred = r.prediction !== undefined ? r.prediction : r.majority;
    return '<div class="answers"><b>prediction:</b> <span class="prediction">' + esc(pred == null ? "(none)" : pred)
      + '</span> &middot; <b>answer:</b> <span class="answer">' + esc(Array.isArray(r.answer) ? r.answer.join(" or ") : r.answer) + "</span></div>";
  }
  function evalCard(r) {
    var tags = tag(r.correct ? "right" : "wrong", r.correct ? "ok" : "bad") + (r.dataset ? tag(r.dataset) : "")
      + (r.subject ? tag(r.subject) : "") + (r.level != null ? tag("level " + r.level) : "")
      + (r.mean_correct != null ? tag("mean@k " + fmt(r.mean_correct)) : "");
    var text = r.completion != null ? r.completion : (r.completions || []).join("\n\n---\n\n");
    return '<article class="card eval">' + head(r, tags) + '<div class="problem">' + esc(r.problem) + "</div>" + answers(r)
      + '<details><summary>model output</summary><pre>' + esc(text) + "</pre></details></article>";
  }
  function treeCard(r) {
    var nodes = {}, kids = {}, path = {}, role = {};
    (r.tree || []).forEach(function (n) { nodes[n.id] = n; (kids[n.parent] = kids[n.parent] || []).push(n.id); });
    (r.chosen_path || []).forEach(function (id) { path[id] = true; });
    (r._pairs || []).forEach(function (p) { role[p.chosen] = "pair-chosen"; role[p.rejected] = "pair-rejected"; });
    var end = nodes[(r.chosen_path || [])[(r.chosen_path || []).length - 1]] || {};
    var s = r.search || {};
    var tags = tag(s.status || "?", s.status === "timeout" ? "bad" : "") + tag((s.simulations || 0) + " simulations")
      + tag("chosen path " + (end.correct ? "right" : "not right"), end.correct ? "ok" : "bad");
    function node(id) {
      var n = nodes[id], cls = "node" + (path[id] ? " on-path" : "") + (role[id] ? " " + role[id] : "");
      var mark = n.terminal ? (n.correct ? " \u2713" : " \u2717") : "";
      var label = id === 0 ? "(problem)" : n.step;
      return '<li class="' + cls + '" data-node="' + id + '"><span class="step">' + esc(label) + mark + "</span>"
        + '<span class="nstat">N=' + n.visits + " Q=" + fmt(n.q) + " P=" + fmt(n.prior) + "</span>"
        + (kids[id] ? '<ul class="tree">' + kids[id].map(node).join("") + "</ul>" : "") + "</li>";
    }
    var pairs = (r._pairs || []).map(function (p) {
      return "<li>at node " + p.node + ": chosen " + p.chosen + " vs rejected " + p.rejected + " (\u03b5 = "
        + fmt(p.label_smoothing) + ")</li>"; }).join("");
    return '<article class="card trees">' + head(r, tags) + '<div class="problem">' + esc(r.problem) + "</div>"
      + (nodes[0] ? '<ul class="tree root">' + node(0) + "</ul>" : "")
      + '<div class="evidence"><b>pairs taken (pair --strategy tree):</b> ' + (pairs ? '<ul class="tree-pairs">'
      + pairs + "</ul>" : "none") + "</div></article>";
  }
  function rawCard(r) { return '<article class="card record">' + head(r, "") + "<pre>" + esc(JSON.stringify(r, null, 1)) + "</pre></article>"; }
  function metricsTable(rows) {
    var cols = [];
    rows.forEach(function (r) { Object.keys(r).forEach(function (k) { if (cols.indexOf(k) < 0) cols.push(k); }); });
    return '<table class="metrics"><thead><tr>' + cols.map(function (c) { return "<th>" + esc(c) + "</th>"; }).join("")
      + "</tr></thead><tbody>" + rows.map(function (r) {
        return '<tr class="card metric">' + cols.map(function (c) { return "<td>" + fmt(r[c]) + "</td>"; }).join("") + "</tr>";
      }).join("") + "</tbody></table>";
  }
  var CARDS = { pairs: pairCard, localized: localizedCard, eval: evalCard, trees: treeCard, records: rawCard };

  // ---- search, filter, paging
  function compute() {
    var q = state.q.toLowerCase(), field = DATA.filter.field, want = state.f;
    if (q && !haystack) haystack = records.map(function (r) { return JSON.stringify(r).toLowerCase(); });
    matches = [];
    for (var i = 0; i < records.length; i++) {
      var r = records[i];
      if (field && want !== "" && String(r[field]) !== want) continue;
      if (q && String(r.id).toLowerCase().indexOf(q) < 0 && haystack[i].indexOf(q) < 0) continue;
      matches.push(i);
    }
  }
  function render() {
    var pages = Math.max(1, Math.ceil(matches.length / pageSize));
    state.p = Math.min(Math.max(1, state.p), pages);
    var start = (state.p - 1) * pageSize, shown = matches.slice(start, start + pageSize).map(function (i) { return records[i]; });
    $("items").innerHTML = !shown.length ? '<p class="empty">no matching records</p>'
      : (kind === "metrics" ? metricsTable(shown) : shown.map(CARDS[kind] || rawCard).join(""));
    $("count").textContent = matches.length + " of " + records.length + " matching";
    $("page").textContent = "page " + state.p + " / " + pages;
    $("prev").disabled = state.p <= 1; $("next").disabled = state.p >= pages;
    document.body.dataset.page = state.p; document.body.dataset.shown = shown.length;
    var hash = "q=" + encodeURIComponent(state.q) + "&f=" + encodeURIComponent(state.f) + "&p=" + state.p;
    if (location.hash.slice(1) !== hash && history.replaceState) history.replaceState(null, "", "#" + hash);
  }
  function update(changes) { Object.assign(state, changes); compute(); render(); }

  // initial state from the hash (#q=..&f=..&p=..): links to a filtered page can be shared
  location.hash.slice(1).split("&").forEach(function (part) {
    var kv = part.split("="); if (kv.length !== 2) return;
    var v = decodeURIComponent(kv[1]);
    if (kv[0] === "q") state.q = v; else if (kv[0] === "f") state.f = v; else if (kv[0] === "p") state.p = parseInt(v, 10) || 1;
  });
  var select = $("filter");
  select.innerHTML = DATA.filter.options.map(function (o) {
    return '<option value="' + esc(o[0]) + '">' + esc(DATA.filter.label && o[0] === "" ? DATA.filter.label + ": all" : o[1]) + "</option>";
  }).join("");
  select.value = state.f; select.hidden = !DATA.filter.field;
  $("search").value = state.q;
  var timer = null;
  $("search").addEventListener("input", function (e) {
    clearTimeout(timer); timer = setTimeout(function () { update({ q: e.target.value, p: 1 }); }, 150);
  });
  select.addEventListener("change", function (e) { update({ f: e.target.value, p: 1 }); });
  $("prev").addEventListener("click", function () { update({ p: state.p - 1 }); window.scrollTo(0, 0); });
  $("next").addEventListener("click", function () { update({ p: state.p + 1 }); window.scrollTo(0, 0); });
  update({});
  document.body.dataset.renderMs = Math.round(performance.now());
})();
