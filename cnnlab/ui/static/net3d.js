/* The network in 3D, drawn in SVG by hand: each layer's output is a block whose height, depth
   and thickness follow H, W and C (on a log scale, so 1x1x512 and 32x32x64 both read), residual
   connections are arcs over the blocks, and hovering a block tells its layer, output shape,
   parameters and FLOPs. Drag to turn it. Used by the page and by `cnnlab inspect --html`, so it
   needs nothing but a browser: CnnlabNet.draw(element, data) with data from cnnlab/ui/netview.py. */
(function (global) {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";
  const GAP = 14; // between blocks, along the network
  const COLORS = {
    input: "#9aa5b1", conv: "#4e79a7", dense: "#b07aa1", residual: "#f28e2b",
    flatten: "#59a14f", global_avg_pool: "#59a14f", dropout: "#bab0ac",
  };

  function color(kind) {
    if (COLORS[kind]) return COLORS[kind];
    if (kind.endsWith("pool")) return "#e15759";
    if (kind.endsWith("norm")) return "#edc948";
    return "#cfd4da"; // activations and the rest: quiet, they keep the shape
  }

  // Sizes on a log scale: a 1-pixel side stays visible and a 224-pixel side stays on screen.
  function side(n) { return 8 + 14 * Math.log2(Math.max(1, n)); }
  function thickness(c) { return 2 + 5 * Math.log2(Math.max(1, c)); }

  function dims(shape) {
    if (shape.length === 3) return { w: thickness(shape[2]), h: side(shape[0]), d: side(shape[1]) };
    const n = shape.reduce((a, b) => a * b, 1);
    return { w: 5, h: side(n), d: 5 }; // a vector: a tall thin bar, as in AlexNet drawings
  }

  function shapeText(shape) { return shape.join("\u00d7"); }

  function si(value) {
    for (const [unit, size] of [["G", 1e9], ["M", 1e6], ["K", 1e3]]) {
      if (value >= size) return (value / size).toFixed(2) + " " + unit;
    }
    return String(value);
  }

  function layout(blocks) {
    let x = 0;
    return blocks.map((block) => {
      const size = dims(block.shape);
      const box = { x0: x, x1: x + size.w, y0: -size.h / 2, y1: size.h / 2, z0: -size.d / 2, z1: size.d / 2 };
      x += size.w + GAP;
      return box;
    });
  }

  // Orthographic view: turn by `yaw` about the vertical axis, tilt by `pitch`; the viewer looks
  // down -z, so a larger z is nearer.
  function projector(yaw, pitch) {
    const [cy, sy, cp, sp] = [Math.cos(yaw), Math.sin(yaw), Math.cos(pitch), Math.sin(pitch)];
    function turn(p) {
      const x1 = p[0] * cy + p[2] * sy;
      const z1 = -p[0] * sy + p[2] * cy;
      return [x1, p[1] * cp - z1 * sp, p[1] * sp + z1 * cp];
    }
    return { turn, point: (p) => { const t = turn(p); return [t[0], -t[1], t[2]]; } };
  }

  const FACES = [ // corner indices (x, y, z bits) and normal; shade: how light the face is
    { corners: [1, 3, 7, 5], normal: [1, 0, 0], shade: 0.78 },
    { corners: [0, 4, 6, 2], normal: [-1, 0, 0], shade: 0.78 },
    { corners: [2, 6, 7, 3], normal: [0, 1, 0], shade: 1.15 },
    { corners: [0, 1, 5, 4], normal: [0, -1, 0], shade: 0.6 },
    { corners: [4, 5, 7, 6], normal: [0, 0, 1], shade: 0.95 },
    { corners: [0, 2, 3, 1], normal: [0, 0, -1], shade: 0.95 },
  ];

  function corners(box) {
    const out = [];
    for (let i = 0; i < 8; i++) {
      out.push([i & 1 ? box.x1 : box.x0, i & 2 ? box.y1 : box.y0, i & 4 ? box.z1 : box.z0]);
    }
    return out;
  }

  function tint(hex, factor) {
    const n = parseInt(hex.slice(1), 16);
    const channel = (shift) => Math.min(255, Math.round(((n >> shift) & 255) * factor));
    return `rgb(${channel(16)},${channel(8)},${channel(0)})`;
  }

  function element(name, attributes, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    if (parent) parent.appendChild(node);
    return node;
  }

  function tipLines(block) {
    if (block.kind === "input") return [`input`, `shape ${shapeText(block.shape)}`];
    return [
      `layer ${block.name}: ${block.kind} ${block.detail}`.trim(),
      `output ${shapeText(block.shape)}`,
      `params ${block.params.toLocaleString("en")}`,
      `FLOPs ${si(block.flops)} per image`,
    ];
  }

  function drawBlock(svg, block, box, view, state) {
    const group = element("g", {
      class: "block" + (block.kind === "input" ? " input" : " layer"),
      "data-name": block.name, "data-kind": block.kind, "data-shape": block.shape.join("x"),
    }, svg);
    const points = corners(box).map(view.point);
    for (const face of FACES) {
      if (view.turn(face.normal)[2] <= 1e-9) continue; // faces turned away are hidden
      const polygon = face.corners.map((i) => points[i][0].toFixed(1) + "," + points[i][1].toFixed(1));
      element("polygon", { points: polygon.join(" "), fill: tint(color(block.kind), face.shade) }, group);
    }
    group.addEventListener("mouseenter", (event) => state.show(block, group, event));
    group.addEventListener("mousemove", (event) => state.move(event));
    group.addEventListener("mouseleave", () => state.hide(group));
    return group;
  }

  function drawArc(svg, from, to, view) {
    const top = Math.max(from.y1, to.y1);
    const a = [(from.x0 + from.x1) / 2, from.y1, 0];
    const b = [(to.x0 + to.x1) / 2, to.y1, 0];
    const c = [(a[0] + b[0]) / 2, top + 18 + 0.25 * (b[0] - a[0]), 0];
    const [p, q, r] = [a, c, b].map(view.point);
    element("path", { class: "arc", d: `M${p[0]},${p[1]} Q${q[0]},${q[1]} ${r[0]},${r[1]}` }, svg);
    const mid = view.point([(a[0] + b[0]) / 2, (a[1] + 2 * c[1] + b[1]) / 4, 0]);
    element("text", { class: "arc-label", x: mid[0], y: mid[1] - 3 }, svg).textContent = "+";
  }

  function drawLabels(svg, blocks, boxes, view) {
    blocks.forEach((block, i) => {
      const changed = i === 0 || shapeText(block.shape) !== shapeText(blocks[i - 1].shape);
      if (!changed) return;
      const box = boxes[i];
      const p = view.point([(box.x0 + box.x1) / 2, box.y0, box.z1]);
      element("text", { class: "shape-label", x: p[0], y: p[1] + 12 }, svg).textContent = shapeText(block.shape);
    });
  }

  function render(svg, data, boxes, angles, state) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const view = projector(angles.yaw, angles.pitch);
    const order = boxes.map((box, i) => i);
    const depth = (box) => view.turn([(box.x0 + box.x1) / 2, 0, 0])[2];
    order.sort((i, j) => depth(boxes[i]) - depth(boxes[j])); // far blocks first
    for (const i of order) drawBlock(svg, data.blocks[i], boxes[i], view, state);
    data.blocks.forEach((block, i) => {
      if (block.skip_from !== undefined) drawArc(svg, boxes[block.skip_from], boxes[i], view);
    });
    drawLabels(svg, data.blocks, boxes, view);
    fit(svg, boxes, view);
  }

  function fit(svg, boxes, view) {
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const box of boxes) {
      for (const p of corners({ ...box, y1: box.y1 + 40 }).map(view.point)) {
        [x0, y0, x1, y1] = [Math.min(x0, p[0]), Math.min(y0, p[1]), Math.max(x1, p[0]), Math.max(y1, p[1])];
      }
    }
    const margin = 20;
    svg.setAttribute("viewBox", `${x0 - margin} ${y0 - margin} ${x1 - x0 + 2 * margin} ${y1 - y0 + 2 * margin + 14}`);
  }

  function tooltip(container) {
    const tip = document.createElement("div");
    tip.className = "net-tip";
    tip.hidden = true;
    container.appendChild(tip);
    function place(event) {
      const frame = container.getBoundingClientRect();
      tip.style.left = event.clientX - frame.left + 14 + "px";
      tip.style.top = event.clientY - frame.top + 14 + "px";
    }
    return {
      show(block, group, event) {
        tip.innerHTML = "";
        for (const line of tipLines(block)) {
          const row = document.createElement("div");
          row.textContent = line;
          tip.appendChild(row);
        }
        tip.dataset.name = block.name;
        tip.dataset.shape = block.shape.join("x");
        tip.hidden = false;
        group.classList.add("hot");
        if (event) place(event);
      },
      move: place,
      hide(group) { tip.hidden = true; group.classList.remove("hot"); },
    };
  }

  function header(container, data) {
    const info = document.createElement("p");
    info.className = "net-info";
    info.textContent = `${data.model}: input ${shapeText(data.input_shape)}, ${data.num_classes} classes; ` +
      `${data.layers} layers, ${data.total_params.toLocaleString("en")} parameters, ` +
      `${si(data.total_flops)} FLOPs per image. Drag to turn; hover a block.`;
    container.appendChild(info);
  }

  function legend(container, data) {
    const box = document.createElement("div");
    box.className = "net-legend";
    for (const kind of [...new Set(data.blocks.map((b) => b.kind))]) {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = color(kind);
      item.append(swatch, kind);
      box.appendChild(item);
    }
    container.appendChild(box);
  }

  function table(container, data, svg, state) {
    const rows = document.createElement("table");
    rows.className = "net-table";
    rows.innerHTML = "<thead><tr><th>layer</th><th>kind</th><th>output</th><th>params</th><th>FLOPs</th></tr></thead>";
    const body = document.createElement("tbody");
    for (const block of data.blocks) {
      const row = document.createElement("tr");
      const cells = [block.name, `${block.kind} ${block.detail}`.trim(), shapeText(block.shape),
        block.params.toLocaleString("en"), si(block.flops)];
      for (const text of cells) row.appendChild(document.createElement("td")).textContent = text;
      const group = () => svg.querySelector(`g.block[data-name="${block.name}"]`);
      row.addEventListener("mouseenter", () => state.show(block, group(), null));
      row.addEventListener("mouseleave", () => state.hide(group()));
      body.appendChild(row);
    }
    rows.appendChild(body);
    container.appendChild(rows);
  }

  function draw(container, data, options) {
    container.innerHTML = "";
    container.classList.add("net3d");
    header(container, data);
    const stage = document.createElement("div");
    stage.className = "net-stage";
    container.appendChild(stage);
    const svg = element("svg", { class: "net-svg", preserveAspectRatio: "xMidYMid meet" }, stage);
    const state = tooltip(stage);
    const boxes = layout(data.blocks);
    const angles = { yaw: -0.55, pitch: 0.38, ...(options || {}) };
    render(svg, data, boxes, angles, state);
    let drag = null;
    svg.addEventListener("pointerdown", (e) => { drag = { x: e.clientX, y: e.clientY, ...angles }; });
    global.addEventListener("pointerup", () => { drag = null; });
    svg.addEventListener("pointermove", (e) => {
      if (!drag || !e.buttons) return;
      angles.yaw = drag.yaw + (e.clientX - drag.x) * 0.01;
      angles.pitch = Math.max(-1.4, Math.min(1.4, drag.pitch + (e.clientY - drag.y) * 0.01));
      render(svg, data, boxes, angles, state);
    });
    legend(container, data);
    table(container, data, svg, state);
    return svg;
  }

  global.CnnlabNet = { draw, shapeText, dims };
})(typeof window !== "undefined" ? window : this);
