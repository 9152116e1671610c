/* The page's views, chosen by the address's #fragment: the runs list, a run, the sweeps, a
   sweep, the network in 3D, and "Try it". Everything comes from the server's /api/ answers;
   text from runs is always set as text, never as HTML. */
(function () {
  "use strict";

  const view = document.getElementById("view");
  let timer = null; // the running poll of a view that follows a training run

  function h(tag, attributes, ...children) {
    const element = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes || {})) {
      if (key === "class") element.className = value;
      else if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
      else element.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      element.append(child instanceof Node ? child : String(child));
    }
    return element;
  }

  async function api(path, options) {
    const response = await fetch(path, options);
    const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body;
  }

  const percent = (value) => (value === null || value === undefined ? "—" : (100 * value).toFixed(2) + "%");
  const runLink = (id) => h("a", { href: "#/run/" + id }, id);

  function failed(error) {
    view.replaceChildren(h("p", { class: "error" }, String(error.message || error)));
  }

  function poll(seconds, again) {
    clearTimeout(timer);
    timer = setTimeout(again, seconds * 1000);
  }

  // -- runs ------------------------------------------------------------------------------------

  async function runsView() {
    const data = await api("/api/runs");
    const rows = data.runs.map((run) =>
      h("tr", { "data-run": run.id },
        h("td", {}, runLink(run.id)),
        h("td", { class: "status " + run.status.replace(/\W+/g, "-") }, run.status),
        h("td", {}, run.dataset), h("td", {}, run.model),
        h("td", { class: "settings" }, Object.entries(run.settings).map(([k, v]) => h("code", {}, `${k}=${v}`))),
        h("td", { class: "num" }, run.steps ?? "—"),
        h("td", { class: "num" }, percent(run.best_val)), h("td", { class: "num" }, percent(run.test))));
    view.replaceChildren(
      h("h1", {}, "Runs"),
      h("p", { class: "dim" }, `in ${data.root}/, newest first; settings: the config keys that differ between runs`),
      rows.length
        ? h("table", { class: "runs" },
          h("thead", {}, h("tr", {}, ["run", "status", "data", "model", "settings", "steps", "best val", "test"].map((t) => h("th", {}, t)))),
          h("tbody", {}, rows))
        : h("p", {}, "No runs yet: cnnlab train experiments/digits.yaml"));
    poll(5, () => route(true));
  }

  async function runView(id) {
    const run = await api("/api/run/" + id);
    const info = run.info;
    const curves = h("div", { class: "charts" });
    const page = [
      h("h1", {}, id),
      h("p", {},
        h("span", { class: "status " + info.status.replace(/\W+/g, "-") }, info.status), " · ",
        `${info.dataset} · ${info.model} · step ${info.steps ?? "—"} · best val ${percent(info.best_val)} · test ${percent(info.test)} · `,
        h("a", { href: "#/net/run/" + id }, "network in 3D"), " · ",
        h("a", { href: "#/try/" + id }, "try it")),
      curves,
    ];
    const split = (name, key) => run.metrics.filter((m) => m.split === name && m[key] !== null).map((m) => [m.step, m[key]]);
    page.push(h("h2", {}, "Per-layer diagnostics"), diagnosticsTable(run.diagnostics));
    page.push(h("h2", {}, "Confusion matrix (test)"));
    const matrix = h("div");
    page.push(matrix);
    page.push(h("h2", {}, "Most confident mistakes (test)"), h("div", { id: "mistakes", class: "mistakes" }, run.has_checkpoint ? "computing…" : "no checkpoint yet"));
    page.push(h("h2", {}, "Config"), h("pre", { class: "config" }, run.config));
    view.replaceChildren(...page);
    CnnlabCharts.lineChart(curves, "loss", [
      { name: "train", color: "#4e79a7", points: split("train", "loss") },
      { name: "val", color: "#e15759", dashed: true, points: split("val", "loss") }]);
    CnnlabCharts.lineChart(curves, "accuracy", [
      { name: "train", color: "#4e79a7", points: split("train", "accuracy") },
      { name: "val", color: "#e15759", dashed: true, points: split("val", "accuracy") }]);
    if (run.evaluations.test) CnnlabCharts.confusion(matrix, run.evaluations.test);
    else matrix.append(h("p", { class: "dim" }, `not evaluated yet: cnnlab eval ${id}`));
    if (run.running) poll(2, () => route(true)); // follow the training run
    else if (run.has_checkpoint) mistakesInto(id);
  }

  function diagnosticsTable(diagnostics) {
    if (!diagnostics.layers.length) return h("p", { class: "dim" }, "none logged yet");
    const number = (v) => (v === undefined || v === null ? "—" : Number(v).toExponential(2));
    return h("div", {},
      h("p", { class: "dim" }, `at step ${diagnostics.step}` + (diagnostics.dead_relu !== null ? `; dead ReLUs ${percent(diagnostics.dead_relu)}` : "")),
      h("table", { class: "diagnostics" },
        h("thead", {}, h("tr", {}, ["layer", "param norm", "param mean", "grad norm", "update/param"].map((t) => h("th", {}, t)))),
        h("tbody", {}, diagnostics.layers.map((row) => h("tr", {},
          h("td", {}, row.layer), h("td", { class: "num" }, number(row.param_norm)), h("td", { class: "num" }, number(row.param_mean)),
          h("td", { class: "num" }, number(row.grad_norm)), h("td", { class: "num" }, number(row.update_ratio)))))));
  }

  async function mistakesInto(id) {
    const box = document.getElementById("mistakes");
    try {
      const data = await api("/api/mistakes/" + id);
      if (!data.mistakes.length) box.replaceChildren("no mistakes on the test split");
      else box.replaceChildren(...data.mistakes.map((m) => h("figure", {},
        h("img", { src: m.picture, alt: `true ${m.true}` }),
        h("figcaption", {}, `true ${m.true}, said ${m.predicted} (${percent(m.probability)})`))));
    } catch (error) {
      box.replaceChildren(h("span", { class: "error" }, error.message));
    }
  }

  // -- sweeps ----------------------------------------------------------------------------------

  async function sweepsView() {
    const data = await api("/api/sweeps");
    view.replaceChildren(h("h1", {}, "Sweeps"),
      data.sweeps.length
        ? h("ul", {}, data.sweeps.map((s) => h("li", {}, h("a", { href: "#/sweep/" + s.id }, s.id), ` · ${s.trials} trials · ${s.metric}` + (s.finished ? "" : " · unfinished"))))
        : h("p", {}, "No sweeps yet: cnnlab sweep lr"));
  }

  function csvTable(rows, link) {
    if (!rows.length) return h("p", { class: "dim" }, "nothing yet");
    const keys = Object.keys(rows[0]).filter((k) => k !== "run");
    return h("table", {},
      h("thead", {}, h("tr", {}, keys.map((k) => h("th", {}, k)))),
      h("tbody", {}, rows.map((row) => h("tr", {}, keys.map((k) =>
        h("td", {}, link && k === "trial" && row.run ? runLink(row.run) : row[k]))))));
  }

  async function sweepView(id) {
    const data = await api("/api/sweep/" + id);
    view.replaceChildren(h("h1", {}, id),
      h("h2", {}, `Settings ranked by ${data.metric}`), csvTable(data.settings, false),
      h("h2", {}, "Trials"), csvTable(data.trials, true));
    if (!data.finished) poll(5, () => route(true));
  }

  // -- network in 3D ---------------------------------------------------------------------------

  async function netView(parts) {
    const choices = await api("/api/experiments");
    const [kind, name, model] = parts;
    const experiment = h("select", { id: "net-experiment" }, choices.experiments.map((e) => h("option", { value: e }, e)));
    const models = h("select", { id: "net-model" }, h("option", { value: "" }, "(its own model)"), choices.models.map((m) => h("option", { value: m }, m)));
    if (kind === "exp") {
      experiment.value = name;
      models.value = model || "";
    }
    const show = () => { location.hash = `#/net/exp/${experiment.value}` + (models.value ? "/" + models.value : ""); };
    experiment.addEventListener("change", show);
    models.addEventListener("change", show);
    const picture = h("div", { id: "net" }, "drawing…");
    view.replaceChildren(h("h1", {}, "The network in 3D"),
      h("p", {}, "experiment ", experiment, " model ", models, kind === "run" ? ` · showing run ${name}` : ""),
      picture);
    const path = kind === "run" ? "/api/network/run/" + name
      : `/api/network/experiment/${experiment.value || "digits"}` + (models.value ? "?model=" + models.value : "");
    try {
      const data = await api(path);
      picture.replaceChildren();
      CnnlabNet.draw(picture, data);
    } catch (error) {
      picture.replaceChildren(h("p", { class: "error" }, error.message));
    }
  }

  // -- try it ----------------------------------------------------------------------------------

  async function tryView(id) {
    const runs = (await api("/api/runs")).runs.filter((r) => r.steps);
    if (!id && runs.length) id = runs[0].id;
    const picker = h("select", { id: "try-run" }, runs.map((r) => h("option", { value: r.id }, `${r.id} (${r.dataset})`)));
    if (id) picker.value = id;
    picker.addEventListener("change", () => { location.hash = "#/try/" + picker.value; });
    const canvas = h("canvas", { id: "pad", width: 280, height: 280 });
    const results = h("div", { id: "results", class: "results" }, h("p", { class: "dim" }, "Draw a digit (or drop an image) to see what the network makes of it."));
    const pen = h("input", { type: "range", min: 6, max: 48, value: 22, id: "pen" });
    const file = h("input", { type: "file", accept: "image/*", id: "file" });
    const drop = h("div", { class: "drop" }, "or drop an image here, or pick a file: ", file);
    view.replaceChildren(h("h1", {}, "Try it"), h("p", {}, "run ", picker),
      h("div", { class: "try" },
        h("div", { class: "panel" }, canvas,
          h("p", {}, h("button", { id: "clear", onclick: () => { board.clear(); } }, "clear"), " pen ", pen),
          drop),
        results));
    if (!id) {
      results.replaceChildren(h("p", {}, "No trained run yet: cnnlab train experiments/digits.yaml"));
      return;
    }
    const board = CnnlabDraw.pad(canvas, async () => send(await board.blob()));
    pen.addEventListener("input", () => board.setWidth(Number(pen.value)));
    async function send(blob) {
      results.classList.add("busy");
      try {
        showAnswer(results, await api(`/api/try/${id}`, { method: "POST", body: blob, headers: { "Content-Type": "application/octet-stream" } }));
      } catch (error) {
        results.replaceChildren(h("p", { class: "error" }, error.message));
      } finally {
        results.classList.remove("busy");
      }
    }
    file.addEventListener("change", () => file.files[0] && send(file.files[0]));
    drop.addEventListener("dragover", (e) => e.preventDefault());
    drop.addEventListener("drop", (e) => { e.preventDefault(); if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]); });
  }

  function showAnswer(box, answer) {
    const input = answer.input;
    const channels = input.shape[2] === 1 ? "greyscale" : "RGB";
    const norm = input.mean.map((m, i) => `(x/255 − ${m.toFixed(3)}) / ${input.std[i].toFixed(3)}`).join(", ");
    const bars = answer.top.map((t) => h("div", { class: "prob-row", "data-class": t.class, "data-p": t.probability },
      h("span", { class: "prob-class" }, t.class),
      h("span", { class: "prob-bar" }, h("i", { style: `width:${(100 * t.probability).toFixed(1)}%` })),
      h("span", { class: "prob-value" }, percent(t.probability))));
    const maps = answer.feature_maps.map((m) => h("figure", { class: "feature-map", "data-layer": m.layer },
      h("figcaption", {}, `layer ${m.layer} ${m.kind} ${m.detail}: ${m.shape.join("×")} (first ${m.shown} channels)`),
      h("img", { src: m.picture, alt: `feature maps of layer ${m.layer}` })));
    box.replaceChildren(
      h("section", { class: "answer-top" },
        h("figure", { class: "input" }, h("img", { src: input.picture, alt: "the input" }),
          h("figcaption", {}, `as the model receives it: ${input.shape.join("×")} ${channels} (from ${input.received_size.join("×")}); normalised ${norm}`)),
        h("div", { class: "probabilities", id: "probabilities" }, h("h3", {}, `top ${answer.top.length} classes`), bars),
        h("figure", { class: "saliency" }, h("img", { src: answer.saliency.picture, alt: "saliency" }),
          h("figcaption", {}, `saliency: where the input most moves the score of '${answer.saliency.class}' (input, gradient size, both)`))),
      h("h3", {}, "Feature maps of the conv layers"),
      maps.length ? h("div", { id: "feature-maps" }, maps) : h("p", { class: "dim" }, "the model has no conv layers"),
      answer.filters
        ? h("figure", { class: "filters" }, h("figcaption", {}, `first layer's filters: layer ${answer.filters.layer}, ${answer.filters.shape.join("×")} (red positive, blue negative)`), h("img", { src: answer.filters.picture, alt: "filters" }))
        : null,
      h("p", { class: "dim" }, `${answer.checkpoint} checkpoint, step ${answer.step}`));
  }

  // -- routing ---------------------------------------------------------------------------------

  async function route(refresh) {
    clearTimeout(timer);
    const parts = location.hash.replace(/^#\/?/, "").split("/");
    const [name, ...rest] = parts;
    const id = rest.join("/");
    for (const link of document.querySelectorAll("nav a")) {
      link.classList.toggle("here", link.dataset.view === (name === "run" ? "runs" : name === "sweep" ? "sweeps" : name || "runs"));
    }
    const scroll = window.scrollY;
    try {
      if (name === "run") await runView(id);
      else if (name === "sweeps") await sweepsView();
      else if (name === "sweep") await sweepView(id);
      else if (name === "net") await netView(rest);
      else if (name === "try") await tryView(id);
      else await runsView();
      if (refresh) window.scrollTo(0, scroll);
    } catch (error) {
      failed(error);
    }
  }

  window.addEventListener("hashchange", () => route(false));
  route(false);
})();
