// Herd's web UI script: refreshes the live parts of a page every few seconds
// (without reloading it) and completes metric and label names in the Graph
// page's expression field. It only ever inserts text (textContent) or nodes
// parsed from Herd's own escaped pages, never markup built from data.
(function () {
  'use strict';

  var REFRESH_MS = 5000;

  // ---- live refresh ----

  var refreshing = false;

  function refresh() {
    var regions = document.querySelectorAll('[data-live][id]');
    if (refreshing || document.hidden || regions.length === 0) {
      return;
    }
    refreshing = true;
    fetch(location.href, { credentials: 'same-origin', cache: 'no-store', headers: { 'X-Herd-Refresh': '1' } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error('status ' + response.status);
        }
        return response.text();
      })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, 'text/html');
        Array.prototype.forEach.call(regions, function (old) {
          // Never pull a region away from under the keyboard focus.
          if (old.contains(document.activeElement)) {
            return;
          }
          var next = fresh.getElementById(old.id);
          if (next && next.hasAttribute('data-live')) {
            old.replaceWith(document.importNode(next, true));
          }
        });
        document.documentElement.setAttribute('data-refreshed', String(Date.now()));
      })
      .catch(function () {
        var updated = document.getElementById('updated');
        if (updated) {
          updated.classList.add('stale');
        }
      })
      .then(function () {
        refreshing = false;
      });
  }

  setInterval(refresh, REFRESH_MS);
  document.addEventListener('visibilitychange', function () {
    if (!document.hidden) {
      refresh();
    }
  });

  // ---- expression completion ----

  var KEYWORDS = [
    'abs', 'absent', 'absent_over_time', 'avg_over_time', 'ceil', 'changes', 'clamp', 'clamp_max', 'clamp_min',
    'count_over_time', 'day_of_month', 'day_of_week', 'day_of_year', 'days_in_month', 'delta', 'deriv', 'exp',
    'floor', 'histogram_quantile', 'holt_winters', 'hour', 'idelta', 'increase', 'irate', 'label_join',
    'label_replace', 'last_over_time', 'ln', 'log10', 'log2', 'max_over_time', 'min_over_time', 'minute', 'month',
    'predict_linear', 'present_over_time', 'quantile_over_time', 'rate', 'resets', 'round', 'scalar', 'sgn',
    'sort', 'sort_desc', 'sqrt', 'stddev_over_time', 'stdvar_over_time', 'sum_over_time', 'time', 'timestamp',
    'vector', 'year', 'sum', 'avg', 'min', 'max', 'count', 'count_values', 'group', 'stddev', 'stdvar', 'topk',
    'bottomk', 'quantile', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'offset', 'bool',
    'and', 'or', 'unless'
  ];
  var GROUPING = ['by', 'without', 'on', 'ignoring', 'group_left', 'group_right'];
  var MAX_SUGGESTIONS = 50;

  var cache = {};

  function getList(url) {
    if (!cache[url]) {
      cache[url] = fetch(url, { credentials: 'same-origin' })
        .then(function (response) {
          return response.ok ? response.json() : { data: [] };
        })
        .then(function (body) {
          return Array.isArray(body.data) ? body.data : [];
        })
        .catch(function () {
          delete cache[url];
          return [];
        });
    }
    return cache[url];
  }

  // What the text before the cursor asks for: metric names, label names, or
  // the values of one label; and the part already typed.
  function context(text) {
    var quote = null;
    var quoteStart = -1;
    var braceStart = -1;
    var parens = [];
    for (var i = 0; i < text.length; i++) {
      var c = text[i];
      if (quote) {
        if (c === '\\') {
          i++;
        } else if (c === quote) {
          quote = null;
        }
        continue;
      }
      if (c === '"' || c === "'" || c === '`') {
        quote = c;
        quoteStart = i;
      } else if (c === '{') {
        braceStart = i;
      } else if (c === '}') {
        braceStart = -1;
      } else if (c === '(') {
        parens.push(i);
      } else if (c === ')') {
        parens.pop();
      }
    }
    var word = (/[A-Za-z0-9_:]*$/.exec(text) || [''])[0];
    if (braceStart >= 0) {
      var metric = (/([A-Za-z_:][A-Za-z0-9_:]*)\s*$/.exec(text.slice(0, braceStart)) || [])[1] || '';
      if (quote) {
        var before = text.slice(braceStart + 1, quoteStart);
        var label = (/([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*$/.exec(before) || [])[1];
        if (!label) {
          return null;
        }
        return { kind: 'value', label: label, metric: metric, typed: text.slice(quoteStart + 1), quote: quote };
      }
      return { kind: 'label', typed: word, metric: metric };
    }
    if (quote) {
      return null;
    }
    if (parens.length > 0) {
      var opener = text.slice(0, parens[parens.length - 1]);
      var keyword = (/([A-Za-z_]+)\s*$/.exec(opener) || [])[1];
      if (keyword && GROUPING.indexOf(keyword) >= 0) {
        return { kind: 'label', typed: word, metric: '' };
      }
    }
    return word ? { kind: 'metric', typed: word } : null;
  }
  function candidates(ctx) {
    if (ctx.kind === 'metric') {
      return getList('/api/v1/label/__name__/values').then(function (names) {
        return names.map(function (n) { return { text: n, kind: 'metric' }; })
          .concat(KEYWORDS.map(function (k) { return { text: k, kind: 'function' }; }));
      });
    }
    if (ctx.kind === 'label') {
      var url = '/api/v1/labels' + (ctx.metric ? '?match[]=' + encodeURIComponent(ctx.metric) : '');
      return getList(url).then(function (names) {
        return names.filter(function (n) { return n !== '__name__'; }).map(function (n) { return { text: n, kind: 'label' }; });
      });
    }
    var valuesUrl = '/api/v1/label/' + encodeURIComponent(ctx.label) + '/values' +
      (ctx.metric ? '?match[]=' + encodeURIComponent(ctx.metric) : '');
    return getList(valuesUrl).then(function (values) {
      return values.map(function (v) { return { text: v, kind: 'value' }; });
    });
  }

  function setUpCompletion(field) {
    var list = document.getElementById(field.getAttribute('aria-controls'));
    if (!list) {
      return;
    }
    var items = [];
    var selected = -1;
    var current = null;
    var generation = 0;

    function close() {
      list.hidden = true;
      field.setAttribute('aria-expanded', 'false');
      field.removeAttribute('aria-activedescendant');
      items = [];
      selected = -1;
    }

    function select(index) {
      selected = index;
      Array.prototype.forEach.call(list.children, function (li, i) {
        li.setAttribute('aria-selected', i === index ? 'true' : 'false');
        if (i === index) {
          field.setAttribute('aria-activedescendant', li.id);
          li.scrollIntoView({ block: 'nearest' });
        }
      });
    }

    function show(found) {
      while (list.firstChild) {
        list.removeChild(list.firstChild);
      }
      items = found;
      if (items.length === 0) {
        close();
        return;
      }
      items.forEach(function (item, i) {
        var li = document.createElement('li');
        li.id = 'expr-suggestion-' + i;
        li.setAttribute('role', 'option');
        li.appendChild(document.createTextNode(item.text));
        var kind = document.createElement('span');
        kind.className = 'kind';
        kind.textContent = item.kind;
        li.appendChild(kind);
        li.addEventListener('mousedown', function (event) {
          event.preventDefault();
          accept(i);
        });
        list.appendChild(li);
      });
      list.hidden = false;
      field.setAttribute('aria-expanded', 'true');
      select(0);
    }

    function update() {
      var before = field.value.slice(0, field.selectionStart);
      current = context(before);
      var mine = ++generation;
      if (!current) {
        close();
        return;
      }
      var typed = current.typed;
      candidates(current).then(function (all) {
        if (mine !== generation) {
          return;
        }
        var lower = typed.toLowerCase();
        var starts = [];
        var contains = [];
        all.forEach(function (item) {
          var text = item.text.toLowerCase();
          if (text === lower) {
            return;
          }
          if (text.indexOf(lower) === 0) {
            starts.push(item);
          } else if (lower && text.indexOf(lower) > 0) {
            contains.push(item);
          }
        });
        show(starts.concat(contains).slice(0, MAX_SUGGESTIONS));
      });
    }

    function accept(index) {
      var item = items[index];
      if (!item || !current) {
        return;
      }
      var cursor = field.selectionStart;
      var start = cursor - current.typed.length;
      var insert = item.text;
      var after = field.value.slice(cursor);
      if (current.kind === 'value') {
        insert = item.text.replace(/\\/g, '\\\\').replace(new RegExp(current.quote, 'g'), '\\' + current.quote);
        if (after[0] !== current.quote) {
          insert += current.quote;
        }
      }
      field.value = field.value.slice(0, start) + insert + after;
      var position = start + insert.length;
      field.setSelectionRange(position, position);
      close();
      field.focus();
    }

    field.addEventListener('input', update);
    field.addEventListener('blur', close);
    field.addEventListener('keydown', function (event) {
      var open = !list.hidden && items.length > 0;
      if (open && event.key === 'ArrowDown') {
        event.preventDefault();
        select((selected + 1) % items.length);
      } else if (open && event.key === 'ArrowUp') {
        event.preventDefault();
        select((selected - 1 + items.length) % items.length);
      } else if (open && (event.key === 'Tab' || event.key === 'Enter') && selected >= 0) {
        event.preventDefault();
        accept(selected);
      } else if (open && event.key === 'Escape') {
        event.preventDefault();
        close();
      } else if (event.key === 'Enter' && !event.shiftKey) {
        event.preventDefault();
        if (field.form) {
          field.form.requestSubmit();
        }
      }
    });
  }

  var expr = document.getElementById('expr');
  if (expr) {
    setUpCompletion(expr);
  }
})();
