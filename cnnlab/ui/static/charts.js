/* Small SVG pictures for the run page: line charts of the curves and the confusion matrix. */
(function (global) {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";

  function node(name, attributes, parent) {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
    if (parent) parent.appendChild(element);
    return element;
  }

  function ticks(low, high, count) {
    const step = (high - low) / count;
    return Array.from({ length: count + 1 }, (_, i) => low + i * step);
  }

  function label(value) {
    const size = Math.abs(value);
    if (size !== 0 && (size < 0.01 || size >= 1e4)) return value.toExponential(1);
    return value.toFixed(size < 1 ? 2 : 1);
  }

  // series: [{name, color, dashed, points: [[x, y], ...]}]
  function lineChart(container, title, series) {
    const [width, height, pad] = [420, 240, { l: 48, r: 12, t: 24, b: 34 }];
    const all = series.flatMap((s) => s.points);
    const figure = document.createElement("figure");
    figure.className = "chart";
    container.appendChild(figure);
    if (!all.length) {
      figure.textContent = `${title}: nothing logged yet`;
      return;
    }
    const svg = node("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart-svg" }, figure);
    const xs = all.map((p) => p[0]);
    const ys = all.map((p) => p[1]);
    const [x0, x1] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    if (y1 - y0 < 1e-9) [y0, y1] = [y0 - 0.5, y1 + 0.5];
    const sx = (x) => pad.l + ((x - x0) / (x1 - x0)) * (width - pad.l - pad.r);
    const sy = (y) => height - pad.b - ((y - y0) / (y1 - y0)) * (height - pad.t - pad.b);
    node("text", { x: pad.l, y: 15, class: "chart-title" }, svg).textContent = title;
    for (const y of ticks(y0, y1, 4)) {
      node("line", { x1: pad.l, x2: width - pad.r, y1: sy(y), y2: sy(y), class: "grid" }, svg);
      node("text", { x: pad.l - 4, y: sy(y) + 3, class: "tick", "text-anchor": "end" }, svg).textContent = label(y);
    }
    for (const x of ticks(x0, x1, 4)) {
      node("text", { x: sx(x), y: height - pad.b + 14, class: "tick", "text-anchor": "middle" }, svg).textContent = Math.round(x);
    }
    node("text", { x: width / 2, y: height - 4, class: "tick", "text-anchor": "middle" }, svg).textContent = "step";
    series.forEach((s, i) => {
      if (!s.points.length) return;
      const d = s.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
      node("path", { d, class: "line", stroke: s.color, "stroke-dasharray": s.dashed ? "5 3" : "none" }, svg);
      if (s.dashed || s.points.length < 2) { // sparse evaluations: a dot marks each one
        for (const p of s.points) node("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: s.color }, svg);
      }
      const key = node("text", { x: width - pad.r - 4, y: pad.t + 12 + 12 * i, class: "tick", "text-anchor": "end" }, svg);
      key.style.fill = s.color; // the class's grey would win over a fill attribute
      key.textContent = s.name;
    });
  }

  function confusion(container, evaluation) {
    const names = evaluation.class_names;
    const matrix = evaluation.confusion;
    const most = Math.max(1, ...matrix.flat());
    const table = document.createElement("table");
    table.className = "confusion";
    const head = table.createTHead().insertRow();
    head.insertCell().textContent = "true \\ predicted";
    for (const name of names) head.insertCell().textContent = name;
    const body = table.createTBody();
    matrix.forEach((row, i) => {
      const line = body.insertRow();
      line.insertCell().textContent = names[i];
      row.forEach((count, j) => {
        const cell = line.insertCell();
        cell.textContent = count;
        const strength = count / most;
        const hue = i === j ? "78,121,167" : "225,87,89";
        cell.style.background = count ? `rgba(${hue},${0.15 + 0.85 * strength})` : "";
        cell.style.color = strength > 0.55 ? "#fff" : "";
      });
    });
    container.appendChild(table);
  }

  global.CnnlabCharts = { lineChart, confusion };
})(window);
