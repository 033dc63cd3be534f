/* The sample renderer shared by the HTML report and the service page: text with entities,
   the entity list, and the image with boxes. RefinegRender(colors) returns the functions. */

/* Counts script errors on <body data-errors> (the browser tests read it). */
function refinegWatchErrors() {
  "use strict";
  var errors = 0;
  function fail() { errors += 1; document.body.setAttribute("data-errors", String(errors)); }
  window.addEventListener("error", fail);
  var origError = console.error;
  console.error = function () { fail(); origError.apply(console, arguments); };
}
function RefinegRender(COLORS) {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";
  function el(tag, attrs, text) {
    var n = document.createElement(tag);
    for (var k in attrs || {}) n.setAttribute(k, attrs[k]);
    if (text !== undefined) n.textContent = text;
    return n;
  }
  function svgEl(tag, attrs) {
    var n = document.createElementNS(SVGNS, tag);
    for (var k in attrs) n.setAttribute(k, attrs[k]);
    return n;
  }
  function color(t) { return COLORS[t] || "#888"; }

  function textWithEntities(s) {
    var p = el("div"), i = 0, ents = s.pred.slice().sort(function (a, b) { return a.start - b.start; });
    var goldAt = {};
    s.gold.forEach(function (g) { for (var k = g.start; k < g.end; k++) goldAt[k] = true; });
    function word(k) { var w = el("span", goldAt[k] ? {"class": "gold", "title": "in a gold entity"} : {}, s.tokens[k]); return w; }
    ents.forEach(function (e) {
      for (; i < e.start; i++) { p.appendChild(word(i)); p.appendChild(document.createTextNode(" ")); }
      var span = el("span", {"class": "ent", "style": "border-color:" + color(e.type) + ";background:" + color(e.type) + "22",
                            "title": e.type + " score " + (e.score === null ? "-" : e.score.toFixed(2)) + " (" + e.source + ")"});
      for (; i < e.end; i++) { span.appendChild(word(i)); if (i < e.end - 1) span.appendChild(document.createTextNode(" ")); }
      p.appendChild(span); p.appendChild(document.createTextNode(" "));
    });
    for (; i < s.tokens.length; i++) { p.appendChild(word(i)); p.appendChild(document.createTextNode(" ")); }
    return p;
  }

  function entityList(s) {
    var ul = el("ul", {"class": "ents"});
    s.pred.forEach(function (e) {
      var li = el("li", {}, e.text + " [" + e.type + "] score " + (e.score === null ? "-" : e.score.toFixed(2)) +
                  ", " + e.source + (e.decision ? ", " + e.decision : "") + ", " + e.boxes.length + " box(es)");
      if (e.wrong) li.appendChild(el("span", {"class": "err"}, "  " + e.wrong));
      li.style.borderLeft = "4px solid " + color(e.type); li.style.paddingLeft = "4px";
      ul.appendChild(li);
    });
    s.missed.forEach(function (g) { ul.appendChild(el("li", {"class": "err"}, (g.found ? "found, but its box was not predicted: " : "not matched (span, type and box): ") + g.text + " [" + g.type + "]")); });
    return ul;
  }

  function figure(s) {
    if (!s.image) return null;
    var fig = el("div", {"class": "figure"});
    fig.appendChild(el("img", {"src": s.image, "alt": s.id}));
    var svg = svgEl("svg", {"viewBox": "0 0 " + s.width + " " + s.height, "preserveAspectRatio": "none"});
    var sw = Math.max(2, s.width / 150);
    s.gold.forEach(function (g) { g.boxes.forEach(function (b) {
      svg.appendChild(svgEl("rect", {"class": "box gold-box", "x": b[0], "y": b[1], "width": b[2] - b[0], "height": b[3] - b[1],
                                     "fill": "none", "stroke": "#111", "stroke-width": sw, "stroke-dasharray": (3 * sw) + " " + (2 * sw)}));
    }); });
    s.pred.forEach(function (e) { e.boxes.forEach(function (b) {
      svg.appendChild(svgEl("rect", {"class": "box pred-box", "x": b[0], "y": b[1], "width": b[2] - b[0], "height": b[3] - b[1],
                                     "fill": "none", "stroke": color(e.type), "stroke-width": sw}));
    }); });
    fig.appendChild(svg);
    return fig;
  }

  return {el: el, textWithEntities: textWithEntities, entityList: entityList, figure: figure};
}
