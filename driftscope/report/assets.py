"""The page's stylesheet and scripts (vanilla JS, no external libraries).

HEAD_JS runs first and records every error, rejected promise, blocked request
and alert() into the #ds-errors box (shown to the reader, checked by the browser
test). BODY_JS unpacks plotly.js, draws the charts, makes tables sortable and
runs the items explorer. Data reaches the DOM through textContent only.
"""

CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#dfe3ea;--bg:#f6f7f9;--card:#fff;--accent:#2f5fd0;
--stable:#1e8e3e;--bias:#b26a00;--loss:#c62828;--mixed:#7b3fb3;--none:#6b7280}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#121a2b;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px;font-weight:600}
header .sub{color:#b9c2d3;font-size:13px}
header .sub b{color:#fff;font-weight:500}
nav{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);padding:8px 28px;display:flex;gap:16px;flex-wrap:wrap}
nav a{color:var(--accent);text-decoration:none;font-size:13px}
main{padding:8px 28px 40px;max-width:1500px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin:16px 0}
h2{margin:0 0 8px;font-size:18px}
h3{margin:14px 0 6px;font-size:15px}
p.lead,.note{color:var(--muted);margin:4px 0 10px}
.errors{background:#fdecea;color:#8a1c1c;border:1px solid #f5c2c0;margin:12px 28px;padding:10px 14px;border-radius:6px;white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px}
.verdict{border-left:6px solid var(--none);padding:10px 14px;margin:10px 0;background:#fafbfc;border-radius:4px}
.verdict .tag{display:inline-block;font-weight:700;text-transform:uppercase;letter-spacing:.04em;font-size:12px;padding:2px 8px;border-radius:10px;color:#fff;background:var(--none);margin-right:8px}
.v-stable{border-color:var(--stable)}.v-stable .tag,.tag.v-stable{background:var(--stable)}
.v-output-bias{border-color:var(--bias)}.v-output-bias .tag,.tag.v-output-bias{background:var(--bias)}
.v-knowledge-loss{border-color:var(--loss)}.v-knowledge-loss .tag,.tag.v-knowledge-loss{background:var(--loss)}
.v-mixed{border-color:var(--mixed)}.v-mixed .tag,.tag.v-mixed{background:var(--mixed)}
span.tag{display:inline-block;font-size:11px;font-weight:600;padding:1px 7px;border-radius:9px;color:#fff;background:var(--none)}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(145px,1fr));gap:10px;margin:8px 0 4px}
.card{border:1px solid var(--line);border-radius:6px;padding:8px 12px;background:#fff}
.card .k{color:var(--muted);font-size:12px}.card .v{font-size:20px;font-weight:600}.card .s{color:var(--muted);font-size:12px}
.ckpt{margin:10px 0 16px}
.ckpt h3 code{font-size:14px}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:6px 0;font-size:13px}
dl.meta dt{color:var(--muted)}dl.meta dd{margin:0;word-break:break-all}
table{border-collapse:collapse;font-size:13px;margin:6px 0 12px}
th,td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
thead th{background:#f0f2f6;cursor:pointer;user-select:none;white-space:nowrap}
.scroll thead th{position:sticky;top:0;z-index:1}
th[aria-sort=ascending]::after{content:" \\25B2";font-size:10px}th[aria-sort=descending]::after{content:" \\25BC";font-size:10px}
td.tok{font-family:ui-monospace,monospace;white-space:pre}
td.bad{color:var(--loss);font-weight:600}td.good{color:var(--stable);font-weight:600}
.bar{display:inline-block;height:9px;border-radius:2px;vertical-align:middle;margin-right:6px}
.bar.up{background:#4c78a8}.bar.down{background:#e45756}
.wide{overflow-x:auto;max-width:100%}
td.nowrap{white-space:nowrap}
table.suites{width:100%}
table.suites thead th{white-space:normal;vertical-align:bottom}
table.suites td.ci{text-align:right;font-variant-numeric:tabular-nums;white-space:pre}
table.suites td.shifts{min-width:9em}
td.v-stable{color:var(--stable);font-weight:600}td.v-output-bias{color:var(--bias);font-weight:600}
td.v-knowledge-loss{color:var(--loss);font-weight:600}td.v-mixed{color:var(--mixed);font-weight:600}
td[class^="v-"]{border-color:var(--line)}
.row{display:flex;gap:24px;flex-wrap:wrap}.row>div{flex:1 1 420px;min-width:0}
.ds-chart{width:100%;min-height:120px}
.scroll{overflow:auto;max-height:720px;border:1px solid var(--line);border-radius:6px}
.scroll table{margin:0;width:100%}
#items td.text{white-space:pre-wrap;word-break:break-word;min-width:160px;max-width:420px;font-family:ui-monospace,monospace;font-size:12px}
#items td.text div{max-height:7.5em;overflow:auto}
.controls{display:flex;gap:10px;align-items:center;margin:6px 0 8px;flex-wrap:wrap}
.controls input{padding:5px 8px;min-width:280px;border:1px solid var(--line);border-radius:4px}
.controls select,.controls button{padding:4px 8px}
footer{color:var(--muted);font-size:12px;padding:0 28px 24px}
"""

HEAD_JS = r"""
(function(){
  var errs = [];
  function rec(m){
    errs.push(String(m));
    var b = document.getElementById('ds-errors');
    if (b) { b.textContent = 'Problems while drawing this report:\n' + errs.join('\n'); b.hidden = false; }
    document.documentElement.setAttribute('data-errors', String(errs.length));
  }
  window.__dsRecord = rec;
  window.addEventListener('error', function(e){
    var t = e.target;
    if (t && t !== window && (t.src || t.href)) { rec('failed to load ' + (t.src || t.href)); return; }
    rec('error: ' + (e.message || e.type) + (e.filename ? ' at ' + e.filename + ':' + e.lineno : ''));
  }, true);
  window.addEventListener('unhandledrejection', function(e){ rec('unhandled rejection: ' + (e.reason && e.reason.stack || e.reason)); });
  document.addEventListener('securitypolicyviolation', function(e){ rec('blocked request: ' + e.blockedURI + ' (' + e.violatedDirective + ')'); });
  var ce = console.error;
  console.error = function(){ rec('console.error: ' + Array.prototype.join.call(arguments, ' ')); return ce.apply(console, arguments); };
  window.alert = function(m){ rec('alert() was called: ' + m); };
})();
"""

BODY_JS = r"""
(function(){
  'use strict';
  var rec = window.__dsRecord || function(){};
  var root = document.documentElement;
  function $(id){ return document.getElementById(id); }
  function json(id){ var el = $(id); return el ? JSON.parse(el.textContent) : null; }
  function each(list, fn){ Array.prototype.forEach.call(list, fn); }
  function missing(v){ return v === null || v === undefined || v === '' || v === '\u2014' || (typeof v === 'number' && isNaN(v)); }
  function cmp(a, b, asc){
    var am = missing(a), bm = missing(b);
    if (am || bm) return am && bm ? 0 : (am ? 1 : -1);
    var r = (typeof a === 'number' && typeof b === 'number') ? a - b : String(a).localeCompare(String(b));
    return asc ? r : -r;
  }

  /* sortable server-rendered tables: td[data-v] sorts as a number */
  function key(td){ if (!td) return null; var v = td.getAttribute('data-v'); return v === null ? td.textContent.toLowerCase() : parseFloat(v); }
  each(document.querySelectorAll('table.sortable'), function(table){
    if (!table.tHead) return;
    var ths = table.tHead.rows[0].cells;
    each(ths, function(th, i){
      th.addEventListener('click', function(){
        var asc = th.getAttribute('aria-sort') !== 'ascending';
        each(ths, function(o){ o.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        rows.sort(function(a, b){ return cmp(key(a.cells[i]), key(b.cells[i]), asc); });
        rows.forEach(function(r){ body.appendChild(r); });
      });
    });
  });

  /* items explorer */
  function fmtNum(v){ if (missing(v)) return '\u2014'; var a = Math.abs(v); return (a !== 0 && (a < 1e-3 || a >= 1e5)) ? v.toExponential(2) : String(Number(v.toPrecision(3))); }
  function items(){
    var d = json('ds-items'); if (!d) return;
    var table = $('ds-items-table'), q = $('ds-items-q'), sel = $('ds-items-ckpt'), more = $('ds-items-more'), count = $('ds-items-count');
    var cols = d.columns, rows = d.rows, step = 200, limit = step, sortCol = -1, asc = false;
    var text = [];
    cols.forEach(function(c, i){ if (c.type === 'text' || c.type === 'id') text.push(i); });
    var hr = document.createElement('tr');
    cols.forEach(function(c, i){
      var th = document.createElement('th'); th.textContent = c.label; if (c.help) th.title = c.help;
      th.addEventListener('click', function(){
        asc = sortCol === i ? !asc : (c.type === 'text' || c.type === 'id'); sortCol = i;
        each(hr.cells, function(o){ o.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending'); draw();
      });
      hr.appendChild(th);
    });
    table.tHead.appendChild(hr);
    (d.checkpoints || []).forEach(function(c){ var o = document.createElement('option'); o.value = c; o.textContent = c; sel.appendChild(o); });
    if ((d.checkpoints || []).length < 2) sel.hidden = true;
    function cell(c, v){
      var td = document.createElement('td');
      if (c.type === 'text') { var div = document.createElement('div'); div.textContent = missing(v) ? '\u2014' : String(v); td.appendChild(div); td.className = 'text'; }
      else if (c.type === 'num') { td.textContent = fmtNum(v); td.className = 'num'; }
      else if (c.type === 'bool') { td.textContent = missing(v) ? '\u2014' : (v ? '\u2713' : '\u2717'); }
      else if (c.type === 'change') { td.textContent = missing(v) ? '\u2014' : (v < 0 ? 'lost' : (v > 0 ? 'gained' : 'same')); td.className = v < 0 ? 'bad' : (v > 0 ? 'good' : ''); }
      else { td.textContent = missing(v) ? '\u2014' : String(v); }
      return td;
    }
    function draw(){
      var needle = q.value.trim().toLowerCase(), ck = sel.value, ci = d.checkpoint_column;
      var hits = rows.filter(function(r){
        if (ck && r[ci] !== ck) return false;
        if (!needle) return true;
        for (var k = 0; k < text.length; k++) { var v = r[text[k]]; if (v && String(v).toLowerCase().indexOf(needle) >= 0) return true; }
        return false;
      });
      if (sortCol >= 0) hits.sort(function(a, b){ return cmp(a[sortCol], b[sortCol], asc); });
      var body = document.createElement('tbody');
      hits.slice(0, limit).forEach(function(r){
        var tr = document.createElement('tr');
        cols.forEach(function(c, i){ tr.appendChild(cell(c, r[i])); });
        body.appendChild(tr);
      });
      table.replaceChild(body, table.tBodies[0]);
      count.textContent = 'showing ' + Math.min(limit, hits.length) + ' of ' + hits.length + ' matching rows';
      more.hidden = hits.length <= limit;
    }
    q.addEventListener('input', function(){ limit = step; draw(); });
    sel.addEventListener('change', function(){ limit = step; draw(); });
    more.addEventListener('click', function(){ limit += step * 5; draw(); });
    draw();
  }
  try { items(); } catch (e) { rec('items explorer: ' + (e.stack || e)); }

  /* charts: plotly.js is embedded gzip-compressed (or plain) and unpacked here */
  function loadPlotly(){
    if (window.Plotly) return Promise.resolve();
    var el = $('ds-plotly-gz');
    if (!el) return Promise.reject(new Error('plotly.js is missing from this page'));
    if (typeof DecompressionStream === 'undefined')
      return Promise.reject(new Error('this browser cannot unpack the embedded chart library (needs Chrome 80+, Firefox 113+ or Safari 16.4+); the tables still work'));
    var bin = atob(el.textContent.trim()), bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
    return new Response(stream).text().then(function(code){
      var s = document.createElement('script'); s.text = code; document.head.appendChild(s);
      if (!window.Plotly) throw new Error('plotly.js did not load');
    });
  }
  function drawCharts(){
    var tpl = json('ds-template'), jobs = [];
    each(document.querySelectorAll('.ds-chart'), function(div){
      var spec = json(div.id + '-data') || {}, layout = spec.layout || {};
      if (tpl) layout.template = tpl;
      jobs.push(Plotly.newPlot(div, spec.data || [], layout, {displaylogo: false, responsive: true}).then(
        function(){ div.setAttribute('data-rendered', '1'); },
        function(e){ div.textContent = 'this chart could not be drawn'; rec('chart ' + div.id + ': ' + e); }));
    });
    return Promise.all(jobs);
  }
  function finish(){
    var names = (performance.getEntriesByType ? performance.getEntriesByType('resource') : []).map(function(e){ return e.name; });
    root.setAttribute('data-resources', JSON.stringify(names));
    root.setAttribute('data-charts', String(document.querySelectorAll('.ds-chart[data-rendered]').length));
    root.setAttribute('data-ready', '1');
  }
  if (document.querySelector('.ds-chart')) {
    loadPlotly().then(drawCharts).catch(function(e){ rec('charts: ' + (e && e.message || e)); }).then(finish);
  } else { finish(); }
})();
"""
